"""The direct `tools/call` lane (gym_server/mcp_lane.py) answers exactly what the SDK answers.

Every request below is played twice on twin episodes (same arena, same seed, so the same injected failures):
once with the lane on, once with it switched off, so the SDK serves it. Status, content type and JSON body
must match, episode ids aside. A spy on the SDK's `serve_one` shows which path served each request: plain
calls must take the lane (or the comparison would prove nothing), and requests a rung of the SDK's ladder
refuses must reach the SDK.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp.server import _streamable_http_modern as sdk_modern
from mcp_types import CLIENT_CAPABILITIES_META_KEY, CLIENT_INFO_META_KEY, HEADER_MISMATCH, PROTOCOL_VERSION_META_KEY

from gym_server.config import ServeConfig
from gym_server.mcp_lane import ToolCallLane
from gym_server.models import Arena
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread

MODERN = "2026-07-28"
SOURCE = '''
def record(db, key, note):
    db.execute("INSERT INTO notes VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET note = excluded.note", (key, note))
    return {"key": key, "note": note, "count": db.execute("SELECT COUNT(*) AS n FROM notes").fetchone()["n"]}

def listing(db):
    return [row["key"] for row in db.execute("SELECT key FROM notes ORDER BY key").fetchall()]

def scalar(db):
    return 42.5

def nothing(db):
    return None

def fails(db):
    raise ValueError("no such record")

def routed(db, region, size=1):
    return {"region": region, "size": size}
'''
TOOLS = [
    {"name": "record", "description": "write a note", "inputSchema": {"type": "object", "properties": {"key": {"type": "string"}, "note": {"type": "string"}}, "required": ["key", "note"]}},
    {"name": "listing", "description": "list notes", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "scalar", "description": "a number", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "nothing", "description": "null", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "fails", "description": "always fails", "inputSchema": {"type": "object", "properties": {}}},
    {"name": "routed", "description": "a header-routed argument", "inputSchema": {
        "type": "object", "properties": {"region": {"type": "string", "x-mcp-header": "Region"}, "size": {"type": "integer"}}, "required": ["region"]}},
]  # fmt: skip


def lane_arena() -> Arena:
    return Arena.model_validate({
        "id": "lane-notes", "domain": "test", "scenario_type": "single_hop", "question": "note", "final_answer": "x",
        "tools": TOOLS, "implementation": SOURCE,
        "initial_state": {"ddl": ["CREATE TABLE notes (key TEXT PRIMARY KEY, note TEXT)"], "rows": {"notes": [{"key": "a", "note": "first"}]}},
        "subtasks": [{"id": "s1", "question": "note", "answer": "x", "gold_call": {"tool": "listing", "arguments": {}}}],
    })  # fmt: skip


@pytest.fixture(scope="module")
def lane_gym(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GymThread]:
    bundle = tmp_path_factory.mktemp("lane") / "lane.jsonl"
    bundle.write_text(lane_arena().model_dump_json(by_alias=True) + "\n")
    config = ServeConfig(port=0, arenas=[str(bundle)], max_calls_per_episode=6, sandbox=SandboxConfig(workers=2, call_timeout_s=5.0))
    with GymThread(config) as running:
        yield running


@pytest.fixture
def sdk_calls(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The methods the SDK's modern entry dispatched (the gym runs in a thread of this process)."""
    seen: list[str] = []
    real = sdk_modern.serve_one

    def spy(app: Any, dctx: Any, method: str, *args: Any, **kwargs: Any) -> Any:
        seen.append(method)
        return real(app, dctx, method, *args, **kwargs)

    monkeypatch.setattr(sdk_modern, "serve_one", spy)
    return seen


@pytest.fixture
def admitted(monkeypatch: pytest.MonkeyPatch) -> list[bool]:
    """Whether the lane found each request it looked at fit to serve itself."""
    seen: list[bool] = []
    real = ToolCallLane._admitted

    def spy(self: ToolCallLane, *args: Any) -> Any:
        verdict = real(self, *args)
        seen.append(verdict is not None)
        return verdict

    monkeypatch.setattr(ToolCallLane, "_admitted", spy)
    return seen


def call(name: Any, arguments: Any = None, request_id: Any = 7, **meta: Any) -> tuple[dict[str, Any], dict[str, str]]:
    envelope = {PROTOCOL_VERSION_META_KEY: MODERN, CLIENT_CAPABILITIES_META_KEY: {}, CLIENT_INFO_META_KEY: {"name": "t", "version": "0"}, **meta}
    params: dict[str, Any] = {"name": name, "_meta": envelope}
    if arguments is not None:
        params["arguments"] = arguments
    headers = {
        "Accept": "application/json, text/event-stream", "Content-Type": "application/json",
        "MCP-Protocol-Version": MODERN, "Mcp-Method": "tools/call", "Mcp-Name": str(name),
    }  # fmt: skip
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": params}, headers


async def _twins(http: httpx2.AsyncClient, gym: GymThread, **body: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    made = []
    for _ in range(2):
        response = await http.post(f"{gym.url}/api/episodes", json={"arena_id": "lane-notes", "seed": 11, **body})
        assert response.status_code == 201, response.text
        made.append(response.json())
    return made[0], made[1]


def _answer(response: httpx2.Response, episode_id: str) -> tuple[int, str, Any]:
    text = response.text.replace(episode_id, "EPISODE")
    return response.status_code, response.headers.get("content-type", ""), json.loads(text) if text else None


async def _both(http: httpx2.AsyncClient, pair: tuple[dict[str, Any], dict[str, Any]], body: Any, headers: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[Any, Any]:
    """The same request on the lane's episode and, with the lane off, on its twin."""
    laned, plain = pair
    kwargs: dict[str, Any] = {"headers": headers}
    if isinstance(body, bytes):
        kwargs["content"] = body
    else:
        kwargs["json"] = body
    on = await http.post(laned["mcp_url"], **copy.deepcopy(kwargs))
    with monkeypatch.context() as patched:
        patched.setattr(ToolCallLane, "takes", lambda self, scope, message: False)
        off = await http.post(plain["mcp_url"], **copy.deepcopy(kwargs))
    return _answer(on, laned["episode_id"]), _answer(off, plain["episode_id"])


PLAIN = [
    ("dict result, writes state", call("record", {"key": "b", "note": "second"})),
    ("list result", call("listing")),
    ("scalar result", call("scalar", {})),
    ("null result", call("nothing")),
    ("tool raises", call("fails")),
    ("schema violation", call("record", {"key": "b"})),
    ("unknown tool: protocol error", call("no_such_tool")),
    ("non-ASCII and a string id", call("record", {"key": "ü", "note": "日本 \u2028 \"q\""}, request_id="r-1")),
    ("header-routed argument, header matches", ({**call("routed", {"region": "eu"})[0]}, {**call("routed")[1], "Mcp-Param-Region": "eu"})),
    ("envelope with extra _meta keys", call("listing", progressToken="p1")),
]


async def test_plain_calls_take_the_lane_and_answer_as_the_sdk_does(lane_gym, http, monkeypatch, sdk_calls):
    for label, (body, headers) in PLAIN:
        pair = await _twins(http, lane_gym)
        del sdk_calls[:]
        on, off = await _both(http, pair, body, headers, monkeypatch)
        assert on == off, f"{label}: lane {on} != SDK {off}"
        assert sdk_calls == ["tools/call"], f"{label}: the lane did not serve it ({sdk_calls})"
        assert on[0] in (200, 400) and on[1] == "application/json"
    state = await http.get(f"{lane_gym.url}/api/episodes/{pair[0]['episode_id']}")
    assert state.status_code == 200 and len(state.json()["calls"]) == 1  # the lane logs its call like the SDK path


def _without(body: dict[str, Any], key: str) -> dict[str, Any]:
    trimmed = copy.deepcopy(body)
    trimmed["params"]["_meta"].pop(key)
    return trimmed


REFUSED = [  # (what is odd, how, whether the SDK still runs the call)
    ("Mcp-Name disagrees with the body", lambda b, h: (b, {**h, "Mcp-Name": "listing"}), False),
    ("body version disagrees with the header", lambda b, h: ({**b, "params": {**b["params"], "_meta": {**b["params"]["_meta"], PROTOCOL_VERSION_META_KEY: "2099-01-01"}}}, h), False),
    ("no client capabilities in the envelope", lambda b, h: (_without(b, CLIENT_CAPABILITIES_META_KEY), h), False),
    ("no _meta at all", lambda b, h: ({**b, "params": {"name": "record", "arguments": b["params"]["arguments"]}}, h), False),
    ("arguments not an object", lambda b, h: ({**b, "params": {**b["params"], "arguments": [1, 2]}}, h), False),
    ("name not a string", lambda b, h: ({**b, "params": {**b["params"], "name": 5}}, {**h, "Mcp-Name": "5"}), False),
    ("an SSE-only client", lambda b, h: (b, {**h, "Accept": "text/event-stream"}), False),
    ("a duplicated routing header", lambda b, h: (b, [*h.items(), ("Mcp-Method", "tools/call")]), False),
    ("an extra envelope member (the SDK ignores it)", lambda b, h: ({**b, "extra": 1}, h), True),
    # the same _meta as every admitted call (the lane remembers it valid), beside a param of the wrong type
    ("inputResponses not an object", lambda b, h: ({**b, "params": {**b["params"], "inputResponses": 5}}, h), False),
]


@pytest.mark.parametrize("label,change,runs", REFUSED, ids=[r[0] for r in REFUSED])
async def test_requests_a_rung_refuses_go_to_the_sdk_unchanged(lane_gym, http, monkeypatch, admitted, label, change, runs):
    body, headers = change(*call("record", {"key": "c", "note": "x"}))
    pair = await _twins(http, lane_gym)
    on, off = await _both(http, pair, body, headers, monkeypatch)
    assert on == off, f"{label}: lane {on} != SDK {off}"
    assert True not in admitted, f"{label}: the lane served it itself"
    assert ("result" in (on[2] or {})) is runs, f"{label}: {on}"
    log = await http.get(f"{lane_gym.url}/api/episodes/{pair[0]['episode_id']}")
    assert len(log.json()["calls"]) == runs


async def test_header_routed_argument_mismatch_is_the_sdks_rejection(lane_gym, http, monkeypatch, admitted):
    body, headers = call("routed", {"region": "eu"})
    pair = await _twins(http, lane_gym)
    on, off = await _both(http, pair, body, {**headers, "Mcp-Param-Region": "us"}, monkeypatch)
    assert on == off and on[0] == 400 and on[2]["error"]["code"] == HEADER_MISMATCH, on
    assert admitted == [False]
    log = await http.get(f"{lane_gym.url}/api/episodes/{pair[0]['episode_id']}")
    assert log.json()["calls"] == []  # refused before anything ran


async def test_errors_after_the_call_ran_match(lane_gym, http, monkeypatch, sdk_calls):
    """Refused for the call budget (a tool error), injected failures, and a scored episode (a protocol error)."""
    pair = await _twins(http, lane_gym, failure_rate=1.0)
    on, off = await _both(http, pair, *call("listing"), monkeypatch)
    assert on == off and on[2]["result"]["isError"] and "Tool failure" in on[2]["result"]["content"][0]["text"]
    pair = await _twins(http, lane_gym)
    for _ in range(6):
        await _both(http, pair, *call("scalar"), monkeypatch)
    on, off = await _both(http, pair, *call("scalar"), monkeypatch)
    assert on == off and "Call refused" in on[2]["result"]["content"][0]["text"]
    for episode in pair:
        scored = await http.post(f"{lane_gym.url}/api/episodes/{episode['episode_id']}/score", json={"final_answer": "x"})
        assert scored.status_code == 200, scored.text
    on, off = await _both(http, pair, *call("scalar"), monkeypatch)
    assert on == off and on[2]["error"]["code"] == -32600 and "EPISODE" in on[2]["error"]["message"]


async def test_the_lane_stays_off_where_the_sdk_would_do_more(lane_gym):
    from mcp.server.lowlevel import Server
    from mcp.server.streamable_http_manager import StreamableHTTPSessionManager

    def lane(server: Server[Any], **settings: Any) -> ToolCallLane:
        return ToolCallLane(server, StreamableHTTPSessionManager(app=server, **{"json_response": True, "stateless": True, **settings}))

    async def call_tool(ctx: Any, params: Any) -> Any:
        raise AssertionError

    assert lane(Server("s", on_call_tool=call_tool)).enabled is False  # the SDK's OpenTelemetry middleware is on
    bare = Server("s", on_call_tool=call_tool)
    bare.middleware = []
    assert lane(bare).enabled is True
    assert lane(bare, json_response=False).enabled is False
    assert lane(bare, stateless=False).enabled is False
    assert lane(Server("s")).enabled is False  # no tools/call handler


async def test_a_tool_call_is_routed_by_the_first_route_the_router_tries(lane_gym, http, monkeypatch):
    """Starlette tries routes in order: an agent's calls, nearly all of a gym's requests, must not first be
    matched against every REST route (a regular expression each)."""
    from starlette.routing import Route

    tried: list[str] = []
    real = Route.matches

    def spy(self: Route, scope: Any) -> Any:
        tried.append(self.path)
        return real(self, scope)

    monkeypatch.setattr(Route, "matches", spy)
    episode = (await http.post(f"{lane_gym.url}/api/episodes", json={"arena_id": "lane-notes"})).json()
    tried.clear()
    body, headers = call("listing", {})
    response = await http.post(episode["mcp_url"], json=body, headers=headers)
    assert response.status_code == 200 and response.json()["result"]["isError"] is False, response.text
    assert tried == ["/episodes/{episode_id}/mcp"]
