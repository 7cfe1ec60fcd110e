"""Real MCP servers fronted by the gym: each episode gets its own upstream session under its own episode URL,
so rollouts reach real and emulated tools by the same client path, with the same call log, failure
injection and auth.

Upstreams come only from the operator's config (`--upstream NAME=COMMAND` or `NAME=URL`), never from an
arena store: starting a command is the operator's decision. A stdio upstream is one subprocess per episode
(a stateful server starts fresh for each episode); it starts on the episode's first call and stops when
the episode ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
from typing import Any

from pydantic import BaseModel, Field, model_validator

from gym_server.models import Arena, Provenance, ToolSpec

logger = logging.getLogger(__name__)


class UpstreamConfig(BaseModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$")
    command: str | None = Field(default=None, description="stdio server command line")
    url: str | None = Field(default=None, description="Streamable HTTP endpoint")
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _one_target(self) -> UpstreamConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("an upstream needs exactly one of command or url")
        return self

    @classmethod
    def parse(cls, spec: str) -> UpstreamConfig:
        """`NAME=COMMAND ...` or `NAME=http(s)://...`."""
        name, sep, target = spec.partition("=")
        if not sep or not target.strip():
            raise ValueError(f"upstream {spec!r}: expected NAME=COMMAND or NAME=URL")
        target = target.strip()
        if target.startswith(("http://", "https://")):
            return cls(name=name.strip(), url=target)
        return cls(name=name.strip(), command=target)

    @property
    def arena_id(self) -> str:
        return f"mcp-{self.name}"

    def toolbox(self) -> Any:
        from clients.toolbox import MCPToolbox

        if self.url:
            return MCPToolbox(self.url)
        argv = shlex.split(self.command or "")
        return MCPToolbox.stdio(argv[0], argv[1:])


class UpstreamSession:
    """One open connection to an upstream, owned by its own task (MCP clients must exit where they entered)."""

    def __init__(self, config: UpstreamConfig) -> None:
        self.config = config
        self._ready: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._stop = asyncio.Event()
        self._task = asyncio.create_task(self._hold())

    async def _hold(self) -> None:
        try:
            async with self.config.toolbox() as box:
                self._ready.set_result(box)
                await self._stop.wait()
        except BaseException as exc:
            if not self._ready.done():
                self._ready.set_exception(exc)
            if not isinstance(exc, (Exception, asyncio.CancelledError)):
                raise

    async def call(self, name: str, arguments: dict[str, Any]) -> Any:
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
        box = await asyncio.wait_for(session._ready, 60)
        tools = [
            ToolSpec.model_validate(t.model_dump(by_alias=True, exclude_none=True, include={"name", "description", "input_schema", "output_schema"}))
            for t in box.tools
        ]
    finally:
        await session.close()
    return Arena(
        id=config.arena_id, domain=config.name, scenario_type="single_hop", question=f"Tools of the MCP server {config.name}",
        tools=tools, implementation="", kind="upstream", failure_rate=config.failure_rate,
        provenance=Provenance(source="upstream", notes=config.url or config.command),
    )  # fmt: skip
