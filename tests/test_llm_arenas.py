"""LLM arena synthesis (QA decomposition -> validated, sandbox-verified, merged arenas) against a scripted model."""

from __future__ import annotations

import pytest

from clients.evaluation import EvalConfig, run_eval
from gym_server.config import ServeConfig
from gym_server.models import Arena, ScenarioType
from gym_server.sandbox.pool import SandboxConfig, SandboxPool
from gym_server.serve import AppThread, GymThread
from gym_server.store import write_bundle
from gym_server.validation import validate_arena
from synth.arenas.llm_pipeline import synthesize_arena
from clients.llm import LLMClient, LLMConfig
from tests.fixtures.scripted_llm import create_scripted_llm


@pytest.fixture(scope="module")
def llm(gym):
    with AppThread(create_scripted_llm(gym.url)) as server:
        yield server.url + "/v1"


async def test_every_scenario_type_becomes_a_valid_arena_the_oracle_solves(llm, tmp_path):
    arenas = []
    async with LLMClient(LLMConfig(base_url=llm, model="arena")) as client, SandboxPool(SandboxConfig(workers=2)) as pool:
        for scenario in ScenarioType:
            outcome = await synthesize_arena(client, pool, scenario, "movies", knowledge="Duck Soup (1933) was directed by Leo McCarey.")
            assert outcome.stage == "done", outcome.reason
            arena = Arena.model_validate(outcome.arena)
            assert (await validate_arena(arena, pool)).ok
            arenas.append(arena)
    merged = {a.scenario_type: a for a in arenas}[ScenarioType.parallel_single_hop]
    assert [t.name for t in merged.tools] == ["get_capital"]  # two sub-environments merged into one tool
    store = tmp_path / "llm.jsonl"
    write_bundle(arenas, store)
    with GymThread(ServeConfig(port=0, arenas=[str(store)], sandbox=SandboxConfig(workers=1))) as gym:
        report = await run_eval(EvalConfig(policy="oracle", gym=gym.url, out=tmp_path / "eval"), progress=False)
    assert report["overall"]["episodes"] == 4 and report["overall"]["reward"] == 1.0


@pytest.mark.parametrize(("model", "stage", "reason"), [
    ("arena-cyclic", "validation", "dependency cycle"),
    ("arena-wrongcode", "environment", "not the answer"),
    ("arena-nondet", "environment", "not deterministic"),
    ("arena-socket", "environment", "not permitted in the sandbox"),
])  # fmt: skip
async def test_planted_bad_outputs_are_rejected_with_reasons(llm, model, stage, reason):
    async with LLMClient(LLMConfig(base_url=llm, model=model)) as client, SandboxPool(SandboxConfig(workers=1)) as pool:
        outcome = await synthesize_arena(client, pool, ScenarioType.multi_hop, "movies")
    assert outcome.arena is None and outcome.stage == stage and reason in outcome.reason, outcome.reason


def test_cli_llm_mode_over_the_knowledge_corpus(llm, tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    knowledge = Path(__file__).parent / "fixtures" / "astra_knowledge" / "context_excerpt.jsonl"
    out = tmp_path / "llm.jsonl"
    cmd = [sys.executable, "-m", "gym_server.cli", "synth", "arenas", "--mode", "llm", "--llm-base-url", llm, "--model", "arena",
           "--knowledge", str(knowledge), "--n", "8", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    arenas = [Arena.model_validate(__import__("json").loads(x)) for x in out.read_text().splitlines()]
    assert len(arenas) == 8 and {a.scenario_type for a in arenas} == set(ScenarioType)
    assert {a.domain for a in arenas} <= {"weather", "medicine", "movie", "school", "railway", "bank", "restaurant", "ecommerce", "travel", "basketball"}
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)  # resumes: nothing new to do
    assert again.returncode == 0 and "kept 0, rejected 0" in again.stdout and len(out.read_text().splitlines()) == 8
    valid = subprocess.run([sys.executable, "-m", "gym_server.cli", "arenas", "validate", str(out)], capture_output=True, text=True, timeout=300)
    assert valid.returncode == 0 and "8/8 arenas valid" in valid.stdout
    asked = tmp_path / "asked.jsonl"
    by_question = subprocess.run([*cmd[:11], "--question", "Who directed Duck Soup, and when was he born?", "--domain", "movie",
                                  "--language", "zh", "--n", "2", "--out", str(asked)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert by_question.returncode == 0, by_question.stderr
    rows = [__import__("json").loads(x) for x in asked.read_text().splitlines()]
    assert len(rows) == 2 and {r["domain"] for r in rows} == {"movie", "general"} and {r["language"] for r in rows} == {"zh"}
