"""CPU cost of the sandbox's process designs, measured in one run at full load (`--concurrency` calls in flight).

(a) a fresh process per call, forked from the template inside bubblewrap + seccomp;
(b) one process per episode and arena (what the gym does for episodes), with 4 and 10 calls per episode;
(c) the same call's work in one long-lived unsandboxed process (the same `Executor` code path, no fork, no
    exit, no copy-on-write faults): the floor.
CPU = the gym process's own time, and the template's plus every process it reaped (from the template's
/proc entry). Forks are paid off the critical path: a waiting, warmed-up process takes a call, and the
template forks its replacement meanwhile.

    python bench/sandbox_cpu.py [--calls 2000] [--concurrency 16] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gym_server.models import InitialState  # noqa: E402
from gym_server.sandbox.pool import SandboxConfig, SandboxPool  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from gym_throughput import update_section  # noqa: E402

SOURCE = '''
def bump(db, key):
    db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1", (key,))
    return db.execute("SELECT key, n FROM counters WHERE key = ?", (key,)).fetchone()
'''
WORLD = InitialState(ddl=["CREATE TABLE counters (key TEXT PRIMARY KEY, n INTEGER)"])

PERSISTENT = r'''
import sys, time, json
sys.path.insert(0, sys.argv[1])
from inside.execute import Executor
from inside.guard import Guard, preload, safe_builtins
preload()
calls, image = int(sys.argv[2]), bytes.fromhex(sys.stdin.read())
guard = Guard()
source = sys.argv[3]
code = compile(source, "<arena>", "exec")
start = time.process_time()
for i in range(calls):
    ex = Executor(guard, safe_builtins(), {}, cpu_s=5, memory_mb=1024, max_result_bytes=1 << 20, max_result_depth=64, max_state_bytes=1 << 25)
    ex.open()
    ex.load(image)
    header, out = ex.call({"function": "bump", "arguments": {"key": str(i % 7)}}, code, image)
    assert header["ok"], header
    ex.conn.close()
print(json.dumps({"cpu_ms_per_call": (time.process_time() - start) / calls * 1000}))
'''


def sandbox_cpu_s(pool: SandboxPool) -> float:
    """CPU of the template and of every call process it has reaped (the kernel adds a reaped child's time to
    its parent's cutime/cstime), read from the template's /proc entry."""
    bwrap = pool._template.proc.pid
    (template,) = Path(f"/proc/{bwrap}/task/{bwrap}/children").read_text().split()
    fields = Path(f"/proc/{template}/stat").read_text().rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


async def pooled(calls: int, concurrency: int, per_episode: int | None) -> dict[str, float]:
    async with SandboxPool(SandboxConfig(workers=2, max_active=max(concurrency, 2))) as pool:
        state = await pool.build_state(WORLD)
        await pool.call(SOURCE, "bump", {"key": "warm"}, state)
        await asyncio.sleep(0.5)
        c0 = sandbox_cpu_s(pool)
        t0, s0 = time.perf_counter(), time.process_time()
        queue = list(range(calls))

        async def lane(k: int) -> None:
            n = 0
            while queue:
                i = queue.pop()
                owner = f"lane{k}-ep{n // per_episode}/bench" if per_episode else None
                outcome = await pool.call(SOURCE, "bump", {"key": str(i % 7)}, state, owner=owner)
                assert outcome.ok, outcome
                n += 1
                if per_episode and n % per_episode == 0:
                    pool.release(owner.split("/")[0])
        await asyncio.gather(*(lane(k) for k in range(concurrency)))
        wall, gym_cpu = time.perf_counter() - t0, time.process_time() - s0
        await asyncio.sleep(0.5)  # the last processes exit and are reaped
        sandbox_cpu = sandbox_cpu_s(pool) - c0
    return {"calls_per_s": calls / wall, "gym_cpu_ms": gym_cpu / calls * 1000, "sandbox_cpu_ms": sandbox_cpu / calls * 1000}


def persistent(calls: int, image: bytes) -> float:
    inside = str(Path(__file__).resolve().parents[1] / "gym_server" / "sandbox")
    done = subprocess.run([sys.executable, "-c", PERSISTENT, inside, str(calls), SOURCE], input=image.hex(), capture_output=True, text=True, check=True)
    return json.loads(done.stdout)["cpu_ms_per_call"]


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        image = await pool.build_state(WORLD)
    fresh = await pooled(args.calls, args.concurrency, None)
    episodes = {m: await pooled(args.calls, args.concurrency, m) for m in (4, 10)}
    floor = persistent(args.calls, image)
    fork_share = fresh["sandbox_cpu_ms"] - floor
    lines = [
        f"## Sandbox CPU per call ({args.calls} calls, {args.concurrency} in flight, 2 cores)", "",
        "Command: `python bench/sandbox_cpu.py --calls %d --concurrency %d`" % (args.calls, args.concurrency), "",
        "| design | sandbox CPU ms/call | gym CPU ms/call | pool calls/s |", "| --- | --- | --- | --- |",
        f"| a fresh process per call | {fresh['sandbox_cpu_ms']:.2f} | {fresh['gym_cpu_ms']:.2f} | {fresh['calls_per_s']:.0f} |",
        *[f"| one process per episode and arena (the gym's design), {m} calls per episode | {r['sandbox_cpu_ms']:.2f} | {r['gym_cpu_ms']:.2f} | {r['calls_per_s']:.0f} |" for m, r in episodes.items()],
        f"| one process for every call (floor: no fork, no sandbox) | {floor:.2f} | - | - |",
        "", f"Fork, exit and copy-on-write: {fork_share:.2f} ms of CPU per fresh process, paid off the critical path.", "",
    ]  # fmt: skip
    print("\n".join(lines))
    if args.write:
        update_section(args.write, "## Sandbox CPU per call", "\n".join(lines))


if __name__ == "__main__":
    asyncio.run(main())
