"""The gym's ASGI app: REST contract of ../shared/DESIGN.md plus every episode's MCP endpoint.

`create_app(config, backends)` builds everything from the config and the tool backends the assembling command
passes in (no globals), so tests start as many independent gyms as they like. The lifespan owns the sandbox
pool, the backends, the MCP session manager and the idle-episode reaper.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import json
import logging
from collections.abc import AsyncIterator, Sequence
from typing import Any

from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route

from gym_server.auth import VIEW_PATH, Authenticator, BearerAuth, Forbidden, Principal, Role, principal_of, require_operator
from gym_server.backends import SuiteBackend, ToolBackend
from gym_server.config import ServeConfig
from gym_server.episodes import Episode, EpisodeManager, EpisodeNotFound, EpisodeRejected, EpisodeScored, NoMoreTurns
from gym_server.json_limits import JSONLimitError, parse_json
from gym_server.live import MAX_LISTED, ManagerLive, PagesFactory, ViewAccess
from gym_server.mcp_endpoint import EpisodeMCPEndpoint, build_mcp_server
from gym_server.models import BatchItem, CreatedItem, EpisodeBatchCreate, EpisodeBatchCreated, EpisodeBatchFinish, EpisodeBatchFinished, FinishedItem
from gym_server.models import EpisodeCreate, EpisodeCreated, EpisodeLog, RewardBreakdown, ScoreRequest, TurnRequest
from gym_server.origin_guard import HostOriginGuard
from gym_server.quotas import QuotaExceeded, Quotas
from gym_server.sandbox.pool import SandboxPool, SandboxUnavailable
from gym_server.scoring import score_episode
from gym_server.store import ArenaNotFound, ArenaStore, InvalidArena
from gym_server.suites import load_suite, sandbox_packages
from gym_server.workers import ProcessRole, usable_cpus

logger = logging.getLogger(__name__)


def error(status: int, message: str, detail: Any = None, headers: dict[str, str] | None = None) -> JSONResponse:
    body: dict[str, Any] = {"error": message}
    if detail is not None:
        body["detail"] = detail
    return JSONResponse(body, status_code=status, headers=headers)


def ok(model: BaseModel | list[Any] | dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> Response:
    if isinstance(model, BaseModel):
        return Response(model.model_dump_json(by_alias=True), status, headers, media_type="application/json")
    return JSONResponse(model, status, headers)


async def read_limited(request: Request, limit: int) -> bytes:
    """The request's body, refused with 413 past `limit` bytes (declared or streamed)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body is {declared} bytes; the limit is {limit}")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPError(413, f"request body exceeds the limit of {limit} bytes")
    return body


async def json_body(request: Request, limit: int) -> Any:
    body = await read_limited(request, limit)
    if not body.strip():
        return {}
    try:
        return parse_json(body)
    except JSONLimitError as exc:
        raise HTTPError(400, str(exc)) from None


MAX_OFFSET = 2**53
"""Paging offsets are clamped here: SQLite takes at most a signed 64-bit OFFSET, and no store holds 2**53 arenas."""


def query_int(request: Request, name: str, default: int, low: int, high: int) -> int:
    """An integer query parameter clamped to [low, high]; only a value that is not an integer is refused."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    text = raw.strip()
    if not (text.lstrip("+-").isascii() and text.lstrip("+-").isdigit()):
        raise HTTPError(400, f"bad query: {name} must be an integer")
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 18:  # clamped without converting: int() refuses literals past 4,300 digits
        return high if not text.startswith("-") else low
    return min(high, max(low, int(text)))


def path_id(request: Request, name: str) -> str:
    """An id taken from the URL path, refused unless it is short, valid Unicode text."""
    value = str(request.path_params[name])
    if len(value) > 256 or not value.isprintable():
        raise HTTPError(400, f"{name} must be printable text of at most 256 characters")
    return value


class HTTPError(Exception):
    def __init__(self, status: int, message: str, detail: Any = None) -> None:
        super().__init__(message)
        self.status, self.message, self.detail = status, message, detail


def parse_body(model: type[BaseModel], data: Any) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        detail = [{"loc": ".".join(str(p) for p in e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        raise HTTPError(422, f"invalid {model.__name__} body", detail) from None


def create_app(
    config: ServeConfig | None = None, backends: Sequence[ToolBackend] = (), process: ProcessRole | None = None, pages: PagesFactory | None = None
) -> Starlette:
    """`backends` serve the arena kinds the sandbox does not (fronted MCP servers, LLM emulators); each one's
    `start` may add arenas to the store. Upstreams in the config with no backend for them are refused.
    `process` makes this app one gym process of `serve --processes N` (see gym_server.workers). `pages` builds
    the live pages mounted at /view (the composition root passes them; a gym process of several has none)."""
    config = config or ServeConfig()
    if config.upstreams and not any("upstream" in b.kinds for b in backends):
        raise ValueError("the config fronts MCP servers (upstreams) but no upstream backend was passed to create_app")
    store = ArenaStore(config.arenas)
    if config.suites:  # the sandbox offers the suites' backend classes to the arena code that drives them
        wanted = [p for p in sandbox_packages(list(config.suites)) if p not in config.sandbox.packages]
        config = config.model_copy(update={"sandbox": config.sandbox.model_copy(update={"packages": [*config.sandbox.packages, *wanted]})})
    pool = SandboxPool(config.sandbox)
    suite_options = {"categories": tuple(config.suite_categories)} if config.suite_categories else {}
    backends = [*backends, *(load_suite(name, pool, **suite_options) for name in config.suites)]
    manager = EpisodeManager(store, pool, config, backends, id_prefix=process.id_prefix if process else "")  # the config is the episodes' limits
    authenticator = Authenticator(config.token, config.agent_tokens)
    quotas = Quotas(lambda p: config.operator_limits if p.role is Role.operator else config.agent_limits, manager.__contains__)
    sessions = StreamableHTTPSessionManager(
        app=build_mcp_server(manager, otel_spans=config.otel_spans), json_response=True, stateless=True, max_request_body_size=config.max_request_bytes
    )

    async def healthz(request: Request) -> Response:
        principal = principal_of(request)
        if principal is None or principal.role is not Role.operator:
            return ok({"status": "ok"})  # anyone may ask whether the gym serves; counts are the operator's
        return ok({"status": "ok", "arenas": len(store), "episodes": len(manager), "cpus": usable_cpus(), "sandbox": pool.health()})

    async def list_arenas(request: Request) -> Response:
        q = request.query_params
        offset = query_int(request, "offset", 0, 0, MAX_OFFSET)
        limit = query_int(request, "limit", 100, 1, 1000)
        try:
            items, total = store.summaries(offset, limit, q.get("domain"), q.get("scenario_type"), q.get("prefix"))
        except ValueError as exc:
            raise HTTPError(400, f"bad query: {exc}") from None
        headers = {"X-Total-Count": str(total)}
        if offset + len(items) < total:
            headers["Link"] = f'<{request.url.include_query_params(offset=offset + limit, limit=limit)}>; rel="next"'
        return ok([i.model_dump(mode="json") for i in items], headers=headers)

    async def show_arena(request: Request) -> Response:
        require_operator(request, "the arena spec (it holds the gold calls and answers)")
        return ok(store.get(path_id(request, "arena_id")))

    def own_episode(request: Request, action: str, episode_id: str | None = None) -> Any:
        """The episode in the path (or `episode_id`, a batch item's), if the principal may act on it: the operator
        on any, an agent on its own (another's is 404, as if it did not exist)."""
        principal: Principal = principal_of(request)  # type: ignore[assignment]
        if episode_id is None:
            episode_id = path_id(request, "episode_id")
        elif not episode_id.isprintable():
            raise HTTPError(400, "episode_id must be printable text of at most 256 characters")
        if principal.role is not Role.operator and not quotas.owns(principal, episode_id):
            raise EpisodeNotFound(episode_id)
        if action == "log" and principal.role is not Role.operator:
            raise Forbidden("an episode's call log needs the operator's token")
        return manager.get(episode_id)

    async def create_one(request: Request, principal: Principal, body: EpisodeCreate) -> EpisodeCreated:
        if principal.role is Role.agent:
            _agent_may_create(body, config.agent_arenas)
        with quotas.creating(principal) as owned:
            episode = await manager.create(body)
            owned(episode.id)
        base = (config.public_url or str(request.base_url)).rstrip("/")
        return EpisodeCreated(
            episode_id=episode.id,
            mcp_url=f"{base}/episodes/{episode.id}/mcp?key={episode.key}",
            prompt=episode.arena.turns[0].message if episode.arena.turns else episode.arena.question,
            tools=[t.definition() for t in episode.tools.values()],
            n_turns=episode.arena.n_turns,
        )

    async def create_episode(request: Request) -> Response:
        principal: Principal = principal_of(request)  # type: ignore[assignment]
        if process is not None:
            process.check_front(request.headers)
        body = parse_body(EpisodeCreate, await json_body(request, config.max_request_bytes))
        return ok(await create_one(request, principal, body), 201)

    async def create_batch(request: Request) -> Response:
        """Each item created as `POST /api/episodes` creates it (same checks, same quota), in order; an item
        that fails answers with the status and error its own request would have had, and the rest go on."""
        principal: Principal = principal_of(request)  # type: ignore[assignment]
        if process is not None:
            process.check_front(request.headers)
        batch = parse_body(EpisodeBatchCreate, await json_body(request, config.max_request_bytes))
        results = []
        for body in batch.episodes:
            try:
                results.append(CreatedItem(status=201, created=await create_one(request, principal, body)))
            except Exception as exc:
                results.append(CreatedItem.model_validate((await item_error(request, exc)).model_dump()))
        return ok(EpisodeBatchCreated(results=results))

    async def next_turn(request: Request) -> Response:
        episode = own_episode(request, "advance")
        parse_body(TurnRequest, await json_body(request, config.max_request_bytes))  # scripted turns read no reply yet
        return ok(await manager.advance(episode))

    async def episode_log(request: Request) -> Response:
        episode = own_episode(request, "log")
        await episode.settled()  # the log a trajectory record is made of carries every call's state diff
        return ok(episode.log(query_int(request, "since", 0, 0, MAX_OFFSET)))

    live = ManagerLive(manager)

    async def live_episodes(request: Request) -> Response:
        require_operator(request, "the list of live episodes")
        return ok(await live.episodes(query_int(request, "limit", 200, 1, MAX_LISTED)))

    async def scored(episode: Episode, body: ScoreRequest) -> RewardBreakdown:
        """The episode's score; call with its lock held (a score never sees half of a call; the first is final)."""
        if episode.scored is None:
            backend = manager.backend_for(episode.arena)
            if isinstance(backend, SuiteBackend):
                episode.scored = await backend.score(episode)
            elif episode.arena.kind == "suite":
                raise HTTPError(503, f"this gym has no backend for suite {episode.arena.suite!r}")
            else:
                episode.scored = score_episode(episode.arena, list(episode.calls), body.final_answer)
        return episode.scored

    async def score(request: Request) -> Response:
        episode = own_episode(request, "score")
        body = parse_body(ScoreRequest, await json_body(request, config.max_request_bytes))
        async with episode.lock:
            return ok(await scored(episode, body))

    async def finish_one(episode: Episode, body: ScoreRequest) -> EpisodeLog:
        async with episode.lock:  # no call is half-logged or starts in between
            await scored(episode, body)
            await episode.settled()
            log = episode.log()
            manager.delete(episode.id)
        return log

    async def finish(request: Request) -> Response:
        """Score, then end the episode, answering with its final call log (`scored` set, state diffs in): what a
        runner does last, in one request instead of three (score, log, delete). Operator only, as the log is."""
        episode = own_episode(request, "log")
        body = parse_body(ScoreRequest, await json_body(request, config.max_request_bytes))
        return ok(await finish_one(episode, body))

    async def finish_batch(request: Request) -> Response:
        """`finish` for each item, in order, each answered as its own request would have been."""
        batch = parse_body(EpisodeBatchFinish, await json_body(request, config.max_request_bytes))
        results = []
        for item in batch.episodes:
            try:
                episode = own_episode(request, "log", item.episode_id)
                results.append(FinishedItem(status=200, log=await finish_one(episode, ScoreRequest(final_answer=item.final_answer))))
            except Exception as exc:
                results.append(FinishedItem.model_validate((await item_error(request, exc)).model_dump()))
        return ok(EpisodeBatchFinished(results=results))

    async def delete_episode(request: Request) -> Response:
        manager.delete(own_episode(request, "delete").id)
        return Response(status_code=204)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[dict[str, Any]]:
        await pool.start()
        started: list[ToolBackend] = []
        try:
            for backend in backends:
                started.append(backend)
                if arenas := await backend.start():
                    store.add(arenas, source=f"{type(backend).__name__} ({', '.join(a.id for a in arenas)})")
        except BaseException:
            await _close(started)
            await pool.close()
            raise
        reaper = asyncio.create_task(manager.run_expiry(min(30.0, config.episode_ttl_s / 4)))
        try:
            async with sessions.run():
                yield {"manager": manager, "store": store, "pool": pool}
        finally:
            reaper.cancel()
            await manager.close()
            await _close(started)
            await pool.close()

    routes = [
        # First: the router tries routes in order, and an agent's tool calls are nearly all of a gym's requests.
        Route("/episodes/{episode_id}/mcp", EpisodeMCPEndpoint(manager, sessions), methods=["GET", "POST", "DELETE"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/api/arenas", list_arenas, methods=["GET"]),
        Route("/api/arenas/{arena_id:path}", show_arena, methods=["GET"]),
        Route("/api/episodes", create_episode, methods=["POST"]),
        Route("/api/episodes", live_episodes, methods=["GET"]),
        Route("/api/episodes/{episode_id}", episode_log, methods=["GET"]),
        Route("/api/episodes/{episode_id}", delete_episode, methods=["DELETE"]),
        Route("/api/episodes/{episode_id}/score", score, methods=["POST"]),
        Route("/api/episodes/{episode_id}/finish", finish, methods=["POST"]),
        Route("/api/episodes/{episode_id}/turns", next_turn, methods=["POST"]),
        Route("/api/episode-batches", create_batch, methods=["POST"]),
        Route("/api/episode-batches/finish", finish_batch, methods=["POST"]),
    ]
    if pages is not None:
        routes.append(Mount(VIEW_PATH, pages(live, ViewAccess.of(authenticator, config.public_url))))
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=EXCEPTION_HANDLERS)
    app.state.config = config
    app.state.manager = manager
    app.state.store = store
    app.state.pool = pool
    app.add_middleware(BearerAuth, authenticator=authenticator)
    app.add_middleware(  # outermost: a foreign Host or Origin is refused before anything else looks at the request
        HostOriginGuard, allowed_hosts=[*config.allowed_hosts, config.host], allowed_origins=config.allowed_origins, public_url=config.public_url
    )
    return app


async def _close(backends: Sequence[ToolBackend]) -> None:
    for backend in reversed(backends):
        try:
            await backend.close()
        except Exception:
            logger.exception("closing the tool backend %s failed", type(backend).__name__)


def _answer(status: int, message: Any = str) -> Any:
    """An exception handler that answers `status` with the contract's error body, worded by `message(exc)`."""

    async def handle(request: Request, exc: Exception) -> Response:
        return error(status, message(exc))

    return handle


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPError)
    return error(exc.status, exc.message, exc.detail)


async def _rejected(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, EpisodeRejected)
    return error(exc.status, str(exc))


async def _over_quota(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, QuotaExceeded)
    return error(429, str(exc), headers={"Retry-After": str(exc.retry_after_s)})


EXCEPTION_HANDLERS = {
    HTTPError: _http_error,
    EpisodeNotFound: _answer(404, lambda exc: f"episode {exc.args[0]!r} does not exist (ended or expired)"),
    ArenaNotFound: _answer(404, lambda exc: f"arena {exc.args[0]!r} is not in this gym's store"),
    InvalidArena: _answer(422),
    EpisodeRejected: _rejected,
    SandboxUnavailable: _answer(503, lambda exc: f"the sandbox is unavailable: {exc}"),
    Forbidden: _answer(403),
    NoMoreTurns: _answer(409),
    EpisodeScored: _answer(409, lambda exc: f"episode {exc.args[0]!r} is scored: it has no further turn"),
    QuotaExceeded: _over_quota,
}
"""The REST routes' domain errors as the contract's `{"error", "detail"}` bodies (Starlette's exception
middleware maps them; no route catches its own)."""


async def item_error(request: Request, exc: Exception) -> BatchItem:
    """A batch item's failure, worded and coded exactly as the single route's exception handler answers it; an
    unexpected error is one item's 500 (logged), never the loss of the batch's other items."""
    handler = next((h for kind, h in EXCEPTION_HANDLERS.items() if isinstance(exc, kind)), None)
    if handler is None:
        logger.exception("a batch item failed", exc_info=exc)
        return BatchItem(status=500, error=f"internal error: {type(exc).__name__}")
    answer = await handler(request, exc)
    body = json.loads(bytes(answer.body))
    retry = answer.headers.get("retry-after")
    return BatchItem(status=answer.status_code, error=body.get("error"), detail=body.get("detail"), retry_after_s=float(retry) if retry else None)


def _agent_may_create(body: EpisodeCreate, exposed: list[str]) -> None:
    """An agent token opens episodes only on exposed arenas, with the operator's failure policy and a seed
    it does not choose (a chosen seed predicts the injected failures)."""
    if not any(fnmatch.fnmatchcase(body.arena_id, pattern) for pattern in exposed):
        raise Forbidden(f"arena {body.arena_id!r} is not exposed to agent tokens")
    overrides = [name for name in ("seed", "failure_rate", "failure_kinds") if getattr(body, name) is not None]
    if overrides or body.distractors:
        raise Forbidden(f"an agent token cannot set {', '.join(overrides or ['distractors'])}; the operator's settings apply")
