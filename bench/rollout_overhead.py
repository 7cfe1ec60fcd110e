"""Share of a GRPO step spent outside generation and backprop (rollout orchestration, MCP, scoring),
with the tiny model on CPU against the in-process gym. Goal: under 10%.

    python bench/rollout_overhead.py [--steps 6] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from bench.gym_throughput import update_section  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    from gym_server.builtin import builtin_arenas
    from gym_server.config import ServeConfig
    from gym_server.serve import GymThread
    from clients.gym_session import GymSession
    from trainer.rollout import MCPRollout, gym_reward
    from trainer.tiny import load_model_and_tokenizer

    timings = {"generate": 0.0, "rollout": 0.0}
    arenas = [a for a in builtin_arenas()]
    prompts = [{"prompt": [{"role": "user", "content": a.question, "arena_id": a.id}]} for a in arenas]
    model, tokenizer = load_model_and_tokenizer("tiny")
    import clients.hf_generation as hf_generation

    def generation_time(real):
        """`real`, adding its wall time to the generation's: each runs under the batcher's one worker, so this is
        the model's own time only."""

        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return real(*a, **k)
            finally:
                timings["generate"] += time.perf_counter() - t0

        return timed

    model.generate = generation_time(model.generate)
    # on CPU the prompts are prefilled before `generate` (clients/hf_generation.py): the model's time too
    hf_generation.prefilled_cache = generation_time(hf_generation.prefilled_cache)
    with GymThread.private(ServeConfig(port=0)) as gym, GymSession(gym.url, gym.config.token) as session:
        rollout = MCPRollout(session, tokenizer, model=model, max_turns=2, max_new_tokens=32)
        original_call = rollout.__call__

        def call(prompts_, trainer_):
            t0 = time.perf_counter()
            try:
                return original_call(prompts_, trainer_)
            finally:
                timings["rollout"] += time.perf_counter() - t0

        cfg = GRPOConfig(output_dir=tempfile.mkdtemp(), max_steps=args.steps, per_device_train_batch_size=8, num_generations=4,
                         beta=0.0, max_completion_length=512, logging_steps=1, report_to=[], save_strategy="no", use_cpu=True)  # fmt: skip
        trainer = GRPOTrainer(model=model, reward_funcs=gym_reward, args=cfg, train_dataset=Dataset.from_list(prompts),
                              processing_class=tokenizer, rollout_func=call)  # fmt: skip
        t0 = time.perf_counter()
        trainer.train()
        total = time.perf_counter() - t0
    overhead = timings["rollout"] - timings["generate"]
    rest = total - timings["rollout"]
    print(f"{args.steps} steps in {total:.1f} s: generation {timings['generate']:.1f} s, backprop and the rest of TRL {rest:.1f} s, "
          f"rollout orchestration + MCP + scoring {overhead:.1f} s = {overhead / total:.1%} of the step (goal < 10%); "
          f"{rollout.episodes_played} episodes")  # fmt: skip
    if args.write:
        update_section(args.write, "## GRPO rollout overhead", "\n".join([
            "## GRPO rollout overhead (bench/rollout_overhead.py)", "",
            f"`python bench/rollout_overhead.py --steps {args.steps}` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}; tiny Qwen3 "
            f"(2 layers, hidden 64) on CPU, 8 episodes a step over MCP against the in-process gym, built-in arenas.", "",
            "| part of the steps | seconds | share |", "| --- | --- | --- |",
            f"| generation (transformers `generate`, and the prompts' prefill before it on CPU) | {timings['generate']:.1f} | {timings['generate'] / total:.1%} |",
            f"| backprop and the rest of TRL's step (baseline) | {rest:.1f} | {rest / total:.1%} |",
            f"| rollout orchestration, MCP calls, scoring | {overhead:.1f} | **{overhead / total:.1%}** |",
            f"| total ({args.steps} steps, {rollout.episodes_played} episodes) | {total:.1f} | 100% |", "",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
