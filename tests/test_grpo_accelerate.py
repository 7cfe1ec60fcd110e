"""GRPO under `accelerate launch` with 2 CPU processes (gloo) against one real gym: 2 steps of `train grpo`
(tests/fixtures/accelerate_grpo.py: the CLI with a gradient probe and a length tie-breaker in the reward),
launched with the shipped DDP config. Each rank plays its own episodes (never an arena and seed another rank
plays, even on the same arena), the gradient every rank's optimizer gets is the mean of the ranks' own
gradients (and not its own), the ranks' weights stay equal, and metrics and the summary are written once."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("torch")
pytest.importorskip("trl")
pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[1]
STEPS, PER_RANK = 2, 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from gym_server.config import ServeConfig
    from gym_server.sandbox.pool import SandboxConfig
    from gym_server.serve import GymThread

    out = tmp_path_factory.mktemp("accelerate") / "grpo"
    launch = [sys.executable, "-m", "accelerate.commands.accelerate_cli", "launch", "--config_file", str(ROOT / "deploy" / "accelerate" / "ddp.yaml"),
              "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(free_port()),
              str(ROOT / "tests" / "fixtures" / "accelerate_grpo.py")]  # fmt: skip
    # two arenas, so both ranks play each of them (their groups and the batch filler's refills); the tiny model
    # scores 0 everywhere, so Adaptive Batch Filling refills every step from the same two arenas
    grpo = ["train", "grpo", "--model", "tiny", "--arena-filter", "clinic-refill*", "--out", str(out), "--max-steps", str(STEPS),
            "--batch-size", str(PER_RANK), "--num-generations", "2", "--max-turns", "1", "--max-new-tokens", "8",
            "--distractors", "0,0,0", "--save-steps", "100", "--no-gradient-checkpointing"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "", "TRL_EXPERIMENTAL_SILENCE": "1", "ASTRA_GYM_TOKEN": "op-token"}
    with GymThread(ServeConfig(port=0, token="op-token", sandbox=SandboxConfig(workers=1))) as gym:
        started = time.monotonic()
        done = subprocess.run([*launch, *grpo, "--gym", gym.url], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
        elapsed = time.monotonic() - started
    assert done.returncode == 0, done.stderr[-4000:]
    return SimpleNamespace(out=out, stdout=done.stdout, elapsed=elapsed)


@pytest.mark.timeout(360)
def test_each_rank_plays_its_own_episodes_on_the_one_gym(run):
    assert not (run.out / "trajectories.jsonl").exists()
    played = {rank: rows(run.out / f"trajectories.rank{rank}.jsonl") for rank in (0, 1)}
    for records in played.values():
        assert len(records) >= STEPS * PER_RANK
        assert all(r["error"] is None and r["reward"] is not None and r["seed"] is not None for r in records)
    episodes = {rank: {(r["arena_id"], r["seed"]) for r in records} for rank, records in played.items()}
    assert all(len(e) == len(played[rank]) for rank, e in episodes.items())  # no rank replays its own episode
    assert {a for a, _ in episodes[0]} & {a for a, _ in episodes[1]}  # both ranks played the same arenas...
    assert not episodes[0] & episodes[1], episodes[0] & episodes[1]  # ...but never the same episode
    [summary] = [json.loads(block) for block in re.findall(r"^\{\n.*?^\}$", run.stdout, re.M | re.S)]  # printed once
    assert summary["steps"] == STEPS and summary["processes"] == 2
    assert summary["episodes"] == len(played[0]) + len(played[1])  # the summary counts every rank's episodes, once


@pytest.mark.timeout(360)
def test_every_rank_steps_with_the_mean_of_the_ranks_gradients(run):
    probes = {rank: rows(run.out / f"probe.rank{rank}.jsonl") for rank in (0, 1)}
    for rank, steps in probes.items():
        assert [p["step"] for p in steps] == list(range(1, STEPS + 1))
        for p in steps:
            scale = p["given_norm"]
            assert scale > 0 and p["ranks_own_apart"] > 1e-3 * scale, p  # the ranks' own gradients differ: averaging shows
            assert p["given_vs_mean"] <= 1e-5 * scale, p  # the optimizer got the mean of the ranks' gradients...
            assert p["given_vs_own"] > 1e-3 * scale, p  # ...not this rank's own
            assert p["params_apart"] == 0.0, p  # so both ranks hold the same weights after every step


@pytest.mark.timeout(360)
def test_metrics_are_written_once_for_all_ranks(run):
    logged = [r for r in rows(run.out / "metrics.jsonl") if "loss" in r]
    assert [r["step"] for r in logged] == list(range(1, STEPS + 1))
    assert all("gym/recall" in r and "abf/groups_played" in r for r in logged)
    assert (run.out / "final" / "config.json").exists() and (run.out / "final" / "tokenizer.json").exists()


def test_several_processes_without_a_shared_gym_stop_before_training(monkeypatch):
    from trainer.configs import GRPORunConfig
    from trainer.train import grpo_arguments

    monkeypatch.setenv("WORLD_SIZE", "2")  # what accelerate launch / torchrun set in every rank
    with pytest.raises(ValueError, match="share one gym.*--gym URL"):
        grpo_arguments(GRPORunConfig(model="tiny"))
    assert grpo_arguments(GRPORunConfig(model="tiny", gym="http://127.0.0.1:9"))["num_generations"] == 4


def test_batch_filling_needs_whole_groups_on_every_process():
    from trainer.configs import GRPORunConfig
    from trainer.train import grpo_arguments

    with pytest.raises(ValueError, match="multiple of --num-generations"):
        grpo_arguments(GRPORunConfig(model="tiny", batch_size=6, num_generations=4))
    assert grpo_arguments(GRPORunConfig(model="tiny", batch_size=6, num_generations=4, abf=False))["per_device_train_batch_size"] == 6
