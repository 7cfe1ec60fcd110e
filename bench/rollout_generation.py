"""Generation throughput of one GRPO step's rollout: 8 concurrent episodes over MCP against the in-process gym,
their turns batched by `BatchedSampler`, against (a) one batched `generate` over the same prompts and budgets
(the ceiling: no gym, no waiting) and (b) the sequential generation the rollout did before (one turn at a time
at batch size 1, through the same gym). Tokens/s counts the sampled tokens over the wall time of the whole
rollout (episode creation, MCP, scoring included) or of the generate calls. Goals: >= 0.8 of (a), >= 4x (b).

`--group G` plays the episodes in groups of G on the same arena, as a GRPO step does (`num_generations`, 4 by
default in `astra-gym train`): a group's first turns share their prompt, which CPU prefill then runs once
(clients/hf_generation.py). The default (1) gives every episode an arena of its own, the case with nothing
to share.

    python bench/rollout_generation.py [--episodes 8] [--group 1] [--budget 64] [--hidden 256] [--layers 4] [--threads N] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.gym_throughput import update_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=8)
    ap.add_argument("--group", type=int, default=1, help="episodes per arena, as in a GRPO group (1: an arena each)")
    ap.add_argument("--budget", type=int, default=64, help="token budget of every turn")
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from clients.batching import BatchedSampler
    from clients.gym_session import GymSession
    from clients.hf_generation import hf_batch_generate
    from gym_server.builtin import builtin_arenas
    from gym_server.config import ServeConfig
    from gym_server.serve import GymThread
    from trainer.rollout import MCPRollout
    from trainer.tiny import tiny_model, train_tokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    tokenizer = train_tokenizer()
    model = tiny_model(tokenizer, hidden_size=args.hidden, layers=args.layers).eval()
    arenas = builtin_arenas()
    prompts = [[{"role": "user", "content": "q", "arena_id": arenas[(i // args.group) % len(arenas)].id}] for i in range(args.episodes)]
    generate = hf_batch_generate(model, tokenizer, 1.0)
    padded = hf_batch_generate(model, tokenizer, 1.0, prefill="padded")  # the batched call's prefill before rows
    unshared = hf_batch_generate(model, tokenizer, 1.0, share_prefixes=False)  # rows, each prompt prefilled whole
    figures: dict[str, list[float]] = {"rollout": [], "batched": [], "unshared": [], "padded": [], "sequential": [], "sequential_generate": []}
    batch_sizes = []
    with GymThread.private(ServeConfig(port=0)) as gym, GymSession(gym.url, gym.config.token) as session:

        def rollout(max_batch: int) -> tuple[float, list]:
            sampler = BatchedSampler(generate, max_batch=max_batch)
            play = MCPRollout(session, tokenizer, sampler=sampler, max_turns=1, max_new_tokens=args.budget, failure_rate=0.0)
            t0 = time.perf_counter()
            episodes = play.play(prompts)
            wall = time.perf_counter() - t0
            batch_sizes.append(sampler.stats.mean_batch)
            return sum(sum(e.env_mask) for e in episodes) / wall, episodes

        rollout(args.episodes)  # warm-up: gym, MCP sessions, first generate
        for _ in range(args.repeats):  # interleaved, so a busy machine slows every variant alike
            rate, episodes = rollout(args.episodes)
            figures["rollout"].append(rate)
            contexts, budgets = [e.prompt_ids for e in episodes], [args.budget] * len(episodes)
            t0 = time.perf_counter()
            turns = generate(contexts, budgets)
            figures["batched"].append(sum(len(t) for t, _ in turns) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            turns = unshared(contexts, budgets)
            figures["unshared"].append(sum(len(t) for t, _ in turns) / (time.perf_counter() - t0))
            t0 = time.perf_counter()
            turns = padded(contexts, budgets)
            figures["padded"].append(sum(len(t) for t, _ in turns) / (time.perf_counter() - t0))
            figures["sequential"].append(rollout(1)[0])
            t0 = time.perf_counter()
            turns = [generate([c], [b])[0] for c, b in zip(contexts, budgets)]
            figures["sequential_generate"].append(sum(len(t) for t, _ in turns) / (time.perf_counter() - t0))
    med = {k: statistics.median(v) for k, v in figures.items()}
    # The goals are read per round (each round runs every variant within seconds of each other), then the median
    # of the rounds: this machine's speed drifts by tens of percent between rounds, which a ratio of medians
    # taken over different rounds carries into the result. The ratio of the medians is printed too.
    vs_batched = statistics.median(r / b for r, b in zip(figures["rollout"], figures["batched"]))
    vs_sequential = statistics.median(r / q for r, q in zip(figures["rollout"], figures["sequential"]))
    of_medians = (med["rollout"] / med["batched"], med["rollout"] / med["sequential"])
    print(f"{args.episodes} episodes, budget {args.budget}, tiny Qwen3 ({args.layers} layers, hidden {args.hidden}), "
          f"{torch.get_num_threads()} torch threads, median of {args.repeats}:")  # fmt: skip
    for key, label in (("rollout", "rollout with batched turns"), ("batched", "one batched generate"), ("unshared", "the same, no prefix sharing"),
                       ("padded", "one batched generate, padded prefill"),
                       ("sequential", "rollout, sequential turns (before)"), ("sequential_generate", "sequential generate calls")):  # fmt: skip
        print(f"  {label:>36}: {med[key]:8.1f} tokens/s  (runs: {', '.join(f'{x:.0f}' for x in figures[key])})")
    print(f"  rollout / batched generate = {vs_batched:.2f} (goal >= 0.8); rollout / sequential rollout = {vs_sequential:.1f}x (goal >= 4x)"
          f"  [medians of per-round ratios; ratios of the medians: {of_medians[0]:.2f}, {of_medians[1]:.1f}x]")  # fmt: skip
    if args.write:
        command = (f"python bench/rollout_generation.py --episodes {args.episodes}" + (f" --group {args.group}" if args.group > 1 else "")
                   + f" --budget {args.budget} --hidden {args.hidden} --layers {args.layers} --repeats {args.repeats}"
                   + (f" --threads {args.threads}" if args.threads else ""))  # fmt: skip
        heading = "## Rollout generation: batched turns (bench/rollout_generation.py)" + (f", GRPO groups of {args.group}" if args.group > 1 else "")
        workload = (f"{args.episodes // args.group} groups of {args.group} episodes, each group on one built-in arena (a GRPO step's shape)"
                    if args.group > 1 else f"{args.episodes} concurrent episodes, each on a built-in arena of its own")  # fmt: skip
        update_section(args.write, heading, "\n".join([
            heading, "",
            f"`{command}` on {os.cpu_count()} shared cores, {time.strftime('%Y-%m-%d')}; tiny Qwen3 ({args.layers} layers, hidden {args.hidden}, "
            f"untrained: turns mostly run to their budget), {workload}, over MCP, "
            f"sampling at temperature 1. Tokens/s over the wall time of the whole rollout (creation, MCP, scoring included) "
            f"or of the generate calls; median of {args.repeats} interleaved rounds; the goals' ratios are the medians of each round's ratio.", "",
            "| generation | tokens/s | vs this rollout |", "| --- | --- | --- |",
            f"| rollout, turns batched across episodes (`BatchedSampler`) | {med['rollout']:.0f} | 1.00 |",
            f"| one batched `generate`, same prompts and budgets | {med['batched']:.0f} | rollout = **{vs_batched:.2f}x** of it (goal >= 0.8; ratio of the medians {of_medians[0]:.2f}) |",
            f"| the same call without prefix sharing (each prompt prefilled whole) | {med['unshared']:.0f} | |",
            f"| the same call as it was before (a left-padded prefill, generation's own cache) | {med['padded']:.0f} | |",
            f"| rollout, turns one at a time at batch 1 (before) | {med['sequential']:.0f} | rollout = **{vs_sequential:.1f}x** of it (goal >= 4x; ratio of the medians {of_medians[1]:.1f}x) |",
            f"| sequential `generate` calls, no gym | {med['sequential_generate']:.0f} | |", "",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
