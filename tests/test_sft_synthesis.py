"""The SFT track end to end: BFCL docs (emulated) and a real stdio MCP server, a scripted model, a dataset
that TRL's SFTTrainer trains a tiny local model on."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gym_server.serve import AppThread
from clients.llm import LLMConfig
from synth.pipeline import SFTSynthConfig, run_pipeline
from tests.fixtures.scripted_llm import create_scripted_llm

FIXTURES = Path(__file__).parent / "fixtures"
TIME = f"time={sys.executable} -m mcp_server_time --local-timezone UTC"


@pytest.fixture(scope="module")
def llm(gym):
    with AppThread(create_scripted_llm(gym.url)) as server:
        yield server.url


def _config(llm: str, out: Path, model: str = "synth") -> SFTSynthConfig:
    return SFTSynthConfig(
        tooldocs=[str(FIXTURES / "bfcl" / "ticket_api.json"), str(FIXTURES / "bfcl" / "message_api.json")],
        upstreams=[TIME], llm=LLMConfig(base_url=llm + "/v1", model=model, cache_path=out / "llm.sqlite"),
        chains_per_server=3, out=out, concurrency=8,
    )  # fmt: skip


async def test_pipeline_produces_a_dataset_trl_trains_on(llm, http, tmp_path):
    summary = await run_pipeline(_config(llm, tmp_path), show=False)
    stats = summary["export"]
    assert stats["samples"] > 0 and stats["servers"] == 3 and stats["mean_tool_calls"] >= 1
    tasks = [json.loads(x) for x in (tmp_path / "tasks.jsonl").read_text().splitlines()]
    assert {t["augmentation"] for t in tasks} == {"original", "paraphrase", "complexity", "persona"}
    assert all(not t["kept"] and "realism" in t["reason"] for t in tasks if t["augmentation"] == "persona")
    chains = [json.loads(x) for x in (tmp_path / "chains.jsonl").read_text().splitlines()]
    assert all(c["verified"] and c["back_translation"] == c["tools"] for c in chains if c["tools"])
    judged = [json.loads(x) for x in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    calls = [c for j in judged if j["task"]["server"] != "time" for c in j["record"]["call_log"]]
    assert any(c["injected"] for c in calls) and not all(c["injected"] for c in calls)  # emulators fail ~20%
    real = [j for j in judged if j["task"]["server"] == "time"]
    assert real and any(c["status"] == "ok" and c["source_arena"] is None for j in real for c in j["record"]["call_log"])

    from datasets import load_dataset

    dataset = load_dataset("json", data_files=str(tmp_path / "sft" / "train.jsonl"), split="train")
    assert set(dataset.column_names) >= {"messages", "tools", "system_prompt"} and len(dataset) == stats["samples"]
    from clients.agent import DEFAULT_SYSTEM_PROMPT  # the prompt eval and GRPO send, first in every SFT row

    assert all(r["system_prompt"] == DEFAULT_SYSTEM_PROMPT and r["messages"][0] == {"role": "system", "content": DEFAULT_SYSTEM_PROMPT} for r in dataset)

    from transformers import TrainingArguments  # noqa: F401  (TRL's config builds on it)
    from trl import SFTConfig, SFTTrainer

    from trainer.tiny import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer("tiny")
    args = SFTConfig(output_dir=str(tmp_path / "ckpt"), max_steps=2, per_device_train_batch_size=2, logging_steps=1,
                     assistant_only_loss=True, max_length=2048, report_to=[], save_strategy="no", use_cpu=True)  # fmt: skip
    trainer = SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer)
    result = trainer.train()
    assert result.global_step == 2 and result.training_loss > 0


async def test_judge_failures_never_pass(llm, tmp_path):
    summary = await run_pipeline(_config(llm, tmp_path, model="synth-badjudge"), show=False)
    assert summary["export"]["samples"] == 0
    judged = [json.loads(x) for x in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    assert judged and all(j["verdict"]["reward"] is None and "no valid JSON" in j["verdict"]["error"] for j in judged)
    assert summary["export"]["rejection_reasons"] == {"judge failed": len(judged)}


def test_killed_pipeline_resumes_without_repeating_llm_requests(llm, tmp_path):
    import httpx2

    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "gym_server.cli", "synth", "sft", "--tooldocs", str(FIXTURES / "bfcl" / "ticket_api.json"),
           "--tooldocs", str(FIXTURES / "bfcl" / "posting_api.json"), "--llm-base-url", llm + "/v1", "--model", "synth-resume",
           "--chains-per-server", "3", "--concurrency", "2", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    traj = out / "trajectories.jsonl"
    while time.time() < deadline and (not traj.exists() or len(traj.read_text().splitlines()) < 2):
        time.sleep(0.05)
    proc.kill()
    proc.wait()
    partial = len(traj.read_text().splitlines())
    import sqlite3

    from clients.llm import LLMClient, LLMConfig

    with sqlite3.connect(out / "llm-cache.sqlite") as db:
        cached = {row[0] for row in db.execute("SELECT key FROM responses")}
    key = LLMClient(LLMConfig(base_url="http://x", model="x"))._key
    httpx2.get(llm.removesuffix("/v1") + "/log")  # empty the log: what follows is the resumed run's traffic
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    rows = [json.loads(x) for x in traj.read_text().splitlines()]
    assert len(rows) == len({r["id"] for r in rows}) and len(rows) > partial  # finished, nothing twice
    resumed = httpx2.get(llm.removesuffix("/v1") + "/log").json()
    assert cached and resumed and not [b for b in resumed if key(b) in cached]  # nothing answered before the kill is asked again
    assert (out / "sft" / "train.jsonl").exists() and json.loads((out / "sft" / "stats.json").read_text())["samples"] > 0


def test_stage_verbs_run_one_stage_each(llm, tmp_path):
    out = tmp_path / "staged"
    common = ["--tooldocs", str(FIXTURES / "bfcl" / "message_api.json"), "--llm-base-url", llm + "/v1", "--model", "synth",
              "--chains-per-server", "2", "--out", str(out)]  # fmt: skip
    for verb, produced in (("chains", "chains.jsonl"), ("tasks", "tasks.jsonl"), ("trajectories", "sft/train.jsonl")):
        done = subprocess.run([sys.executable, "-m", "gym_server.cli", "synth", verb, *common], capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        assert (out / produced).exists()
        if verb == "chains":
            assert not (out / "tasks.jsonl").exists()
    dead = subprocess.run([sys.executable, "-m", "gym_server.cli", "synth", "chains", "--tooldocs", str(FIXTURES / "bfcl" / "math_api.json"),
                           "--llm-base-url", "http://127.0.0.1:9/v1", "--model", "x", "--out", str(tmp_path / "dead")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert dead.returncode == 1 and "cannot reach" in dead.stderr and "resume" in dead.stderr


async def test_rollouts_the_gym_could_not_serve_are_not_judged_and_fail_the_stage(llm, tmp_path, monkeypatch):
    from gym_server.serve import GymThread

    private = GymThread.private.__func__  # type: ignore[attr-defined]

    def unreachable(cls, config=None, backends=()):  # MCP URLs that point nowhere, as a wrong --public-url would make them
        gym = private(cls, config, backends)
        gym.config.public_url = "http://127.0.0.1:9"
        return gym

    monkeypatch.setattr(GymThread, "private", classmethod(unreachable))
    with pytest.raises(RuntimeError, match="no rollout could be played"):
        await run_pipeline(_config(llm, tmp_path), show=False)
    judged = [json.loads(x) for x in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    assert judged and all(j["verdict"]["error"].startswith("not played") and j["record"]["reward"] is None for j in judged)
