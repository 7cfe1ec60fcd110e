"""CPU cost of one writing call's state diff (`gym_server/sandbox/inside/statediff.py`), per call, in process.

The diff runs in the sandbox process after every call that changed the state: two fresh handles load the before
and after images, rows are compared by key. Measured here on the built-in airline world (a booking: one row
added, one seat count changed) and on a table of N rows with one row changed (the scan is the cost).
    python -m bench.state_diff_cost [--rows 1000 10000]
Figures: docs/benchmarks.md, "State diffs".
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import time
from pathlib import Path

from gym_server.sandbox.inside.statediff import StateDiffer

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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, nargs="+", default=[1000, 10000])
    args = ap.parse_args()
    print(f"airline booking: {per_call_ms(*_airline()):.3f} ms CPU per diff")
    for n in args.rows:
        print(f"{n} rows, one changed: {per_call_ms(*_table(n), repeat=20 if n > 5000 else 100):.3f} ms CPU per diff")


if __name__ == "__main__":
    main()
