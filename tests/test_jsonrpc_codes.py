"""JSON-RPC error codes on both protocol eras, as raw HTTP sees them (gym_server/jsonrpc_guard.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY

from tests.conftest import MCP_HEADERS, new_episode

MODERN = "2026-07-28"


def modern(method: str, params: dict[str, Any] | None = None, request_id: Any = 1) -> tuple[dict[str, Any], dict[str, str]]:
    """A 2026-07-28 request: the envelope in params._meta, the routing headers beside it."""
    meta = {PROTOCOL_VERSION_META_KEY: MODERN, CLIENT_CAPABILITIES_META_KEY: {}}
    body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": {**(params or {}), "_meta": meta}}
    headers = {**MCP_HEADERS, "MCP-Protocol-Version": MODERN, "Mcp-Method": method}
    if method == "tools/call":
        headers["Mcp-Name"] = (params or {})["name"]
    return body, headers


def legacy(method: str, params: dict[str, Any] | None = None, request_id: Any = 1) -> tuple[dict[str, Any], dict[str, str]]:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": request_id, "method": method}
    if params is not None:
        body["params"] = params
    return body, dict(MCP_HEADERS)


ERAS = pytest.mark.parametrize("era", [legacy, modern], ids=["legacy", "2026"])


async def _post(http, url: str, body: Any = None, headers: dict[str, str] | None = None, content: bytes | None = None):
    if content is not None:
        return await http.post(url, content=content, headers=headers or MCP_HEADERS)
    return await http.post(url, json=body, headers=headers or MCP_HEADERS)


def _error(response, status: int, code: int, request_id: Any = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    assert body["jsonrpc"] == "2.0" and body["error"]["code"] == code and body["id"] == request_id, body
    assert "pydantic" not in body["error"]["message"] and "validation error" not in body["error"]["message"].lower()
    return body["error"]


@ERAS
async def test_malformed_envelopes_get_invalid_request(gym, http, era):
    url = (await new_episode(http, gym, "airline-seats-aa100"))["mcp_url"]
    ping, headers = era("ping")
    _error(await _post(http, url, [ping], headers), 400, -32600)
    _error(await _post(http, url, [], headers), 400, -32600)
    _error(await _post(http, url, {**ping, "jsonrpc": "1.0"}, headers), 400, -32600, 1)
    _error(await _post(http, url, {k: v for k, v in ping.items() if k != "jsonrpc"}, headers), 400, -32600, 1)
    assert "null" in _error(await _post(http, url, {**ping, "id": None}, headers), 400, -32600)["message"]
    for bad_id in (1.5, True, {"a": 1}, [1]):
        _error(await _post(http, url, {**ping, "id": bad_id}, headers), 400, -32600)
    _error(await _post(http, url, {**ping, "method": 5}, headers), 400, -32600, 1)
    _error(await _post(http, url, {**ping, "params": [1, 2]}, headers), 400, -32600, 1)
    _error(await _post(http, url, {"jsonrpc": "2.0", "id": 3}, headers), 400, -32600, 3)
    _error(await _post(http, url, "ping", headers), 400, -32600)
    _error(await _post(http, url, content=b"{not json", headers=headers), 400, -32700)
    assert "nested deeper" in _error(await _post(http, url, content=b"[" * 10_000 + b"]" * 10_000, headers=headers), 400, -32700)["message"]
    call, call_headers = era("tools/call", {"name": "get_flight", "arguments": {"flight_id": "AA100"}})
    huge = b'{"n": ' + b"9" * 5_000 + b"}"
    raw = json.dumps(call).replace('{"flight_id": "AA100"}', "%s").encode()
    assert "digits" in _error(await _post(http, url, content=raw % huge, headers=call_headers), 400, -32700)["message"]
    assert "surrogate" in _error(await _post(http, url, content=raw % b'{"flight_id": "\\ud800"}', headers=call_headers), 400, -32700)["message"]
    listing, listing_headers = era("tools/list")
    fine = await _post(http, url, listing, listing_headers)  # and the endpoint still answers
    assert fine.status_code == 200 and fine.json()["result"]["tools"]


@ERAS
async def test_media_types_are_case_insensitive(gym, http, era):
    url = (await new_episode(http, gym, "airline-seats-aa100"))["mcp_url"]
    body, headers = era("tools/list")
    for content_type in ("Application/JSON", "APPLICATION/json; charset=UTF-8"):
        response = await _post(http, url, body, {**headers, "Content-Type": content_type})
        assert response.status_code == 200 and response.json()["result"]["tools"], (content_type, response.text)
    _error(await _post(http, url, body, {**headers, "Content-Type": "text/plain"}), 415, -32600)


@ERAS
async def test_unsupported_protocol_version(gym, http, era):
    url = (await new_episode(http, gym, "airline-seats-aa100"))["mcp_url"]
    body, headers = era("tools/list")
    error = _error(await _post(http, url, body, {**headers, "MCP-Protocol-Version": "2099-01-01"}), 400, -32022)
    assert error["data"]["requested"] == "2099-01-01" and MODERN in error["data"]["supported"] and "2025-11-25" in error["data"]["supported"]


@ERAS
async def test_invalid_cursor_is_rejected(gym, http, era):
    url = (await new_episode(http, gym, "airline-seats-aa100"))["mcp_url"]
    body, headers = era("tools/list", {"cursor": "bogus"})
    response = await _post(http, url, body, headers)
    error = _error(response, 400 if era is modern else 200, -32602, 1)
    assert "cursor" in error["message"]


@ERAS
async def test_unknown_tool_is_a_protocol_error_and_logged(gym, http, era):
    episode = await new_episode(http, gym, "airline-seats-aa100")
    body, headers = era("tools/call", {"name": "teleport", "arguments": {}})
    error = _error(await _post(http, episode["mcp_url"], body, headers), 400 if era is modern else 200, -32602, 1)
    assert "Unknown tool 'teleport'" in error["message"] and "get_flight" in error["message"]
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert [(c["tool"], c["status"]) for c in log["calls"]] == [("teleport", "unknown_tool")]
