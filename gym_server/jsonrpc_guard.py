"""Checks on every MCP POST before the SDK sees it, where the SDK answers with the wrong JSON-RPC error.

The SDK's legacy (2025-era) transport answers a batch or `"jsonrpc": "1.0"` with -32602 and a raw
pydantic dump, acknowledges an `"id": null` request with a silent 202, compares `Content-Type`
case-sensitively (`Application/JSON` gets 415, though RFC 9110 media types are case-insensitive), and
routes an unknown `MCP-Protocol-Version` to the 2026 entry, which answers -32602 instead of -32022.
Here both eras get the JSON-RPC 2.0 codes: -32700 for a body that is not JSON (or is JSON past
`json_limits`), -32600 for anything that is not one valid request, notification or response object,
-32022 (with the supported versions) for a protocol version this server does not speak.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mcp.shared.inbound import ERROR_CODE_HTTP_STATUS
from mcp_types import INVALID_REQUEST, PARSE_ERROR, UNSUPPORTED_PROTOCOL_VERSION
from mcp_types.version import HANDSHAKE_PROTOCOL_VERSIONS, MODERN_PROTOCOL_VERSIONS
from starlette.datastructures import Headers
from starlette.responses import JSONResponse
from starlette.types import Receive, Scope

from gym_server.json_limits import JSONLimitError, parse_json

SUPPORTED_VERSIONS = (*HANDSHAKE_PROTOCOL_VERSIONS, *MODERN_PROTOCOL_VERSIONS)


@dataclass
class Refusal(Exception):
    """A JSON-RPC error to answer instead of passing the request on."""

    code: int
    message: str
    id: Any = None
    data: Any = None
    status: int | None = None

    def response(self) -> JSONResponse:
        error: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.data is not None:
            error["data"] = self.data
        status = self.status or ERROR_CODE_HTTP_STATUS.get(self.code, 400)
        return JSONResponse({"jsonrpc": "2.0", "id": self.id, "error": error}, status_code=status)


async def read_body(receive: Receive, limit: int) -> bytes:
    """The whole request body, refused (413) past `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            raise Refusal(INVALID_REQUEST, "the client disconnected before sending its request", status=400)
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refusal(INVALID_REQUEST, f"request body exceeds the limit of {limit} bytes", status=413)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


def check_protocol_version(scope: Scope) -> None:
    requested = Headers(scope=scope).get("mcp-protocol-version")
    if requested is not None and requested not in SUPPORTED_VERSIONS:
        raise Refusal(
            UNSUPPORTED_PROTOCOL_VERSION, "Unsupported protocol version",
            data={"supported": list(SUPPORTED_VERSIONS), "requested": requested[:100]},
        )  # fmt: skip


def json_content_type(scope: Scope) -> Scope:
    """The scope with `Content-Type` in canonical case when it names JSON in any case; 415 when it does not."""
    headers = list(scope["headers"])
    for i, (name, value) in enumerate(headers):
        if name == b"content-type":
            media_type, _, parameters = value.decode("latin-1").partition(";")
            if media_type.strip().lower() != "application/json":
                break
            headers[i] = (name, ("application/json" + (";" + parameters if parameters else "")).encode("latin-1"))
            return {**scope, "headers": headers}
    raise Refusal(INVALID_REQUEST, "Content-Type must be application/json", status=415)


def _valid_id(value: Any) -> bool:
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def parse_message(body: bytes) -> dict[str, Any]:
    """One JSON-RPC 2.0 request, notification or response object, or a Refusal saying what is wrong."""
    try:
        message = parse_json(body)
    except JSONLimitError as exc:
        raise Refusal(PARSE_ERROR, f"Parse error: {exc}") from None
    if isinstance(message, list):
        raise Refusal(INVALID_REQUEST, "Invalid Request: JSON-RPC batches are not supported; send one message per POST")
    if not isinstance(message, dict):
        raise Refusal(INVALID_REQUEST, "Invalid Request: the body must be a JSON-RPC message object")
    has_id = "id" in message
    if has_id and not _valid_id(message["id"]):
        raise Refusal(INVALID_REQUEST, "Invalid Request: id must be a string or an integer (MCP allows no null id)")
    reply_id = message["id"] if has_id else None
    if message.get("jsonrpc") != "2.0":
        raise Refusal(INVALID_REQUEST, 'Invalid Request: the "jsonrpc" member must be exactly "2.0"', reply_id)
    if "method" in message:
        if not isinstance(message["method"], str) or not message["method"]:
            raise Refusal(INVALID_REQUEST, "Invalid Request: method must be a non-empty string", reply_id)
        if "params" in message and not isinstance(message["params"], dict):
            raise Refusal(INVALID_REQUEST, "Invalid Request: params must be an object", reply_id)
    elif not has_id or ("result" in message) == ("error" in message):
        raise Refusal(INVALID_REQUEST, "Invalid Request: neither a request, a notification nor a response", reply_id)
    return message
