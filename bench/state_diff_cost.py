"""What a writing call's state diff (`gym_server/sandbox/inside/statediff.py`) costs, and who pays for it.

1. CPU per diff, in process: two images loaded on one fresh handle, rows compared by key. Measured on the
   built-in airline world (a booking: one row added, one seat count changed) and on a table of N rows with one
   row changed (the scan is the cost).
2. The call's path, through the real sandbox pool (what the gym awaits for every call): a call that changes one
   row of an N-row table, with diffs off and on. The process owes each diff until the gym asks for them
   (`gym_server/sandbox/diffs.py`: when the log is read or the episode ends), so with diffs on the reply should
   come as fast as with them off; then the episode's diffs are asked for in one batch, timed. `--think-ms` is the
   pause between an episode's calls (an agent's turn). Past `max_owed_diff_bytes` of kept images (large
   tables) a process computes the oldest diffs between calls, which back-to-back calls then wait for.
    python -m bench.state_diff_cost [--rows 1000 10000] [--path-rows 10000] [--calls 30] [--think-ms 20]
Figures: docs/benchmarks.md, "State diffs".
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sqlite3
import statistics
import time
from pathlib import Path

from gym_server.models import InitialState
from gym_server.sandbox.config import SandboxConfig
from gym_server.sandbox.inside.statediff import StateDiffer
from gym_server.sandbox.pool import SandboxPool

WORLD = Path(__file__).resolve().parent.parent / "gym_server" / "builtin" / "airline" / "world.json"


def _connect() -> sqlite3.Connection:
    return sqlite3.connect(":memory:", isolation_level=None)


def _airline() -> tuple[bytes, bytes]:
    world = json.loads(WORLD.read_text())
    db = _connect()
    for ddl in world["ddl"]:
        db.execute(ddl)
    for table, rows in world["rows"].items():
        for row in rows:
            db.execute(f'INSERT INTO "{table}" ({", ".join(row)}) VALUES ({", ".join("?" * len(row))})', list(row.values()))
    before = db.serialize()
    db.execute("UPDATE flights SET seats_left = seats_left - 1 WHERE id = 'B6400'")
    db.execute("INSERT INTO bookings VALUES ('B6400-001', 'B6400', 'P001', 'confirmed')")
    return before, db.serialize()


def _table(n: int) -> tuple[bytes, bytes]:
    db = _connect()
    db.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)")
    db.executemany("INSERT INTO t VALUES (?, ?, ?)", [(i, f"item {i}", i % 7) for i in range(n)])
    before = db.serialize()
    db.execute("UPDATE t SET qty = qty + 1 WHERE id = 1")
    return before, db.serialize()


def per_call_ms(before: bytes, after: bytes, repeat: int = 200) -> float:
    differ = StateDiffer(_connect, lambda v: json.dumps(v, separators=(",", ":")).encode())
    differ.diff(before, after, lambda _: None)
    t0 = time.process_time()
    for _ in range(repeat):
        differ.diff(before, after, lambda _: None)
    return (time.process_time() - t0) / repeat * 1000


BUMP = """
def bump(db, id):
    db.execute("UPDATE t SET qty = qty + 1 WHERE id = ?", (id,))
    return {"id": id}
"""


async def call_path(rows: int, calls: int, think_s: float, diffs: bool) -> dict[str, float]:
    """Median ms from asking the pool for the call to its answer (what the gym awaits), and the ms from asking
    for the episode's owed diffs to having them all (one batch)."""
    initial = InitialState(ddl=["CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, qty INTEGER)"],
                           rows={"t": [{"id": i, "name": f"item {i}", "qty": i % 7} for i in range(rows)]})  # fmt: skip
    reply_ms: list[float] = []
    pending = []
    async with SandboxPool(SandboxConfig(workers=1, state_diffs=diffs, max_state_bytes=256 * 1024 * 1024)) as pool:
        state = await pool.build_state(initial)
        for i in range(calls + 3):
            t0 = time.perf_counter()
            outcome = await pool.call(BUMP, "bump", {"id": i % rows}, state, owner="bench/t")
            t1 = time.perf_counter()
            assert outcome.ok and outcome.state is not None, outcome.error
            state = outcome.state
            if outcome.diff is not None:
                assert not outcome.diff.done()  # owed: nothing computed for the call's sake
                pending.append(outcome.diff)
            if i >= 3:  # the first calls fork and bind the process
                reply_ms.append((t1 - t0) * 1000)
            await asyncio.sleep(think_s)
        t0 = time.perf_counter()
        pool.settle("bench")
        for diff in await asyncio.gather(*pending):
            assert diff.error is None and diff.tables["t"].n_changed == 1, diff
        batch_ms = (time.perf_counter() - t0) * 1000
    return {"reply": statistics.median(reply_ms), "batch": batch_ms, "diffs": len(pending)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    ap.add_argument("--path-rows", type=int, default=10000, help="table size for the call-path measurement")
    ap.add_argument("--calls", type=int, default=30)
    ap.add_argument("--think-ms", type=float, nargs="+", default=[20.0, 0.0])
    args = ap.parse_args()
    print(f"airline booking: {per_call_ms(*_airline()):.3f} ms CPU per diff")
    for n in args.rows:
        print(f"{n} rows, one changed: {per_call_ms(*_table(n), repeat=20 if n > 5000 else 100):.3f} ms CPU per diff")
    for think in args.think_ms:
        off = asyncio.run(call_path(args.path_rows, args.calls, think / 1000, diffs=False))
        on = asyncio.run(call_path(args.path_rows, args.calls, think / 1000, diffs=True))
        print(f"call path, {args.path_rows}-row table, {think:g} ms between calls: reply {off['reply']:.2f} ms (diffs off) vs "
              f"{on['reply']:.2f} ms (diffs on); the episode's {on['diffs']:.0f} diffs asked for and in after {on['batch']:.1f} ms")  # fmt: skip


if __name__ == "__main__":
    main()
