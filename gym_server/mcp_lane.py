"""A direct lane for the request agents make over and over: a protocol-2026-07-28 `tools/call`.

The SDK serves every modern request through the same general machinery: a `Connection`, a `ServerSession`
and a request context built per request, the middleware chain, the params validated twice, the result
re-validated through the version's wire surface and dumped through the JSON-RPC envelope models, the
connection's exit stack closed under a shielded cancel scope. For our one handler that is about 0.25 ms of
CPU per call on a 2-core VM, more than the rest of the gym's work for the call (measured in session 9:
docs/benchmarks.md). At one episode an agent waits for all of it, every call.

This lane serves a plain `tools/call` without that machinery, and only after the SDK's own inbound ladder
passed it, run with the SDK's functions (`check_accept_headers`, `find_duplicated_routing_header`,
`classify_inbound_request`, `validate_mcp_param_headers`, `validate_client_request`): a request any rung
would refuse, or anything the lane does not recognise as a plain call (another method, an SSE-only
client, extra envelope members, the SDK's middleware or cache hints configured), goes to the SDK
untouched, which answers it as it always did. The handler is the gym's one tool-call handler, shared with
the SDK path, and the reply is the one the SDK writes for it (tests/test_mcp_lane.py plays the same
requests through both and compares every answer).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from mcp.server.lowlevel import Server
from mcp.server.runner import modern_error_data
from mcp.server.streamable_http import check_accept_headers
from mcp.server.streamable_http_manager import StreamableHTTPSessionManager
from mcp.shared.inbound import (
    ERROR_CODE_HTTP_STATUS,
    MCP_PARAM_HEADER_PREFIX,
    X_MCP_HEADER_KEY,
    InboundModernRoute,
    classify_inbound_request,
    find_duplicated_routing_header,
    validate_mcp_param_headers,
)
from mcp_types import SERVER_INFO_META_KEY
from mcp_types import methods as wire_methods
from mcp_types.version import MODERN_PROTOCOL_VERSIONS
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

LANE_METHOD = "tools/call"
_ENVELOPE_KEYS = frozenset({"jsonrpc", "id", "method", "params"})
_PARAM_HEADER_PREFIX = MCP_PARAM_HEADER_PREFIX.lower()
_PLAIN_PARAMS = frozenset({"name", "arguments", "_meta"})
_KEPT = 1024
"""Schemas and `_meta` values the lane remembers (`_annotated`, `_params_valid`); past that it starts over."""

Answer = Callable[[str, Mapping[str, Any]], Awaitable[dict[str, Any]]]
"""The tool-call handler for the lane: (tool name, arguments) -> the result's wire dict, or `MCPError`."""


_compact_json = json.JSONEncoder(separators=(",", ":")).encode
_meta_key_json = json.JSONEncoder(sort_keys=True, separators=(",", ":")).encode
"""Built once: `json.dumps` with options builds a new encoder per call, and these run on every tool call."""


def _json_response(body: dict[str, Any], status: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """The two ASGI messages of the response Starlette's `Response` sends for the SDK's `_write`."""
    content = _compact_json(body).encode()
    start = {
        "type": "http.response.start", "status": status,
        "headers": [(b"content-length", str(len(content)).encode()), (b"content-type", b"application/json")],
    }  # fmt: skip
    return start, {"type": "http.response.body", "body": content}


class ToolCallLane:
    """Serves a plain modern `tools/call` for one MCP server whose sessions run stateless with JSON responses."""

    def __init__(self, server: Server[Any], sessions: StreamableHTTPSessionManager) -> None:
        # What the SDK would do around the handler that this lane does not: then it stays off.
        self.enabled = (
            sessions.stateless and sessions.json_response and sessions.security_settings is None
            and not server.middleware and LANE_METHOD not in server.cache_hints
            and server.get_request_handler(LANE_METHOD) is not None
        )  # fmt: skip
        self._input_schema = server.get_tool_input_schema
        self._server_info = server.server_info_stamp  # written into each reply's JSON, never shared as an object
        self._schemas: dict[int, tuple[Any, bool]] = {}
        self._valid: set[tuple[str, str]] = set()

    def takes(self, scope: Scope, message: Mapping[str, Any]) -> bool:
        """A cheap first look: the full ladder runs in `serve`, which can still hand the request to the SDK."""
        return (
            self.enabled and message.get("method") == LANE_METHOD and "id" in message
            and message.keys() <= _ENVELOPE_KEYS and _modern_header(scope) in MODERN_PROTOCOL_VERSIONS
        )  # fmt: skip

    async def serve(
        self, message: dict[str, Any], answer: Answer, sdk: Callable[[Scope, Receive, Send], Awaitable[None]],
        scope: Scope, receive: Receive, send: Send,
    ) -> None:  # fmt: skip
        """Answer `message` (the request's body, already parsed and checked by jsonrpc_guard), or pass the
        request to `sdk` with its body unread when any rung of the SDK's ladder would have its say."""
        verdict = self._admitted(message, Request(scope))
        if verdict is None:
            await sdk(scope, receive, send)
            return
        request_id = message["id"]
        params = message.get("params") or {}
        try:
            result = self.wire_result(await answer(params["name"], params.get("arguments") or {}))
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "result": result}
            status = 200
        except Exception as exc:  # the SDK's exception-to-wire boundary (`_to_jsonrpc_response`)
            error = modern_error_data(exc).model_dump(mode="json", by_alias=True, exclude_none=True)
            reply = {"jsonrpc": "2.0", "id": request_id, "error": error}
            status = ERROR_CODE_HTTP_STATUS.get(error["code"], 200)
        start, body = _json_response(reply, status)
        await send(start)
        await send(body)

    def wire_result(self, result: dict[str, Any]) -> dict[str, Any]:
        """A handler's result dict as the SDK's `_serialize` leaves it for a 2026-era client."""
        return {**result, "resultType": "complete", "_meta": {SERVER_INFO_META_KEY: self._server_info}}

    def _admitted(self, message: Mapping[str, Any], request: Request) -> InboundModernRoute | None:
        """The route when every rung the SDK runs before dispatch passes this request; None sends it to the SDK."""
        # Each header decoded once: `dict(request.headers)` scans and decodes every line once per name
        items = [(name.decode("latin-1"), value.decode("latin-1")) for name, value in request.scope["headers"]]
        has_json, _ = check_accept_headers(request)
        if not has_json or find_duplicated_routing_header(items) is not None:
            return None
        folded: dict[str, str] = {}
        for name, value in items:
            folded.setdefault(name, value)  # the first line of a name, as `Headers` reads it
        verdict = classify_inbound_request(message, headers=folded)
        if not isinstance(verdict, InboundModernRoute):
            return None
        params = message.get("params")
        if not isinstance(params, Mapping) or not isinstance(params.get("name"), str):
            return None
        arguments = params.get("arguments")
        if arguments is not None and not isinstance(arguments, Mapping):
            return None
        if (arguments or any(name.startswith(_PARAM_HEADER_PREFIX) for name in folded)) and self._input_schema is not None:
            try:
                schema = self._input_schema(params["name"])
            except Exception:
                return None
            if schema is not None and self._annotated(schema) and validate_mcp_param_headers(schema, arguments or {}, request.headers) is not None:
                return None
        if not self._params_valid(verdict.protocol_version, params):
            return None
        return verdict

    def _annotated(self, schema: Any) -> bool:
        """Whether a tool's input schema can carry `x-mcp-header` annotations at all: one that never names the
        keyword has no annotated position, and `validate_mcp_param_headers` would find nothing to compare."""
        kept = self._schemas.get(id(schema))
        if kept is None or kept[0] is not schema:
            if len(self._schemas) >= _KEPT:
                self._schemas.clear()
            try:
                annotated = X_MCP_HEADER_KEY in json.dumps(schema)
            except (TypeError, ValueError, RecursionError):
                annotated = True  # not plain JSON: let the SDK's own check look at it
            kept = self._schemas[id(schema)] = (schema, annotated)  # held: its id stays its own
        return kept[1]

    def _params_valid(self, version: str, params: Mapping[str, Any]) -> bool:
        """`validate_client_request` for these params, remembered by their `_meta` when that is all that can
        differ: with nothing but a string `name`, an object of `arguments` (both checked in `_admitted`) and
        `_meta`, whether the params validate depends on the version and `_meta` alone. Only successes are kept."""
        key = None
        if params.keys() <= _PLAIN_PARAMS:
            key = (version, _meta_key_json(params.get("_meta")))
            if key in self._valid:
                return True
        try:
            wire_methods.validate_client_request(LANE_METHOD, version, params)
        except Exception:
            return False
        if key is not None:
            if len(self._valid) >= _KEPT:
                self._valid.clear()
            self._valid.add(key)
        return True


def _modern_header(scope: Scope) -> str | None:
    for name, value in scope["headers"]:
        if name == b"mcp-protocol-version":
            return value.decode("latin-1")
    return None
