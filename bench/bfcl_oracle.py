"""The oracle over all 800 BFCL multi-turn entries, played over MCP through `astra-gym eval --suite bfcl-mt`
and scored by BFCL's checker in the sandbox. Prints the accuracy per category and the time it took.

    python bench/bfcl_oracle.py [--concurrency 8] [--out runs/bench-bfcl-oracle]

Expected: 800/800 (multi_turn_miss_func_49's ground truth calls `tail` two turns before the entry offers it;
as in BFCL's harness, a held-out function runs when named)."""

from __future__ import annotations

import argparse
import asyncio
import shutil
import time
from pathlib import Path

from clients.evaluation import EvalConfig, run_eval


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path("runs/bench-bfcl-oracle"))
    args = parser.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    started = time.perf_counter()
    report = asyncio.run(run_eval(EvalConfig(policy="oracle", suite="bfcl-mt", concurrency=args.concurrency, out=args.out), progress=False))
    suite = report["suite"]
    for name, row in [*suite["by_category"].items(), ("overall", suite["overall"])]:
        print(f"{name:14s} {row['correct']:4d}/{row['total']:<4d} {row['accuracy']:.4f}")
    print(f"error types: {suite['error_types']}  versions: {suite['versions']}  {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
