"""The offline arena generator: 1,000 arenas validate in the sandbox and the oracle solves them over MCP;
the demo and the CLI run end to end."""

from __future__ import annotations

import pytest

import asyncio
import json
import subprocess
import sys

from clients.evaluation import TRAJECTORIES, EvalConfig, load_records, run_eval
from gym_server.config import ServeConfig
from gym_server.sandbox.pool import SandboxConfig, SandboxPool
from gym_server.serve import GymThread
from gym_server.store import write_bundle
from gym_server.validation import validate_arena
from synth.arenas.offline import SCENARIOS, generate, mix_report


def test_generation_is_seeded_and_covers_every_scenario_type():
    first = [a.model_dump() for a in generate(40, seed=5)]
    assert first == [a.model_dump() for a in generate(40, seed=5)]
    assert first != [a.model_dump() for a in generate(40, seed=6)]
    report = mix_report(list(generate(400, seed=1)))
    assert set(report["scenario_share"]) == set(SCENARIOS) and all(v > 0.05 for v in report["scenario_share"].values())
    assert report["scenario_share"]["parallel_multi_hop"] > 0.3 and report["mean_hops"] > 2.5
    assert report["by_domain"] == {"airline": 134, "clinic": 133, "retail": 133}


@pytest.mark.timeout(300)  # ~60 s on a quiet 2-core machine; 110 s seen with other jobs on it
async def test_1000_offline_arenas_validate_and_the_oracle_solves_them_over_mcp(tmp_path):
    arenas = list(generate(1000, seed=11))
    async with SandboxPool(SandboxConfig(workers=2)) as pool:
        reports = await asyncio.gather(*(validate_arena(a, pool) for a in arenas))
    assert [r.problems for r in reports if not r.ok] == []
    store = tmp_path / "offline.jsonl"
    write_bundle(arenas, store)
    with GymThread(ServeConfig(port=0, arenas=[str(store)], sandbox=SandboxConfig(workers=2))) as gym:
        report = await run_eval(EvalConfig(policy="oracle", gym=gym.url, concurrency=32, out=tmp_path / "eval"), progress=False)
    overall = report["overall"]
    failed = [(r.arena_id, r.error) for r in load_records(tmp_path / "eval" / TRAJECTORIES) if r.error][:5]
    assert overall["episodes"] == 1000 and overall["errors"] == 0, (overall, failed)
    assert overall["success_rate"] == 1.0 and overall["reward"] == 1.0, overall
    assert set(report["by_scenario_type"]) == set(SCENARIOS)


def test_cli_synth_arenas_then_validate(tmp_path):
    out = tmp_path / "store.jsonl"
    made = subprocess.run([sys.executable, "-m", "gym_server.cli", "synth", "arenas", "--n", "120", "--seed", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert len(out.read_text().splitlines()) == 120
    mix = json.loads(out.with_suffix(".mix.json").read_text())
    assert mix["arenas"] == 120 and mix["paper_rl_set"]["mean_hops"] == 4.37
    valid = subprocess.run([sys.executable, "-m", "gym_server.cli", "arenas", "validate", str(out)], capture_output=True, text=True, timeout=300)
    assert valid.returncode == 0 and "120/120 arenas valid" in valid.stdout


def test_demo_runs_end_to_end(tmp_path):
    done = subprocess.run([sys.executable, "-m", "gym_server.cli", "demo", "--n", "45", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "reports:" in done.stdout
    oracle = json.loads((tmp_path / "oracle" / "report.json").read_text())["overall"]
    random_ = json.loads((tmp_path / "random" / "report.json").read_text())["overall"]
    assert oracle["success_rate"] == 1.0 and random_["reward"] < 0.2


def test_a_tokenizer_keeps_every_generated_id_whole():
    """The staged training run's tokenizer: any id a question names (seen in training or not) is one token,
    wherever it stands in a call's JSON, and text round-trips exactly."""
    from synth.arenas.offline import entity_ids, generate
    from trainer.tiny import train_tokenizer

    train = list(generate(30, seed=1))
    tokenizer = train_tokenizer([a.question for a in train], vocab_size=512, across_words=True, whole_words=entity_ids())
    ids = set(entity_ids())
    checked = 0
    for arena in generate(200, seed=2):
        for sub in arena.subtasks:
            for value in sub.gold_call.arguments.values():
                if isinstance(value, str) and value in ids:
                    text = f'{{"id": "{value}"}} and {sub.question}'
                    tokens = tokenizer(text)["input_ids"]
                    assert tokenizer.convert_tokens_to_ids(value) in tokens and tokenizer.decode(tokens) == text
                    checked += 1
    assert checked > 200
    assert "UA1000" not in tokenizer.get_vocab() and "UA999" in tokenizer.get_vocab()  # the id space, nothing beyond it
