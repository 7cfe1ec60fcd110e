"""A GRPO step's episode lifecycle without a model: N episodes created, opened over MCP, answered at once and
finished together, through `GymClient` with its creations and finishes coalesced into batch requests, against
the same client sending one request per call (`batch_window_s=None`, the baseline). Interleaved rounds on one gym;
wall time per wave and the client process's CPU per episode.

    python bench/episode_requests.py [--episodes 8] [--rounds 30] [--external] [--write docs/benchmarks.md]

`--external` serves the gym from its own process (`astra-gym serve`), so the client's CPU is measured alone;
by default it runs in this process, as `astra-gym train` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gym_throughput import update_section  # noqa: E402


class Answers:
    """Answers without a tool call once the whole wave plays: the episodes end together, as after a batch of turns."""

    name, model = "answers", None

    def __init__(self, n: int) -> None:
        self.n, self.playing, self.all_in = n, 0, asyncio.Event()

    async def play(self, ctx: Any) -> Any:
        from clients.agent import AgentResult

        self.playing += 1
        if self.playing == self.n:
            self.all_in.set()
        await self.all_in.wait()
        return AgentResult(messages=[{"role": "user", "content": ctx.episode.prompt}, {"role": "assistant", "content": "x"}],
                           final_answer="x", turns=1, stop_reason="stop")  # fmt: skip


@contextmanager
def served(external: bool) -> Iterator[tuple[str, str]]:
    from gym_server.config import ServeConfig
    from gym_server.serve import GymThread

    if not external:
        with GymThread.private(ServeConfig(port=0)) as gym:
            yield gym.url, gym.config.token or ""
        return
    import httpx2

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    token = secrets.token_urlsafe(24)
    env = {**os.environ, "ASTRA_GYM_TOKEN": token}
    proc = subprocess.Popen([sys.executable, "-m", "gym_server.cli", "serve", "--port", str(port), "--processes", "1"], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            try:
                if httpx2.get(f"{url}/healthz").status_code == 200:
                    break
            except httpx2.HTTPError:
                time.sleep(0.1)
        yield url, token
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--external", action="store_true", help="the gym in its own process")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    from clients.gym_client import GymClient
    from clients.runner import run_episode
    from clients.toolbox import shared_http_client
    from gym_server.builtin import builtin_arenas

    arenas = [a.id for a in builtin_arenas()]
    figures: dict[str, list[float]] = {"batched": [], "alone": []}
    cpu: dict[str, list[float]] = {"batched": [], "alone": []}

    async def run(url: str, token: str) -> None:
        async with shared_http_client() as http:
            clients = {"batched": GymClient(url, http, token), "alone": GymClient(url, http, token, batch_window_s=None)}

            async def wave(client: GymClient, k: int) -> None:
                policy = Answers(args.episodes)
                picked = [arenas[(k * args.episodes + j) % len(arenas)] for j in range(args.episodes)]
                records = await asyncio.gather(*(run_episode(client, policy, a, seed=k * 100 + j) for j, a in enumerate(picked)))
                failed = [r.error for r in records if r.error or r.reward is None]
                if failed:
                    raise SystemExit(f"an episode failed: {failed[0]}")

            for name, client in clients.items():  # warm-up: connections, discover, first sandboxes
                for k in range(3):
                    await wave(client, k)
            for k in range(args.rounds):  # interleaved, so a busy machine slows both alike
                for name, client in clients.items():
                    t0, c0 = time.perf_counter(), time.process_time()
                    await wave(client, k)
                    figures[name].append(time.perf_counter() - t0)
                    cpu[name].append((time.process_time() - c0) / args.episodes)

    with served(args.external) as (url, token):
        asyncio.run(run(url, token))
    med = {k: statistics.median(v) * 1e3 for k, v in figures.items()}
    cpu_ms = {k: statistics.median(v) * 1e3 for k, v in cpu.items()}
    where = "in its own process" if args.external else "in this process (as `astra-gym train` runs it)"
    print(f"{args.episodes} episodes per wave, gym {where}, median of {args.rounds} interleaved rounds:")
    for key, label in (("alone", "one request per call (before)"), ("batched", "creations and finishes coalesced")):
        print(f"  {label:>32}: {med[key]:6.1f} ms per wave, {cpu_ms[key]:5.2f} ms CPU per episode (this process)")
    print(f"  coalesced / alone: wall {med['batched'] / med['alone']:.2f}, CPU {cpu_ms['batched'] / cpu_ms['alone']:.2f}")
    if args.write:
        command = f"python bench/episode_requests.py --episodes {args.episodes} --rounds {args.rounds}" + (" --external" if args.external else "")
        heading = "## Episode requests: a step's lifecycle coalesced (bench/episode_requests.py)" + (", gym in its own process" if args.external else "")
        update_section(args.write, heading, "\n".join([
            heading, "",
            f"`{command}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; {args.episodes} episodes per wave on built-in arenas, each "
            f"created, opened over MCP (tools listed), answered at once without a tool call and finished, all together; the gym {where}. "
            f"Median of {args.rounds} interleaved rounds.", "",
            "| client | ms per wave | CPU ms per episode (this process) |", "| --- | --- | --- |",
            f"| one request per call (`batch_window_s=None`, before) | {med['alone']:.1f} | {cpu_ms['alone']:.2f} |",
            f"| creations and finishes coalesced into batch requests | {med['batched']:.1f} | {cpu_ms['batched']:.2f} |",
            f"| coalesced / one by one | **{med['batched'] / med['alone']:.2f}** | {cpu_ms['batched'] / cpu_ms['alone']:.2f} |", "",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
