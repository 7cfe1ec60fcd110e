"""Real MCP servers fronted by the gym: each episode gets its own upstream session under its own episode URL,
so rollouts reach real and emulated tools by the same client path, with the same call log, failure
injection and auth.

A stdio upstream is one subprocess per episode (a stateful server starts fresh for each episode); it starts
on the episode's first call to it and stops when the episode ends. This is a gym tool backend
(`gym_server.backends.ToolBackend`) that lives here because it is an MCP client (`MCPToolbox`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
from typing import Any

from clients.toolbox import MCPToolbox, ToolCallResult
from gym_server.backends import ToolAnswer
from gym_server.config import ServeConfig, UpstreamConfig
from gym_server.episodes import Episode
from gym_server.models import Arena, ArenaKind, CallStatus, Provenance, ToolSpec

logger = logging.getLogger(__name__)


def toolbox(config: UpstreamConfig) -> MCPToolbox:
    if config.url:
        return MCPToolbox(config.url)
    argv = shlex.split(config.command or "")
    return MCPToolbox.stdio(argv[0], argv[1:])


class UpstreamSession:
    """One open connection to an upstream, owned by its own task (MCP clients must exit where they entered)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._ready: asyncio.Future[MCPToolbox] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold())

    async def _hold(self) -> None:
        try:
            async with toolbox(self.config) as box:
                self._ready.set_result(box)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            if not isinstance(exc, (Exception, asyncio.CancelledError)):
                raise

    async def ready(self, timeout_s: float | None = None) -> MCPToolbox:
        return await asyncio.wait_for(asyncio.shield(self._ready), timeout_s)

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolCallResult:
        box = await asyncio.shield(self._ready)  # a cancelled call must not cancel the session every call shares
        return await box.call(name, arguments)

    async def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self._task, 10)


async def describe(config: UpstreamConfig) -> Arena:
    """Connect once to list the upstream's tools; the arena that serves them in episodes."""
    session = UpstreamSession(config)
    try:
        box = await session.ready(60)
        tools = [ToolSpec.from_mcp(t.model_dump(by_alias=True, exclude_none=True)) for t in box.tools]
    finally:
        await session.close()
    return Arena(
        id=config.arena_id, domain=config.name, scenario_type="single_hop", question=f"Tools of the MCP server {config.name}",
        tools=tools, implementation="", kind="upstream", failure_rate=config.failure_rate,
        provenance=Provenance(source="upstream", notes=config.url or config.command),
    )  # fmt: skip


class UpstreamBackend:
    """The gym's backend for `upstream` arenas: one session per (episode, server), opened on first use."""

    kinds: tuple[ArenaKind, ...] = ("upstream",)

    def __init__(self, configs: list[UpstreamConfig]) -> None:
        self.configs = {c.arena_id: c for c in configs}
        self._sessions: dict[str, dict[str, UpstreamSession]] = {}
        self._closing: set[asyncio.Task[None]] = set()

    async def start(self) -> list[Arena]:
        arenas = []
        for config in self.configs.values():
            try:
                arena = await describe(config)
            except Exception as exc:
                raise RuntimeError(f"upstream MCP server {config.name!r} ({config.command or config.url}) did not answer: {exc}") from exc
            logger.info("fronting MCP server %s as %s (%d tools)", config.name, arena.id, len(arena.tools))
            arenas.append(arena)
        return arenas

    async def call(self, episode: Episode, arena: Arena, tool: ToolSpec, arguments: dict[str, Any]) -> ToolAnswer:
        config = self.configs.get(arena.id)
        if config is None:
            return ToolAnswer(CallStatus.upstream_error, error=f"the MCP server behind {arena.id!r} is not configured on this gym")
        sessions = self._sessions.setdefault(episode.id, {})
        session = sessions.get(arena.id) or sessions.setdefault(arena.id, UpstreamSession(config))
        try:
            answer = await session.call(tool.name, arguments)
        except Exception as exc:  # the upstream did not start: every later call says so too
            return ToolAnswer(CallStatus.upstream_error, error=f"the MCP server {config.name!r} is unreachable: {type(exc).__name__}: {exc}")
        if answer.transport_error:
            return ToolAnswer(CallStatus.upstream_error, error=answer.text)
        if answer.is_error:
            return ToolAnswer(CallStatus.tool_error, error=answer.text)
        if answer.structured is not None:
            return ToolAnswer.ok(answer.structured)
        try:
            return ToolAnswer.ok(json.loads(answer.text))
        except ValueError:
            return ToolAnswer.ok(answer.text)

    def begin(self, episode: Any) -> None:
        """The upstream session opens on the first call: an episode that never calls the server costs it nothing."""

    def end(self, episode_id: str) -> None:
        for session in self._sessions.pop(episode_id, {}).values():
            task = asyncio.get_running_loop().create_task(session.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        for episode_id in list(self._sessions):
            self.end(episode_id)
        await asyncio.gather(*self._closing, return_exceptions=True)


def upstream_backends(config: ServeConfig) -> list[UpstreamBackend]:
    """The backends a gym with this config needs beyond its sandbox: one for its upstreams, if it has any."""
    return [UpstreamBackend(config.upstreams)] if config.upstreams else []
