"""Every episode's tools over MCP Streamable HTTP, from one low-level `Server` shared by all episodes.

Protocol 2026-07-28 requests carry no session, so the episode is named by the URL
(`/episodes/{episode_id}/mcp`) and each handler reads it from the HTTP request it serves. The session
manager runs stateless: legacy clients that open with `initialize` work too, and nothing about an
episode lives in the transport.
"""

from __future__ import annotations

import json
from typing import Any

import mcp_types as types
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.exceptions import MCPError
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope, Send

from gym_server.episodes import Episode, EpisodeManager, EpisodeNotFound
from gym_server.models import CallLogEntry, CallStatus


def _episode_of(manager: EpisodeManager, ctx: Any) -> Episode:
    request = ctx.request
    episode_id = request.path_params.get("episode_id") if request is not None else None
    try:
        return manager.get(episode_id or "")
    except EpisodeNotFound:
        raise MCPError(types.INVALID_PARAMS, f"episode {episode_id!r} does not exist (ended or expired)") from None


def tool_result(entry: CallLogEntry) -> types.CallToolResult:
    if entry.status is CallStatus.ok:
        text = json.dumps(entry.result, ensure_ascii=False)
        structured = entry.result if isinstance(entry.result, dict) else {"result": entry.result}
        return types.CallToolResult(content=[types.TextContent(type="text", text=text)], structured_content=structured)
    prefix = {
        CallStatus.unknown_tool: "Unknown tool",
        CallStatus.invalid_arguments: "Invalid arguments",
        CallStatus.tool_error: "Tool error",
        CallStatus.sandbox_error: "Tool stopped by the sandbox",
        CallStatus.injected_failure: "Tool failure",
        CallStatus.upstream_error: "Upstream MCP server error",
    }[entry.status]
    return types.CallToolResult(content=[types.TextContent(type="text", text=f"{prefix}: {entry.error}")], is_error=True)


def build_mcp_server(manager: EpisodeManager) -> Server[Any]:
    async def list_tools(ctx: Any, params: types.PaginatedRequestParams | None) -> types.ListToolsResult:
        episode = _episode_of(manager, ctx)
        return types.ListToolsResult(tools=[types.Tool.model_validate(t.definition()) for t in episode.tools.values()])

    async def call_tool(ctx: Any, params: types.CallToolRequestParams) -> types.CallToolResult:
        episode = _episode_of(manager, ctx)
        entry = await manager.call_tool(episode, params.name, params.arguments if params.arguments is not None else {})
        return tool_result(entry)

    return Server("astra-gym", version="0.1.0", on_list_tools=list_tools, on_call_tool=call_tool)


class EpisodeMCPEndpoint:
    """ASGI endpoint for `/episodes/{episode_id}/mcp`: unknown episodes get a 404 before MCP sees them."""

    def __init__(self, manager: EpisodeManager, sessions: StreamableHTTPSessionManager) -> None:
        self.manager = manager
        self.sessions = sessions

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        episode_id = scope.get("path_params", {}).get("episode_id", "")
        try:
            self.manager.get(episode_id)
        except EpisodeNotFound:
            body = {"jsonrpc": "2.0", "id": None, "error": {"code": types.INVALID_REQUEST, "message": f"episode {episode_id!r} does not exist (ended or expired)"}}
            await JSONResponse(body, status_code=404)(scope, receive, send)
            return
        await self.sessions.handle_request(scope, receive, send)
