"""Tool backends: what answers a validated, failure-checked call once the episode has decided to run it.

The gym serves every tool through one protocol, whatever is behind it: sandboxed arena code (hand-written
arenas and schema emulators, which are compiled code too), an LLM that plays a server (`emulators`), or a
real MCP server the gym fronts (`clients`). The gym itself only knows the sandbox; the command that
assembles the app passes the others in (`create_app(config, backends=[...])`), so `gym_server` imports no
package above it.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from gym_server.models import Arena, ArenaKind, CallStatus, RewardBreakdown, StateDiff, ToolSpec
from gym_server.sandbox.pool import SandboxPool

if TYPE_CHECKING:
    from gym_server.episodes import Episode


@dataclass(frozen=True, slots=True)
class ToolAnswer:
    """A backend's answer: `ok` with a JSON result, or a status that says whose fault the error is."""

    status: CallStatus
    result: Any = None
    error: str | None = None
    rendered: str | None = None
    """The call as the backend's own harness writes it (BFCL: its call string), for the call log."""
    diff: asyncio.Future[StateDiff] | None = None
    """What the call changed in the episode's state (the sandbox backend, for a writing call): it comes after the
    answer, when asked for through `Episode.diff_sources`, and the call log's entry is completed when it does
    (`EpisodeManager.call_tool`)."""

    @classmethod
    def ok(cls, result: Any) -> ToolAnswer:
        return cls(CallStatus.ok, result)


@runtime_checkable
class ToolBackend(Protocol):
    kinds: tuple[str, ...]
    """The arena kinds it answers for (`ArenaKind`, or `suite:NAME` for a suite's arenas); a later backend in
    `create_app`'s list wins a kind over an earlier one."""

    async def start(self) -> list[Arena]:
        """Open what it needs; the arenas it contributes to the store (a fronted server's tools), else []."""
        ...

    async def call(self, episode: Episode, arena: Arena, tool: ToolSpec, arguments: dict[str, Any]) -> ToolAnswer: ...

    def begin(self, episode: Episode) -> None:
        """The episode, whose own arena is of a kind this backend answers for, was created: get ready for its first call, off that call's path (must not block, must not
        fail; what is not ready in time is done on the first call as usual)."""
        ...

    def end(self, episode_id: str) -> None:
        """The episode is gone: drop what the backend keeps for it (must not block; close in the background)."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class SuiteBackend(ToolBackend, Protocol):
    """An external benchmark behind the tool-backend protocol: it contributes its entries as arenas of kind
    `suite` (from `start`), serves their tools and scores their episodes with the benchmark's own verdict."""

    suite: str

    async def score(self, episode: Episode) -> RewardBreakdown:
        """Called once, under the episode's lock: the verdict is final."""
        ...


class SandboxBackend:
    """Arena code run in the sandbox against the episode's own SQLite image (the gym's built-in backend)."""

    kinds: tuple[ArenaKind, ...] = ("arena", "emulator")

    def __init__(self, pool: SandboxPool) -> None:
        self.pool = pool

    async def start(self) -> list[Arena]:
        return []

    async def call(self, episode: Episode, arena: Arena, tool: ToolSpec, arguments: dict[str, Any]) -> ToolAnswer:
        outcome = await self.pool.call(arena.implementation, tool.name, arguments, episode.states[arena.id], owner=f"{episode.id}/{arena.id}")
        if not outcome.ok:
            return ToolAnswer(CallStatus.tool_error if outcome.kind == "tool_error" else CallStatus.sandbox_error, error=outcome.error)
        if outcome.state is not None:
            episode.states[arena.id] = outcome.state
        if outcome.diff is not None:
            episode.diff_sources.add(self.pool.settle)
        return ToolAnswer(CallStatus.ok, outcome.result, diff=outcome.diff)

    def begin(self, episode: Episode) -> None:
        """Fork and bind the process for the episode's own arena now, so its first call finds the arena code
        compiled and the initial state loaded (distractor arenas, seldom called, get theirs on first use)."""
        arena = episode.arena
        if arena.kind in self.kinds:
            self.pool.open(arena.implementation, episode.states[arena.id], owner=f"{episode.id}/{arena.id}")

    def end(self, episode_id: str) -> None:
        self.pool.release(episode_id)

    async def close(self) -> None:
        """The pool is the app's (it also builds initial states); the app's lifespan closes it."""
