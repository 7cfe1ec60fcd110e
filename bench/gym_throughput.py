"""Gym tool-call throughput against bare MCP servers, measured in the same run with the same clients.

Two client eras, each against the bare server it usually meets: the SDK's modern `Client` (protocol
2026-07-28, no session) against a bare low-level server with the gym's transport settings (stateless, JSON),
and the legacy `ClientSession` + `initialize` client against a bare server in the SDK's default stateful mode.
The gym (`serve --processes N`) serves an arena tool that reads and writes SQLite through the sandbox; for
attribution, one gym process with its sandbox stubbed out in-process runs beside it (modern client). At one
episode the servers take turns call by call, with a pause after each call (`take_turns`: this machine's speed
drifts within a second, so even short rounds of one server and then the other disagree by 10-30%); at 50
concurrent episodes they alternate in rounds; printed: calls/s, p50/p99 latency, b/a (at 50, the median of
per-round ratios). Then soaks of 1,000 concurrent episodes, each making 3 calls in a row: one per client era
against the gym (the SDK's own clients, for the error count), and one with a lean load generator
(`lean_soak`: raw HTTP/1.1, the SDK client's request bytes) against the bare server and the gym in turn, which
measures the servers rather than the clients (the SDK's clients spend several times a server's CPU per call
at that concurrency). Every soak is closed-loop (each agent calls again as soon as it has its answer), so its
latency is queueing: by Little's law p50 is about episodes / calls-per-second, for any server. `--think-ms`
adds a paced lean soak in which each agent pauses (exponential, that mean) before each call, as an LLM agent
does between its turns; its p99 is the latency an agent sees at that offered load. A soak starts once the gym
holds a bound process for each of its episodes (/healthz) and the server's tree is idle, so it measures calls,
not the forks and binds its 1,000 creations set off; a last lean soak starts right as the creations answer
(a burst of agents that create and call at once) and shows that cost.

Where the machine lets us (root and a cgroup hierarchy with CPU accounting), each server runs in a cgroup of
its own, and the CPU its whole process tree spent per call is printed too (the gym's includes the sandbox's
template and every process it forked): unlike calls/s, that figure does not move with the machine's load.

    python bench/gym_throughput.py [--processes 2] [--calls 3000] [--rounds 25] [--big 1000] [--write docs/benchmarks.md]
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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from gym_server.models import Arena  # noqa: E402
from gym_server.store import write_bundle  # noqa: E402
from bench._mcp_load import CpuMeter, Era, drive, lean_soak, metered, soak, summary, take_turns  # noqa: E402

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


def free_port(span: int = 1, avoid: frozenset[int] = frozenset()) -> int:
    """A port p with p .. p+span-1 all free and none in `avoid`: `serve --processes N` binds its port and the
    N ports after it, and the kernel hands out neighbouring ephemeral ports, so a plain free port for each server
    let a gym process collide with another server's port ("address already in use")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        block = range(port, port + span)
        if avoid.isdisjoint(block) and port + span <= 65535 and all(_bindable(p) for p in block[1:]):
            return port


def _bindable(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


async def wait_up(port: int) -> None:
    for _ in range(600):
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            await asyncio.sleep(0.1)
    raise RuntimeError(f"port {port} did not come up")


SERVERS = {
    "bare": "bare mcp low-level server, stateless with JSON responses (the gym's transport settings); modern client",
    "bare-stateful": "bare mcp low-level server in the SDK's default mode (sessions, SSE); legacy ClientSession + initialize client",
}
ERAS: dict[Era, str] = {"modern": "bare", "legacy": "bare-stateful"}
"""Each client era is compared with the bare server it is most often run against."""


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=3000, help="calls per concurrency level and client era")
    ap.add_argument("--rounds", type=int, default=25, help="interleaved bare/gym rounds per concurrency level")
    ap.add_argument("--big", type=int, default=1000, help="concurrent gym episodes in the soak (0: none)")
    ap.add_argument("--processes", type=int, default=1, help="gym processes (`serve --processes`)")
    ap.add_argument("--eras", nargs="+", default=["modern", "legacy"], choices=["modern", "legacy"])
    ap.add_argument("--write", type=Path, default=None)
    ap.add_argument("--episodes", type=int, nargs="+", default=[1, 50], help="concurrency levels to compare")
    ap.add_argument("--soak-procs", type=int, default=4, help="client processes sharing the soak's episodes")
    ap.add_argument("--think-ms", type=float, default=0.0, help="also run a paced lean soak with this mean pause before each call (0: none)")
    ap.add_argument("--pause-ms", type=float, default=3.0, help="at 1 episode: the quiet after each call, before the next server's turn")
    ap.add_argument("--gym-arg", action="append", default=[], help="an extra `serve` argument for the gym, e.g. --gym-arg=--no-state-diffs (repeatable)")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp())
    write_bundle([bench_arena()], tmp / "bench.jsonl")
    spans = {"gym": args.processes + 1, "stub": 2, "bare": 1, "bare-stateful": 1}  # ports each server binds from its own
    ports: dict[str, int] = {}
    for name, span in spans.items():
        ports[name] = free_port(span, frozenset(p + i for n, p in ports.items() for i in range(spans[n])))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    meters = {name: CpuMeter(name) for name in ports}
    here = Path(__file__).parent
    gym_cmd = [sys.executable, "-m", "gym_server.cli", "serve", "--arenas", str(tmp / "bench.jsonl"), "--arenas", "builtin"]
    if args.big:  # an episode's process waits for its next call only while fewer than this many wait (README, Sandbox)
        gym_cmd += ["--max-idle-processes", str(max(128, args.big + 64))]
    gym_cmd += args.gym_arg
    argv = {
        "bare": [sys.executable, str(here / "_bare_server.py"), str(ports["bare"])],
        "bare-stateful": [sys.executable, str(here / "_bare_server.py"), str(ports["bare-stateful"]), "--stateful"],
        "gym": [*gym_cmd, "--port", str(ports["gym"]), "--processes", str(args.processes)],
        "stub": [sys.executable, str(here / "_stub_sandbox_gym.py"), "--port", str(ports["stub"]), "--arenas", str(tmp / "bench.jsonl"), "--processes", "1"],
    }  # fmt: skip
    procs = [subprocess.Popen(meters[n].wrap(a), env=env, stdout=subprocess.DEVNULL) for n, a in argv.items()]
    url = {name: f"http://127.0.0.1:{port}" for name, port in ports.items()}
    rows, soaks = [], []
    try:
        for port in ports.values():
            await wait_up(port)
        limits = httpx2.Limits(max_connections=1100, max_keepalive_connections=1100)
        async with httpx2.AsyncClient(timeout=120, limits=limits) as http:
            for name in ("gym", "stub"):  # a front answers once every process serves
                while (await http.get(f"{url[name]}/healthz")).status_code != 200:
                    await asyncio.sleep(0.1)

            async def gym_urls(n: int, base: str) -> list[str]:
                created = await asyncio.gather(*(http.post(f"{base}/api/episodes", json={"arena_id": "bench-counter"}) for _ in range(n)))
                return [r.json()["mcp_url"] for r in created]

            async def bound(base: str, n: int) -> None:
                """Wait (up to 2 minutes) until the gym holds a bound process for at least `n` episodes, as its
                /healthz counts them: 1,000 creations set off about 4 s of forks and binds on 2 cores."""
                deadline = time.perf_counter() + 120
                while time.perf_counter() < deadline:
                    report = (await http.get(f"{base}/healthz")).json()
                    held = sum(r.get("sandbox", {}).get("episode_processes", 0) for r in report.get("processes", [report]))
                    if held >= n:
                        return
                    await asyncio.sleep(0.1)

            async def settle(meter: CpuMeter, n: int, quiet: int = 5) -> None:
                """Wait until the server's tree is idle (`quiet` windows of 20 ms in a row, up to 60 s): what an
                episode's creation or end set off in the background (its process forked and bound, or exiting) is
                then counted where it belongs, and a soak does not start while it still runs."""
                if meter.usage is None:
                    return await asyncio.sleep(0.05 * n**0.5)
                last, still = meter.seconds(), 0
                for _ in range(3000):
                    await asyncio.sleep(0.02)
                    now = meter.seconds()
                    still = still + 1 if now - last < 0.001 else 0
                    if still >= quiet:
                        return
                    last = now

            async def gym_round(name: str, n: int, per: int, era: Era) -> tuple[list[float], int, float, float, float]:
                """Create `n` episodes, play `per` calls in each (timed), delete them, as a client does. Returns the
                timed calls' figures, and the CPU (ms) per episode its creation and deletion cost the server."""
                meter = meters[name]
                before = meter.seconds()
                urls = await gym_urls(n, url[name])
                await settle(meter, n)
                created = meter.seconds() - before
                latencies, errors, wall, per_call = await metered(meter, drive(http, urls, per, era))
                before = meter.seconds()
                await asyncio.gather(*(http.delete(url[name] + "/api/episodes/" + u.split("/episodes/")[1].split("/")[0]) for u in urls))
                await settle(meter, n)
                return latencies, errors, wall, per_call, (created + meter.seconds() - before) * 1000 / n

            async def bare_round(name: str, n: int, per: int, era: Era) -> tuple[list[float], int, float, float]:
                return await metered(meters[name], drive(http, [url[name] + "/mcp"] * n, per, era))

            async def turns_round(era: Era, per: int) -> tuple[dict[str, list[float]], int, dict[str, float], float]:
                """One agent each on the era's bare server, the gym and (modern) the stubbed gym, taking turns call
                by call (`take_turns`). Returns their latencies, the errors, each server's CPU (ms) per call, and the
                CPU (ms) the gym spent creating and deleting the episode."""
                names = [ERAS[era], "gym", *(["stub"] if era == "modern" else [])]
                before = meters["gym"].seconds()
                urls = {ERAS[era]: url[ERAS[era]] + "/mcp", **{n: (await gym_urls(1, url[n]))[0] for n in names[1:]}}
                for n in names[1:]:
                    await settle(meters[n], 1)
                created = meters["gym"].seconds() - before
                start = {n: meters[n].seconds() for n in names}
                latencies, errors = await take_turns(http, urls, per, era, args.pause_ms / 1000)
                for n in names:
                    await settle(meters[n], 1)
                cpu = {n: (meters[n].seconds() - start[n]) * 1000 / per for n in names}
                before = meters["gym"].seconds()
                await asyncio.gather(*(http.delete(url[n] + "/api/episodes/" + urls[n].split("/episodes/")[1].split("/")[0]) for n in names[1:]))
                await settle(meters["gym"], 1)
                return latencies, errors, cpu, (created + meters["gym"].seconds() - before) * 1000

            for concurrency in args.episodes:
                per = max(1, args.calls // concurrency // args.rounds)
                if concurrency == 1:
                    for era in args.eras:  # warm-up, untimed
                        await turns_round(era, 5)
                    turns: dict[str, dict[str, Any]] = {era: {"a": [], "b": [], "c": [], "ratios": [], "stub": [], "errors": 0, "cpu_a": [], "cpu_b": [], "life": []} for era in args.eras}
                    for _ in range(args.rounds):
                        for era in args.eras:
                            lat, err, cpu, life = await turns_round(era, per)
                            t = turns[era]
                            la, lb, lc = lat[ERAS[era]], lat["gym"], lat.get("stub", [])
                            t["a"] += la
                            t["b"] += lb
                            t["c"] += lc
                            t["ratios"].append(sum(la) / sum(lb))
                            if lc:
                                t["stub"].append(sum(la) / sum(lc))
                            t["errors"] += err
                            t["cpu_a"].append(cpu[ERAS[era]])
                            t["cpu_b"].append(cpu["gym"])
                            t["life"].append(life)
                    for era, t in turns.items():
                        a, b = summary(t["a"], sum(t["a"])), summary(t["b"], sum(t["b"]))
                        row = {
                            "episodes": 1, "era": era, "baseline": ERAS[era], "a": a, "b": b, "errors": t["errors"], "turns": True,
                            "ratio": sum(t["a"]) / sum(t["b"]), "ratios": t["ratios"], "cpu_a": statistics.median(t["cpu_a"]),
                            "cpu_b": statistics.median(t["cpu_b"]), "stub": sum(t["a"]) / sum(t["c"]) if t["c"] else None,
                            "lifecycle": statistics.median(t["life"]),
                        }  # fmt: skip
                        rows.append(row)
                        print(f"episodes=   1 {era:>6} vs {ERAS[era]:<13} a: {a['calls_s']:7.1f} calls/s p99 {a['p99_ms']:7.2f} ms"
                              f" | gym x{args.processes}: {b['calls_s']:7.1f} calls/s p50 {b['p50_ms']:6.2f} ms p99 {b['p99_ms']:7.2f} ms"
                              f" | b/a over {len(t['b'])} calls in turns = {row['ratio']:.3f} (per round {' '.join(f'{x:.2f}' for x in t['ratios'])})"
                              f" | CPU ms/call a {row['cpu_a']:.2f} gym {row['cpu_b']:.2f}"
                              + (f" | stubbed sandbox/a = {row['stub']:.2f}" if row["stub"] is not None else "") + f" errors={t['errors']}", flush=True)  # fmt: skip
                    continue
                for era in args.eras:  # warm-up, untimed: opens the HTTP connections and the servers' caches
                    await bare_round(ERAS[era], concurrency, 5, era)
                    await gym_round("gym", concurrency, 5, era)
                await gym_round("stub", concurrency, 5, "modern")
                runs: dict[str, dict[str, Any]] = {era: {"a": [], "b": [], "aw": 0.0, "bw": 0.0, "ratios": [], "errors": 0, "cpu_a": [], "cpu_b": []} for era in args.eras}
                stub_ratios, lifecycle = [], []
                # Interleaved rounds: a noisy neighbour slows both sides of a round alike, so the median
                # of per-round ratios is steadier than one long run of each.
                for _ in range(args.rounds):
                    for era in args.eras:
                        r = runs[era]
                        la, ea, wa, ca = await bare_round(ERAS[era], concurrency, per, era)
                        lb, eb, wb, cb, life = await gym_round("gym", concurrency, per, era)
                        r["a"] += la
                        r["b"] += lb
                        r["aw"] += wa
                        r["bw"] += wb
                        r["errors"] += ea + eb
                        r["cpu_a"].append(ca)
                        r["cpu_b"].append(cb)
                        r["ratios"].append((len(lb) / wb) / (len(la) / wa))
                        lifecycle.append(life)
                        if era == "modern":
                            lc, ec, wc, _, _ = await gym_round("stub", concurrency, per, "modern")
                            r["errors"] += ec
                            stub_ratios.append((len(lc) / wc) / (len(la) / wa))
                for era, r in runs.items():
                    a, b = summary(r["a"], r["aw"]), summary(r["b"], r["bw"])
                    row = {
                        "episodes": concurrency, "era": era, "baseline": ERAS[era], "a": a, "b": b, "errors": r["errors"],
                        "ratio": statistics.median(r["ratios"]), "ratios": r["ratios"], "cpu_a": statistics.median(r["cpu_a"]),
                        "cpu_b": statistics.median(r["cpu_b"]), "stub": statistics.median(stub_ratios) if era == "modern" and stub_ratios else None,
                        "lifecycle": statistics.median(lifecycle),
                    }  # fmt: skip
                    rows.append(row)
                    print(f"episodes={concurrency:>4} {era:>6} vs {ERAS[era]:<13} a: {a['calls_s']:7.1f} calls/s p99 {a['p99_ms']:7.2f} ms"
                          f" | gym x{args.processes}: {b['calls_s']:7.1f} calls/s p50 {b['p50_ms']:6.2f} ms p99 {b['p99_ms']:7.2f} ms"
                          f" | b/a median of {args.rounds} rounds = {row['ratio']:.2f} ({' '.join(f'{x:.2f}' for x in r['ratios'])})"
                          f" | CPU ms/call a {row['cpu_a']:.2f} gym {row['cpu_b']:.2f}"
                          + (f" | stubbed sandbox/a = {row['stub']:.2f}" if row["stub"] is not None else "") + f" errors={r['errors']}", flush=True)  # fmt: skip
            if args.big:
                for era in args.eras:
                    urls = await gym_urls(args.big, url["gym"])
                    await bound(url["gym"], args.big)
                    await settle(meters["gym"], args.big)
                    lat, err, wall = await soak(urls, args.soak_procs, era=era)
                    big = summary(lat, wall)
                    soaks.append({"kind": f"{era} SDK client", "server": "gym", "calls": len(lat), "errors": err, **big})
                    print(f"episodes={args.big} {era}: {len(lat)} calls in {wall:.1f} s ({big['calls_s']:.1f} calls/s, p50 {big['p50_ms']:.0f} ms, p99 {big['p99_ms']:.0f} ms), errors={err}", flush=True)
                    await asyncio.gather(*(http.delete(url["gym"] + "/api/episodes/" + u.split("/episodes/")[1].split("/")[0]) for u in urls))
                    await settle(meters["gym"], args.big)  # its processes exit before the next soak, whichever server it measures
                soak_plan = [(0.0, "bare", False), (0.0, "gym", False)] + [(args.think_ms / 1000, server, False) for server in ("bare", "gym") if args.think_ms]
                # Last, a soak that starts as soon as its 1,000 episodes are created, while the gym still forks and binds
                # their processes (about 4 s of CPU here): what a burst of agents that create and call at once sees.
                for think, server, burst in [*soak_plan, (0.0, "gym", True)]:
                    urls = [url["bare"] + "/mcp"] * args.big if server == "bare" else await gym_urls(args.big, url["gym"])
                    if not burst:
                        if server == "gym":
                            await bound(url["gym"], args.big)
                        await settle(meters[server], args.big)
                    lat, err, wall = await lean_soak(urls, "echo" if server == "bare" else "bump", think_s=think)
                    big = summary(lat, wall)
                    kind = "lean client" + (f", {think * 1000:.0f} ms mean pause before each call" if think else ", closed loop")
                    kind += ", calls right after creation" if burst else ""
                    soaks.append({"kind": kind, "server": server, "calls": len(lat), "errors": err, **big})
                    print(f"episodes={args.big} {kind}, {server}: {len(lat)} calls in {wall:.1f} s ({big['calls_s']:.1f} calls/s, "
                          f"p50 {big['p50_ms']:.0f} ms, p99 {big['p99_ms']:.0f} ms), errors={err}", flush=True)  # fmt: skip
                    if server == "gym":
                        await asyncio.gather(*(http.delete(url["gym"] + "/api/episodes/" + u.split("/episodes/")[1].split("/")[0]) for u in urls))
                        await settle(meters["gym"], args.big)
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(30)
        for meter in meters.values():
            meter.remove()
    if args.write:
        write_doc(args, rows, soaks)


def write_doc(args: argparse.Namespace, rows: list[dict[str, Any]], soaks: list[dict[str, Any]]) -> None:
    lines = [
        HEADING, "",
        f"`python bench/gym_throughput.py --processes {args.processes} --calls {args.calls} --rounds {args.rounds} --big {args.big}"
        + (f" --think-ms {args.think_ms:g}" if args.think_ms else "") + (f" --pause-ms {args.pause_ms:g}" if args.pause_ms != 3.0 else "") + (f" --eras {' '.join(args.eras)}" if len(args.eras) < 2 else "")
        + "".join(f" --gym-arg={a}" for a in args.gym_arg) + "` "
        f"on {os.cpu_count()} cores (shared with other work: compare ratios, not absolute figures), {time.strftime('%Y-%m-%d')}.", "",
        "Each client era against the bare server it usually meets: " + "; ".join(f"{e}: {SERVERS[ERAS[e]]}" for e in args.eras) + ".",
        f"The gym (`serve --processes {args.processes}`) serves an arena tool that reads and writes SQLite through the sandbox.",
        f"At 1 episode one agent per server takes turns with the others call by call, {args.pause_ms:g} ms of quiet after each call (an agent "
        "thinks between calls; no server's work between calls runs into another's call); b/a is the ratio of their summed latencies (one "
        "agent's calls/s, its pauses left out). At more episodes bare and gym alternate in rounds; b/a is the median of per-round ratios. "
        "CPU is each server's whole process tree.", "",
        "| episodes | client era | bare calls/s | gym calls/s | gym p50 / p99 ms | b/a | per-round b/a | CPU ms/call bare / gym | stubbed-sandbox gym / a | errors |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]  # fmt: skip
    for r in rows:
        stub = f"{r['stub']:.2f}" if r["stub"] is not None else ""
        lines.append(f"| {r['episodes']} | {r['era']} | {r['a']['calls_s']:.0f} | {r['b']['calls_s']:.0f} | {r['b']['p50_ms']:.1f} / {r['b']['p99_ms']:.1f} | "
                     f"{r['ratio']:.2f} | {' '.join(f'{x:.2f}' for x in r['ratios'])} | {r['cpu_a']:.2f} / {r['cpu_b']:.2f} | {stub} | {r['errors']} |")  # fmt: skip
    if soaks:
        lines += ["", f"{args.big} concurrent episodes, 3 calls each in a row; each soak starts once the gym holds a bound process for every "
                  "episode and its processes are idle, but the one right after creation, which starts as the creations answer:", "",
                  "| load | server | calls | calls/s | p50 ms | p99 ms | errors |", "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
        for s in soaks:
            lines.append(f"| {s['kind']} | {s['server']} | {s['calls']} | {s['calls_s']:.0f} | {s['p50_ms']:.0f} | {s['p99_ms']:.0f} | {s['errors']} |")
    heading = f"{HEADING}, {args.processes} gym process{'es' if args.processes > 1 else ''}"
    update_section(args.write, heading, "\n".join(lines).replace(HEADING, heading, 1) + "\n")


HEADING = "## Gym throughput by client era"


def update_section(path: Path, heading: str, text: str) -> None:
    """Put `text` (a section whose first line is its heading, which starts with `heading`) in place of the section
    with that heading line (or, failing one, with the line `heading`), or at the end when there is none. The
    section ends at the next `##` or `###` heading: notes written under a table (a `###` subsection) stay where
    they are."""
    old = path.read_text() if path.exists() else "# Benchmarks\n\nFigures from `bench/` scripts; each compares against a baseline measured in the same run.\n\n"
    lines = old.split("\n")
    written = text.split("\n", 1)[0]
    if not written.startswith(heading):
        raise ValueError(f"section text begins {written!r}, not with its heading {heading!r}")
    found = next((line for line in (written, heading) if line in lines), None)
    if found is None:
        path.write_text(old.rstrip() + "\n\n" + text.rstrip("\n") + "\n")
        return
    start = lines.index(found)
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith(("## ", "### "))), len(lines))
    path.write_text("\n".join([*lines[:start], *text.rstrip("\n").split("\n"), "", *lines[end:]]).rstrip("\n") + "\n")

if __name__ == "__main__":
    asyncio.run(main())
