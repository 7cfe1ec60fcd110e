"""REST client of the gym contract, spread over one or more gym URLs (`--gym URL1,URL2`)."""

from __future__ import annotations

import itertools
from typing import Any

import httpx2

from gym_server.models import Arena, ArenaSummary, EpisodeCreate, EpisodeCreated, EpisodeLog, RewardBreakdown


class GymError(RuntimeError):
    """The gym answered with an error, or could not be reached."""


class GymClient:
    """Episodes go round-robin over the gyms; an episode's later calls go to the gym that made it."""

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
        try:
            response = await self.http.request(method, url, headers=self.headers, **kw)
        except httpx2.HTTPError as exc:
            raise GymError(f"cannot reach the gym at {url}: {type(exc).__name__}: {exc}") from None
        if response.status_code >= 400:
            try:
                message = response.json().get("error", response.text)
            except ValueError:
                message = response.text
            raise GymError(f"{method} {url}: {response.status_code}: {message}")
        return response

    async def health(self) -> list[dict[str, Any]]:
        return [(await self._request("GET", f"{u}/healthz")).json() for u in self.urls]

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

    async def delete(self, episode_id: str) -> None:
        try:
            await self._request("DELETE", f"{self._base(episode_id)}/api/episodes/{episode_id}")
        finally:
            self._home.pop(episode_id, None)
