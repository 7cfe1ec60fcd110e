"""Clients and evaluation: the agent loop against a scripted OpenAI-compatible server, policies, eval runs."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest

from clients.agent import ChatEndpoint, ModelEndpointError
from clients.evaluation import EvalAborted, EvalConfig, run_eval
from clients.gym_client import GymClient, GymError
from clients.policies import OraclePolicy, RandomPolicy, random_value
from clients.runner import run_episode
from clients.toolbox import EndpointUnreachable, MCPToolbox
from gym_server.serve import AppThread
from tests.fixtures.scripted_llm import create_scripted_llm

BUILTIN = "airline-*,clinic-*,retail-*"


@pytest.fixture(scope="module")
def llm(gym):
    with AppThread(create_scripted_llm(gym.url)) as server:
        yield server.url + "/v1"


async def test_scripted_gold_model_solves_every_builtin_arena_with_parallel_calls(gym, llm, tmp_path):
    config = EvalConfig(policy="openai", model="gold", base_url=llm, arenas=BUILTIN, gym=gym.url, concurrency=13, out=tmp_path)
    report = await run_eval(config, progress=False)
    assert report["overall"]["episodes"] == 13 and report["overall"]["reward"] == 1.0 and report["overall"]["errors"] == 0
    records = [json.loads(line) for line in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    parallel = [r for r in records if r["arena_id"] == "airline-departures-ua200-dl300"][0]
    first_turn = next(m for m in parallel["messages"] if m["role"] == "assistant")
    assert len(first_turn["tool_calls"]) == 2  # both independent calls in one turn
    assert parallel["usage"]["completion_tokens"] > 0 and parallel["stop_reason"] == "answer"
    assert parallel["reward"]["final_answer_correct"] is True


async def test_agent_loop_handles_malformed_plain_and_endless_models(gym, llm, http):
    client = GymClient(gym.url, http)
    from clients.policies import ChatPolicy

    malformed = await run_episode(client, ChatPolicy(ChatEndpoint(llm, "malformed", http)), "airline-seats-aa100")
    tool_messages = [m for m in malformed.messages if m["role"] == "tool"]
    assert "malformed call" in tool_messages[0]["content"] and "not valid JSON" in tool_messages[0]["content"]
    assert len(malformed.call_log) == 1  # the malformed call never reached the gym
    assert malformed.reward.reward == 1.0 and malformed.final_answer == "12"

    plain = await run_episode(client, ChatPolicy(ChatEndpoint(llm, "plain", http)), "airline-seats-aa100")
    assert plain.turns == 1 and plain.stop_reason == "answer" and plain.reward.reward == 0.0 and plain.reward.tool_calls == 0

    chatty = await run_episode(client, ChatPolicy(ChatEndpoint(llm, "chatty", http), max_turns=3), "airline-seats-aa100")
    assert chatty.stop_reason == "max_turns" and chatty.turns == 3 and chatty.reward.tool_calls == 3
    assert chatty.reward.precision == pytest.approx(1 / 3)


async def test_broken_model_endpoint_is_a_clear_error(gym, llm, http):
    with pytest.raises(ModelEndpointError, match="500"):
        await ChatEndpoint(llm, "broken", http, retries=1).complete([{"role": "user", "content": "hi"}], [], 16)
    with pytest.raises(ModelEndpointError, match="cannot reach the model endpoint"):
        await ChatEndpoint("http://127.0.0.1:9/v1", "x", http, retries=0).complete([], [], 16)


async def test_oracle_and_random_policies(gym, http):
    client = GymClient(gym.url, http)
    oracle = [await run_episode(client, OraclePolicy(), a) for a in ("clinic-book-d02", "retail-return-headphones")]
    assert all(r.reward.reward == 1.0 for r in oracle)
    assert oracle[0].messages[-1]["content"] == "10:30; next open slot 11:15"
    random_rewards = [(await run_episode(client, RandomPolicy(), "retail-return-headphones", seed=s)).reward.reward for s in range(10)]
    assert sum(random_rewards) / len(random_rewards) < 0.3


def test_random_values_satisfy_their_schemas():
    import random

    import jsonschema

    rng = random.Random(0)
    schema = {"type": "object", "properties": {
        "n": {"type": "integer", "minimum": 3, "maximum": 5}, "s": {"type": "string", "minLength": 2, "maxLength": 4},
        "e": {"enum": ["a", "b"]}, "xs": {"type": "array", "items": {"type": "number"}, "maxItems": 2},
        "o": {"type": "object", "properties": {"b": {"type": "boolean"}}, "required": ["b"]}}, "required": ["n", "s", "e", "o"]}  # fmt: skip
    for _ in range(200):
        jsonschema.validate(random_value(schema, rng), schema)


async def test_gym_client_spreads_episodes_over_gyms(gym, http):
    from gym_server.models import EpisodeCreate

    client = GymClient(f"{gym.url},{gym.url}/", http)
    assert client.urls == [gym.url, gym.url]
    created = [await client.create_episode(EpisodeCreate(arena_id="airline-seats-aa100")) for _ in range(2)]
    assert len({c.episode_id for c in created}) == 2
    dead = GymClient("http://127.0.0.1:9", http)
    with pytest.raises(GymError, match="cannot reach the gym"):
        await dead.arenas()


async def test_stdio_mcp_server_from_pypi_is_reachable():
    async with MCPToolbox.stdio(sys.executable, ["-m", "mcp_server_time", "--local-timezone", "UTC"]) as box:
        names = {t["function"]["name"] for t in box.openai_tools()}
        assert {"get_current_time", "convert_time"} <= names
        result = await box.call("get_current_time", {"timezone": "Europe/Paris"})
        assert not result.is_error and "Europe/Paris" in result.text
        bad = await box.call("get_current_time", {"timezone": "Mars/Olympus"})
        assert bad.is_error


def test_eval_cli_oracle_concurrency_32_resumes_after_interruption(gym, llm, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gym_server.cli", "eval", "--policy", "openai", "--model", "gold-slow", "--base-url", llm,
           "--gym", gym.url, "--arenas", BUILTIN, "--concurrency", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    path = out / "trajectories.jsonl"
    deadline = time.time() + 60
    while time.time() < deadline and (not path.exists() or len(path.read_text().splitlines()) < 3):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    before = {json.loads(line)["arena_id"]: json.loads(line)["episode_id"] for line in path.read_text().splitlines() if line.strip()}
    assert 3 <= len(before) < 13
    resumed = subprocess.run([*cmd[:6], "--model", "gold", *cmd[8:]], capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    after = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    assert len({r["arena_id"] for r in after}) == 13 and len(after) == 13  # nothing played twice
    assert all(r["episode_id"] == before[r["arena_id"]] for r in after if r["arena_id"] in before)
    oracle_out = tmp_path / "oracle"
    ran = subprocess.run([sys.executable, "-m", "gym_server.cli", "eval", "--policy", "oracle", "--concurrency", "32",
                          "--episodes-per-arena", "2", "--gym", gym.url, "--arenas", BUILTIN, "--out", str(oracle_out)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    report = json.loads((oracle_out / "report.json").read_text())
    assert report["overall"]["success_rate"] == 1.0 and report["overall"]["episodes"] == 26
    assert report["pass_hat_k"] == {"1": 1.0, "2": 1.0}
    for name in ("trajectories.jsonl", "report.json", "report.md", "reward.png", "calls_tokens.png", "pass_hat_k.png"):
        assert (oracle_out / name).stat().st_size > 0


async def test_eval_stops_cleanly_on_a_dead_model_or_gym(gym, tmp_path):
    dead_model = EvalConfig(policy="openai", model="x", base_url="http://127.0.0.1:9/v1", gym=gym.url, arenas="airline-*", out=tmp_path / "a")
    with pytest.raises(EvalAborted, match="cannot reach the model endpoint.*resume"):
        await run_eval(dead_model, progress=False)
    dead_gym = subprocess.run([sys.executable, "-m", "gym_server.cli", "eval", "--gym", "http://127.0.0.1:9", "--out", str(tmp_path / "b")],
                              capture_output=True, text=True, timeout=60)  # fmt: skip
    assert dead_gym.returncode == 1 and "cannot reach the gym" in dead_gym.stderr


async def test_toolbox_times_out_slow_calls_and_fails_clearly_on_dead_servers(gym, http):
    from tests.conftest import new_episode

    episode = await new_episode(http, gym, "hostile")
    async with MCPToolbox.http_endpoint(episode["mcp_url"], http, call_timeout_s=0.3) as box:
        slow = await box.call("spin", {})  # the sandbox needs ~1 s to stop it; the client gives up first
        assert slow.is_error and slow.transport_error == "timeout" and "timed out after 0.3 s" in slow.text
        assert not box._safe_to_retry("set_state")  # no readOnly/idempotent hint: a write is never repeated
    with pytest.raises(EndpointUnreachable, match=r"cannot open the MCP endpoint http://127\.0\.0\.1:9/mcp: ConnectError"):
        async with MCPToolbox.http_endpoint("http://127.0.0.1:9/mcp", http, retries=1):
            pass
    gone = await new_episode(http, gym, "hostile")
    assert (await http.delete(f"{gym.url}/api/episodes/{gone['episode_id']}")).status_code == 204
    with pytest.raises(EndpointUnreachable, match="cannot open the MCP endpoint") as raised:
        async with MCPToolbox.http_endpoint(gone["mcp_url"], http, retries=0):
            pass
    assert gone["mcp_url"].split("key=")[1] not in str(raised.value)  # the key never reaches a record


async def test_eval_serves_the_same_distractor_tools_to_every_run(gym, http, tmp_path):
    """`--distractors`: each episode also holds tools of other arenas (real, callable, never scored), drawn once
    per arena from the seed, so two policies evaluated with one config meet the same irrelevant tools."""
    runs = []
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        config = EvalConfig(policy="oracle", arenas=BUILTIN, gym=gym.url, out=tmp_path / name, distractors={"low": 2}, seed=seed)
        report = await run_eval(config, progress=False)
        assert report["overall"]["reward"] == 1.0  # the oracle ignores them
        records = map(json.loads, (tmp_path / name / "trajectories.jsonl").read_text().splitlines())
        runs.append({r["arena_id"]: sorted(t["function"]["name"] for t in r["tools"]) for r in records})
    specs = {a.id: a for a in await GymClient(gym.url, http).arena_specs(sorted(runs[0]))}
    extras = {arena_id: set(tools) - {t.name for t in specs[arena_id].tools} for arena_id, tools in runs[0].items()}
    assert all(len(extra) == 2 for extra in extras.values())  # two low-band tools (the three worlds are far apart)
    assert runs[0] == runs[1] and runs[0] != runs[2]  # same seed, same tools; another seed draws others
