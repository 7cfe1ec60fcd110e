"""The front of `astra-gym serve --processes N`: the gym's one REST address over N gym processes.

It owns no episode. A creation goes to one process (round robin; an agent token's always to the same one, so
that process's quota is the token's whole quota), and the response's `mcp_url` names that process's own port:
MCP traffic never passes through here. An episode's other REST calls reach its owner by the id's prefix
(gym_server.workers). Arena listings go to any process. The front authenticates like a gym (bearer token,
Host/Origin guard) and forwards the caller's token, so every process authorizes each request itself too.

An episode whose process died is answered with 410 Gone and says so: the client reports it as an
infrastructure error (and may replay it), never as a score.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlsplit

import httpx2
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response
from starlette.routing import Mount, Route

from gym_server.app import EXCEPTION_HANDLERS, HTTPError, json_body, parse_body, path_id, query_int, read_limited
from gym_server.auth import VIEW_PATH, Authenticator, BearerAuth, Principal, Role, principal_of, require_operator
from gym_server.config import ServeConfig
from gym_server.live import MAX_LISTED, FrontLive, PagesFactory, ViewAccess
from gym_server.models import CreatedItem, EpisodeBatchCreate, EpisodeBatchFinish, FinishedItem
from gym_server.origin_guard import HostOriginGuard
from gym_server.workers import FRONT_HEADER, BackendsFactory, GymProcess, GymProcesses

FORWARDED_REQUEST_HEADERS = ("authorization", "content-type", "accept")
FORWARDED_RESPONSE_HEADERS = ("content-type", "retry-after", "www-authenticate", "x-total-count", "allow")


def _with_port(base: str, port: int) -> str:
    """`base` (scheme://host[:port][/path]) on another port."""
    parts = urlsplit(base)
    host = parts.hostname or "127.0.0.1"
    return f"{parts.scheme}://{f'[{host}]' if ':' in host else host}:{port}{parts.path.rstrip('/')}"


def _sticky_slot(principal: Principal, n: int) -> int:
    return int.from_bytes(hashlib.sha256(principal.name.encode()).digest()[:8], "big") % n


def create_front(config: ServeConfig, processes: int, backends: BackendsFactory | None = None, pages: PagesFactory | None = None) -> Starlette:
    """The front app; its lifespan starts the `processes` gym processes and stops them. `pages`: the live pages
    (at /view), over every process's episodes."""
    limits = httpx2.Limits(max_connections=4096, max_keepalive_connections=1024)
    http = httpx2.AsyncClient(timeout=httpx2.Timeout(600.0, connect=10.0), limits=limits)
    gyms = GymProcesses(config, processes, backends, http)
    turn = itertools.count()

    def public_base(request: Request, gym: GymProcess) -> str:
        return _with_port(config.public_url or str(request.base_url), gym.port)

    def pick(principal: Principal) -> GymProcess:
        live = gyms.live()
        if not live:
            raise HTTPError(503, "no gym process is serving right now (see /healthz)")
        if principal.role is Role.agent:  # one process holds all of this token's episodes and its whole quota
            start = _sticky_slot(principal, gyms.n)
            return min(live, key=lambda g: (g.slot - start) % gyms.n)
        return live[next(turn) % len(live)]

    def owner(request: Request) -> GymProcess:
        episode_id = path_id(request, "episode_id")
        gym = gyms.owner(episode_id)
        if gym is None:
            raise HTTPError(404, f"episode {episode_id[:64]!r} does not exist (ended or expired)")
        if not gym.alive:
            raise HTTPError(410, f"episode {episode_id[:64]!r} was lost: the gym process that served it ({gym.name}) exited ({gym.ended})")
        return gym

    async def forward(request: Request, gym: GymProcess, body: bytes | None = None) -> httpx2.Response:
        headers = {k: v for k in FORWARDED_REQUEST_HEADERS if (v := request.headers.get(k)) is not None}
        headers[FRONT_HEADER] = gyms.secret
        if body is None and request.method in ("POST", "PUT", "PATCH"):
            body = await read_limited(request, config.max_request_bytes)
        url = f"{gym.url}{request.url.path}" + (f"?{request.url.query}" if request.url.query else "")
        try:
            return await http.request(request.method, url, headers=headers, content=body)
        except httpx2.HTTPError as exc:
            await asyncio.sleep(0.05)  # a process that just died: its sentinel fires within a moment
            if not gym.alive:
                raise HTTPError(410 if "/api/episodes/" in url else 503, f"the gym process {gym.name} exited ({gym.ended}) while serving this request") from None
            raise HTTPError(502, f"the gym process {gym.name} did not answer: {type(exc).__name__}") from None

    def relay(response: httpx2.Response, content: bytes | None = None, extra: dict[str, str] | None = None) -> Response:
        headers = {k: v for k in FORWARDED_RESPONSE_HEADERS if (v := response.headers.get(k)) is not None}
        return Response(response.content if content is None else content, response.status_code, {**headers, **(extra or {})})

    async def healthz(request: Request) -> Response:
        principal = principal_of(request)
        operator = principal is not None and principal.role is Role.operator
        auth = {"authorization": request.headers["authorization"]} if "authorization" in request.headers else {}

        async def one(slot: int) -> dict[str, Any]:
            gym = gyms.slots[slot]
            if gym is None or not gym.alive:
                return {"slot": slot, "name": gym.name if gym else None, "status": "restarting" if gym else "starting"}
            entry: dict[str, Any] = {"slot": slot, "name": gym.name}
            try:
                answer = await http.get(f"{gym.url}/healthz", headers=auth, timeout=5)
                report = answer.json() if answer.status_code == 200 else {"status": f"http {answer.status_code}"}
            except (httpx2.HTTPError, ValueError) as exc:
                report = {"status": f"unresponsive ({type(exc).__name__})"}
            entry["status"] = report.pop("status", "?")
            if operator:
                entry.update(mcp_base=public_base(request, gym), **report)
            return entry

        reports = await asyncio.gather(*(one(slot) for slot in range(gyms.n)))
        serving = sum(r["status"] == "ok" for r in reports)
        body: dict[str, Any] = {"status": "ok" if serving == gyms.n else "degraded" if serving else "unavailable", "processes": reports}
        if operator:
            body["episodes"] = sum(r.get("episodes", 0) for r in reports)
        return JSONResponse(body, 200 if serving else 503)

    async def arenas(request: Request) -> Response:
        live = gyms.live()
        if not live:
            raise HTTPError(503, "no gym process is serving right now (see /healthz)")
        gym = live[next(turn) % len(live)]
        try:
            response = await forward(request, gym)
        except HTTPError as exc:  # a read every process answers alike: a process that died under it is no answer
            others = [g for g in gyms.live() if g is not gym]
            if gym.alive or exc.status != 503 or not others:
                raise
            gym = others[next(turn) % len(others)]
            response = await forward(request, gym)
        extra = {}
        if link := response.headers.get("link"):  # the next page's URL names the process: name the front instead
            extra["link"] = link.replace(gym.url, str(request.base_url).rstrip("/"), 1)
        return relay(response, extra=extra)

    async def create_episode(request: Request) -> Response:
        principal: Principal = principal_of(request)  # type: ignore[assignment]
        body = await read_limited(request, config.max_request_bytes)
        gym = pick(principal)
        try:
            response = await forward(request, gym, body)
        except HTTPError as exc:
            if gym.alive or exc.status not in (410, 503):
                raise
            response = await forward(request, (gym := pick(principal)), body)  # it died first: nothing was created there
        if response.status_code != 201:
            return relay(response)
        created = response.json()
        mcp_url = str(created.get("mcp_url", ""))
        created["mcp_url"] = public_base(request, gym) + mcp_url[mcp_url.find("/episodes/"):]
        return JSONResponse(created, 201)

    def relayed_items(response: httpx2.Response, n: int) -> list[dict[str, Any]] | None:
        """A process's batch answer, item by item; None when it answered the whole request with an error."""
        try:
            results = response.json()["results"] if response.status_code == 200 else None
        except (ValueError, KeyError, TypeError):
            results = None
        return results if isinstance(results, list) and len(results) == n else None

    def failed_items(response: httpx2.Response | HTTPError, n: int) -> list[dict[str, Any]]:
        """Every item of a sub-batch its process did not answer item by item: the status and error it answered."""
        if isinstance(response, HTTPError):
            status, message = response.status, response.message
        else:
            status, message = response.status_code, (response.text or "")[:500]
            with contextlib.suppress(ValueError, AttributeError):
                message = str(response.json().get("error", message))
        return [{"status": status if status >= 400 else 502, "error": message} for _ in range(n)]

    def checked_item(model: type[CreatedItem] | type[FinishedItem], item: Any) -> dict[str, Any]:
        """An item as the contract shapes it; one a process answered malformed is that item's 502, not the batch's 500."""
        try:
            return model.model_validate(item).model_dump(mode="json")
        except ValidationError:
            return {"status": 502, "error": "the gym process answered this item with a malformed result"}

    async def create_batch(request: Request) -> Response:
        """The items spread over the processes as single creations are; each process gets its share as one
        batch, and every created episode's `mcp_url` names its own process's port."""
        principal: Principal = principal_of(request)  # type: ignore[assignment]
        batch = parse_body(EpisodeBatchCreate, await json_body(request, config.max_request_bytes))
        items = [item.model_dump(mode="json", exclude_none=True) for item in batch.episodes]
        shares: dict[GymProcess, list[int]] = {}
        for index in range(len(items)):
            shares.setdefault(pick(principal), []).append(index)
        results: list[dict[str, Any]] = [{} for _ in items]

        async def create_share(gym: GymProcess, indices: list[int]) -> None:
            body = json.dumps({"episodes": [items[i] for i in indices]}).encode()
            try:
                response: httpx2.Response | HTTPError = await forward(request, gym, body)
            except HTTPError as exc:
                response = exc
                if not gym.alive and exc.status in (410, 503) and gyms.live():  # it died first: nothing was created there
                    try:
                        response = await forward(request, (gym := pick(principal)), body)
                    except HTTPError as again:
                        response = again
            answered = relayed_items(response, len(indices)) if isinstance(response, httpx2.Response) else None
            for i, item in zip(indices, answered or failed_items(response, len(indices))):
                created = item.get("created")
                if isinstance(created, dict):
                    mcp_url = str(created.get("mcp_url", ""))
                    created["mcp_url"] = public_base(request, gym) + mcp_url[mcp_url.find("/episodes/") :]
                results[i] = checked_item(CreatedItem, item)

        await asyncio.gather(*(create_share(gym, indices) for gym, indices in shares.items()))
        return JSONResponse({"results": results})

    async def finish_batch(request: Request) -> Response:
        """Each item goes to the process that owns its episode (one batch per process); an episode whose process
        is gone is 410, one no process owns 404, as their single requests would be."""
        batch = parse_body(EpisodeBatchFinish, await json_body(request, config.max_request_bytes))
        results: list[dict[str, Any]] = [{} for _ in batch.episodes]
        shares: dict[GymProcess, list[int]] = {}
        for index, item in enumerate(batch.episodes):
            gym = gyms.owner(item.episode_id)
            if gym is None:
                results[index] = {"status": 404, "error": f"episode {item.episode_id[:64]!r} does not exist (ended or expired)"}
            elif not gym.alive:
                results[index] = {"status": 410, "error": f"episode {item.episode_id[:64]!r} was lost: the gym process that served it ({gym.name}) exited ({gym.ended})"}
            else:
                shares.setdefault(gym, []).append(index)

        async def finish_share(gym: GymProcess, indices: list[int]) -> None:
            body = json.dumps({"episodes": [batch.episodes[i].model_dump(mode="json") for i in indices]}).encode()
            try:
                response: httpx2.Response | HTTPError = await forward(request, gym, body)
            except HTTPError as exc:  # its process died under it: its episodes are lost, not merely unanswered
                response = exc if gym.alive else HTTPError(410, f"the gym process {gym.name} exited ({gym.ended}) while finishing these episodes")
            answered = relayed_items(response, len(indices)) if isinstance(response, httpx2.Response) else None
            for i, item in zip(indices, answered or failed_items(response, len(indices))):
                results[i] = item

        await asyncio.gather(*(finish_share(gym, indices) for gym, indices in shares.items()))
        return JSONResponse({"results": [checked_item(FinishedItem, r) for r in results]})

    live = FrontLive(gyms, http, config.token)

    async def live_episodes(request: Request) -> Response:
        require_operator(request, "the list of live episodes")
        listed = await live.episodes(query_int(request, "limit", 200, 1, MAX_LISTED))
        return Response(listed.model_dump_json(), 200, media_type="application/json")

    async def episode_route(request: Request) -> Response:
        return relay(await forward(request, owner(request)))

    async def mcp_elsewhere(request: Request) -> Response:
        """MCP is served by the episode's own process: point there rather than carry the traffic."""
        gym = owner(request)
        query = f"?{request.url.query}" if request.url.query else ""
        return RedirectResponse(f"{public_base(request, gym)}{request.url.path}{query}", status_code=307)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        try:
            try:
                await gyms.start()
            except Exception as exc:
                app.state.startup_error = str(exc)
                raise
            yield {"processes": gyms}
        finally:
            await gyms.close()
            await http.aclose()

    routes = [
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/arenas", arenas, methods=["GET"]),
        Route("/api/arenas/{arena_id:path}", arenas, methods=["GET"]),
        Route("/api/episodes", create_episode, methods=["POST"]),
        Route("/api/episodes", live_episodes, methods=["GET"]),
        Route("/api/episodes/{episode_id}", episode_route, methods=["GET", "DELETE"]),
        Route("/api/episodes/{episode_id}/score", episode_route, methods=["POST"]),
        Route("/api/episodes/{episode_id}/finish", episode_route, methods=["POST"]),
        Route("/api/episodes/{episode_id}/turns", episode_route, methods=["POST"]),
        Route("/api/episode-batches", create_batch, methods=["POST"]),
        Route("/api/episode-batches/finish", finish_batch, methods=["POST"]),
        Route("/episodes/{episode_id}/mcp", mcp_elsewhere, methods=["GET", "POST", "DELETE"]),
    ]
    authenticator = Authenticator(config.token, config.agent_tokens)
    if pages is not None:
        routes.append(Mount(VIEW_PATH, pages(live, ViewAccess.of(authenticator, config.public_url))))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.config = config
    app.state.processes = gyms
    app.add_middleware(BearerAuth, authenticator=authenticator)
    app.add_middleware(HostOriginGuard, allowed_hosts=[*config.allowed_hosts, config.host], allowed_origins=config.allowed_origins, public_url=config.public_url)
    return app
