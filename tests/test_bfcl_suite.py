"""bfcl-mt: BFCL multi-turn entries played over MCP, answered by BFCL's backend classes in the sandbox and scored
by BFCL's own `multi_turn_checker` (the verdicts here are compared with the checker run in this process)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

pytest.importorskip("bfcl_eval", reason="bfcl-eval is installed light by CI (astra-gym suites install bfcl-mt)")

from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker, multi_turn_utils  # noqa: E402

from clients.gym_client import GymClient  # noqa: E402
from clients.policies import OraclePolicy, suite_turn_calls  # noqa: E402
from clients.runner import run_episode  # noqa: E402
from clients.toolbox import MCPToolbox, shared_http_client  # noqa: E402
from gym_server.config import ServeConfig  # noqa: E402
from gym_server.models import Arena, EpisodeCreate  # noqa: E402
from gym_server.sandbox.config import SandboxConfig  # noqa: E402
from gym_server.serve import GymThread  # noqa: E402
from gym_server.suites.bfcl.data import CATEGORIES  # noqa: E402

pytestmark = pytest.mark.asyncio(loop_scope="module")


@pytest.fixture(scope="module")
def suite_gym() -> Iterator[GymThread]:
    config = ServeConfig(port=0, arenas=[], suites=["bfcl-mt"], sandbox=SandboxConfig(cpu_s=1.0, call_timeout_s=5.0))
    with GymThread(config) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def gym(suite_gym: GymThread) -> AsyncIterator[GymClient]:
    async with shared_http_client() as http:
        yield GymClient(suite_gym.url, http)


def official_verdict(arena: Arena, decoded: list[list[list[str]]]) -> dict[str, Any]:
    """BFCL's checker in this process, on the same decoded calls, under a name used once (its caches removed)."""
    data = arena.suite_data or {}
    entry = {"id": data["entry_id"], "initial_config": data["initial_config"], "involved_classes": data["involved_classes"]}
    name = f"test_{secrets.token_hex(6)}"
    try:
        return multi_turn_checker.multi_turn_checker(decoded, data["ground_truth"], entry, data["entry_id"].rsplit("_", 1)[0], name)
    finally:
        for key in [k for k in vars(multi_turn_utils) if k.startswith(name)]:
            delattr(multi_turn_utils, key)


def decoded_from_log(calls: list[Any], n_turns: int) -> list[list[list[str]]]:
    turns: list[list[list[str]]] = [[] for _ in range(n_turns)]
    for call in calls:
        if call.status == "ok" and call.rendered:
            turns[call.turn].append([call.rendered])
    return turns


async def play_script(gym: GymClient, arena_id: str, script: list[list[tuple[str, dict[str, Any]]]]) -> tuple[Any, Any]:
    """Play fixed calls per user turn through the official MCP SDK client; returns (score, log)."""
    created = await gym.create_episode(EpisodeCreate(arena_id=arena_id))
    try:
        async with MCPToolbox.http_endpoint(created.mcp_url, gym.http) as toolbox:
            for turn, calls in enumerate(script):
                if turn:
                    advanced = await gym.next_turn(created.episode_id)
                    assert advanced.turn == turn
                    if advanced.tools_changed:
                        await toolbox.refresh_tools()
                for name, arguments in calls:
                    await toolbox.call(name, arguments)
        return await gym.score(created.episode_id), await gym.log(created.episode_id)
    finally:
        await gym.delete(created.episode_id)


async def test_oracle_scores_every_sampled_entry_of_each_category(gym: GymClient) -> None:
    """A sample per category here; bench/bfcl_oracle.py plays all 800 (799: see the data defect below)."""
    ids = [f"bfcl.multi_turn_{c}_{i}" for c in CATEGORIES for i in (0, 7, 13)]
    records = await asyncio.gather(*(run_episode(gym, OraclePolicy(), i, system_prompt=None) for i in ids))
    for record in records:
        assert record.error is None, record.error
        assert record.reward is not None and record.reward.verdict is not None
        assert record.reward.verdict.valid, (record.arena_id, record.reward.verdict)
        assert record.reward.reward == 1.0
        assert record.reward.verdict.versions["bfcl-eval"] and record.reward.verdict.versions["data"].startswith("BFCL_v")
    assert {r.reward.verdict.category for r in records if r.reward and r.reward.verdict} == set(CATEGORIES)


async def test_a_held_out_function_called_early_runs_as_in_bfcls_harness(gym: GymClient) -> None:
    """miss_func_49's ground truth calls `tail` at turn 1, though the entry lists `tail` only from turn 3. BFCL's
    harness runs any method of the entry's classes the model names, so the gym does too (unlisted until then),
    and the oracle passes the checker."""
    record = await run_episode(gym, OraclePolicy(), "bfcl.multi_turn_miss_func_49", system_prompt=None)
    assert record.reward is not None and record.reward.verdict is not None
    assert record.reward.reward == 1.0 and record.reward.verdict.error_type is None
    early = [c for c in record.call_log if c.tool == "tail" and c.turn == 1]
    assert early and all(c.status == "ok" for c in early)


@pytest.mark.parametrize(
    "perturb, expected",
    [
        ("wrong_argument", "multi_turn:instance_state_mismatch"),
        ("skipped_call", "multi_turn:instance_state_mismatch"),
        ("empty_turn", "multi_turn:empty_turn_model_response"),
        ("extra_write", "multi_turn:instance_state_mismatch"),
    ],
)
async def test_perturbed_answers_fail_with_the_checkers_error_type(gym: GymClient, perturb: str, expected: str) -> None:
    arena = await gym.arena("bfcl.multi_turn_base_0")
    script = [suite_turn_calls(arena, t) for t in range(arena.n_turns)]
    assert script[0][0][0] == "cd" and script[0][1][0] == "mkdir"
    if perturb == "wrong_argument":
        script[0][1] = ("mkdir", {"dir_name": script[0][1][1]["dir_name"] + "_x"})
    elif perturb == "skipped_call":
        del script[0][1]
    elif perturb == "empty_turn":
        script[1] = []
    else:
        script[0].append(("touch", {"file_name": "intruder.txt"}))
    score, log = await play_script(gym, arena.id, script)
    assert score.verdict is not None and not score.verdict.valid and score.reward == 0.0
    assert score.verdict.error_type == expected
    official = official_verdict(arena, decoded_from_log(log.calls, arena.n_turns))
    assert official["valid"] is False and official["error_type"] == score.verdict.error_type


async def test_fifty_concurrent_episodes_of_one_entry_never_see_each_others_state(gym: GymClient) -> None:
    arena_id = "bfcl.multi_turn_base_0"

    async def one(i: int) -> tuple[str, str]:
        created = await gym.create_episode(EpisodeCreate(arena_id=arena_id))
        try:
            async with MCPToolbox.http_endpoint(created.mcp_url, gym.http) as toolbox:
                await toolbox.call("mkdir", {"dir_name": f"mine_{i}"})
                await toolbox.call("cd", {"folder": f"mine_{i}"})
                await toolbox.call("touch", {"file_name": f"only_{i}.txt"})
                listing = (await toolbox.call("ls", {})).text
                await toolbox.call("cd", {"folder": ".."})
                top = (await toolbox.call("ls", {})).text
            return listing, top
        finally:
            await gym.delete(created.episode_id)

    results = await asyncio.gather(*(one(i) for i in range(50)))
    for i, (listing, top) in enumerate(results):
        assert f"only_{i}.txt" in listing and listing.count("only_") == 1, listing
        assert f"mine_{i}" in top and top.count("mine_") == 1, top


async def test_miss_func_tools_appear_at_their_turn_for_the_official_sdk_client(gym: GymClient) -> None:
    arena = await gym.arena("bfcl.multi_turn_miss_func_0")
    assert arena.turns[3].add_tools == ["sort"] and arena.turns[3].message.startswith("I have updated some more functions")
    created = await gym.create_episode(EpisodeCreate(arena_id=arena.id))
    try:
        assert created.n_turns == 5 and "sort" not in {t["name"] for t in created.tools}
        async with MCPToolbox.http_endpoint(created.mcp_url, gym.http) as toolbox:
            seen = [{t.name for t in toolbox.tools}]
            early = await toolbox.call("sort", {"file_name": "final_report.pdf"})  # unlisted, yet BFCL would run it
            assert not early.is_error
            changed = []
            for _ in range(3):
                advanced = await gym.next_turn(created.episode_id)
                changed.append(advanced.tools_changed)
                seen.append({t.name for t in await toolbox.refresh_tools()})
            assert changed == [False, False, True]
            assert "sort" not in seen[2] and "sort" in seen[3] and seen[3] - seen[0] == {"sort"}
        log = await gym.log(created.episode_id)
        assert [(c.tool, c.status, c.turn) for c in log.calls] == [("sort", "ok", 0)]
        await gym.next_turn(created.episode_id)
        with pytest.raises(Exception, match="last user turn"):
            await gym.next_turn(created.episode_id)
    finally:
        await gym.delete(created.episode_id)


async def test_a_conversation_cut_short_is_force_terminated(gym: GymClient) -> None:
    arena = await gym.arena("bfcl.multi_turn_base_0")
    score, _ = await play_script(gym, arena.id, [suite_turn_calls(arena, 0)])
    assert score.verdict is not None and score.verdict.error_type == "multi_turn:force_terminated"


async def test_model_arguments_are_data_and_the_backend_is_contained(gym: GymClient) -> None:
    """A key that would break out of the rendered call string is refused before anything runs; a power that
    would take minutes is stopped by the sandbox's CPU limit and leaves no trace; the episode keeps serving."""
    created = await gym.create_episode(EpisodeCreate(arena_id="bfcl.multi_turn_base_15"))
    try:
        async with MCPToolbox.http_endpoint(created.mcp_url, gym.http) as toolbox:
            names = {t.name for t in toolbox.tools}
            assert {"power", "mkdir"} <= names
            hostile = await toolbox.call("mkdir", {"dir_name": "a", "x=1) or __import__('os').system('id') or (": 1})
            assert hostile.is_error and "identifiers" in hostile.text
            huge = await toolbox.call("power", {"base": 10, "exponent": 10**9})
            assert huge.is_error and "cpu time limit" in huge.text.lower(), huge.text
            fine = await toolbox.call("mkdir", {"dir_name": "after"})
            assert not fine.is_error
        log = await gym.log(created.episode_id)
        assert [c.rendered for c in log.calls if c.status == "ok"] == ["mkdir(dir_name='after')"]
        made = next(c for c in log.calls if c.status == "ok")
        assert made.diff is not None and made.diff.error is None and made.diff.tables  # the backend's state changed
    finally:
        await gym.delete(created.episode_id)


async def test_without_bfcl_eval_the_suite_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from gym_server.suites.bfcl import data

    monkeypatch.setitem(sys.modules, "bfcl_eval", None)
    with pytest.raises(data.BfclMissing, match=r"pip install --no-deps bfcl-eval==2026\.3\.23"):
        data.versions()
    assert "astra-gym suites install bfcl-mt" in data.INSTALL_HINT


async def test_a_scripted_openai_model_is_scored_as_the_official_checker_scores_its_calls(suite_gym: GymThread, gym: GymClient, tmp_path: Any) -> None:
    from clients.evaluation import EvalConfig, run_eval
    from gym_server.serve import AppThread
    from tests.fixtures.scripted_bfcl_llm import create_scripted_bfcl_llm

    kinds = {"bfcl.multi_turn_base_10": "gold", "bfcl.multi_turn_miss_func_20": "stepwise", "bfcl.multi_turn_miss_param_30": "gold",
             "bfcl.multi_turn_long_context_40": "stepwise", "bfcl.multi_turn_base_11": "skip_last", "bfcl.multi_turn_base_12": "endless"}  # fmt: skip
    arenas = {i: await gym.arena(i) for i in kinds}
    plans = {a.turns[0].message: (kinds[i], [suite_turn_calls(a, t) for t in range(a.n_turns)]) for i, a in arenas.items()}
    assert len(plans) == len(kinds)  # the scripted model recognizes each entry by its first message
    with AppThread(create_scripted_bfcl_llm(plans)) as llm:
        config = EvalConfig(policy="openai", model="scripted", base_url=llm.url + "/v1", suite="bfcl-mt", gym=suite_gym.url,
                            arenas=",".join(kinds), concurrency=6, out=tmp_path)  # fmt: skip
        report = await run_eval(config, progress=False)
    assert config.system_prompt is None and config.max_turns == 21
    from clients.evaluation import load_records

    records = {r.arena_id: r for r in load_records(tmp_path / "trajectories.jsonl")}
    assert set(records) == set(kinds)
    for arena_id, record in records.items():
        assert record.error is None and record.reward is not None and record.reward.verdict is not None
        assert record.messages[0]["role"] == "user"  # BFCL's function-calling mode sends no system prompt
        verdict, arena = record.reward.verdict, arenas[arena_id]
        if kinds[arena_id] == "endless":
            assert record.stop_reason == "max_turns" and verdict.error_type == "multi_turn:force_terminated"
            assert sum(1 for m in record.messages if m["role"] == "assistant") == 21
            continue
        official = official_verdict(arena, decoded_from_log(record.call_log, arena.n_turns))
        assert (verdict.valid, verdict.error_type) == (official["valid"], official.get("error_type")), arena_id
    valid = {k for k, r in records.items() if r.reward and r.reward.verdict and r.reward.verdict.valid}
    assert valid == {k for k in kinds if kinds[k] in ("gold", "stepwise")}
    suite = report["suite"]
    assert suite["overall"] == {"correct": 4, "total": 6, "accuracy": 4 / 6}
    assert set(suite["by_category"]) == set(CATEGORIES) and suite["versions"]["data"].startswith("BFCL_v")
    assert sum(suite["error_types"].values()) == 2 and "multi_turn:force_terminated" in suite["error_types"]
    assert (tmp_path / "suite.png").stat().st_size > 0 and "Suite bfcl-mt" in (tmp_path / "report.md").read_text()
