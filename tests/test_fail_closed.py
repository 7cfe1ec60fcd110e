"""Clients fail closed: an episode that could not be played is an infrastructure error, never a score."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from gym_server.config import ServeConfig
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread

CLI = [sys.executable, "-m", "gym_server.cli"]
TOKEN = "operator-s3cret"


@pytest.fixture(scope="module")
def locked_gym() -> Iterator[GymThread]:
    with GymThread(ServeConfig(port=0, token=TOKEN, sandbox=SandboxConfig(workers=2))) as gym:
        yield gym


def eval_cli(gym: GymThread, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    cmd = [*CLI, "eval", "--policy", "oracle", "--gym", gym.url, "--concurrency", "8", "--out", str(out), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env={k: v for k, v in __import__("os").environ.items() if k != "ASTRA_GYM_TOKEN"})


def test_eval_with_the_operator_token_scores_every_builtin_arena_one(locked_gym, tmp_path):
    ran = eval_cli(locked_gym, tmp_path / "run", "--token", TOKEN)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    overall = report["overall"]
    assert overall["episodes"] == 13 and overall["scored"] == 13 and overall["errors"] == 0
    assert overall["reward"] == 1.0 and overall["success_rate"] == 1.0


def test_eval_with_a_wrong_token_exits_non_zero_saying_why(locked_gym, tmp_path):
    ran = eval_cli(locked_gym, tmp_path / "run", "--token", "not-the-token")
    assert ran.returncode != 0
    assert "401" in ran.stderr and "refused this request's bearer token" in ran.stderr and "Traceback" not in ran.stderr
    assert "reward 0.000" not in ran.stdout


def test_eval_whose_mcp_urls_are_all_refused_exits_non_zero_and_scores_nothing(tmp_path):
    """A gym whose public URL is wrong hands out MCP URLs nobody can reach: REST works, no episode can be played."""
    config = ServeConfig(port=0, token=TOKEN, public_url="http://127.0.0.1:9", sandbox=SandboxConfig(workers=1))
    with GymThread(config) as gym:
        ran = eval_cli(gym, tmp_path / "run", "--token", TOKEN, "--arenas", "airline-*")
    assert ran.returncode == 1 and "no episode could be played" in ran.stderr, ran.stderr
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["overall"]["scored"] == 0 and report["overall"]["errors"] == report["overall"]["episodes"] > 0
    assert report["infrastructure_errors"]["episodes"] == report["overall"]["episodes"]
    assert all("key=" not in cause for cause in report["infrastructure_errors"]["causes"])  # no episode key in reports
    assert "Infrastructure errors" in (tmp_path / "run" / "report.md").read_text()
    assert all("key=" not in line for line in (tmp_path / "run" / "trajectories.jsonl").read_text().splitlines())


async def test_an_episode_whose_gym_stops_answering_mid_play_is_not_scored(locked_gym):
    import httpx2

    from clients.gym_client import GymClient
    from clients.policies import EpisodeContext, _scripted
    from clients.runner import run_episode

    class VanishingGym:  # the episode ends under the agent's feet (an operator, a restart, the TTL)
        name, model = "vanishing", None

        async def play(self, ctx: EpisodeContext):
            await ctx.gym.delete(ctx.episode.episode_id)
            return await _scripted(ctx, [("get_flight", {"flight_id": "AA100"})], "x")

    async with httpx2.AsyncClient(timeout=30) as http:
        gym = GymClient(locked_gym.url, http, TOKEN)
        record = await run_episode(gym, VanishingGym(), "airline-seats-aa100")
    assert record.reward is None and record.error and "got no answer from the gym" in record.error
    assert record.messages  # what happened is kept for the report


async def test_gym_client_waits_out_429_and_names_a_refused_token():
    import httpx2

    from clients.gym_client import GymClient, GymError
    from gym_server.models import EpisodeCreate
    from gym_server.quotas import TokenLimits

    config = ServeConfig(port=0, token=TOKEN, agent_tokens=["agent-t"], sandbox=SandboxConfig(workers=1),
                         agent_limits=TokenLimits(live_episodes=10, creations_per_minute=60, burst=1))  # fmt: skip
    with GymThread(config) as gym:
        async with httpx2.AsyncClient(timeout=30) as http:
            agent = GymClient(gym.url, http, "agent-t")
            first = await agent.create_episode(EpisodeCreate(arena_id="airline-seats-aa100"))
            second = await agent.create_episode(EpisodeCreate(arena_id="airline-seats-aa100"))  # 429 once, then served
            assert first.episode_id != second.episode_id
            with pytest.raises(GymError, match="401: the gym refused this request's bearer token"):
                await GymClient(gym.url, http, "wrong").arenas()
            with pytest.raises(GymError, match="no token was given"):
                await GymClient(gym.url, http).arenas()
            with pytest.raises(GymError, match="403: .*operator"):
                await agent.arena("airline-seats-aa100")


async def test_in_process_gyms_ignore_a_token_meant_for_another_gym(monkeypatch, tmp_path):
    from clients.evaluation import EvalConfig, run_eval

    monkeypatch.setenv("ASTRA_GYM_TOKEN", "for-some-other-gym")
    report = await run_eval(EvalConfig(policy="oracle", arenas="clinic-*", out=tmp_path / "run"), progress=False)
    assert report["overall"]["scored"] == report["overall"]["episodes"] > 0 and report["overall"]["reward"] == 1.0


def test_report_counts_infrastructure_errors_apart_from_rewards(tmp_path):
    from clients.evaluation import EvalConfig, build_report
    from clients.records import TrajectoryRecord
    from gym_server.models import RewardBreakdown

    scored = TrajectoryRecord(arena_id="a", policy="p", reward=RewardBreakdown(reward=1.0, recall=1.0, precision=1.0, solved=1, n_subtasks=1, tool_calls=1))
    failed = [TrajectoryRecord(arena_id=f"b{i}", policy="p", error=f"HTTPStatusError: 403 for url 'http://h/episodes/e{i}/mcp?key=K{i}'") for i in range(2)]
    report = build_report([scored, *failed], EvalConfig(out=tmp_path))
    assert report["overall"]["reward"] == 1.0 and report["overall"]["scored"] == 1 and report["overall"]["errors"] == 2
    assert report["infrastructure_errors"] == {"episodes": 2, "causes": {"HTTPStatusError: 403 for url '<url>": 2}, "lost_with_their_gym": 0, "replayed": 0}


async def test_toolbox_tells_a_refused_call_from_a_call_without_an_answer():
    from mcp.shared.exceptions import MCPError

    from clients.toolbox import MCPToolbox

    class Refusing:
        def __init__(self, code: int) -> None:
            self.code = code

        async def call_tool(self, name, arguments):
            raise MCPError(self.code, f"refused {name}")

    box = MCPToolbox("http://unused")
    box._client = Refusing(-32602)  # the server's answer to a bad call: the agent's error, and scored
    answered = await box.call("nope", {})
    assert answered.is_error and answered.transport_error is None and box.transport_errors == []
    box._client = Refusing(-32603)  # an internal error / HTTP 5xx: the gym failed, not the agent
    failed = await box.call("get_flight", {})
    assert failed.transport_error and box.transport_errors == ["the call to get_flight failed: MCP error -32603: refused get_flight"]


def test_a_grpo_rollout_the_gym_stops_serving_fails_instead_of_earning_a_reward(locked_gym):
    import httpx2

    from clients.gym_session import GymSession
    from clients.runner import EpisodeNotPlayed
    from trainer.rollout import MCPRollout

    manager = locked_gym.app.state.manager
    before = set(manager._episodes)

    class Tok:  # the smallest tokenizer the rollout needs; every turn "generates" one tool call
        eos_token, eos_token_id = "<e>", 0

        def apply_chat_template(self, messages, tools, tokenize, add_generation_prompt):
            return "x"

        def __call__(self, text, add_special_tokens):
            return {"input_ids": [1]}

        def decode(self, ids, skip_special_tokens):
            return '<tool_call>{"name": "get_flight", "arguments": {"flight_id": "AA100"}}</tool_call>'

    def generate(ids, max_tokens):  # the episode ends on the gym while the model thinks
        for eid in set(manager._episodes) - before:
            httpx2.delete(f"{locked_gym.url}/api/episodes/{eid}", headers={"Authorization": f"Bearer {TOKEN}"})
        return [0], [0.0]

    with GymSession(locked_gym.url, TOKEN) as session:  # the token reaches REST; the MCP URL carries its key
        rollout = MCPRollout(session, Tok(), sampler=generate, max_turns=3)
        prompt = [{"role": "user", "content": "q", "arena_id": "airline-seats-aa100"}]
        with pytest.raises(EpisodeNotPlayed, match="does not exist"):
            rollout.play([prompt])
