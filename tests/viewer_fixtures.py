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
