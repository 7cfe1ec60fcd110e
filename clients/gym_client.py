"""REST client of the gym contract, spread over one or more gym URLs (`--gym URL1,URL2`)."""

from __future__ import annotations

import asyncio
import itertools
import math
from typing import Any

import httpx2

from gym_server.models import Arena, ArenaSummary, EpisodeCreate, EpisodeCreated, EpisodeLog, RewardBreakdown, TurnAdvanced


class GymError(RuntimeError):
    """The gym answered with an error, or could not be reached."""


RATE_LIMIT_WAIT_S = 60.0
"""How long one request may wait in total on 429 answers (their Retry-After) before it fails."""


class GymClient:
    """Episodes go round-robin over the gyms; an episode's later calls go to the gym that made it.

    `token` is the gym's bearer token (the operator's, or an agent token); it goes only to the REST paths.
    The MCP URL an episode's creation returns carries that episode's own key and needs no token."""

    def __init__(self, urls: str | list[str], http: httpx2.AsyncClient, token: str | None = None) -> None:
        if isinstance(urls, str):
            urls = [u for u in urls.split(",") if u.strip()]
        if not urls:
            raise ValueError("at least one gym URL is needed")
        self.urls = [u.strip().rstrip("/") for u in urls]
        self.http = http
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._next = itertools.cycle(self.urls)
        self._home: dict[str, str] = {}

    async def _request(self, method: str, url: str, **kw: Any) -> httpx2.Response:
        waited = 0.0
        while True:
            try:
                response = await self.http.request(method, url, headers=self.headers, **kw)
            except httpx2.HTTPError as exc:
                raise GymError(f"cannot reach the gym at {url}: {type(exc).__name__}: {exc}") from None
            delay = _retry_after(response)
            if delay is None or waited + delay > RATE_LIMIT_WAIT_S:
                break
            await asyncio.sleep(delay)  # a quota refused this request before acting on it: safe to send again
            waited += delay
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
        """Every arena of the first gym (all gyms behind one client are expected to serve the same store)."""
        out: list[ArenaSummary] = []
        params: dict[str, Any] = {"limit": 1000, "offset": 0}
        for key, value in (("prefix", prefix), ("domain", domain), ("scenario_type", scenario_type)):
            if value:
                params[key] = value
        while True:
            page = (await self._request("GET", f"{self.urls[0]}/api/arenas", params=params)).json()
            out.extend(ArenaSummary.model_validate(a) for a in page)
            if len(page) < params["limit"]:
                return out
            params["offset"] += len(page)

    async def arena(self, arena_id: str) -> Arena:
        return Arena.model_validate((await self._request("GET", f"{self.urls[0]}/api/arenas/{arena_id}")).json())

    async def create_episode(self, request: EpisodeCreate) -> EpisodeCreated:
        base = next(self._next)
        body = request.model_dump(exclude_none=True, mode="json")
        created = EpisodeCreated.model_validate((await self._request("POST", f"{base}/api/episodes", json=body)).json())
        self._home[created.episode_id] = base
        return created

    def _base(self, episode_id: str) -> str:
        return self._home.get(episode_id, self.urls[0])

    async def log(self, episode_id: str) -> EpisodeLog:
        return EpisodeLog.model_validate((await self._request("GET", f"{self._base(episode_id)}/api/episodes/{episode_id}")).json())

    async def score(self, episode_id: str, final_answer: Any = None) -> RewardBreakdown:
        url = f"{self._base(episode_id)}/api/episodes/{episode_id}/score"
        return RewardBreakdown.model_validate((await self._request("POST", url, json={"final_answer": final_answer})).json())

    async def next_turn(self, episode_id: str, reply: str | None = None) -> TurnAdvanced:
        """Open the episode's next user turn (its message, and the tool list when it changed)."""
        url = f"{self._base(episode_id)}/api/episodes/{episode_id}/turns"
        return TurnAdvanced.model_validate((await self._request("POST", url, json={"reply": reply})).json())

    async def delete(self, episode_id: str) -> None:
        try:
            await self._request("DELETE", f"{self._base(episode_id)}/api/episodes/{episode_id}")
        finally:
            self._home.pop(episode_id, None)


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
