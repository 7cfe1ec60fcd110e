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

from clients.toolbox import DiscoverCache
from gym_server.models import Arena, ArenaSummary, EpisodeCreate, EpisodeCreated, EpisodeLog, RewardBreakdown, TurnAdvanced


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

    def __init__(self, urls: str | list[str], http: httpx2.AsyncClient, token: str | None = None, resolve: Resolver = resolve_all) -> None:
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
        if response.status_code == 410:
            raise EpisodeLost(f"{method} {url.split('?', 1)[0]}: 410: {_message(response)}")
        if response.status_code in (401, 403):
            hint = "no token was given (--token or ASTRA_GYM_TOKEN)" if not self.headers else "check --token / ASTRA_GYM_TOKEN"
            raise GymError(f"{method} {url}: {response.status_code}: the gym refused this request's bearer token ({_message(response)}); {hint}")
        if response.status_code >= 400:
            raise GymError(f"{method} {url}: {response.status_code}: {_message(response)}")
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
        """On the next live gym; a gym that cannot be reached is marked lost and the next one tried."""
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
        """Score the episode and end it, getting its final log (`scored` set) in the same request (`POST .../finish`)."""
        response = await self._episode_request("POST", episode_id, "/finish", json={"final_answer": final_answer})
        self._home.pop(episode_id, None)  # only once it ended: a caller whose `finish` failed deletes at the same gym
        return EpisodeLog.model_validate(response.json())

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
