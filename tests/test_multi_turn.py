"""A gym arena with scripted user turns (not a suite): a tool held back until a later turn is neither listed
nor callable before it, over REST and over the official MCP SDK client; the turn endpoint refuses past the last."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator

import pytest
from mcp.client.subscriptions import ToolsListChanged
from mcp.shared.exceptions import MCPError

from gym_server.config import ServeConfig
from gym_server.episodes import MAX_LISTEN_STREAMS
from gym_server.models import Arena
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from tests.conftest import mcp_session, new_episode, result_json

SOURCE = "def look(db):\n    return 'seen'\n\ndef act(db):\n    return 'done'\n"


def two_turn_arena() -> Arena:
    tool = lambda name: {"name": name, "description": name, "inputSchema": {"type": "object", "properties": {}}}  # noqa: E731
    return Arena.model_validate({
        "id": "two-turns", "domain": "test", "scenario_type": "single_hop", "question": "look", "final_answer": "done",
        "tools": [tool("look"), tool("act")], "implementation": SOURCE,
        "turns": [{"message": "look first"}, {"message": "now act", "add_tools": ["act"]}],
        "subtasks": [{"id": "s1", "question": "act", "answer": "done", "gold_call": {"tool": "act", "arguments": {}}}],
    })  # fmt: skip


@pytest.fixture(scope="module")
def gym(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GymThread]:
    store = tmp_path_factory.mktemp("turns") / "turns.jsonl"
    store.write_text(two_turn_arena().model_dump_json(by_alias=True) + "\n")
    with GymThread(ServeConfig(port=0, arenas=[str(store)], sandbox=SandboxConfig(workers=1))) as running:
        yield running


async def test_a_tool_of_a_later_turn_is_neither_listed_nor_callable_before_it(gym, http):
    episode = await new_episode(http, gym, "two-turns", failure_rate=0.0)
    assert episode["n_turns"] == 2 and episode["prompt"] == "look first"
    async with mcp_session(http, episode["mcp_url"]) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"look"}
        with pytest.raises(MCPError, match="Unknown tool 'act'"):  # a protocol error, logged all the same
            await client.call_tool("act", {})
        turn = (await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/turns", json={})).json()
        assert (turn["turn"], turn["message"], turn["tools_changed"]) == (1, "now act", True)
        assert {t.name for t in (await client.list_tools()).tools} == {"look", "act"}
        assert result_json(await client.call_tool("act", {})) == "done"
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert [(c["tool"], c["status"], c["turn"]) for c in log["calls"]] == [("act", "unknown_tool", 0), ("act", "ok", 1)]
    past = await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/turns", json={})
    assert past.status_code == 409


async def test_a_listen_stream_hears_its_own_episodes_tool_change_and_no_other(gym, http):
    mine = await new_episode(http, gym, "two-turns", failure_rate=0.0)
    other = await new_episode(http, gym, "two-turns", failure_rate=0.0)
    async with mcp_session(http, mine["mcp_url"]) as client, mcp_session(http, other["mcp_url"]) as bystander:
        async with client.listen(tools_list_changed=True) as sub, bystander.listen(tools_list_changed=True) as quiet:
            heard_other: list[object] = []

            async def watch_other() -> None:
                async for event in quiet:
                    heard_other.append(event)

            watcher = asyncio.create_task(watch_other())
            await http.post(f"{gym.url}/api/episodes/{mine['episode_id']}/turns", json={})
            async with asyncio.timeout(5):
                event = await anext(aiter(sub))
            assert isinstance(event, ToolsListChanged)
            assert {t.name for t in (await client.list_tools()).tools} == {"look", "act"}
            await asyncio.sleep(0.2)
            assert heard_other == []  # the other episode's stream heard nothing
            watcher.cancel()
    for episode in (mine, other):
        assert (await http.delete(f"{gym.url}/api/episodes/{episode['episode_id']}")).status_code == 204


async def test_an_episode_holds_a_bounded_number_of_listen_streams(gym, http):
    episode = await new_episode(http, gym, "two-turns", failure_rate=0.0)
    async with contextlib.AsyncExitStack() as stack:
        client = await stack.enter_async_context(mcp_session(http, episode["mcp_url"]))
        for _ in range(MAX_LISTEN_STREAMS):
            await stack.enter_async_context(client.listen(tools_list_changed=True))
        with pytest.raises(MCPError, match="Subscription limit"):
            async with client.listen(tools_list_changed=True):
                pass
    assert (await http.delete(f"{gym.url}/api/episodes/{episode['episode_id']}")).status_code == 204
