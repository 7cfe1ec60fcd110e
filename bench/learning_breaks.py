"""The GRPO learning test (tests/test_grpo_learns.py) with the training loop deliberately broken: it must fail.

Runs the test's pipeline (choice arenas, SFT to ~50%, GRPO with the reward and with the reward negated, held-out
success on 100 arenas) intact, then with the env_mask inverted (the loss sees the environment's tokens and not
the model's) and with the advantages' sign flipped inside TRL's trainer. The test's thresholds are >= 0.9
after GRPO and < 0.1 after the negated GRPO; every broken variant should miss at least one.

    python bench/learning_breaks.py [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from bench.gym_throughput import update_section  # noqa: E402


@contextmanager
def broken(kind: str):
    """Patch one fault into the loop for the duration: the rollout's env_mask inverted, or TRL's advantages negated."""
    from trl import GRPOTrainer

    from trainer.rollout import MCPRollout

    if kind == "env_mask":
        original = MCPRollout.as_batch

        def as_batch(episodes):
            batch = original(episodes)
            batch["env_mask"] = [[1 - m for m in mask] for mask in batch["env_mask"]]
            return batch

        MCPRollout.as_batch = staticmethod(as_batch)
        try:
            yield
        finally:
            MCPRollout.as_batch = staticmethod(original)
    elif kind == "advantage_sign":
        original = GRPOTrainer._generate_and_score_completions

        def flipped(self, inputs):
            output = original(self, inputs)
            output["advantages"] = -output["advantages"]
            return output

        GRPOTrainer._generate_and_score_completions = flipped
        try:
            yield
        finally:
            GRPOTrainer._generate_and_score_completions = original
    else:
        yield


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps (default: the test's)")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    import torch

    from gym_server.config import ServeConfig
    from gym_server.serve import GymThread
    from tests.fixtures.choice_learning import build_world, coin_trajectories, grpo, heldout_success, sft
    from tests.test_grpo_learns import GRPO_STEPS, negated

    steps = args.steps or GRPO_STEPS
    torch.set_num_threads(1)
    started = time.perf_counter()
    world = build_world(Path(tempfile.mkdtemp(prefix="astra-breaks-")))
    rows = []
    with GymThread.private(ServeConfig(port=0, arenas=[str(world.train), str(world.heldout)])) as gym:
        url, token = gym.url, gym.config.token
        policy = sft(world, coin_trajectories(world, url, token))
        before = heldout_success(world, policy, url, token, "sft")["success_rate"]
        for kind in ("none", "env_mask", "advantage_sign"):
            result = {}
            for sign, reward in (("reward", None), ("negated", negated)):
                with broken(kind):
                    trained = grpo(world, policy, f"grpo-{kind}-{sign}", url, token, steps=steps, reward=reward)
                result[sign] = heldout_success(world, trained, url, token, f"{kind}-{sign}")["success_rate"]
            passes = result["reward"] >= 0.9 and result["negated"] < 0.1
            rows.append((kind, result["reward"], result["negated"], passes))
            print(f"{kind:>15}: after GRPO {result['reward']:.2f}, after negated GRPO {result['negated']:.2f} -> test {'passes' if passes else 'FAILS'}", flush=True)
    wall = time.perf_counter() - started
    print(f"SFT policy {before:.2f}; {wall:.0f} s")
    if args.write:
        update_section(args.write, "## GRPO learning test", "\n".join([
            "## GRPO learning test, intact and broken (bench/learning_breaks.py)", "",
            f"`python bench/learning_breaks.py` on {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}, {wall:.0f} s. The pipeline of "
            "tests/test_grpo_learns.py: choice arenas (one of two tools is right), a tiny model SFT'd on trajectories that pick each tool "
            f"half the time ({before:.0%} held-out success), {steps} GRPO steps through the real gym with the reward and with it negated, "
            "held-out success on 100 arenas sampled at temperature 1. The test passes at >= 90% and < 10%.", "",
            "| fault patched in | after GRPO | after negated GRPO | test |", "| --- | --- | --- | --- |",
            *[f"| {kind} | {r:.0%} | {n:.0%} | {'passes' if ok else 'fails'} |" for kind, r, n, ok in rows], "",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
