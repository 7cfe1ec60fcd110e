"""Lost replicas: a gym killed mid-run loses its episodes as infrastructure errors; `eval` plays them again on
the live gyms (never a zero score) and GRPO re-rolls them. Real gym processes, really killed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.evaluation import EvalConfig, load_records, run_eval
from clients.gym_client import expand_urls
from clients.policies import EpisodeContext, OraclePolicy
from gym_server.config import ServeConfig
from gym_server.front import create_front
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import AppThread
from tests.conftest import wait_serving

TOKEN = "replica-t0ken"


def test_dns_names_expand_to_every_address():
    resolved = {"gym-headless.default.svc": ["10.0.0.7", "10.0.0.8", "fd00::9"]}
    urls = expand_urls("dns+http://gym-headless.default.svc:8000, http://other:9000/", lambda host, port: resolved[host])
    assert urls == ["http://10.0.0.7:8000", "http://10.0.0.8:8000", "http://[fd00::9]:8000", "http://other:9000"]
    with pytest.raises(ValueError, match="expected dns"):
        expand_urls("dns+ftp://x:1")
    with pytest.raises(ValueError, match="cannot resolve"):
        expand_urls("dns+http://no-such-host.invalid:8000")


@pytest.fixture
def three_gyms() -> Iterator[list[tuple[subprocess.Popen, str]]]:
    env = {**os.environ, "ASTRA_GYM_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "gym_server.cli", "serve", "--port", "0", "--processes", "1", "--workers", "1"]
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, env=env) for _ in range(3)]
    try:
        gyms = []
        for proc in procs:
            url = proc.stdout.readline().split(" at ")[1].split()[0]  # type: ignore[union-attr]
            wait_serving(url)
            gyms.append((proc, url))
        yield gyms
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(30)


class KillsAGymMidRun:
    """The oracle, except that when the second episode on `victim` starts playing, `kill` takes that gym
    down first: this episode and the others in flight there lose their gym mid-episode."""

    name = "oracle"
    model = None

    def __init__(self, victim: str, kill: object) -> None:
        self.inner, self.victim, self.kill, self.seen = OraclePolicy(), victim, kill, 0

    async def play(self, ctx: EpisodeContext):
        if ctx.episode.mcp_url.startswith(self.victim):
            self.seen += 1
            if self.seen == 2:
                self.kill()  # type: ignore[operator]
        return await self.inner.play(ctx)


def check_every_episode_scored_once(out: Path, report: dict, n_arenas: int) -> list:
    records = load_records(out / "trajectories.jsonl")
    lost = [r for r in records if r.replica_lost]
    scored = Counter(r.key for r in records if r.reward is not None)
    assert lost and all(r.reward is None and r.error for r in lost)  # infrastructure errors, never a score
    assert len(scored) == n_arenas and set(scored.values()) == {1}  # every episode scored once...
    assert {r.key for r in lost} <= set(scored)  # ... the lost ones too, by their replay
    assert report["overall"]["scored"] == n_arenas and report["overall"]["reward"] == 1.0  # the oracle loses nothing
    assert report["infrastructure_errors"]["episodes"] == 0
    assert report["infrastructure_errors"]["lost_with_their_gym"] == len(lost)
    assert report["infrastructure_errors"]["replayed"] == len({r.key for r in lost})
    return lost


async def test_eval_replays_a_dead_replicas_episodes_on_the_others(three_gyms, tmp_path):
    (victim, victim_url), *_ = three_gyms[1:] + three_gyms[:1]
    policy = KillsAGymMidRun(victim_url, lambda: (victim.send_signal(signal.SIGKILL), victim.wait(10)))
    config = EvalConfig(gym=",".join(url for _, url in three_gyms), token=TOKEN, concurrency=6, out=tmp_path / "run")
    report = await run_eval(config, progress=False, policy=policy)
    lost = check_every_episode_scored_once(config.out, report, 13)
    assert all(r.gym_url.startswith(victim_url) for r in lost)
    replays = [r for r in load_records(config.out / "trajectories.jsonl") if r.key in {x.key for x in lost} and r.reward is not None]
    assert not any(r.gym_url.startswith(victim_url) for r in replays)  # played again on the live gyms
    assert "played again" in (config.out / "report.md").read_text()


async def test_eval_replays_a_dead_processes_episodes_through_the_same_front(tmp_path):
    config = ServeConfig(port=0, token=TOKEN, sandbox=SandboxConfig(workers=1))
    with AppThread(create_front(config, 2)) as front:
        processes = front.app.state.processes
        victim = processes.slots[1]
        policy = KillsAGymMidRun(victim.url, lambda: (os.kill(victim.process.pid, signal.SIGKILL), victim.process.join(10)))
        run = EvalConfig(gym=front.url, token=TOKEN, concurrency=4, out=tmp_path / "run")
        report = await run_eval(run, progress=False, policy=policy)
        lost = check_every_episode_scored_once(run.out, report, 13)
        assert all(r.episode_id.startswith("p1.") for r in lost)
        report_json = json.loads((run.out / "report.json").read_text())
        assert report_json["infrastructure_errors"]["replayed"] >= 1


def test_grpo_rerolls_episodes_lost_with_their_gym(three_gyms, tmp_path):
    pytest.importorskip("torch")
    from clients.gym_session import GymSession
    from trainer.rollout import MCPRollout
    from trainer.tiny import load_model_and_tokenizer

    _, tokenizer = load_model_and_tokenizer("tiny")
    (victim, victim_url), *_ = three_gyms
    killed = []
    call = '<tool_call>{"name": "get_flight", "arguments": {"flight_id": "AA100"}}</tool_call>'

    def sampler(ids, max_tokens):
        if not killed:  # every episode of the step is open by now: the victim's are lost mid-episode
            victim.send_signal(signal.SIGKILL)
            victim.wait(10)
            killed.append(True)
        text = call if tokenizer.decode(ids).count("<tool_response>") == 0 else "12"
        new = tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        return new, [-0.5] * len(new)

    prompt = [{"role": "user", "content": "How many seats?", "arena_id": "airline-seats-aa100"}]
    with GymSession([url for _, url in three_gyms], TOKEN) as session:
        rollout = MCPRollout(session, tokenizer, sampler=sampler, max_turns=3, failure_rate=0.0, records=tmp_path / "played.jsonl")
        records = rollout.play_records([prompt] * 6)
    assert killed and all(r.error is None and r.reward.reward == 1.0 for r in records)
    assert not any(r.gym_url.startswith(victim_url) for r in records)
    kept = [json.loads(line) for line in (tmp_path / "played.jsonl").read_text().splitlines()]
    lost = [r for r in kept if r["replica_lost"]]
    assert 1 <= len(lost) <= 2 and all(r["gym_url"].startswith(victim_url) for r in lost)  # round robin put up to 2 of 6 there
