"""The whole recipe on a tiny model: held-out reward before SFT, after SFT on oracle trajectories, and after
GRPO, on offline arenas (train and held-out sets from different seeds). Runs on CPU (slowly) or a GPU.

    python bench/tiny_training_run.py [--train 400] [--heldout 200] [--sft-steps 300] [--grpo-steps 20] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import asyncio
import json
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
    ap.add_argument("--train", type=int, default=400)
    ap.add_argument("--heldout", type=int, default=200)
    ap.add_argument("--sft-steps", type=int, default=300)
    ap.add_argument("--grpo-steps", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--mix", default=None, help="scenario mix, e.g. single_hop=1 (default: the generator's)")
    ap.add_argument("--sft-lr", type=float, default=3e-3)
    ap.add_argument("--grpo-lr", type=float, default=1e-4)
    ap.add_argument("--grpo-generations", type=int, default=4, help="GRPO group size (the batch holds 2 groups)")
    ap.add_argument("--grpo-temperature", type=float, default=1.0, help="sampling temperature of GRPO's rollouts")
    ap.add_argument("--distractors", default="0,0,1", help="distractor tools per band in GRPO episodes: high,medium,low")
    ap.add_argument("--work", type=Path, default=None, help="work folder; a stage whose output is there already is skipped")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()

    from clients.evaluation import EvalConfig, run_eval
    from clients.local_model import load_pretrained
    from clients.policies import local_policy
    from gym_server.config import ServeConfig
    from gym_server.serve import GymThread
    from gym_server.store import write_bundle
    from synth.arenas.offline import generate
    from trainer.tiny import arena_text, default_corpus, tiny_model, train_tokenizer
    from trainer.train import GRPORunConfig, SFTRunConfig, run_grpo, run_sft

    work = args.work or Path(tempfile.mkdtemp(prefix="astra-tiny-run-"))
    work.mkdir(parents=True, exist_ok=True)
    mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))} if args.mix else None
    if not (work / "base" / "config.json").exists():
        train = list(generate(args.train, seed=101, mix=mix))
        heldout = [a.model_copy(update={"id": a.id.replace("offline-", "heldout-")}) for a in generate(args.heldout, seed=202, mix=mix)]
        write_bundle(train, work / "train.jsonl")
        write_bundle(heldout, work / "heldout.jsonl")
        # the tokenizer also learns the training arenas' words, so their names and ids are a few tokens each
        tokenizer = train_tokenizer(default_corpus() + [line for a in train for line in arena_text(a)])
        model = tiny_model(tokenizer, hidden_size=args.hidden, layers=args.layers)
        model.save_pretrained(work / "base")
        tokenizer.save_pretrained(work / "base")
    results: dict[str, dict] = {}
    t0 = time.perf_counter()
    with GymThread.private(ServeConfig(port=0, arenas=[str(work / "train.jsonl"), str(work / "heldout.jsonl")])) as gym:

        def heldout_reward(folder: Path, tag: str) -> dict:
            report = work / f"eval-{tag}" / "report.json"
            if report.exists():  # a resumed run: this stage was evaluated already
                return json.loads(report.read_text())["overall"]
            model, tok = load_pretrained(str(folder))
            config = EvalConfig(policy="oracle", gym=gym.url, token=gym.config.token, arenas="heldout-*", concurrency=8, out=work / f"eval-{tag}", max_turns=4, max_tokens=96)
            return asyncio.run(run_eval(config, progress=False, policy=local_policy(model, tok, max_turns=4, max_tokens=96)))["overall"]

        results["before SFT"] = heldout_reward(work / "base", "base")
        if not (work / "oracle" / "report.json").exists():
            asyncio.run(run_eval(EvalConfig(policy="oracle", gym=gym.url, token=gym.config.token, arenas="offline-*", concurrency=16, out=work / "oracle"), progress=False))
        if not (work / "sft" / "final").exists():
            run_sft(SFTRunConfig(model=str(work / "base"), data=work / "oracle" / "trajectories.jsonl", out=work / "sft",
                                 max_steps=args.sft_steps, batch_size=8, learning_rate=args.sft_lr, save_steps=10_000,
                                 gradient_checkpointing=False))  # fmt: skip
        results["after SFT"] = heldout_reward(work / "sft" / "final", "sft")
        if not (work / "grpo" / "final").exists():
            distractors = dict(zip(("high", "medium", "low"), (int(x) for x in args.distractors.split(","))))
            run_grpo(GRPORunConfig(model=str(work / "sft" / "final"), gym=gym.url, token=gym.config.token, arenas=[str(work / "train.jsonl")], out=work / "grpo",
                                   max_steps=args.grpo_steps, batch_size=2 * args.grpo_generations, num_generations=args.grpo_generations,
                                   learning_rate=args.grpo_lr, max_turns=4,
                                   max_new_tokens=96, save_steps=10_000, distractors=distractors, temperature=args.grpo_temperature,
                                   gradient_checkpointing=False))  # fmt: skip
        results["after GRPO"] = heldout_reward(work / "grpo" / "final", "grpo")
    wall = time.perf_counter() - t0
    for stage, o in results.items():
        print(f"{stage:>11}: reward {o['reward']:.3f}  recall {o['recall']:.3f}  precision {o['precision']:.3f}  success {o['success_rate']:.1%}")
    print(f"{wall:.0f} s; work folder {work}")
    if args.write:
        device = "cuda" if __import__("torch").cuda.is_available() else "cpu"
        update_section(args.write, "## Tiny training run", "\n".join([
            "## Tiny training run (bench/tiny_training_run.py)", "",
            f"`python bench/tiny_training_run.py --train {args.train} --heldout {args.heldout} --sft-steps {args.sft_steps} "
            f"--grpo-steps {args.grpo_steps}{f' --mix {args.mix}' if args.mix else ''} --hidden {args.hidden} --layers {args.layers} --sft-lr {args.sft_lr} --grpo-lr {args.grpo_lr} "
            f"--grpo-generations {args.grpo_generations} --grpo-temperature {args.grpo_temperature} --distractors {args.distractors}` "
            f"on {device}, {time.strftime('%Y-%m-%d')}, {wall:.0f} s. Tiny Qwen3 ({args.layers} layers, hidden {args.hidden}) from scratch; held-out = {args.heldout} offline arenas from another seed, played over MCP.", "",
            "| stage | reward | recall | precision | success |", "| --- | --- | --- | --- | --- |",
            *[f"| {s} | {o['reward']:.3f} | {o['recall']:.3f} | {o['precision']:.3f} | {o['success_rate']:.1%} |" for s, o in results.items()], "",
        ]))  # fmt: skip
    (work / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
