"""Run folders for the viewer's tests: real eval runs over the built-in airline world (oracle and random, so a
comparison has arenas that flip, and bookings leave state diffs), and a synthetic one of any size."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from clients.evaluation import EvalConfig, run_eval


def eval_runs(root: Path) -> tuple[Path, Path]:
    """Two real runs played over MCP against an in-process gym: `oracle` solves everything, `random` does not."""
    out = []
    for policy in ("oracle", "random"):
        config = EvalConfig(policy=policy, arenas="airline-*", out=root / policy, concurrency=4, failure_rate=0.3 if policy == "random" else 0.0)
        asyncio.run(run_eval(config, progress=False))
        out.append(config.out)
    return out[0], out[1]


HOSTILE_TEXT = '<script>document.title="pwned"</script><img src=x onerror=alert(1)>'


def synthetic_run(folder: Path, n: int) -> Path:
    """`n` episode records written straight to trajectories.jsonl (no gym): the table's scale test."""
    folder.mkdir(parents=True, exist_ok=True)
    domains, kinds = ("airline", "retail", "clinic"), ("single_hop", "multi_hop", "parallel_single_hop")
    with (folder / "trajectories.jsonl").open("w") as f:
        for i in range(n):
            calls = [{"index": j, "tool": "t", "arguments": {}, "status": "ok" if (i + j) % 5 else "injected_failure",
                      "injected": None if (i + j) % 5 else "timeout", "started_at": 0.0, "latency_ms": 1.0} for j in range(i % 4)]  # fmt: skip
            record = {
                "arena_id": f"arena-{i % 997:04d}", "domain": domains[i % 3], "scenario_type": kinds[i % 3], "policy": "synthetic",
                "messages": [{"role": "user", "content": f"question number {i}" + (HOSTILE_TEXT if i == 7 else "")}],
                "call_log": calls, "error": "boom" if i % 50 == 0 else None,
                "reward": None if i % 50 == 0 else {"reward": (i % 10) / 10, "recall": 0.5, "precision": 0.5, "solved": 1, "n_subtasks": 2, "tool_calls": len(calls)},
            }  # fmt: skip
            f.write(json.dumps(record) + "\n")
    return folder


GRPO_METRIC_KEYS = (
    "loss", "grad_norm", "learning_rate", "num_tokens", "completions/mean_length", "completions/min_length", "completions/max_length",
    "completions/clipped_ratio", "completions/mean_terminated_length", "rewards/gym_reward/mean", "rewards/gym_reward/std", "reward",
    "reward_std", "frac_reward_zero_std", "abf/buffer", "abf/groups_drawn", "abf/groups_dropped", "abf/groups_played", "abf/short_batches",
    "gym/precision", "gym/recall", "gym/solved", "gym/tool_calls", "entropy", "clip_ratio/low_mean", "step_time", "epoch",
)  # fmt: skip
"""The keys a real `astra-gym train grpo` logs (TRL 1.16's GRPOTrainer, plus gym/* and abf/* from the rollout)."""


def training_run(folder: Path, records: list[Path], steps: int = 12, world: int = 2) -> Path:
    """A GRPO run folder as `train grpo` under `world` processes leaves it: metrics.jsonl rows as
    `trainer.callbacks.MetricsWriter` writes them (one object a step), and the played episodes in one file per
    rank (`trainer.distributed.records_path`), taken from real eval runs' records. It also holds what a real file
    can: a line cut short by a kill, a non-finite value, and a step logged again after a resume."""
    from trainer.distributed import records_path

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "metrics.jsonl").open("w") as f:
        for step in range(1, steps + 1):
            row = {"step": step, **{k: round(0.05 * step + i / 100, 4) for i, k in enumerate(GRPO_METRIC_KEYS)}}
            row["abf/groups_dropped"] = float(step % 3)
            f.write(json.dumps(row) + "\n")
        f.write(json.dumps({"step": steps, "loss": float("nan"), "grad_norm": 1.5}) + "\n")  # resumed: the step again; NaN is a gap
        f.write('{"step": 99, "loss": 0.\n')  # cut short
    lines = [line for path in records for line in (path / "trajectories.jsonl").read_text().splitlines()]
    for rank in range(world):
        records_path(folder, rank, world).write_text("".join(line + "\n" for line in lines[rank::world]))
    return folder


def synthesis_run(folder: Path, records: Path) -> Path:
    """A synthesis run folder (`synth.pipeline`): judged trajectories around real eval records, and its summary."""
    from synth.models import JudgedTrajectory, JudgeVerdict, SynthTask

    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, line in enumerate((records / "trajectories.jsonl").read_text().splitlines()):
        record = json.loads(line)
        query = next((m["content"] for m in record["messages"] if m.get("role") == "user"), "")
        task = SynthTask(id=f"t{i}", server="airline", query=query, kind="chain", kept=True)
        verdict = JudgeVerdict(scores={"planning": 0.5 + i / 20}, reasons={"planning": "<b>plans</b>"}, reward=0.5 + i / 20)
        rows.append(JudgedTrajectory(id=task.id, task=task, record=record, verdict=verdict, kept=i % 2 == 0, reason=None if i % 2 == 0 else "below min reward"))
    (folder / "trajectories.jsonl").write_text("".join(r.model_dump_json() + "\n" for r in rows))
    (folder / "summary.json").write_text(json.dumps({"servers": 1, "trajectories": {"rolled_out": len(rows), "judged": len(rows), "not_played": 0}}))
    return folder
