"""`astra-gym train sft|grpo` with the tiny model on CPU: checkpoints keep resume state only for the newest K,
metrics go to JSONL and PNG."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytest.importorskip("torch")
CLI = [sys.executable, "-m", "gym_server.cli"]


@pytest.mark.timeout(300)  # two training subprocesses: 60 to 118 s seen on a loaded 2-core machine
def test_train_sft_then_grpo(tmp_path):
    oracle = subprocess.run([*CLI, "eval", "--policy", "oracle", "--arenas", "airline-*,clinic-*", "--out", str(tmp_path / "oracle")],
                            capture_output=True, text=True, timeout=300)  # fmt: skip
    assert oracle.returncode == 0, oracle.stderr
    sft = subprocess.run([*CLI, "train", "sft", "--model", "tiny", "--data", str(tmp_path / "oracle" / "trajectories.jsonl"),
                          "--out", str(tmp_path / "sft"), "--max-steps", "3", "--batch-size", "2", "--save-steps", "1"],
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    assert sft.returncode == 0, sft.stderr[-2000:]
    from trainer.callbacks import checkpoints

    ckpts = checkpoints(tmp_path / "sft")
    assert [c.name for c in ckpts] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]
    assert [(c / "optimizer.pt").exists() for c in ckpts] == [False, True, True]  # only the newest 2 can resume
    assert all((c / "model.safetensors").exists() for c in ckpts)
    assert (tmp_path / "sft" / "metrics.png").exists() and json.loads((tmp_path / "sft" / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
    grpo = subprocess.run([*CLI, "train", "grpo", "--model", str(tmp_path / "sft" / "final"), "--arena-filter", "clinic-*",
                           "--out", str(tmp_path / "grpo"), "--max-steps", "2", "--batch-size", "4", "--num-generations", "2",
                           "--max-turns", "2", "--max-new-tokens", "16", "--save-steps", "1", "--keep-resume-state", "1"],
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert grpo.returncode == 0, grpo.stderr[-3000:]
    assert [(c / "optimizer.pt").exists() for c in checkpoints(tmp_path / "grpo")] == [False, True]
    rows = [json.loads(x) for x in (tmp_path / "grpo" / "metrics.jsonl").read_text().splitlines()]
    assert any("gym/recall" in r and "gym/solved" in r and "abf/groups_dropped" in r for r in rows)
    assert (tmp_path / "grpo" / "metrics.png").exists() and (tmp_path / "grpo" / "final" / "config.json").exists()
    resumed = subprocess.run([*CLI, "train", "grpo", "--model", str(tmp_path / "sft" / "final"), "--arena-filter", "clinic-*",
                              "--out", str(tmp_path / "grpo"), "--max-steps", "3", "--batch-size", "4", "--num-generations", "2",
                              "--max-turns", "2", "--max-new-tokens", "16", "--save-steps", "1", "--keep-resume-state", "1", "--resume"],
                             capture_output=True, text=True, timeout=600)  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert '"steps": 3' in resumed.stdout  # continued from checkpoint-2 for one more step
    assert [c.name for c in checkpoints(tmp_path / "grpo")] == ["checkpoint-1", "checkpoint-2", "checkpoint-3"]


@pytest.mark.parametrize("flag", [["--vllm-server", "http://127.0.0.1:9"], ["--vllm-colocate"]], ids=["server", "colocate"])
def test_grpo_with_vllm_generation_but_no_vllm_stops_before_training(tmp_path, flag):
    import importlib.util

    if importlib.util.find_spec("vllm") is not None:
        pytest.skip("vllm is installed here")
    done = subprocess.run([*CLI, "train", "grpo", "--model", "tiny", *flag, "--out", str(tmp_path / "g")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1
    assert "needs vllm installed" in done.stderr and "astra-gym[vllm]" in done.stderr  # brackets survive the console
    assert not (tmp_path / "g").exists()


def test_grpo_against_a_gym_that_refuses_the_token_stops_before_training(tmp_path):
    from gym_server.config import ServeConfig
    from gym_server.sandbox.pool import SandboxConfig
    from gym_server.serve import GymThread

    with GymThread(ServeConfig(port=0, token="the-token", sandbox=SandboxConfig(workers=1))) as gym:
        done = subprocess.run([*CLI, "train", "grpo", "--model", "tiny", "--gym", gym.url, "--token", "not-the-token", "--out", str(tmp_path / "g")],
                              capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 1, done.stderr
    assert "401" in done.stderr and "refused" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "g" / "final").exists()


def test_grpo_trains_on_the_arenas_of_the_gym_it_plays_on(tmp_path):
    """`--gym URL` serving a store the trainer has never seen: prompts, specs and distractors come from it."""
    from gym_server.builtin import builtin_arenas
    from gym_server.config import ServeConfig
    from gym_server.models import Arena
    from gym_server.sandbox.pool import SandboxConfig
    from gym_server.serve import GymThread
    from gym_server.store import write_bundle

    unseen = []
    for arena in builtin_arenas():
        if arena.id in ("airline-seats-aa100", "clinic-refills-rx12"):
            data = arena.model_dump(mode="json", by_alias=True)
            data["id"], data["question"] = f"unseen-{arena.id}", f"(asked elsewhere) {arena.question}"
            unseen.append(Arena.model_validate(data))
    write_bundle(unseen, tmp_path / "store.jsonl")
    config = ServeConfig(port=0, arenas=[str(tmp_path / "store.jsonl")], token="op-token", sandbox=SandboxConfig(workers=1))
    with GymThread(config) as gym:
        done = subprocess.run([*CLI, "train", "grpo", "--model", "tiny", "--gym", gym.url, "--token", "op-token", "--out", str(tmp_path / "g"),
                               "--max-steps", "2", "--batch-size", "2", "--num-generations", "2", "--max-turns", "1",
                               "--max-new-tokens", "8", "--no-abf", "--save-steps", "100", "--no-gradient-checkpointing"],
                              capture_output=True, text=True, timeout=600)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert '"steps": 2' in done.stdout
    records = [json.loads(line) for line in (tmp_path / "g" / "trajectories.jsonl").read_text().splitlines()]
    assert len(records) >= 4 and {r["arena_id"] for r in records} <= {a.id for a in unseen}
    assert all(r["error"] is None and r["reward"] is not None for r in records)
    questions = {a.id: a.question for a in unseen}
    assert all(r["messages"][1] == {"role": "user", "content": questions[r["arena_id"]]} for r in records)  # the gym's prompt
    own = {a.id: {t.name for t in a.tools} for a in unseen}
    assert all({t["function"]["name"] for t in r["tools"]} > own[r["arena_id"]] for r in records)  # distractors from the other arena
