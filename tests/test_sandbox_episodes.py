"""Through the real gym: what hostile arena code does in one episode never reaches another episode, nor the
other arenas served in its own episode (distractor tools); oversized results are tool errors in a readable log;
/healthz says what isolation is in force; a gym told `--unsafe-sandbox` says so in every call's log."""

from __future__ import annotations

import ast
import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from gym_server.config import ServeConfig
from gym_server.models import Arena
from gym_server.sandbox import launch
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from tests.conftest import mcp_session, new_episode, result_json, result_text

ATTACKS_SOURCE = (Path(__file__).parent / "fixtures" / "kernel_attacks.py").read_text()
CLEAN_ARENA = "airline-book-cheapest-sfo-jfk"
ATTACK_ORDER = ["poison_caches", "frame_walk", "chroot_breakout", "outliving_thread", "kill_template", "remove_authorizer", "fork_bomb"]


def attacks_arena() -> Arena:
    functions = [n.name for n in ast.parse(ATTACKS_SOURCE).body if isinstance(n, ast.FunctionDef) and not n.name.startswith("_")]
    tools = [{"name": f, "description": f"attack: {f}", "inputSchema": {"type": "object", "properties": {}}} for f in functions]
    for tool in tools:
        if tool["name"] in ("host_file", "echo"):
            key = "path" if tool["name"] == "host_file" else "text"
            tool["inputSchema"] = {"type": "object", "properties": {key: {"type": "string"}}, "required": [key]}
        if tool["name"] == "connect":
            tool["inputSchema"] = {"type": "object", "properties": {"port": {"type": "integer"}}, "required": ["port"]}
    return Arena.model_validate(
        {
            "id": "kernel-attacks", "domain": "test", "scenario_type": "single_hop", "question": "attack the gym",
            "final_answer": "x", "tools": tools, "implementation": ATTACKS_SOURCE,
            "initial_state": {"ddl": ["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"], "rows": {"kv": [{"k": "a", "v": "1"}]}},
            "subtasks": [{"id": "s1", "question": "echo", "answer": "x", "gold_call": {"tool": "echo", "arguments": {"text": "x"}}}],
        }
    )  # fmt: skip


@pytest.fixture(scope="module")
def attack_gym(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GymThread]:
    store = tmp_path_factory.mktemp("attacks") / "attacks.jsonl"
    store.write_text(attacks_arena().model_dump_json(by_alias=True) + "\n")
    config = ServeConfig(port=0, arenas=["builtin", str(store)],
                         sandbox=SandboxConfig(workers=2, call_timeout_s=3.0, cpu_s=1.0, memory_mb=256, max_result_bytes=64 * 1024))  # fmt: skip
    with GymThread(config) as running:
        yield running


async def test_attacks_in_one_episode_never_reach_another(attack_gym, http):
    gold = (await http.get(f"{attack_gym.url}/api/arenas/{CLEAN_ARENA}")).json()
    clean = await new_episode(http, attack_gym, CLEAN_ARENA)
    # the hostile episode also serves a tool of the clean arena: its distractor runs in processes of its own
    hostile = await new_episode(http, attack_gym, "kernel-attacks", distractors=[{"arena_id": CLEAN_ARENA, "tool": gold["subtasks"][0]["gold_call"]["tool"]}])
    calls = [s["gold_call"] for s in gold["subtasks"]]
    async with mcp_session(http, clean["mcp_url"]) as good, mcp_session(http, hostile["mcp_url"]) as bad:
        for i, attack in enumerate(ATTACK_ORDER):
            await bad.call_tool(attack, {})
            if i < len(calls):
                answer = await good.call_tool(calls[i]["tool"], calls[i]["arguments"])
                assert not answer.is_error, result_text(answer)
            distractor = await bad.call_tool(calls[0]["tool"], calls[0]["arguments"])
            assert not distractor.is_error, result_text(distractor)
    score = (await http.post(f"{attack_gym.url}/api/episodes/{clean['episode_id']}/score", json={"final_answer": gold["final_answer"]})).json()
    assert score["reward"] == 1.0 and score["solved"] == len(calls), score
    log = (await http.get(f"{attack_gym.url}/api/episodes/{hostile['episode_id']}")).json()
    statuses = {c["tool"]: c["status"] for c in log["calls"]}
    assert statuses["frame_walk"] == "sandbox_error" and statuses["fork_bomb"] == "sandbox_error", statuses
    health = (await http.get(f"{attack_gym.url}/healthz")).json()["sandbox"]
    assert health["alive"] and health["restarts"] == 0 and not health["unsafe"]


@pytest.mark.parametrize("tool", ["deep_result", "huge_result", "spinning_result"])
async def test_oversized_or_strange_results_are_tool_errors_in_a_readable_log(attack_gym, http, tool):
    episode = await new_episode(http, attack_gym, "kernel-attacks")
    async with mcp_session(http, episode["mcp_url"]) as client:
        result = await client.call_tool(tool, {})
        assert result.is_error and "does not pass on" in result_text(result)
        echo = await client.call_tool("echo", {"text": "still here"})
        assert result_json(echo) == "still here"
    response = await http.get(f"{attack_gym.url}/api/episodes/{episode['episode_id']}")
    assert response.status_code == 200
    first = response.json()["calls"][0]
    assert first["status"] == "tool_error" and first["result"] is None and len(first["error"]) < 4100


async def test_healthz_reports_the_isolation_probed_inside(attack_gym, http):
    sandbox = (await http.get(f"{attack_gym.url}/healthz")).json()["sandbox"]
    isolation = sandbox["isolation"]
    assert sandbox["backend"] == "bwrap" and isolation["seccomp"] and isolation["no_new_privs"]
    assert isolation["uid"] != 0 and isolation["capabilities"] == "0000000000000000"
    assert all(isolation["namespaces"].values()) and not isolation["allowed_in_call"]


async def test_an_unsafe_gym_says_so_in_every_calls_log(monkeypatch, http):
    monkeypatch.setattr(launch, "bwrap_available", lambda: "bubblewrap is not installed (test)")
    config = ServeConfig(port=0, arenas=["builtin"], sandbox=SandboxConfig(workers=1, unsafe=True))
    with GymThread(config) as gym:
        assert (await http.get(f"{gym.url}/healthz")).json()["sandbox"]["unsafe"] is True
        episode = await new_episode(http, gym, "airline-seats-aa100")
        async with mcp_session(http, episode["mcp_url"]) as client:
            await client.call_tool("get_flight", {"flight_id": "AA100"})
        log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert log["calls"] and all(c["unsafe_sandbox"] is True for c in log["calls"])


async def test_an_episodes_log_is_bounded(http):
    config = ServeConfig(port=0, arenas=["builtin"], max_calls_per_episode=3, sandbox=SandboxConfig(workers=1))
    with GymThread(config) as gym:
        episode = await new_episode(http, gym, "airline-seats-aa100")
        async with mcp_session(http, episode["mcp_url"]) as client:
            answers = [await client.call_tool("get_flight", {"flight_id": "AA100"}) for _ in range(5)]
        log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert [a.is_error for a in answers] == [False, False, False, True, True]
    assert "Call refused" in result_text(answers[3]) and len(log["calls"]) == 3


async def test_a_busy_sandbox_is_a_protocol_error_not_a_logged_call(http, tmp_path):
    from mcp.shared.exceptions import MCPError

    store = tmp_path / "attacks.jsonl"
    store.write_text(attacks_arena().model_dump_json(by_alias=True) + "\n")
    config = ServeConfig(port=0, arenas=[str(store)], sandbox=SandboxConfig(workers=1, max_active=1, queue_timeout_s=0.3, call_timeout_s=2.0))
    with GymThread(config) as gym:
        sleeper, waiter = await new_episode(http, gym, "kernel-attacks"), await new_episode(http, gym, "kernel-attacks")
        async with mcp_session(http, sleeper["mcp_url"]) as slow, mcp_session(http, waiter["mcp_url"]) as client:
            holding = asyncio.create_task(slow.call_tool("sleep_forever", {}))  # takes the only slot for 2 s
            await asyncio.sleep(0.3)
            with pytest.raises(MCPError, match="busy"):
                await client.call_tool("echo", {"text": "x"})
            assert (await holding).is_error  # killed at the wall clock: the arena's own fault, logged
            assert result_json(await client.call_tool("echo", {"text": "x"})) == "x"
        log = (await http.get(f"{gym.url}/api/episodes/{waiter['episode_id']}")).json()
    assert [c["tool"] for c in log["calls"]] == ["echo"]  # the refused call was never a call
