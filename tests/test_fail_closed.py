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
    assert "401" in ran.stderr and "token" in ran.stderr.lower()
    assert "reward 0.000" not in ran.stdout
