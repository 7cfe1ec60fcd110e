"""Generated REST and MCP requests against a real gym on loopback: none may get a 5xx, the gym keeps serving.

Hypothesis builds the requests (derandomized, so CI sees the same ones every run) from JSON values of every
shape plus the inputs that once crashed the gym: lone surrogates, deep nesting, huge integers and exponents,
paging parameters past 64 bits, odd headers, JSON-RPC envelopes of every kind on both protocol eras.
"""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import httpx2
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from mcp_types import CLIENT_CAPABILITIES_META_KEY, PROTOCOL_VERSION_META_KEY

EXAMPLES = 1_600
"""Each example sends two requests (one REST, one MCP): 3,200 in all."""

ARENAS = ["airline-seats-aa100", "clinic-book-d02", "retail-status-o1002", "hostile"]
TOOLS = ["get_flight", "search_flights", "book_flight", "list_bookings", "get_passenger", "teleport", ""]

NASTY_RAW = [
    '"\\ud800"', '"\\udfff x"', '"a\\ud83d"', "1e999", "-1e999", "NaN", "Infinity", "9" * 4_400, "7" * 4_000,
    "-" + "1" * 70, "1" * 64, "[" * 10_000 + "]" * 10_000, '{"a":' * 3_000 + "1" + "}" * 3_000, "[" * 63 + "]" * 63,
    "1.5", "true", "null", '""', '"\\u0000"', "[]", "{}",
]  # fmt: skip

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6,
)
raw_values = st.one_of(json_values.map(json.dumps), st.sampled_from(NASTY_RAW))
"""A JSON value as text: any generated value, or one of the inputs that used to crash the gym."""


def raw_object(keys: list[str]) -> st.SearchStrategy[str]:
    """A JSON object (as text) whose members come from `keys` and random names, with raw values."""
    members = st.dictionaries(st.sampled_from(keys) | st.text(max_size=6), raw_values, max_size=5)
    return members.map(lambda m: "{" + ",".join(f"{json.dumps(k)}:{v}" for k, v in m.items()) + "}")


header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), max_size=40)
path_text = st.text(max_size=40).map(lambda t: quote(t.encode("utf-8", "surrogatepass"), safe="")) | st.sampled_from(["%ED%A0%80", "%FF", "a" * 400])
episode_body = raw_object(["arena_id", "seed", "failure_rate", "failure_kinds", "distractors"]) | st.fixed_dictionaries(
    {"arena_id": st.sampled_from(ARENAS)},
    optional={"seed": st.integers(-(2**80), 2**80), "failure_rate": json_values, "failure_kinds": json_values,
              "distractors": st.lists(st.fixed_dictionaries({"arena_id": st.sampled_from(ARENAS) | st.text(max_size=5),
                                                             "tool": st.sampled_from(TOOLS)}), max_size=2)},
).map(json.dumps)  # fmt: skip


# Strategies are built once: hypothesis validates a strategy each time one is constructed.
_paging_keys = st.sampled_from(["offset", "limit", "domain", "scenario_type", "prefix"])
_paging_values = (
    st.integers(-(2**70), 2**70).map(str) | st.sampled_from(["9223372036854775808", "9" * 5_000, "-0", "1e3", " 5"]) | st.text(max_size=10)
)
_rest_kinds = st.sampled_from(["list", "arena", "create", "batch", "log", "score", "finish_batch", "delete", "raw"])
_score_bodies = raw_object(["final_answer"]) | raw_values
_raw_rest = st.tuples(
    st.sampled_from(["POST", "PUT", "PATCH", "GET"]), st.sampled_from(["/api/episodes", "/api/arenas", "/healthz", "/api/episode-batches", "/api/episode-batches/finish"])
)
_batch_bodies = st.lists(episode_body, max_size=3).map(lambda items: '{"episodes": [' + ",".join(items) + "]}") | raw_object(["episodes"])
_finish_items = raw_object(["episode_id", "final_answer"]) | st.fixed_dictionaries(
    {"episode_id": st.text(max_size=12) | st.sampled_from(["\x00", "a" * 300, "p0.x"])}, optional={"final_answer": json_values}
).map(json.dumps)

_mcp_methods = st.sampled_from(["tools/call", "tools/list", "ping", "initialize", "notifications/cancelled", "notifications/initialized"]) | st.text(max_size=12)
_mcp_params = st.dictionaries(st.sampled_from(["cursor", "name", "arguments", "requestId", "protocolVersion"]), json_values, max_size=3)
_tool_names = st.sampled_from(TOOLS)
_tool_arguments = st.dictionaries(st.sampled_from(["flight_id", "passenger_id", "origin", "x"]), json_values, max_size=3)
_versions = st.sampled_from(["2.0", "2.0", "2.0", "1.0"])
_ids = st.integers(-(2**40), 2**40) | st.text(max_size=5) | st.none() | st.floats(allow_nan=False, allow_infinity=False)
_nasty = st.sampled_from(NASTY_RAW)
_accepts = st.sampled_from(["application/json, text/event-stream", "application/json", "*/*", "text/html"])
_content_types = st.sampled_from(["application/json", "Application/JSON", "text/plain", "application/json; charset=utf-8"])
_protocol_versions = st.sampled_from(["2026-07-28", "2025-11-25", "2099-01-01"]) | header_text
_origins = st.sampled_from(["http://localhost:6274", "http://evil.example", "null", "http://[::1", "http://[zz]"]) | header_text
_hosts = st.sampled_from(["[::1", "a:b", "localhost:99999", "evil.example", "127.0.0.1"]) | header_text
_verbs = st.sampled_from(["POST"] * 8 + ["GET", "DELETE"])


@st.composite
def rest_request(draw: Any, episode_id: str) -> dict[str, Any]:
    kind = draw(_rest_kinds)
    if kind == "list":
        return {"method": "GET", "url": "/api/arenas", "params": draw(st.dictionaries(_paging_keys, _paging_values, max_size=4))}
    if kind == "arena":
        return {"method": "GET", "url": f"/api/arenas/{draw(path_text)}"}
    if kind == "create":
        return {"method": "POST", "url": "/api/episodes", "content": draw(episode_body)}
    if kind == "batch":
        return {"method": "POST", "url": "/api/episode-batches", "content": draw(_batch_bodies)}
    if kind == "finish_batch":
        items = draw(st.lists(_finish_items, max_size=3))
        return {"method": "POST", "url": "/api/episode-batches/finish", "content": '{"episodes": [' + ",".join(items) + "]}"}
    target = episode_id if draw(st.booleans()) else draw(path_text)
    if kind == "log":
        return {"method": "GET", "url": f"/api/episodes/{target}"}
    if kind == "score":
        return {"method": "POST", "url": f"/api/episodes/{target}/score", "content": draw(_score_bodies)}
    if kind == "delete":
        return {"method": "DELETE", "url": f"/api/episodes/{draw(path_text)}"}
    method, url = draw(_raw_rest)
    return {"method": method, "url": url, "content": draw(raw_values), "headers": {"Origin": draw(_origins), "Host": draw(_hosts)}}


@st.composite
def mcp_request(draw: Any, url: str) -> dict[str, Any]:
    method = draw(_mcp_methods)
    params: dict[str, Any] = draw(_mcp_params)
    if method == "tools/call" and draw(st.booleans()):
        params["name"], params["arguments"] = draw(_tool_names), draw(_tool_arguments)
    modern = draw(st.booleans())
    if modern and draw(st.booleans()):
        params["_meta"] = {PROTOCOL_VERSION_META_KEY: "2026-07-28", CLIENT_CAPABILITIES_META_KEY: {}}
    message: dict[str, Any] = {"jsonrpc": draw(_versions), "method": method, "params": params}
    if draw(st.integers(0, 4)):
        message["id"] = draw(_ids)
    content = json.dumps(message)
    shape = draw(st.integers(0, 9))
    if shape == 0:
        content = draw(raw_values)
    elif shape == 1:
        content = f"[{content}]"
    elif shape == 2:
        content = content.replace('"params": {', '"params": {"nasty": ' + draw(_nasty) + ",", 1)
    headers = {"Accept": draw(_accepts), "Content-Type": draw(_content_types)}
    if modern:
        headers["MCP-Protocol-Version"] = draw(_protocol_versions)
        valid_value = method.isascii() and method.isprintable() and method.strip() == method  # what HTTP lets a client send
        headers["Mcp-Method"] = method if valid_value else "x"
    if draw(st.integers(0, 9)) == 0:
        headers["Origin"] = draw(_origins)
    return {"method": draw(_verbs), "url": url, "content": content.encode("utf-8", "surrogatepass"), "headers": headers}


def test_generated_requests_never_get_a_5xx(gym):
    limits = httpx2.Limits(max_connections=4, max_keepalive_connections=4)
    with httpx2.Client(base_url=gym.url, timeout=30, limits=limits) as http:
        created = http.post("/api/episodes", json={"arena_id": "airline-seats-aa100"})
        episode = created.json()
        mcp_url = episode["mcp_url"].removeprefix(gym.url)
        sent: list[int] = []

        @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None, phases=[Phase.generate],
                  suppress_health_check=list(HealthCheck), print_blob=False)  # fmt: skip
        @given(rest=rest_request(episode["episode_id"]), mcp=mcp_request(mcp_url))
        def probe(rest: dict[str, Any], mcp: dict[str, Any]) -> None:
            for request in (rest, mcp):
                response = http.request(**request)
                sent.append(response.status_code)
                assert response.status_code < 500, (request["method"], request["url"], str(request.get("content"))[:300], response.text[:500])
                if "episode-batches" in request["url"] and response.status_code == 200:  # nor any item of a batch
                    assert all(item["status"] < 500 for item in response.json()["results"]), response.text[:500]

        probe()
        assert len(sent) >= 3_000
        assert sum(400 <= s < 500 for s in sent) > 1_000  # the generator reaches the refusals, not only happy paths
        assert http.get("/healthz").status_code == 200
        assert http.get(f"/api/episodes/{episode['episode_id']}").status_code == 200
