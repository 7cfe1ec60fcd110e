"""The sandbox's two kernel boundaries side by side: bubblewrap and a container (podman or docker, with the
image of `python -m gym_server.sandbox.image build`). Per backend: how long the pool takes to start, one
call's latency when calls come one at a time, and calls per second when `concurrency` come at once.

    python -m bench.sandbox_backends [--engine podman] [--runtime runc] [--calls 300] [--concurrency 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from gym_server.models import InitialState
from gym_server.sandbox.pool import SandboxConfig, SandboxPool

SOURCE = "def get(db, k):\n    return db.execute('SELECT v FROM kv WHERE k = ?', (k,)).fetchone()['v']\n"
WORLD = InitialState(ddl=["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"], rows={"kv": [{"k": str(i), "v": f"v{i}"} for i in range(100)]})


async def measure(config: SandboxConfig, calls: int, concurrency: int, starts: int) -> dict[str, Any]:
    start_s = []
    for _ in range(starts):
        started = time.perf_counter()
        async with SandboxPool(config):
            start_s.append(time.perf_counter() - started)
    async with SandboxPool(config) as pool:
        state = await pool.build_state(WORLD)
        for i in range(20):  # warm: the code is cached in the template after the first call
            await pool.call(SOURCE, "get", {"k": str(i)}, state)
        latencies = []
        for i in range(calls):
            started = time.perf_counter()
            outcome = await pool.call(SOURCE, "get", {"k": str(i % 100)}, state)
            latencies.append(time.perf_counter() - started)
            assert outcome.ok, outcome
        started = time.perf_counter()
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int) -> None:
            async with gate:
                assert (await pool.call(SOURCE, "get", {"k": str(i % 100)}, state)).ok

        await asyncio.gather(*(one(i) for i in range(calls)))
        throughput = calls / (time.perf_counter() - started)
    latencies.sort()
    return {
        "start_s": statistics.median(start_s),
        "p50_ms": 1000 * latencies[len(latencies) // 2],
        "p95_ms": 1000 * latencies[int(len(latencies) * 0.95)],
        "calls_per_s": throughput,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="podman")
    parser.add_argument("--runtime", default=None)
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--starts", type=int, default=3)
    args = parser.parse_args()
    backends = {
        "bubblewrap": SandboxConfig(workers=4),
        f"container ({args.engine})": SandboxConfig(workers=4, backend="docker", docker_engine=args.engine, docker_runtime=args.runtime),
    }
    print(f"{'backend':24} {'start s':>8} {'p50 ms':>8} {'p95 ms':>8} {'calls/s':>8}")
    for name, config in backends.items():
        row = await measure(config, args.calls, args.concurrency, args.starts)
        print(f"{name:24} {row['start_s']:8.2f} {row['p50_ms']:8.2f} {row['p95_ms']:8.2f} {row['calls_per_s']:8.0f}")


if __name__ == "__main__":
    asyncio.run(main())
