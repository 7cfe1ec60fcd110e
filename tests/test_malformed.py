"""Malformed requests get clear errors and are logged; nothing crashes the gym."""

from __future__ import annotations

import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import mcp_session, new_episode, result_text

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


async def test_bad_json_bodies(gym, http):
    bad = await http.post(f"{gym.url}/api/episodes", content=b"{not json", headers={"Content-Type": "application/json"})
    assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]
    wrong = await http.post(f"{gym.url}/api/episodes", json={"arena_id": 5, "seed": "x"})
    assert wrong.status_code == 422
    assert {d["loc"] for d in wrong.json()["detail"]} == {"arena_id", "seed"}
    extra = await http.post(f"{gym.url}/api/episodes", json={"arena_id": "airline-seats-aa100", "bogus": 1})
    assert extra.status_code == 422
    rate = await http.post(f"{gym.url}/api/episodes", json={"arena_id": "airline-seats-aa100", "failure_rate": 3})
    assert rate.status_code == 422


async def test_unknown_arena_and_episode(gym, http):
    missing = await http.post(f"{gym.url}/api/episodes", json={"arena_id": "no-such-arena"})
    assert missing.status_code == 404 and "no-such-arena" in missing.json()["error"]
    assert (await http.get(f"{gym.url}/api/arenas/no-such-arena")).status_code == 404
    for method, path in [("GET", "/api/episodes/nope"), ("POST", "/api/episodes/nope/score"), ("DELETE", "/api/episodes/nope")]:
        response = await http.request(method, f"{gym.url}{path}")
        assert response.status_code == 404 and "does not exist" in response.json()["error"]
    mcp = await http.post(f"{gym.url}/episodes/nope/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=MCP_HEADERS)
    assert mcp.status_code == 404


async def test_raw_mcp_garbage_gets_jsonrpc_errors(gym, http):
    episode = await new_episode(http, gym, "airline-seats-aa100")
    url = episode["mcp_url"]
    garbage = await http.post(url, content=b"\x00\x01 not json", headers=MCP_HEADERS)
    assert garbage.status_code in (400, 422) and "error" in garbage.json()
    unknown_method = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "tools/explode"}, headers=MCP_HEADERS)
    assert unknown_method.json()["error"]["code"] == -32601
    bad_params = await http.post(
        url, json={"jsonrpc": "2.0", "id": 3, "method": "tools/call", "params": {"name": 7}}, headers=MCP_HEADERS
    )
    assert "error" in bad_params.json()
    # and the episode still works afterwards
    async with mcp_session(http, url) as client:
        assert not (await client.call_tool("get_flight", {"flight_id": "AA100"})).is_error


async def test_tool_level_errors_are_actionable_and_logged(gym, http):
    episode = await new_episode(http, gym, "airline-seats-aa100")
    async with mcp_session(http, episode["mcp_url"]) as client:
        with pytest.raises(MCPError) as unknown:  # the spec's protocol error for an unknown tool, logged all the same
            await client.call_tool("teleport", {})
        assert unknown.value.code == -32602 and "Unknown tool 'teleport'" in str(unknown.value) and "get_flight" in str(unknown.value)
        missing = await client.call_tool("get_flight", {})
        assert missing.is_error and "'flight_id' is a required property" in result_text(missing)
        typed = await client.call_tool("book_flight", {"flight_id": "AA100", "passenger_id": ["P001"]})
        assert typed.is_error and "passenger_id" in result_text(typed)
        extra = await client.call_tool("get_flight", {"flight_id": "AA100", "colour": "red"})
        assert extra.is_error and "colour" in result_text(extra)
        huge = await client.call_tool("get_flight", {"flight_id": "A" * 10_000})
        assert huge.is_error and "limit is 4096" in result_text(huge)
        raised = await client.call_tool("get_flight", {"flight_id": "ZZ999"})
        assert raised.is_error and "no flight with id 'ZZ999'" in result_text(raised)
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    statuses = [c["status"] for c in log["calls"]]
    assert statuses == ["unknown_tool", "invalid_arguments", "invalid_arguments", "invalid_arguments", "invalid_arguments", "tool_error"]
    score = (await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score")).json()
    assert score["tool_calls"] == 6 and score["reward"] == 0.0


async def test_oversized_http_body_is_refused(gym, http):
    big = b'{"arena_id": "' + b"x" * (5 * 1024 * 1024) + b'"}'
    response = await http.post(f"{gym.url}/api/episodes", content=big, headers={"Content-Type": "application/json"})
    assert response.status_code == 413


async def test_arena_listing_pages(gym, http):
    first = await http.get(f"{gym.url}/api/arenas", params={"limit": 5})
    assert first.status_code == 200 and len(first.json()) == 5
    total = int(first.headers["x-total-count"])
    assert total == 14 and 'rel="next"' in first.headers["link"]
    rest = await http.get(f"{gym.url}/api/arenas", params={"offset": 5, "limit": 100})
    ids = [a["id"] for a in first.json() + rest.json()]
    assert len(set(ids)) == total
    only = await http.get(f"{gym.url}/api/arenas", params={"scenario_type": "parallel_multi_hop"})
    assert {a["scenario_type"] for a in only.json()} == {"parallel_multi_hop"} and len(only.json()) == 3
    assert (await http.get(f"{gym.url}/api/arenas", params={"scenario_type": "zigzag"})).status_code == 400
    assert (await http.get(f"{gym.url}/api/arenas", params={"limit": "many"})).status_code == 400


async def test_distractor_tools_are_served_callable_and_cost_precision(gym, http):
    body = {"distractors": [{"arena_id": "retail-status-o1002", "tool": "get_product"}], "seed": 3}
    episode = await new_episode(http, gym, "airline-seats-aa100", **body)
    assert "get_product" in {t["name"] for t in episode["tools"]}
    async with mcp_session(http, episode["mcp_url"]) as client:
        product = await client.call_tool("get_product", {"sku": "SKU-100"})
        assert not product.is_error and product.structured_content["price"] == 89.5
        await client.call_tool("get_flight", {"flight_id": "AA100"})
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert log["calls"][0]["source_arena"] == "retail-status-o1002"
    score = (await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score")).json()
    assert score["recall"] == 1.0 and score["precision"] == 0.5
    clash = await http.post(f"{gym.url}/api/episodes", json={"arena_id": "airline-seats-aa100", "distractors": [{"arena_id": "airline-airline-of-p003", "tool": "nope"}]})
    assert clash.status_code == 422 and "no such tool" in clash.json()["error"]
