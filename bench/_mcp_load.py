"""The load side of bench/gym_throughput.py: MCP clients of both eras driving episodes, client processes for
big soaks, and the CPU meter that charges each server's process tree from a cgroup of its own."""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Literal

import httpx2
from mcp import ClientSession
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

Era = Literal["modern", "legacy"]
"""`modern`: the SDK's `Client` (protocol 2026-07-28, no session); `legacy`: `ClientSession` + `initialize`, the
2025-era handshake most MCP agents still use."""


@asynccontextmanager
async def connect(url: str, http: httpx2.AsyncClient, era: Era) -> AsyncIterator[Callable[[str, dict[str, Any]], Awaitable[Any]]]:
    """An open MCP connection of `era`, as its `call_tool`."""
    if era == "modern":
        async with Client(streamable_http_client(url, http_client=http)) as client:  # type: ignore[arg-type]
            yield client.call_tool
        return
    async with streamable_http_client(url, http_client=http) as (read, write), ClientSession(read, write) as session:
        await session.initialize()
        yield session.call_tool


async def drive(http: httpx2.AsyncClient, urls: list[str], calls_per_episode: int, era: Era = "modern") -> tuple[list[float], int, float]:
    """Open one MCP connection per URL, then time `calls_per_episode` calls on each, all episodes at once."""
    latencies: list[float] = []
    errors = 0
    ready = asyncio.Event()
    opened = 0

    async def episode(url: str) -> None:
        nonlocal errors, opened
        try:
            async with connect(url, http, era) as call_tool:
                opened += 1
                if opened == len(urls):
                    ready.set()
                await ready.wait()
                for i in range(calls_per_episode):
                    t0 = time.perf_counter()
                    result = await call_tool("bump" if "/episodes/" in url else "echo", {"key": "k"})
                    latencies.append(time.perf_counter() - t0)
                    errors += bool(result.is_error)
        except Exception as exc:  # counted, then reported
            errors += 1
            while isinstance(exc, BaseExceptionGroup) and exc.exceptions:
                exc = exc.exceptions[0]
            print(f"  episode error: {type(exc).__name__}: {exc!r}", file=sys.stderr)
            opened += 1
            if opened == len(urls):
                ready.set()

    tasks = [asyncio.create_task(episode(u)) for u in urls]
    await ready.wait()
    t0 = time.perf_counter()
    await asyncio.gather(*tasks)
    return latencies, errors, time.perf_counter() - t0


def _soak_worker(urls: list[str], calls: int, queue: object, era: Era) -> None:
    async def run() -> tuple[list[float], int]:
        limits = httpx2.Limits(max_connections=len(urls) + 10, max_keepalive_connections=len(urls) + 10)
        async with httpx2.AsyncClient(timeout=300, limits=limits) as http:
            lat, err, _ = await drive(http, urls, calls, era)
            return lat, err

    queue.put(asyncio.run(run()))  # type: ignore[attr-defined]


async def soak(urls: list[str], procs: int, calls: int = 3, era: Era = "modern") -> tuple[list[float], int, float]:
    """Many concurrent episodes need more client CPU than one process has: split them over processes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_soak_worker, args=(urls[i::procs], calls, queue, era)) for i in range(procs)]
    t0 = time.perf_counter()
    for w in workers:
        w.start()
    results = [await asyncio.to_thread(queue.get) for _ in workers]
    wall = time.perf_counter() - t0
    for w in workers:
        w.join()
    return [x for lat, _ in results for x in lat], sum(e for _, e in results), wall


class CpuMeter:
    """The CPU time of one server's whole process tree, from a cgroup it and its descendants run in."""

    def __init__(self, name: str) -> None:
        self.path: Path | None = None
        self.usage: Path | None = None
        for root, usage in ((Path("/sys/fs/cgroup/cpuacct"), "cpuacct.usage"), (Path("/sys/fs/cgroup"), "cpu.stat")):
            if (root / usage).exists() or (root / "cgroup.procs").exists():
                try:
                    path = root / f"astra-bench-{name}-{os.getpid()}"
                    path.mkdir()
                except OSError:
                    continue
                if (path / usage).exists():
                    self.path, self.usage = path, path / usage
                    break
                path.rmdir()

    def wrap(self, argv: list[str]) -> list[str]:
        if self.path is None:
            return argv
        return ["sh", "-c", f'echo $$ > {self.path}/cgroup.procs && exec "$@"', "sh", *argv]

    def seconds(self) -> float:
        if self.usage is None:
            return float("nan")
        text = self.usage.read_text()
        if self.usage.name == "cpu.stat":
            return int(text.split("usage_usec", 1)[1].split()[0]) / 1e6
        return int(text) / 1e9

    def remove(self) -> None:
        if self.path is not None:
            for _ in range(50):
                try:
                    self.path.rmdir()
                    return
                except OSError:  # its last processes are still exiting
                    time.sleep(0.1)


async def metered(meter: CpuMeter, run: Any) -> tuple[list[float], int, float, float]:
    """`drive`'s result and the CPU (ms) the server's tree spent per call while it ran."""
    before = meter.seconds()
    latencies, errors, wall = await run
    return latencies, errors, wall, (meter.seconds() - before) * 1000 / max(1, len(latencies))


def summary(latencies: list[float], wall: float) -> dict[str, float]:
    q = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [latencies[0]] * 99
    return {"calls_s": len(latencies) / wall, "p50_ms": q[49] * 1000, "p99_ms": q[98] * 1000}
