"""The client's own overhead per tool call and per episode, against raw MCP call latency in the same run.

A scripted OpenAI-compatible model (answers instantly, plays the gold calls) drives `clients.runner` over
a gym in its own process. Raw latency: the SDK client calling the same tool on an episode in a loop.

    python bench/eval_overhead.py [--episodes 60] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from clients.agent import ChatEndpoint  # noqa: E402
from clients.gym_client import GymClient  # noqa: E402
from clients.policies import ChatPolicy  # noqa: E402
from clients.runner import run_episode  # noqa: E402
from clients.toolbox import MCPToolbox, shared_http_client  # noqa: E402
from gym_server.models import EpisodeCreate  # noqa: E402
from gym_server.serve import AppThread  # noqa: E402
from tests.fixtures.scripted_llm import create_scripted_llm  # noqa: E402
from bench.gym_throughput import free_port, wait_up, update_section  # noqa: E402

ARENA = "retail-return-headphones"  # 4 gold calls in 3 turns


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=60)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    port = free_port()
    gym_proc = subprocess.Popen([sys.executable, "-m", "gym_server.cli", "serve", "--port", str(port)],
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.DEVNULL)  # fmt: skip
    try:
        await wait_up(port)
        url = f"http://127.0.0.1:{port}"
        with AppThread(create_scripted_llm(url)) as llm:
            async with shared_http_client() as http:
                gym = GymClient(url, http, os.environ.get("ASTRA_GYM_TOKEN"))  # the served gym reads the same variable
                created = await gym.create_episode(EpisodeCreate(arena_id=ARENA))
                async with MCPToolbox.http_endpoint(created.mcp_url, http) as box:
                    raw = []
                    for _ in range(200):
                        t0 = time.perf_counter()
                        await box.client.call_tool("get_product", {"sku": "SKU-300"})
                        raw.append(time.perf_counter() - t0)
                raw_ms = statistics.median(raw) * 1000
                policy = ChatPolicy(ChatEndpoint(llm.url + "/v1", "gold", http))
                per_call, per_episode, totals = [], [], []
                for i in range(args.episodes + 5):
                    rec = await run_episode(gym, policy, ARENA, seed=i)
                    assert rec.reward and rec.reward.reward == 1.0, rec.error
                    if i < 5:
                        continue  # warm-up
                    per_call.append(rec.timings.tools_s / (rec.turns - 1) * 1000)  # the last turn is the answer
                    per_episode.append((rec.timings.total_s - rec.timings.model_s - rec.timings.tools_s) * 1000)
                    totals.append(rec.timings.total_s * 1000)
    finally:
        gym_proc.terminate()
        gym_proc.wait(10)
    turn_ms = statistics.median(per_call)
    ep_ms = statistics.median(per_episode)
    print(f"raw MCP call (SDK, median): {raw_ms:.2f} ms")
    print(f"tool turn through the agent loop (median, 1-2 parallel calls): {turn_ms:.2f} ms = {turn_ms / raw_ms:.2f}x raw")
    print(f"per-episode overhead outside model and tools (create, connect, list, score, log, delete): {ep_ms:.2f} ms"
          f" = {ep_ms / raw_ms:.1f} raw calls; episode total {statistics.median(totals):.1f} ms")  # fmt: skip
    if args.write:
        text = "\n".join([
            "## Client overhead (bench/eval_overhead.py)", "",
            f"`python bench/eval_overhead.py --episodes {args.episodes}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')};"
            f" arena {ARENA} (4 gold calls in 3 turns), scripted model answering instantly.", "",
            "| what | median ms | vs raw MCP call |", "| --- | --- | --- |",
            f"| raw MCP tool call (SDK client) | {raw_ms:.2f} | 1.00x |",
            f"| one tool turn in the agent loop | {turn_ms:.2f} | {turn_ms / raw_ms:.2f}x |",
            f"| per-episode overhead (create, connect, list, score, log, delete) | {ep_ms:.2f} | {ep_ms / raw_ms:.1f}x |", "",
        ])  # fmt: skip
        update_section(args.write, "## Client overhead", text)


if __name__ == "__main__":
    asyncio.run(main())
