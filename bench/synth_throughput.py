"""LLM client throughput against a scripted endpoint that takes 200 ms per request, at --concurrency 64.

The ideal is concurrency / latency (64 / 0.2 s = 320 requests/s); the baseline measured in the same run is
the same requests sent one at a time (5 requests/s ideal). Prints requests/s, the peak requests in flight,
and the share of the ideal reached.

    python bench/synth_throughput.py [--requests 1280] [--concurrency 64] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from bench.gym_throughput import update_section  # noqa: E402
from gym_server.serve import AppThread  # noqa: E402
from clients.llm import LLMClient, LLMConfig  # noqa: E402

LATENCY_S = 0.2


def slow_endpoint() -> Starlette:
    in_flight = {"now": 0, "peak": 0}

    async def completions(request):
        body = await request.json()
        in_flight["now"] += 1
        in_flight["peak"] = max(in_flight["peak"], in_flight["now"])
        await asyncio.sleep(LATENCY_S)
        in_flight["now"] -= 1
        return JSONResponse({"choices": [{"message": {"role": "assistant", "content": '{"ok": true}'}}],
                             "usage": {"prompt_tokens": len(str(body)), "completion_tokens": 3}})  # fmt: skip

    async def stats(request):
        return JSONResponse(in_flight)

    return Starlette(routes=[Route("/v1/chat/completions", completions, methods=["POST"]), Route("/stats", stats)])


async def run(url: str, requests: int, concurrency: int, tag: str) -> tuple[float, int]:
    config = LLMConfig(base_url=url + "/v1", model="slow", concurrency=concurrency, retries=0)
    async with LLMClient(config) as llm:
        t0 = time.perf_counter()
        await asyncio.gather(*(llm.chat_json([{"role": "user", "content": f"{tag} {i}"}]) for i in range(requests)))
        wall = time.perf_counter() - t0
        return requests / wall, llm.peak_in_flight


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=1280)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    with AppThread(slow_endpoint()) as server:
        base_rps, _ = await run(server.url, 10, 1, "serial")
        rps, peak = await run(server.url, args.requests, args.concurrency, "parallel")
    ideal = args.concurrency / LATENCY_S
    print(f"one at a time: {base_rps:.1f} req/s (ideal {1 / LATENCY_S:.0f})")
    print(f"concurrency {args.concurrency}: {rps:.1f} req/s, peak in flight {peak}, {rps / ideal:.0%} of {ideal:.0f} ideal, {rps / base_rps:.1f}x serial")
    if args.write:
        update_section(args.write, "## LLM client throughput", "\n".join([
            "## LLM client throughput (bench/synth_throughput.py)", "",
            f"`python bench/synth_throughput.py --requests {args.requests} --concurrency {args.concurrency}` on {os.cpu_count()} cores, "
            f"{time.strftime('%Y-%m-%d')}; scripted endpoint with {LATENCY_S * 1000:.0f} ms per request (goal: >= 80% of {ideal:.0f} req/s).", "",
            "| run | requests/s | peak in flight | share of ideal |", "| --- | --- | --- | --- |",
            f"| one at a time (baseline) | {base_rps:.1f} | 1 | {base_rps * LATENCY_S:.0%} |",
            f"| concurrency {args.concurrency} | {rps:.1f} | {peak} | {rps / ideal:.0%} |", "",
        ]))  # fmt: skip


if __name__ == "__main__":
    asyncio.run(main())
