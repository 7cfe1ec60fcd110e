"""Gym tool-call throughput against a bare MCP server, measured in the same run with the same client.

(a) a bare mcp low-level server with a trivial tool; (b) a gym arena tool that reads and writes SQLite
through the sandbox; (c) for attribution, the same gym with its sandbox stubbed out in-process. Each runs as
its own process on loopback; one client process drives them with the official SDK client over one shared HTTP
pool. At 1 and 50 concurrent episodes the three alternate in rounds (this machine's speed drifts from minute
to minute, and a round is short enough that its sides see the same machine); printed: calls/s, p50/p99
latency, the median per-round b/a and c/a. Then 1,000 concurrent gym episodes with an error count.

Where the machine lets us (root and a cgroup hierarchy with CPU accounting), each server runs in a cgroup of
its own, and the CPU its whole process tree spent per call is printed too (the gym's includes the sandbox's
template and every process it forked): unlike calls/s, that figure does not move with the machine's load.

    python bench/gym_throughput.py [--calls 3000] [--rounds 25] [--big 1000] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx2
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gym_server.models import Arena  # noqa: E402
from gym_server.store import write_bundle  # noqa: E402

COUNTER_SOURCE = '''
def bump(db, key):
    db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1", (key,))
    return db.execute("SELECT key, n FROM counters WHERE key = ?", (key,)).fetchone()
'''


def bench_arena() -> Arena:
    return Arena.model_validate({
        "id": "bench-counter", "domain": "bench", "scenario_type": "single_hop", "question": "bump", "final_answer": 1,
        "tools": [{"name": "bump", "description": "increment a counter", "inputSchema": {"type": "object", "properties": {"key": {"type": "string"}}, "required": ["key"]}}],
        "implementation": COUNTER_SOURCE,
        "initial_state": {"ddl": ["CREATE TABLE counters (key TEXT PRIMARY KEY, n INTEGER)"], "rows": {}},
        "subtasks": [{"id": "s1", "question": "bump", "answer": 1, "gold_call": {"tool": "bump", "arguments": {"key": "k"}}}],
    })  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_up(port: int) -> None:
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"port {port} did not come up")


async def drive(http: httpx2.AsyncClient, urls: list[str], calls_per_episode: int) -> tuple[list[float], int, float]:
    """Open one MCP session per URL, then time `calls_per_episode` calls on each, all episodes at once."""
    latencies: list[float] = []
    errors = 0
    ready = asyncio.Event()
    opened = 0

    async def episode(url: str) -> None:
        nonlocal errors, opened
        try:
            async with Client(streamable_http_client(url, http_client=http)) as client:  # type: ignore[arg-type]
                opened += 1
                if opened == len(urls):
                    ready.set()
                await ready.wait()
                for i in range(calls_per_episode):
                    t0 = time.perf_counter()
                    result = await client.call_tool("bump" if "/episodes/" in url else "echo", {"key": "k"})
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


def _soak_worker(urls: list[str], calls: int, queue: object) -> None:
    async def run() -> tuple[list[float], int]:
        limits = httpx2.Limits(max_connections=len(urls) + 10, max_keepalive_connections=len(urls) + 10)
        async with httpx2.AsyncClient(timeout=300, limits=limits) as http:
            lat, err, _ = await drive(http, urls, calls)
            return lat, err

    queue.put(asyncio.run(run()))  # type: ignore[attr-defined]


async def soak(urls: list[str], procs: int, calls: int = 3) -> tuple[list[float], int, float]:
    """Many concurrent episodes need more client CPU than one process has: split them over processes."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_soak_worker, args=(urls[i::procs], calls, queue)) for i in range(procs)]
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


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000, help="calls per concurrency level")
    ap.add_argument("--rounds", type=int, default=25, help="interleaved bare/gym rounds per concurrency level")
    ap.add_argument("--big", type=int, default=1000, help="concurrent gym episodes in the soak")
    ap.add_argument("--write", type=Path, default=None)
    ap.add_argument("--episodes", type=int, nargs="+", default=[1, 50], help="concurrency levels to compare")
    ap.add_argument("--soak-procs", type=int, default=4, help="client processes sharing the soak's episodes")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    write_bundle([bench_arena()], tmp / "bench.jsonl")
    bare_port, gym_port, stub_port = free_port(), free_port(), free_port()
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    meters = {name: CpuMeter(name) for name in ("bare", "gym", "stub")}
    procs = [
        subprocess.Popen(meters["bare"].wrap([sys.executable, str(Path(__file__).parent / "_bare_server.py"), str(bare_port)]), env=env),
        subprocess.Popen(meters["gym"].wrap([sys.executable, "-m", "gym_server.cli", "serve", "--port", str(gym_port), "--arenas", str(tmp / "bench.jsonl"), "--arenas", "builtin"]), env=env, stdout=subprocess.DEVNULL),
        subprocess.Popen(meters["stub"].wrap([sys.executable, str(Path(__file__).parent / "_stub_sandbox_gym.py"), "--port", str(stub_port), "--arenas", str(tmp / "bench.jsonl")]), env=env, stdout=subprocess.DEVNULL),
    ]  # fmt: skip
    rows = []
    try:
        bare, gym, stub = f"http://127.0.0.1:{bare_port}", f"http://127.0.0.1:{gym_port}", f"http://127.0.0.1:{stub_port}"
        for port in (bare_port, gym_port, stub_port):
            await wait_up(port)
        limits = httpx2.Limits(max_connections=1100, max_keepalive_connections=1100)
        async with httpx2.AsyncClient(timeout=120, limits=limits) as http:

            async def gym_urls(n: int, base: str = gym) -> list[str]:
                created = await asyncio.gather(*(http.post(f"{base}/api/episodes", json={"arena_id": "bench-counter"}) for _ in range(n)))
                return [r.json()["mcp_url"] for r in created]

            async def settle(meter: CpuMeter, n: int) -> None:
                """Wait until the server's tree is idle: what an episode's creation or end set off in the background
                (its process forked and bound, or exiting) is then counted where it belongs."""
                if meter.usage is None:
                    return await asyncio.sleep(0.05 * n**0.5)
                last = meter.seconds()
                for _ in range(100):
                    await asyncio.sleep(0.02)
                    now = meter.seconds()
                    if now - last < 0.001:
                        return
                    last = now

            async def gym_round(base: str, meter: CpuMeter, n: int, per: int) -> tuple[list[float], int, float, float, float]:
                """Create `n` episodes, play `per` calls in each (timed), delete them, as a client does. Returns the
                timed calls' figures, and the CPU (ms) per episode its creation and deletion cost the server."""
                before = meter.seconds()
                urls = await gym_urls(n, base)
                await settle(meter, n)
                created = meter.seconds() - before
                latencies, errors, wall, per_call = await metered(meter, drive(http, urls, per))
                before = meter.seconds()
                await asyncio.gather(*(http.delete(url.split("/mcp")[0].replace("/episodes/", "/api/episodes/")) for url in urls))
                await settle(meter, n)
                return latencies, errors, wall, per_call, (created + meter.seconds() - before) * 1000 / n

            for concurrency in args.episodes:
                per = max(1, args.calls // concurrency // args.rounds)
                # warm-up at this concurrency, untimed: opens the HTTP connections and the servers' caches
                await drive(http, [bare + "/mcp"] * concurrency, 5)
                await gym_round(gym, meters["gym"], concurrency, 5)
                await gym_round(stub, meters["stub"], concurrency, 5)
                a_lat, b_lat, a_wall, b_wall, ratios, stub_ratios, errs = [], [], 0.0, 0.0, [], [], 0
                cpu: dict[str, list[float]] = {"bare": [], "gym": [], "stub": [], "lifecycle": []}
                # Interleaved rounds: a noisy neighbour slows both sides of a round alike, so the median
                # of per-round ratios is steadier than one long run of each.
                for _ in range(args.rounds):
                    la, ea, wa, ca = await metered(meters["bare"], drive(http, [bare + "/mcp"] * concurrency, per))
                    lb, eb, wb, cb, life = await gym_round(gym, meters["gym"], concurrency, per)
                    lc, ec, wc, cc, _ = await gym_round(stub, meters["stub"], concurrency, per)
                    cpu["lifecycle"].append(life)
                    for name, value in (("bare", ca), ("gym", cb), ("stub", cc)):
                        cpu[name].append(value)
                    stub_ratios.append((len(lc) / wc) / (len(la) / wa))
                    errs += ec
                    a_lat += la
                    b_lat += lb
                    a_wall += wa
                    b_wall += wb
                    errs += ea + eb
                    ratios.append((len(lb) / wb) / (len(la) / wa))
                a, b = summary(a_lat, a_wall), summary(b_lat, b_wall)
                ratio = statistics.median(ratios)
                rows.append((concurrency, a, b, errs, ratio, ratios, statistics.median(stub_ratios), {k: statistics.median(v) for k, v in cpu.items()}))
                print(f"episodes={concurrency:>4}  bare: {a['calls_s']:7.1f} calls/s p50 {a['p50_ms']:6.2f} ms p99 {a['p99_ms']:7.2f} ms"
                      f"  | gym: {b['calls_s']:7.1f} calls/s p50 {b['p50_ms']:6.2f} ms p99 {b['p99_ms']:7.2f} ms"
                      f"  | b/a median of {args.rounds} rounds = {ratio:.2f} (rounds {', '.join(f'{r:.2f}' for r in ratios)})"
                      f"  | stubbed sandbox/a = {statistics.median(stub_ratios):.2f}  errors={errs}")  # fmt: skip
                m = rows[-1][-1]
                print(f"               server CPU per call (ms, median of rounds): bare {m['bare']:.2f}, gym {m['gym']:.2f}, "
                      f"stubbed-sandbox gym {m['stub']:.2f}; an episode's creation and deletion, untimed (its process forked, bound, closed): {m['lifecycle']:.2f} ms")  # fmt: skip
            if not args.big:
                return print_rows_only(rows)
            urls = await gym_urls(args.big)
            big_lat, big_err, big_wall = await soak(urls, args.soak_procs)
            big = summary(big_lat, big_wall)
            print(f"episodes={args.big}: {len(big_lat)} calls in {big_wall:.1f} s ({big['calls_s']:.1f} calls/s, p99 {big['p99_ms']:.0f} ms), errors={big_err}")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(10)
        for meter in meters.values():
            meter.remove()
    if args.write:
        lines = [
            "## Gym throughput (bench/gym_throughput.py)", "",
            f"`python bench/gym_throughput.py --calls {args.calls} --rounds {args.rounds} --big {args.big}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}.",
            "(a) bare mcp low-level server, trivial tool; (b) gym arena tool reading and writing SQLite through the sandbox.", "",
            "Bare and gym alternate in rounds; b/a is the median of the per-round ratios.", "",
            "The last ratio serves the same gym with its sandbox stubbed out in-process (bench/_stub_sandbox_gym.py):",
            "it shows what the gym costs without the sandbox hop.", "",
            "Server CPU per call is each server's whole process tree (the gym's with its sandbox), from a cgroup per",
            "server. Each round creates its episodes, times their calls, then deletes them, as a client does; the CPU",
            "an episode's creation and deletion cost (its process forked and bound, then closed) is untimed, shown on",
            "its own.", "",
            "| episodes | bare calls/s | bare p50 / p99 ms | gym calls/s | gym p50 / p99 ms | b/a (median) | per-round b/a | stubbed-sandbox gym / a | server CPU ms/call bare / gym / stub | CPU ms per episode created and deleted | errors |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]  # fmt: skip
        for c, a, b, e, ratio, ratios, stub_ratio, m in rows:
            lines.append(f"| {c} | {a['calls_s']:.0f} | {a['p50_ms']:.1f} / {a['p99_ms']:.1f} | {b['calls_s']:.0f} | {b['p50_ms']:.1f} / {b['p99_ms']:.1f} | {ratio:.2f} | {' '.join(f'{r:.2f}' for r in ratios)} | {stub_ratio:.2f} | {m['bare']:.2f} / {m['gym']:.2f} / {m['stub']:.2f} | {m['lifecycle']:.2f} | {e} |")
        lines += ["", f"{args.big} concurrent gym episodes, 3 calls each, driven by {args.soak_procs} client processes: {len(big_lat)} calls, {big['calls_s']:.0f} calls/s, p99 {big['p99_ms']:.0f} ms, errors: {big_err}.", ""]
        update_section(args.write, "## Gym throughput", "\n".join(lines))


def print_rows_only(rows: list) -> None:
    print("b/a medians: " + ", ".join(f"{row[0]} episodes {row[4]:.2f}" for row in rows))


def update_section(path: Path, heading: str, text: str) -> None:
    old = path.read_text() if path.exists() else "# Benchmarks\n\nFigures from `bench/` scripts; each compares against a baseline measured in the same run.\n\n"
    if heading in old:
        start = old.index(heading)
        nxt = old.find("\n## ", start + len(heading))
        old = old[:start] + old[nxt + 1 if nxt != -1 else len(old):]
    path.write_text(old.rstrip() + "\n\n" + text)


if __name__ == "__main__":
    asyncio.run(main())
