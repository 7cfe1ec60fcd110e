"""What a gym is running now, for its operator: the live episodes, calls per second, and one episode's call log
as it grows. `GET /api/episodes` answers it as JSON; the live viewer pages (`astra-gym serve` mounts them at
/view, rendered by clients.viewer.live) read the same `LiveSource` in process.

Calls per second are counted from the call logs themselves: the calls of the live episodes that started within
the last `window_s` seconds, over the window. A deleted or expired episode's calls leave the count with it.
Under `serve --processes N` the front's source asks every gym process and adds their answers up; a process that
does not answer is listed as such, never silently left out.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import httpx2
from pydantic import BaseModel, Field, computed_field
from starlette.responses import Response
from starlette.types import ASGIApp

from gym_server.auth import VIEW_COOKIE, VIEW_PATH, VIEW_SESSION_S, Authenticator
from gym_server.episodes import Episode, EpisodeManager, EpisodeNotFound
from gym_server.models import EpisodeLog
from gym_server.workers import GymProcesses

WINDOW_S = 10.0
"""The window calls per second are counted over."""
MAX_LISTED = 1000


class LiveEpisode(BaseModel):
    episode_id: str
    arena_id: str
    created_at: float
    calls: int
    last_call_at: float | None = None
    turn: int = 0
    scored: bool = False


class LiveProcess(BaseModel):
    """One gym process of `serve --processes N`, as the front saw it."""

    name: str
    status: str
    """'ok', or why its episodes are missing from the list (not serving, did not answer)."""
    episodes: int = 0
    calls_per_s: float = 0.0


class LiveEpisodes(BaseModel):
    """The live episodes, the most recently active first (at most `limit` of them: `total` counts all)."""

    episodes: list[LiveEpisode]
    total: int
    calls: int = Field(description="Calls logged by the live episodes.")
    recent_calls: int = Field(description="Of those, the calls started within the last window_s seconds.")
    window_s: float = WINDOW_S
    at: float = Field(description="When this was taken (Unix time).")
    processes: list[LiveProcess] = Field(default_factory=list)
    """Under `serve --processes N`: every process, and whether its episodes are counted."""

    @computed_field  # type: ignore[prop-decorator]
    @property
    def calls_per_s(self) -> float:
        return self.recent_calls / self.window_s


class LiveSource(Protocol):
    """What the live pages read: an in-process gym's episodes, or all of a front's processes'."""

    async def episodes(self, limit: int) -> LiveEpisodes: ...

    async def log(self, episode_id: str, since: int) -> EpisodeLog:
        """The episode's log with its calls from index `since` on. Raises EpisodeNotFound (also for an
        episode whose process is gone, with that said) and LiveUnavailable."""
        ...


class LiveUnavailable(Exception):
    """The gym process that holds the data did not answer."""


def _recent(episode: Episode, since: float) -> int:
    n = 0
    for call in reversed(episode.calls):  # in the order they started: stop at the first older one
        if call.started_at < since:
            break
        n += 1
    return n


class ManagerLive:
    """A gym's own episodes (one process)."""

    def __init__(self, manager: EpisodeManager) -> None:
        self.manager = manager

    async def episodes(self, limit: int) -> LiveEpisodes:
        now = time.time()
        active = self.manager.active()
        listed = [
            LiveEpisode(
                episode_id=e.id, arena_id=e.arena.id, created_at=e.created_at, calls=len(e.calls),
                last_call_at=e.calls[-1].started_at if e.calls else None, turn=e.turn, scored=e.scored is not None,
            )  # fmt: skip
            for e in active
        ]
        listed.sort(key=lambda e: e.last_call_at or e.created_at, reverse=True)
        return LiveEpisodes(
            episodes=listed[:limit], total=len(active), calls=sum(e.calls for e in listed),
            recent_calls=sum(_recent(e, now - WINDOW_S) for e in active), at=now,
        )  # fmt: skip

    async def log(self, episode_id: str, since: int) -> EpisodeLog:
        episode = self.manager.get(episode_id, touch=False)  # looking keeps no episode alive
        await episode.settled()
        return episode.log(since)


class FrontLive:
    """Every process's episodes, asked of each over its REST API with the operator's token (the processes
    authorize the front like any client)."""

    def __init__(self, gyms: GymProcesses, http: httpx2.AsyncClient, token: str | None) -> None:
        self.gyms, self.http = gyms, http
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    async def episodes(self, limit: int) -> LiveEpisodes:
        slots = [g for g in self.gyms.slots if g is not None]

        async def ask(url: str) -> LiveEpisodes | str:
            try:
                response = await self.http.get(f"{url}/api/episodes", params={"limit": limit}, headers=self.headers, timeout=10)
            except httpx2.HTTPError as exc:
                return f"did not answer ({type(exc).__name__})"
            if response.status_code != 200:
                return f"answered {response.status_code}"
            return LiveEpisodes.model_validate_json(response.content)

        answers = await asyncio.gather(*(ask(g.url) if g.alive else _gone(g.ended) for g in slots))
        parts = [a for a in answers if isinstance(a, LiveEpisodes)]
        processes = [
            LiveProcess(name=g.name, status="ok", episodes=a.total, calls_per_s=a.calls_per_s) if isinstance(a, LiveEpisodes) else LiveProcess(name=g.name, status=a)
            for g, a in zip(slots, answers)
        ]  # fmt: skip
        listed = sorted((e for p in parts for e in p.episodes), key=lambda e: e.last_call_at or e.created_at, reverse=True)
        return LiveEpisodes(
            episodes=listed[:limit], total=sum(p.total for p in parts), calls=sum(p.calls for p in parts),
            recent_calls=sum(p.recent_calls for p in parts), at=time.time(), processes=processes,
        )  # fmt: skip

    async def log(self, episode_id: str, since: int) -> EpisodeLog:
        gym = self.gyms.owner(episode_id)
        if gym is None:
            raise EpisodeNotFound(episode_id)
        if not gym.alive:
            raise EpisodeNotFound(f"{episode_id} (lost with its gym process {gym.name}, {gym.ended})")
        try:
            response = await self.http.get(f"{gym.url}/api/episodes/{episode_id}", params={"since": since}, headers=self.headers, timeout=10)
        except httpx2.HTTPError as exc:
            raise LiveUnavailable(f"the gym process {gym.name} did not answer ({type(exc).__name__})") from None
        if response.status_code == 404:
            raise EpisodeNotFound(episode_id)
        if response.status_code != 200:
            raise LiveUnavailable(f"the gym process {gym.name} answered {response.status_code}")
        return EpisodeLog.model_validate_json(response.content)


async def _gone(ended: str | None) -> str:
    return f"not serving ({ended or 'restarting'})"



@dataclass(frozen=True)
class ViewAccess:
    """What the live pages' login form needs of the gym's auth: whether the gym has a token, and the cookie for
    one who gave the operator's (set with the attributes that keep it to these pages)."""

    authenticator: Authenticator
    https: bool = False
    """The gym is reached over HTTPS (its public URL says so): the cookie is then sent over HTTPS only."""

    @classmethod
    def of(cls, authenticator: Authenticator, public_url: str | None) -> ViewAccess:
        return cls(authenticator, https=(public_url or "").startswith("https://"))

    @property
    def open(self) -> bool:
        return not self.authenticator.enabled

    def login(self, response: Response, token: str, https: bool = False) -> bool:
        """Sets the cookie on `response` when `token` is the operator's; False when it is not."""
        cookie = self.authenticator.view_cookie(token)
        if cookie is None:
            return False
        response.set_cookie(
            VIEW_COOKIE, cookie, max_age=VIEW_SESSION_S, path=VIEW_PATH, secure=self.https or https, httponly=True, samesite="strict"
        )
        return True

    def logout(self, response: Response) -> None:
        response.delete_cookie(VIEW_COOKIE, path=VIEW_PATH, secure=self.https, httponly=True, samesite="strict")


PagesFactory = Callable[[LiveSource, ViewAccess], ASGIApp]
"""Builds the live pages over a gym's source (the composition root passes clients.viewer.live's)."""
