"""REST client of the gym contract, spread over one or more gym replicas (`--gym URL1,URL2`, or
`--gym dns+http://NAME:PORT` for every address of one DNS name, such as a Kubernetes headless service).

A replica that stops answering is marked lost: new episodes go to the others, and a request about an episode
it held raises `EpisodeLost`, which callers treat as an infrastructure error to replay elsewhere, never as a
score. A gym that answers 410 for an episode (a `serve --processes N` front whose process died) loses just
that episode."""

from __future__ import annotations

import asyncio
import math
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import httpx2
from pydantic import ValidationError

from clients.coalescing import ALONE, Coalescer
from clients.toolbox import DiscoverCache
from gym_server.models import Arena, ArenaSummary, EpisodeBatchCreated, EpisodeBatchFinished, EpisodeCreate, EpisodeCreated, EpisodeFinish, EpisodeLog, RewardBreakdown, TurnAdvanced


class GymError(RuntimeError):
    """The gym answered with an error, or could not be reached."""


class EpisodeLost(GymError):
    """The episode is gone with the gym (replica or process) that held it: an infrastructure error to replay
    on another gym, not an answer about the agent."""


DNS_SCHEME = "dns+"
Resolver = Callable[[str, int], list[str]]


def resolve_all(host: str, port: int) -> list[str]:
    """Every address of `host` (IPv4 and IPv6), in the resolver's order, without repeats."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def expand_urls(urls: str | list[str], resolve: Resolver = resolve_all) -> list[str]:
    """`URL1,URL2` as a list; a `dns+http://NAME:PORT` entry becomes one URL per address NAME resolves to."""
    if isinstance(urls, str):
        urls = urls.split(",")
    out: list[str] = []
    for url in (u.strip().rstrip("/") for u in urls if u.strip()):
        if not url.startswith(DNS_SCHEME):
            out.append(url)
            continue
        parts = urlsplit(url[len(DNS_SCHEME):])
        if not parts.hostname or parts.scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: expected dns+http://NAME:PORT")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        try:
            addresses = resolve(parts.hostname, port)
        except OSError as exc:
            raise ValueError(f"{url!r}: cannot resolve {parts.hostname}: {exc}") from None
        if not addresses:
            raise ValueError(f"{url!r}: {parts.hostname} has no address")
        out += [f"{parts.scheme}://{f'[{a}]' if ':' in a else a}:{port}{parts.path.rstrip('/')}" for a in addresses]
    return out


RATE_LIMIT_WAIT_S = 60.0
"""How long one request may wait in total on 429 answers (their Retry-After) before it fails."""


class GymClient:
    """Episodes go round-robin over the live gyms; an episode's later calls go to the gym that made it.

    `token` is the gym's bearer token (the operator's, or an agent token); it goes only to the REST paths.
    The MCP URL an episode's creation returns carries that episode's own key and needs no token."""

    def __init__(
        self, urls: str | list[str], http: httpx2.AsyncClient, token: str | None = None, resolve: Resolver = resolve_all, *, batch_window_s: float | None = 0.001
    ) -> None:
        self.urls = expand_urls(urls, resolve)
        if not self.urls:
            raise ValueError("at least one gym URL is needed")
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.lost: dict[str, str] = {}
        """Replicas that stopped answering, and why; nothing is sent to them again."""
        self._turn = 0
        self._home: dict[str, str] = {}
        self.discovered = DiscoverCache()
        """The gyms' `server/discover` results, reused by every episode's MCP connection for as long as they allow."""
        self._creations: Coalescer[EpisodeCreate, EpisodeCreated] | None = None
        self._finishes: Coalescer[EpisodeFinish, EpisodeLog] | None = None
        if batch_window_s is not None:
            self._creations = Coalescer(self._create_batch, self._create_alone, self._end_abandoned, window_s=batch_window_s)
            self._finishes = Coalescer(self._finish_batch, self._finish_alone, window_s=batch_window_s)
        """Creations and finishes made within `batch_window_s` of each other (a step's episodes) go to a gym as one
        batch request each (`clients.coalescing`); a call made alone waits that long, then goes alone. None: every
        call goes alone at once."""
        self._no_batches: set[str] = set()
        """Gyms that have no batch routes (an older gym): their calls go one by one."""

    def live(self) -> list[str]:
        return [u for u in self.urls if u not in self.lost]

    def _first_live(self) -> str:
        live = self.live()
        if not live:
            raise GymError(f"every gym replica was lost ({'; '.join(f'{u}: {why}' for u, why in self.lost.items())})")
        return live[0]

    async def _replica_down(self, base: str, exc: Exception) -> bool:
        """After a transport error: whether the replica is down (its /healthz does not answer either), marking it lost."""
        if base in self.lost:
            return True
        try:
            await self.http.get(f"{base}/healthz", timeout=5)
        except httpx2.HTTPError:
            self.lost[base] = f"{type(exc).__name__}: {exc}"
            return True
        return False

    async def _episode_request(self, method: str, episode_id: str, suffix: str = "", **kw: Any) -> httpx2.Response:
        """A request about one episode, at the gym that holds it; `EpisodeLost` when that gym lost it."""
        base = self._base(episode_id)
        if base in self.lost:
            raise EpisodeLost(f"episode {episode_id} was lost with the gym replica {base} ({self.lost[base]})")
        try:
            return await self._request(method, f"{base}/api/episodes/{episode_id}{suffix}", transport_errors=True, **kw)
        except httpx2.TransportError as exc:
            if await self._replica_down(base, exc):
                raise EpisodeLost(f"episode {episode_id} was lost with the gym replica {base} ({self.lost[base]})") from None
            raise GymError(f"cannot reach the gym at {base}: {type(exc).__name__}: {exc}") from None

    async def _request(self, method: str, url: str, transport_errors: bool = False, **kw: Any) -> httpx2.Response:
        waited = 0.0
        while True:
            try:
                response = await self.http.request(method, url, headers=self.headers, **kw)
            except httpx2.HTTPError as exc:
                if transport_errors and isinstance(exc, httpx2.TransportError):
                    raise
                raise GymError(f"cannot reach the gym at {url}: {type(exc).__name__}: {exc}") from None
            delay = _retry_after(response)
            if delay is None or waited + delay > RATE_LIMIT_WAIT_S:
                break
            await asyncio.sleep(delay)  # a quota refused this request before acting on it: safe to send again
            waited += delay
        raise_for_answer(method, url, response.status_code, _message(response), bool(self.headers))
        return response

    async def check_access(self) -> None:
        """Raise `GymError` now if a gym is unreachable or refuses the token, before a long run depends on it."""
        for url in self.urls:
            await self._request("GET", f"{url}/api/arenas", params={"limit": 1})

    async def arenas(self, prefix: str | None = None, domain: str | None = None, scenario_type: str | None = None) -> list[ArenaSummary]:
        """Every arena of the first live gym (all gyms behind one client are expected to serve the same store)."""
        out: list[ArenaSummary] = []
        params: dict[str, Any] = {"limit": 1000, "offset": 0}
        for key, value in (("prefix", prefix), ("domain", domain), ("scenario_type", scenario_type)):
            if value:
                params[key] = value
        while True:
            page = (await self._request("GET", f"{self._first_live()}/api/arenas", params=params)).json()
            out.extend(ArenaSummary.model_validate(a) for a in page)
            if len(page) < params["limit"]:
                return out
            params["offset"] += len(page)

    async def arena(self, arena_id: str) -> Arena:
        return Arena.model_validate((await self._request("GET", f"{self._first_live()}/api/arenas/{arena_id}")).json())

    async def arena_specs(self, ids: list[str], concurrency: int = 16) -> list[Arena]:
        """Whole specs (the operator's view: questions, gold, tools) of `ids`, in order, a few requests at a time."""
        limit = asyncio.Semaphore(concurrency)

        async def spec(arena_id: str) -> Arena:
            async with limit:
                return await self.arena(arena_id)

        return list(await asyncio.gather(*(spec(i) for i in ids)))

    async def create_episode(self, request: EpisodeCreate) -> EpisodeCreated:
        """On the next live gym; a gym that cannot be reached is marked lost and the next one tried. Creations made
        at once (a step's episodes) go to each gym as one batch request (`clients.coalescing`)."""
        live = self.live()
        if not live:
            self._first_live()  # raises: every replica was lost
        base = live[self._turn % len(live)]
        if self._creations is None or base in self._no_batches:
            return await self._create_alone(request)
        self._turn += 1
        return await self._creations.submit(base, request)

    async def _create_alone(self, request: EpisodeCreate) -> EpisodeCreated:
        body = request.model_dump(exclude_none=True, mode="json")
        while True:
            live = self.live()
            if not live:
                self._first_live()  # raises: every replica was lost
            base = live[self._turn % len(live)]
            self._turn += 1
            try:
                response = await self._request("POST", f"{base}/api/episodes", transport_errors=True, json=body)
            except httpx2.TransportError as exc:
                if await self._replica_down(base, exc):
                    continue
                raise GymError(f"cannot reach the gym at {base}: {type(exc).__name__}: {exc}") from None
            created = EpisodeCreated.model_validate(response.json())
            self._home[created.episode_id] = base
            return created

    async def _create_batch(self, base: Any, requests: list[EpisodeCreate]) -> list[Any]:
        body = {"episodes": [r.model_dump(exclude_none=True, mode="json") for r in requests]}
        answer = await self._batch(base, "/api/episode-batches", body, len(requests), lambda: ALONE)  # a lost gym: the next one
        if isinstance(answer, list):
            return answer
        results = _batch_results(EpisodeBatchCreated, answer, len(requests))
        if isinstance(results, GymError):  # what it did create is unknown: never create again what may exist
            return [results] * len(requests)
        outcomes: list[Any] = []
        for item in results:
            if item.created is not None:
                self._home[item.created.episode_id] = base
                outcomes.append(item.created)
            else:
                outcomes.append(self._item_outcome("POST", f"{base}/api/episodes", item.status, item.error))
        return outcomes

    async def _end_abandoned(self, created: EpisodeCreated) -> None:
        await self.delete(created.episode_id)

    async def _batch(self, base: str, path: str, body: dict[str, Any], n: int, down: Callable[[], Any]) -> Any:
        """A batch route's JSON answer, or else the outcome of each of its `n` items, as their own requests would
        have ended: `down()` each when the gym is gone (`_replica_down`), a `GymError` when it did not answer but
        lives, `ALONE` (one by one) when it has no such route or refused the batch as a whole (their own requests
        then meet the error, if it is theirs)."""
        try:
            response = await self.http.post(f"{base}{path}", headers=self.headers, json=body)
        except httpx2.TransportError as exc:
            if await self._replica_down(base, exc):
                return [down() for _ in range(n)]
            return [GymError(f"cannot reach the gym at {base}: {type(exc).__name__}: {exc}") for _ in range(n)]
        except httpx2.HTTPError as exc:
            return [GymError(f"cannot reach the gym at {base}: {type(exc).__name__}: {exc}") for _ in range(n)]
        if response.status_code in (404, 405):
            self._no_batches.add(base)
        if response.status_code != 200:
            return [ALONE] * n
        try:
            return response.json()
        except ValueError:
            return [ALONE] * n

    def _item_outcome(self, method: str, url: str, status: int, error: str | None) -> Any:
        """A batch item's failure as its own request would have raised it; a rate-limited item goes alone
        (its own request waits for its turn)."""
        if status == 429:
            return ALONE
        try:
            raise_for_answer(method, url, status, error or "", bool(self.headers))
        except GymError as exc:
            return exc
        return GymError(f"{method} {url}: {status}: {error}")

    def _base(self, episode_id: str) -> str:
        return self._home.get(episode_id, self.urls[0])

    async def log(self, episode_id: str) -> EpisodeLog:
        return EpisodeLog.model_validate((await self._episode_request("GET", episode_id)).json())

    async def score(self, episode_id: str, final_answer: Any = None) -> RewardBreakdown:
        return RewardBreakdown.model_validate((await self._episode_request("POST", episode_id, "/score", json={"final_answer": final_answer})).json())

    async def next_turn(self, episode_id: str, reply: str | None = None) -> TurnAdvanced:
        """Open the episode's next user turn (its message, and the tool list when it changed)."""
        url = f"{self._base(episode_id)}/api/episodes/{episode_id}/turns"
        return TurnAdvanced.model_validate((await self._request("POST", url, json={"reply": reply})).json())

    async def delete(self, episode_id: str) -> None:
        try:
            await self._episode_request("DELETE", episode_id)
        finally:
            self._home.pop(episode_id, None)

    async def finish(self, episode_id: str, final_answer: Any = None) -> EpisodeLog:
        """Score the episode and end it, getting its final log (`scored` set) in the same request (`POST .../finish`);
        episodes finished at once go to their gym as one batch request."""
        item = EpisodeFinish(episode_id=episode_id, final_answer=final_answer)
        base = self._base(episode_id)
        if self._finishes is None or base in self._no_batches or base in self.lost:
            return await self._finish_alone(item)
        return await self._finishes.submit(base, item)

    async def _finish_alone(self, item: EpisodeFinish) -> EpisodeLog:
        response = await self._episode_request("POST", item.episode_id, "/finish", json={"final_answer": item.final_answer})
        self._home.pop(item.episode_id, None)  # only once it ended: a caller whose `finish` failed deletes at the same gym
        return EpisodeLog.model_validate(response.json())

    async def _finish_batch(self, base: Any, items: list[EpisodeFinish]) -> list[Any]:
        lost = lambda: EpisodeLost(f"episode was lost with the gym replica {base} ({self.lost.get(base)})")
        answer = await self._batch(base, "/api/episode-batches/finish", {"episodes": [i.model_dump(mode="json") for i in items]}, len(items), lost)
        if isinstance(answer, list):
            return answer
        results = _batch_results(EpisodeBatchFinished, answer, len(items))
        if isinstance(results, GymError):
            return [results] * len(items)
        outcomes: list[Any] = []
        for item, result in zip(items, results):
            if result.log is not None:
                self._home.pop(item.episode_id, None)
                outcomes.append(result.log)
            else:
                outcomes.append(self._item_outcome("POST", f"{base}/api/episodes/{item.episode_id}/finish", result.status, result.error))
        return outcomes


def _batch_results(model: type[EpisodeBatchCreated] | type[EpisodeBatchFinished], answer: Any, n: int) -> Any:
    """A batch answer's items, or a `GymError` when the gym answered something else than one item per request."""
    try:
        results = model.model_validate(answer).results
    except ValidationError as exc:
        return GymError(f"the gym answered a malformed batch: {exc.error_count()} error(s)")
    if len(results) != n:
        return GymError(f"the gym answered {len(results)} items for a batch of {n}")
    return results


def raise_for_answer(method: str, url: str, status: int, message: str, had_token: bool) -> None:
    """The gym's error answer as the exception callers handle: 410 loses the episode, 401/403 are about the
    token, any other 4xx/5xx is a `GymError` with the gym's own words."""
    if status == 410:
        raise EpisodeLost(f"{method} {url.split('?', 1)[0]}: 410: {message}")
    if status in (401, 403):
        hint = "no token was given (--token or ASTRA_GYM_TOKEN)" if not had_token else "check --token / ASTRA_GYM_TOKEN"
        raise GymError(f"{method} {url}: {status}: the gym refused this request's bearer token ({message}); {hint}")
    if status >= 400:
        raise GymError(f"{method} {url}: {status}: {message}")

def _message(response: httpx2.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text
    return str(body.get("error", response.text)) if isinstance(body, dict) else response.text


def _retry_after(response: httpx2.Response) -> float | None:
    """Seconds to wait before sending a request that got 429 again; None when it should not be sent again."""
    if response.status_code != 429:
        return None
    try:
        seconds = float(response.headers.get("retry-after", "1"))
    except ValueError:
        return 1.0
    return max(0.1, seconds) if math.isfinite(seconds) else None
