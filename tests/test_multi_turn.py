"""A gym arena with scripted user turns (not a suite): a tool held back until a later turn is neither listed
nor callable before it, over REST and over the official MCP SDK client; the turn endpoint refuses past the last."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from mcp.shared.exceptions import MCPError

from gym_server.config import ServeConfig
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
