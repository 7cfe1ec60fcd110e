"""Opening a 10,000-arena store: first open (index built) and reopen (index reused), against a baseline of
reading the same JSONL with json.loads alone, measured in the same run.

    python bench/arena_store.py [--n 10000]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gym_server.builtin import builtin_arenas  # noqa: E402
from gym_server.store import ArenaStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=10_000)
    args = ap.parse_args()
    base = [a.model_dump(mode="json", by_alias=True) for a in builtin_arenas()]
    folder = Path(tempfile.mkdtemp())
    with (folder / "store.jsonl").open("w") as fh:
        for i in range(args.n):
            fh.write(json.dumps({**base[i % len(base)], "id": f"arena-{i:06d}"}) + "\n")
    t0 = time.perf_counter()
    with (folder / "store.jsonl").open() as fh:
        parsed = [json.loads(line) for line in fh]
    baseline = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = ArenaStore([str(folder)])
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    again = ArenaStore([str(folder)])
    reopen = time.perf_counter() - t0
    t0 = time.perf_counter()
    page, total = again.summaries(offset=9000, limit=100, scenario_type="multi_hop")
    listing = time.perf_counter() - t0
    assert len(store) == len(again) == len(parsed) == args.n
    print(f"{args.n} arenas: json.loads only {baseline:.2f} s | first open (index built) {first:.2f} s "
          f"({first / baseline:.1f}x) | reopen (index reused) {reopen:.2f} s ({reopen / baseline:.2f}x) | "
          f"filtered page {listing * 1000:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
