"""The one MCP client path: open an MCP endpoint, list its tools as OpenAI tool schemas, call tools.

Synthesis rollouts, RL rollouts and evaluation all call tools through `MCPToolbox`. Many concurrent
episodes share one `httpx2.AsyncClient` (one connection pool); a stdio server is a subprocess per toolbox.
Calls have a per-call timeout; only calls that are safe to repeat are retried, and only on transport
failures (a tool's own error result is an answer, not a failure). A call that got no answer from the server
(timeout, refused connection, an HTTP error such as 401/403/5xx) is kept in `transport_errors`: the episode
was not really played, and callers report it as an infrastructure error rather than score it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx2
import mcp_types as types
from mcp import StdioServerParameters
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp_types.version import MODERN_PROTOCOL_VERSIONS

logger = logging.getLogger(__name__)


class EndpointUnreachable(ConnectionError):
    """Opening the MCP endpoint failed (nothing listens, the handshake failed): one clear error, not the SDK's
    task-group wrapper around it."""


def _leaf(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def shared_http_client(max_connections: int = 512, timeout_s: float = 120.0, headers: dict[str, str] | None = None) -> httpx2.AsyncClient:
    """The pool every toolbox and gym client of a run should share."""
    limits = httpx2.Limits(max_connections=max_connections, max_keepalive_connections=max_connections)
    return httpx2.AsyncClient(timeout=timeout_s, limits=limits, headers=headers)


def openai_tool(tool: types.Tool | dict[str, Any]) -> dict[str, Any]:
    """An MCP tool definition as an OpenAI chat-completions `tools` entry."""
    data = tool if isinstance(tool, dict) else tool.model_dump(by_alias=True, exclude_none=True)
    parameters = data.get("inputSchema") or {"type": "object", "properties": {}}
    return {"type": "function", "function": {"name": data["name"], "description": data.get("description") or "", "parameters": parameters}}


class DiscoverCache:
    """`server/discover` results to reuse across connections, by server origin, as the server's cache hints
    allow: only results it marked `public` (an episode's URL carries its own key, so each connection is another
    authorization context) and only for their `ttlMs`. A run opens one connection per episode to the same gym
    processes; probing each time is a request per episode that tells nothing new. Reused through the SDK's own
    `Client(mode=<version>, prior_discover=...)`."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._results: dict[str, tuple[types.DiscoverResult, float]] = {}

    @staticmethod
    def origin(url: str) -> str:
        parts = urlsplit(url)
        return f"{parts.scheme}://{parts.netloc}".lower()

    def get(self, url: str) -> types.DiscoverResult | None:
        entry = self._results.get(self.origin(url))
        if entry is None:
            return None
        if self._clock() >= entry[1]:
            del self._results[self.origin(url)]
            return None
        return entry[0]

    def put(self, url: str, result: types.DiscoverResult | None) -> None:
        if result is None or result.cache_scope != "public" or not result.ttl_ms or result.ttl_ms <= 0:
            return
        if not any(v in result.supported_versions for v in MODERN_PROTOCOL_VERSIONS):
            return
        self._results[self.origin(url)] = (result, self._clock() + result.ttl_ms / 1000)


@dataclass(slots=True)
class ToolCallResult:
    """What an agent sees of one call: text for the model, plus structure for records."""

    text: str
    is_error: bool
    structured: dict[str, Any] | None = None
    latency_s: float = 0.0
    transport_error: str | None = None
    """Set when the call never got an MCP answer (timeout, connection refused, server gone)."""


@dataclass
class MCPToolbox:
    """A connected MCP endpoint. Use `async with MCPToolbox.http(url, http) as box:` or `.stdio(cmd)`."""

    target: str | StdioServerParameters
    http: httpx2.AsyncClient | None = None
    call_timeout_s: float = 60.0
    retries: int = 2
    tools: list[types.Tool] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    """Calls that got no MCP answer, in order (see the module docstring)."""
    discovered: DiscoverCache | None = None
    """Where to find and keep the server's `server/discover` result (HTTP endpoints only)."""
    _client: Client | None = None
    _stack: AsyncExitStack | None = None

    @classmethod
    def http_endpoint(cls, url: str, http: httpx2.AsyncClient, **kw: Any) -> MCPToolbox:
        return cls(url, http, **kw)

    @classmethod
    def stdio(cls, command: str, args: list[str] | None = None, env: dict[str, str] | None = None, **kw: Any) -> MCPToolbox:
        return cls(StdioServerParameters(command=command, args=args or [], env=env), None, **kw)

    async def __aenter__(self) -> MCPToolbox:
        self._stack = AsyncExitStack()
        try:
            if isinstance(self.target, str):
                if self.http is None:
                    self.http = await self._stack.enter_async_context(shared_http_client())
                transport = streamable_http_client(self.target, http_client=self.http)
                known = self.discovered.get(self.target) if self.discovered is not None else None
                if known is not None:  # the version both speak, as `ClientSession.adopt` picks it
                    version = [v for v in MODERN_PROTOCOL_VERSIONS if v in known.supported_versions][-1]
                    self._client = await self._stack.enter_async_context(Client(transport, mode=version, prior_discover=known))  # type: ignore[arg-type]
                else:
                    self._client = await self._stack.enter_async_context(Client(transport))  # type: ignore[arg-type]
                    if self.discovered is not None:
                        self.discovered.put(self.target, self._client.session.discover_result)
            else:
                self._client = await self._stack.enter_async_context(Client(self.target))
            await self.refresh_tools()
        except BaseException as exc:
            await self._stack.aclose()
            cause = _leaf(exc)
            if isinstance(cause, Exception) and not isinstance(cause, asyncio.CancelledError):
                # an episode URL's query holds its key, which stays out of messages that reach records
                shown = self.target.split("?", 1)[0] if isinstance(self.target, str) else " ".join([self.target.command, *self.target.args])
                raise EndpointUnreachable(f"cannot open the MCP endpoint {shown}: {type(cause).__name__}: {cause}") from cause
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._stack is not None:
            await self._stack.aclose()

    @property
    def client(self) -> Client:
        if self._client is None:
            raise RuntimeError("the toolbox is not open; use `async with`")
        return self._client

    async def refresh_tools(self) -> list[types.Tool]:
        tools: list[types.Tool] = []
        cursor: str | None = None
        while True:
            page = await self._retrying(lambda: self.client.list_tools(cursor=cursor))
            tools.extend(page.tools)
            cursor = page.next_cursor
            if not cursor:
                break
        self.tools = tools
        return tools

    def openai_tools(self) -> list[dict[str, Any]]:
        return [openai_tool(t) for t in self.tools]

    def _safe_to_retry(self, name: str) -> bool:
        tool = next((t for t in self.tools if t.name == name), None)
        hints = tool.annotations if tool is not None else None
        return bool(hints and (hints.read_only_hint or hints.idempotent_hint))

    async def _retrying(self, op: Any, attempts: int | None = None) -> Any:
        attempts = self.retries + 1 if attempts is None else attempts
        delay = 0.2
        for attempt in range(attempts):
            try:
                async with asyncio.timeout(self.call_timeout_s):
                    return await op()
            except (httpx2.TransportError, TimeoutError, ConnectionError):
                if attempt == attempts - 1:
                    raise
                await asyncio.sleep(delay)
                delay *= 2
        raise AssertionError("unreachable")

    async def call(self, name: str, arguments: dict[str, Any]) -> ToolCallResult:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        attempts = self.retries + 1 if self._safe_to_retry(name) else 1
        try:
            result = await self._retrying(lambda: self.client.call_tool(name, arguments), attempts)
        except TimeoutError:
            self.transport_errors.append(f"the call to {name} timed out after {self.call_timeout_s:g} s")
            return ToolCallResult(f"Error: the call to {name} timed out after {self.call_timeout_s:g} s", True,
                                  latency_s=loop.time() - t0, transport_error="timeout")  # fmt: skip
        except MCPError as exc:
            if exc.error.code == types.INVALID_PARAMS:  # the server's answer to a bad call (e.g. an unknown tool)
                return ToolCallResult(f"Error: {exc.error.message}", True, latency_s=loop.time() - t0)
            return self._no_answer(name, f"MCP error {exc.error.code}: {exc.error.message}", loop.time() - t0)
        except Exception as exc:  # the server is gone or answered garbage: an error the agent sees, and we record
            return self._no_answer(name, f"{type(exc).__name__}: {exc}", loop.time() - t0)
        text = "\n".join(c.text if isinstance(c, types.TextContent) else json.dumps(c.model_dump(mode="json")) for c in result.content)
        return ToolCallResult(text, bool(result.is_error), result.structured_content, loop.time() - t0)

    def _no_answer(self, name: str, message: str, latency_s: float) -> ToolCallResult:
        self.transport_errors.append(f"the call to {name} failed: {message}")
        return ToolCallResult(f"Error: the call to {name} failed: {message}", True, latency_s=latency_s, transport_error=message)
