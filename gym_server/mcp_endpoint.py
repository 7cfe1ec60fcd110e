"""Every episode's tools over MCP Streamable HTTP, from one low-level `Server` shared by all episodes.

Protocol 2026-07-28 requests carry no session, so the episode is named by the URL
(`/episodes/{episode_id}/mcp`) and each handler reads it from the HTTP request it serves. The session
manager runs stateless: legacy clients that open with `initialize` work too, and nothing about an
episode lives in the transport.

The SDK validates `Mcp-Param-*` headers of every `tools/call` against the called tool's input schema. Left
to itself it runs the whole `tools/list` handler per call to find that schema; we hand it
`get_tool_input_schema` instead, which reads the episode the endpoint resolved (a context variable set
in the same task) and answers from a dict.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from functools import partial
from contextvars import ContextVar
from typing import Any

import mcp_types as types
from mcp.server.caching import CacheHint
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from gym_server.auth import episode_key_matches
from gym_server.episodes import CallRefused, Episode, EpisodeManager, EpisodeNotFound, EpisodeScored
from gym_server.jsonrpc_guard import Refusal, check_protocol_version, json_content_type, parse_message, read_body
from gym_server.mcp_lane import ToolCallLane
from gym_server.mcp_cancel import CallCancelled, InFlightCalls, current_request, run_cancellable, serve_until_disconnect
from gym_server.models import CallLogEntry, CallStatus
from gym_server.sandbox.pool import SandboxUnavailable


REQUEST_CANCELLED = -32800
"""Answers a 2025-era request whose `notifications/cancelled` arrived (the SDK's legacy transport uses it too)."""

DISCOVER_HINT = CacheHint(ttl_ms=300_000, scope="public")
"""The discover result is the same for every episode of a gym process and names nothing private, so a client
may reuse it across its episodes' connections (each URL's key is another authorization context) for 5 minutes
rather than probe once per episode."""

_current_episode: ContextVar[Episode | None] = ContextVar("astra_current_episode", default=None)


def _input_schema(name: str) -> Mapping[str, Any] | None:
    episode = _current_episode.get()
    served = episode.tools.get(name) if episode is not None else None
    return served.spec.input_schema if served is not None else None


def _episode_of(manager: EpisodeManager, ctx: Any) -> Episode:
    request = ctx.request
    episode_id = request.path_params.get("episode_id") if request is not None else None
    try:
        return manager.get(episode_id or "")
    except EpisodeNotFound:
        raise MCPError(types.INVALID_PARAMS, f"episode {episode_id!r} does not exist (ended or expired)") from None


_ERROR_PREFIX = {
    CallStatus.unknown_tool: "Unknown tool",
    CallStatus.invalid_arguments: "Invalid arguments",
    CallStatus.tool_error: "Tool error",
    CallStatus.sandbox_error: "Tool stopped by the sandbox",
    CallStatus.injected_failure: "Tool failure",
    CallStatus.upstream_error: "Upstream MCP server error",
    CallStatus.cancelled: "Cancelled",
}


async def answer_tool_call(manager: EpisodeManager, episode: Episode, name: str, arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The gym's one tool-call handler, for the SDK's path and the direct lane (`mcp_lane`) alike: the
    result's wire dict (`CallToolResult`, by alias), or `MCPError` for what the protocol answers as an error."""
    try:
        entry = await run_cancellable(lambda: manager.call_tool(episode, name, arguments))
    except CallCancelled:
        raise MCPError(REQUEST_CANCELLED, "Request cancelled: the call was stopped and changed nothing") from None
    except EpisodeScored:
        raise MCPError(types.INVALID_REQUEST, f"episode {episode.id!r} is scored; its tools answer no more") from None
    except CallRefused as exc:
        return _text_result(f"Call refused: {exc}", is_error=True)
    except SandboxUnavailable as exc:  # the gym's fault, not the tool's answer: a protocol error, not a result
        raise MCPError(types.INTERNAL_ERROR, f"the gym's sandbox cannot run tools right now: {exc}") from None
    if entry.status is CallStatus.unknown_tool:  # every spec version: a protocol error (-32602), logged all the same
        message = entry.error or f"unknown tool {name!r}"
        raise MCPError(types.INVALID_PARAMS, message[:1].upper() + message[1:])
    return tool_result(entry)


_result_text = json.JSONEncoder(ensure_ascii=False).encode
"""`json.dumps(result, ensure_ascii=False)`, its encoder built once (every call's answer goes through it)."""


def tool_result(entry: CallLogEntry) -> dict[str, Any]:
    """A logged call as its `CallToolResult` wire dict: built directly, since this is every call's answer."""
    if entry.status is CallStatus.ok:
        result = _text_result(_result_text(entry.result), is_error=False)
        result["structuredContent"] = entry.result if isinstance(entry.result, dict) else {"result": entry.result}
        return result
    return _text_result(f"{_ERROR_PREFIX[entry.status]}: {entry.error}", is_error=True)


def _text_result(text: str, *, is_error: bool) -> dict[str, Any]:
    return {"content": [{"type": "text", "text": text}], "isError": is_error}


def build_mcp_server(manager: EpisodeManager, *, otel_spans: bool = False) -> Server[Any]:
    """One server for every episode. `otel_spans=False` drops the SDK's OpenTelemetry middleware (its
    documented opt-out): a span per message costs a few percent of a call and goes nowhere unless an
    OpenTelemetry SDK is configured, which a training gym rarely has."""
    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        episode = _episode_of(manager, ctx)
        if params is not None and params.cursor is not None:  # every tool comes in one page: no cursor was issued
            raise MCPError(types.INVALID_PARAMS, f"invalid cursor {params.cursor[:100]!r}: this server lists every tool in one page")
        return types.ListToolsResult(tools=[t.mcp_tool for t in episode.tools.values()])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        arguments = params.arguments if params.arguments is not None else {}
        result = await answer_tool_call(manager, _episode_of(manager, ctx), params.name, arguments)
        return types.CallToolResult.model_validate(result, by_alias=True)

    async def listen(ctx: Any, params: types.SubscriptionsListenRequestParams) -> types.SubscriptionsListenResult:
        """A 2026-07-28 client's change stream: `notifications/tools/list_changed` when the episode's next user
        turn brings tools (BFCL's miss_func). Each episode has its own event bus, so no stream hears another's."""
        return await _episode_of(manager, ctx).listener(ctx, params)

    server = Server(
        "astra-gym", version="0.1.0", get_tool_input_schema=_input_schema, on_list_tools=list_tools, on_call_tool=call_tool,
        on_subscriptions_listen=listen, cache_hints={"server/discover": DISCOVER_HINT},
    )
    if not otel_spans:
        server.middleware = [m for m in server.middleware if type(m).__name__ != "OpenTelemetryMiddleware"]
    return server


class EpisodeMCPEndpoint:
    """ASGI endpoint for `/episodes/{episode_id}/mcp?key=KEY`: unknown episodes get a 404 and a missing or
    wrong key a 403 before MCP sees them (see gym_server.auth); every POST passes `jsonrpc_guard`, and
    requests are tracked so that their cancellation stops them (`mcp_cancel`)."""

    def __init__(self, manager: EpisodeManager, sessions: StreamableHTTPSessionManager) -> None:
        self.manager = manager
        self.sessions = sessions
        self.inflight = InFlightCalls()
        self.lane = ToolCallLane(sessions.app, sessions)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        episode_id = scope.get("path_params", {}).get("episode_id", "")
        try:
            episode = self.manager.get(episode_id, touch=False)
        except EpisodeNotFound:
            await Refusal(types.INVALID_REQUEST, f"episode {episode_id[:64]!r} does not exist (ended or expired)", status=404).response()(scope, receive, send)
            return
        if not episode_key_matches(scope, episode.key):
            message = "this episode's MCP URL needs its key (?key=...): use the mcp_url the episode's creation returned"
            await Refusal(types.INVALID_REQUEST, message, status=403).response()(scope, receive, send)
            return
        token = _current_episode.set(episode)
        try:
            await self._serve(episode, scope, receive, send)
        finally:
            _current_episode.reset(token)

    async def _serve(self, episode: Episode, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            check_protocol_version(scope)
            if scope["method"] != "POST":  # stateless: no stream to hold open (GET), no session to end (DELETE)
                await Response(status_code=405, headers={"Allow": "POST"})(scope, receive, send)
                return
            scope = json_content_type(scope)
            body = await read_body(receive, self.sessions.max_request_body_size)
            message = parse_message(body)
        except Refusal as refusal:
            await refusal.response()(scope, receive, send)
            return
        if message.get("method") == "notifications/cancelled" and "id" not in message:
            self.inflight.cancel(episode.id, (message.get("params") or {}).get("requestId"))
            await Response(status_code=202)(scope, receive, send)
            return
        with self.inflight.track(episode.id, message.get("id")) as inflight:
            token = current_request.set(inflight)
            try:
                app: ASGIApp = self.sessions.handle_request
                if self.lane.takes(scope, message):
                    app = partial(self.lane.serve, message, partial(answer_tool_call, self.manager, episode), self.sessions.handle_request)
                await serve_until_disconnect(app, scope, body, receive, send, inflight)
            finally:
                current_request.reset(token)
