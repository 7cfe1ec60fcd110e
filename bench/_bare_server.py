"""Baselines for bench/gym_throughput.py: a bare mcp low-level server with one trivial tool, served with the
same uvicorn configuration as the gym. By default with the gym's transport settings (stateless, JSON
responses); with `--stateful`, in the SDK's default mode (a session per client, SSE responses), as most MCP
servers run today and as the legacy `ClientSession` + `initialize` clients expect."""

from __future__ import annotations

import contextlib
import sys

import mcp_types as types
import uvicorn
from mcp.server.lowlevel import Server
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from starlette.applications import Starlette
from starlette.routing import Route


async def list_tools(ctx, params):
    return types.ListToolsResult(tools=[types.Tool(name="echo", description="echo", input_schema={"type": "object", "properties": {"key": {"type": "string"}}})])


async def call_tool(ctx, params):
    return types.CallToolResult(content=[types.TextContent(type="text", text=str((params.arguments or {}).get("key")))])


server = Server("bare", on_list_tools=list_tools, on_call_tool=call_tool)
STATEFUL = "--stateful" in sys.argv[2:]
sessions = StreamableHTTPSessionManager(app=server) if STATEFUL else StreamableHTTPSessionManager(app=server, json_response=True, stateless=True)


class Endpoint:
    async def __call__(self, scope, receive, send):
        await sessions.handle_request(scope, receive, send)


@contextlib.asynccontextmanager
async def lifespan(app):
    async with sessions.run():
        yield


app = Starlette(routes=[Route("/mcp", Endpoint(), methods=["GET", "POST", "DELETE"])], lifespan=lifespan)

if __name__ == "__main__":
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning", access_log=False, backlog=2048, timeout_keep_alive=30)
