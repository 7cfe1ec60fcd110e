"""Real MCP clients (the official SDK in both protocol eras, and FastMCP) against a real gym."""

from __future__ import annotations

import asyncio

import fastmcp
import pytest

from gym_server.builtin import builtin_arenas
from gym_server.models import Arena
from tests.conftest import mcp_session, new_episode, result_json

BUILTIN_IDS = [a.id for a in builtin_arenas()]


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_sdk_client_lists_and_calls_tools(gym, http, mode):
    episode = await new_episode(http, gym, "airline-seats-aa100")
    async with mcp_session(http, episode["mcp_url"], mode) as client:
        expected_era = "2026-07-28" if mode == "auto" else "2025-11-25"
        assert client.session.protocol_version == expected_era
        listed = await client.list_tools()
        names = {t.name for t in listed.tools}
        assert names == {t["name"] for t in episode["tools"]}
        assert {"get_flight", "book_flight"} <= names
        result = await client.call_tool("get_flight", {"flight_id": "AA100"})
        assert not result.is_error
        assert result.structured_content["seats_left"] == 12
        assert result_json(result)["airline"] == "American"


async def test_fastmcp_client_lists_and_calls_tools(gym, http):
    episode = await new_episode(http, gym, "retail-status-o1002")
    async with fastmcp.Client(episode["mcp_url"]) as client:
        tools = await client.list_tools()
        assert "get_order" in {t.name for t in tools}
        result = await client.call_tool("get_order", {"order_id": "O-1002"})
        assert result.structured_content["status"] == "shipped"
        bad = await client.call_tool("get_order", {"order_id": 5}, raise_on_error=False)
        assert bad.is_error
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert [c["status"] for c in log["calls"]] == ["ok", "invalid_arguments"]


async def play_gold(http, gym, arena: Arena, mutate=None) -> tuple[dict, list[tuple[str, dict, bool]]]:
    """Score of playing the gold plan (each call's arguments passed through `mutate`), and the calls made as
    (tool, arguments, is_error)."""
    episode = await new_episode(http, gym, arena.id, seed=7)
    played = []
    async with mcp_session(http, episode["mcp_url"]) as client:
        for sub in arena.gold_plan():
            call = sub.gold_call
            arguments = mutate(call.tool, dict(call.arguments)) if mutate else call.arguments
            result = await client.call_tool(call.tool, arguments)
            played.append((call.tool, arguments, bool(result.is_error)))
    scored = await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score", json={"final_answer": arena.final_answer})
    assert scored.status_code == 200
    return scored.json(), played


@pytest.mark.parametrize("arena_id", BUILTIN_IDS)
async def test_oracle_plan_scores_one_on_every_builtin_arena(gym, http, arena_id):
    arena = Arena.model_validate((await http.get(f"{gym.url}/api/arenas/{arena_id}")).json())
    score, played = await play_gold(http, gym, arena)
    assert not [p for p in played if p[2]], played
    assert score["reward"] == 1.0
    assert score["recall"] == 1.0 and score["precision"] == 1.0
    assert score["solved"] == score["n_subtasks"] == len(arena.scored_subtasks)
    assert score["final_answer_correct"] is True


async def test_wrong_calls_score_below_one(gym, http):
    arena = Arena.model_validate((await http.get(f"{gym.url}/api/arenas/airline-book-cheapest-sfo-jfk")).json())

    def wrong_flight(tool, args):
        if "flight_id" in args:
            args["flight_id"] = "AA100"  # a real flight, just not the cheapest one
        return args

    score, played = await play_gold(http, gym, arena, mutate=wrong_flight)
    assert [(tool, args.get("flight_id"), failed) for tool, args, failed in played if "flight_id" in args] == [
        (tool, "AA100", False) for tool, args, _ in played if "flight_id" in args
    ] != []  # the wrong flight was played and every call on it succeeded: the tools answered, the plan was wrong
    assert score["reward"] < 1.0
    assert score["solved"] == 1  # only the search sub-task; the booking and seat count are of the wrong flight


async def test_wrong_final_answer_is_reported(gym, http):
    episode = await new_episode(http, gym, "clinic-refills-rx12")
    scored = await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score", json={"final_answer": "7"})
    body = scored.json()
    assert body["final_answer_correct"] is False
    assert body["reward"] == 0.0 and body["tool_calls"] == 0


async def test_parallel_calls_in_one_episode_are_all_logged_in_order(gym, http):
    episode = await new_episode(http, gym, "airline-departures-ua200-dl300")
    async with mcp_session(http, episode["mcp_url"]) as client:
        results = await asyncio.gather(*(client.call_tool("get_flight", {"flight_id": f}) for f in ["UA200", "DL300"] * 4))
    assert all(not r.is_error for r in results)
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert [c["index"] for c in log["calls"]] == list(range(8))
    score = (await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score")).json()
    assert score["solved"] == 2 and score["tool_calls"] == 8 and score["precision"] == 0.25
