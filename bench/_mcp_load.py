"""The load side of bench/gym_throughput.py: MCP clients of both eras driving episodes, client processes for
big soaks, and the CPU meter that charges each server's process tree from a cgroup of its own."""

from __future__ import annotations

import asyncio
import gc
import json
import os
import random
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

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


async def take_turns(http: httpx2.AsyncClient, urls: dict[str, str], calls: int, era: Era, pause_s: float) -> tuple[dict[str, list[float]], int]:
    """One agent per server (name -> MCP URL), making `calls` calls each in turns: one call per server in a
    rotating order, each followed by `pause_s` of quiet. Every server's calls then meet the same machine (its
    speed drifts within a second here), and no server's work between calls (the gym's sandbox preparing the
    episode's next call) runs into another's call: an agent thinks between its calls anyway."""
    latencies: dict[str, list[float]] = {name: [] for name in urls}
    errors = 0
    async with AsyncExitStack() as stack:
        tools = {name: await stack.enter_async_context(connect(u, http, era)) for name, u in urls.items()}
        order = list(urls)
        for _ in range(calls):
            for name in order:
                t0 = time.perf_counter()
                try:
                    result = await tools[name]("bump" if "/episodes/" in urls[name] else "echo", {"key": "k"})
                    errors += bool(result.is_error)
                except Exception as exc:  # counted, then reported; the turn goes on
                    errors += 1
                    print(f"  {name} call error: {type(exc).__name__}: {exc!r}", file=sys.stderr)
                latencies[name].append(time.perf_counter() - t0)
                await asyncio.sleep(pause_s)
            order = order[1:] + order[:1]
    return latencies, errors


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


META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientInfo": {"name": "astra-bench-load", "version": "0"},
    "io.modelcontextprotocol/clientCapabilities": {},
}


def encode_call(url: str, tool: str, arguments: dict[str, Any], request_id: int) -> bytes:
    """The bytes of one protocol-2026-07-28 `tools/call` POST, as the SDK's `Client` sends it (same headers, same
    `_meta`), ready to write on a kept-alive HTTP/1.1 connection."""
    parts = urlsplit(url)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    body = json.dumps({"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": tool, "arguments": arguments, "_meta": META}}).encode()
    head = (
        f"POST {target} HTTP/1.1\r\nhost: {parts.netloc}\r\naccept: application/json, text/event-stream\r\n"
        f"content-type: application/json\r\nmcp-protocol-version: 2026-07-28\r\nmcp-method: tools/call\r\nmcp-name: {tool}\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def lean_episode(url: str, tool: str, calls: int, think_s: float = 0.0, rng: random.Random | None = None) -> tuple[list[float], int]:
    """One agent on one kept-alive connection: `calls` tool calls in a row, each checked (HTTP 200, a JSON-RPC
    result that is not a tool error), with an exponential pause of mean `think_s` before each (its turn)."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    latencies: list[float] = []
    errors = 0
    try:
        for i in range(calls):
            if think_s:
                await asyncio.sleep((rng or random).expovariate(1 / think_s))
            request = encode_call(url, tool, {"key": "k"}, i + 1)
            t0 = time.perf_counter()
            writer.write(request)
            status = await reader.readline()
            length = 0
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
            try:
                message = json.loads(body)
                errors += not (status.split()[1:2] == [b"200"] and not message["result"].get("isError"))
            except (ValueError, KeyError, TypeError, AttributeError):
                errors += 1
    finally:
        writer.close()
    return latencies, errors


def _lean_worker(urls: list[str], tool: str, calls: int, think_s: float, seed: int, start: Any, queue: object) -> None:
    # A load generator, not the system under test: its own collector would only add noise.
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    start.wait()  # every worker has started its interpreter: the soak's clock runs from here

    async def run() -> tuple[list[float], int]:
        rng = random.Random(seed)
        done = await asyncio.gather(*(lean_episode(u, tool, calls, think_s, rng) for u in urls), return_exceptions=True)
        latencies: list[float] = []
        errors = 0
        for outcome in done:
            if isinstance(outcome, BaseException):
                errors += 1
            else:
                latencies += outcome[0]
                errors += outcome[1]
        return latencies, errors

    queue.put(asyncio.run(run()))  # type: ignore[attr-defined]


async def lean_soak(urls: list[str], tool: str, procs: int = 1, calls: int = 3, think_s: float = 0.0) -> tuple[list[float], int, float]:
    """Many agents at once from a load generator light enough that the server, not the client, is measured: raw
    HTTP/1.1 on kept-alive connections (one per episode), the SDK client's exact request bytes, answers parsed
    and checked. The SDK's own clients cost 3-4 ms of CPU per call at this concurrency, several times what
    either server costs, and on a 2-core machine they would be what a soak measures."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue, start = ctx.Queue(), ctx.Barrier(procs + 1)
    workers = [ctx.Process(target=_lean_worker, args=(urls[i::procs], tool, calls, think_s, i, start, queue)) for i in range(procs)]
    for w in workers:
        w.start()
    await asyncio.to_thread(start.wait)
    t0 = time.perf_counter()
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
