"""The whole recipe, staged, on a tiny model: held-out reward before SFT, after SFT on oracle trajectories, and
after GRPO, each stage compared with the last by a paired 95% bootstrap interval over the held-out arenas; then
the paper's two ablations at the same scale (GRPO on recall or precision alone instead of F1; GRPO without
irrelevant-tool mixing). Every stage plays its episodes through a real gym over MCP, with the same runner
evaluation uses.

    python bench/tiny_training_run.py --preset cpu --write docs/benchmarks.md      # 2 CPU cores
    python bench/tiny_training_run.py --preset device --write docs/benchmarks.md   # one GPU (DEVELOPERS.md)

The task: offline arenas (`synth.arenas.offline`), training and held-out sets from different seeds, with the
same templates and worlds, so held-out arenas are never easier than training ones (their flight ids are mostly
ones no training arena holds). The tiny model is a Qwen3 built from scratch; its tokenizer is learned from the
SFT conversations and keeps every id of the generator's id space whole (`entity_ids`), so copying an id is
copying one token, as it is for a large model's tokenizer and a common word. Every episode, in SFT data, GRPO
and evaluation, also holds irrelevant tools of other arenas (`--distractors`), as the paper mixes them.

`--work DIR` keeps each stage's output; a rerun skips finished stages (a run cut short continues).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

from bench.gym_throughput import update_section  # noqa: E402

PRESETS: dict[str, dict[str, Any]] = {
    # 2 CPU cores: under 90 minutes for the main stages and the ablations
    "cpu": dict(train=400, heldout=200, mix="single_hop=1", hidden=64, layers=2, sft_steps=1000, sft_lr=3e-3, sft_batch=8,
                grpo_steps=120, grpo_lr=1e-3, grpo_warmup=0.1, grpo_batch=32, grpo_generations=8, temperature=1.0, distractors="0,0,2",
                max_turns=1),
    # one GPU (no internet there: the same from-scratch model, larger, and more data and steps)
    "device": dict(train=4000, heldout=1000, mix="single_hop=2,parallel_single_hop=1", hidden=512, layers=8, sft_steps=300,
                   sft_lr=1e-3, sft_batch=32, grpo_steps=200, grpo_lr=2e-5, grpo_warmup=0.1, grpo_batch=64, grpo_generations=8, temperature=1.0,
                   distractors="0,0,2", max_turns=1),
}  # fmt: skip
MAX_TOKENS = 48
"""Per assistant turn: a call or a short answer."""
MAIN_GRPO = "GRPO (F1, distractors)"
SAMPLED_EPISODES = 4
"""Held-out episodes per arena when the policy samples (its mean is the arena's reward)."""


def parse_args() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    for key, value in PRESETS["cpu"].items():
        ap.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=None, help=f"overrides the preset (cpu: {value})")
    ap.add_argument("--stages", default="main,ablations", help="main (base, SFT, GRPO) and/or ablations")
    ap.add_argument("--work", type=Path, default=None, help="work folder; a stage whose output is there already is skipped")
    ap.add_argument("--write", type=Path, default=None, help="update this markdown file's section")
    args = ap.parse_args()
    for key, value in PRESETS[args.preset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


def band_counts(text: str) -> dict[str, int]:
    from clients.distractors import parse_band_counts

    return parse_band_counts(text)


class Run:
    """One staged run's folder, gym and stages; each stage returns what it made, reusing it when it exists."""

    def __init__(self, args: argparse.Namespace, work: Path, gym: Any) -> None:
        self.args, self.work, self.gym = args, work, gym
        self.distractors = band_counts(args.distractors)

    def oracle_data(self) -> Path:
        """The SFT data: each training arena played by the gold calls, distractors served as in every episode."""
        from clients.evaluation import EvalConfig, run_eval

        out = self.work / "oracle"
        if not (out / "report.json").exists():
            asyncio.run(run_eval(EvalConfig(policy="oracle", gym=self.gym.url, token=self.gym.config.token, arenas="offline-*",
                                            concurrency=32, out=out, distractors=self.distractors, seed=1), progress=False))  # fmt: skip
        return out / "trajectories.jsonl"

    def base_model(self, data: Path) -> Path:
        """A from-scratch model whose tokenizer learned the SFT conversations as the chat template renders them."""
        from synth.arenas.offline import entity_ids
        from trainer.tiny import tiny_model, train_tokenizer
        from trainer.train import sft_dataset

        folder = self.work / "base"
        if not (folder / "config.json").exists():
            bootstrap = train_tokenizer(["x"])  # renders the chat template; the real tokenizer learns what it renders
            rows = sft_dataset(data)
            texts = [bootstrap.apply_chat_template(r["messages"], tools=json.loads(r["tools"]), tokenize=False) for r in rows]
            tokenizer = train_tokenizer(texts, vocab_size=2048, across_words=True, whole_words=entity_ids())
            tiny_model(tokenizer, hidden_size=self.args.hidden, layers=self.args.layers).save_pretrained(folder)
            tokenizer.save_pretrained(folder)
        return folder

    def sft(self, base: Path, data: Path) -> Path:
        from trainer.train import SFTRunConfig, run_sft

        out = self.work / "sft"
        if not (out / "final" / "config.json").exists():
            run_sft(SFTRunConfig(model=str(base), data=data, out=out, max_steps=self.args.sft_steps, batch_size=self.args.sft_batch,
                                 learning_rate=self.args.sft_lr, save_steps=100_000, gradient_checkpointing=False))  # fmt: skip
        return out / "final"

    def grpo(self, start: Path, name: str, reward: str = "f1", distractors: bool = True) -> Path:
        from trainer.train import GRPORunConfig, run_grpo

        out = self.work / name
        if not (out / "final" / "config.json").exists():
            counts = self.distractors if distractors else {band: 0 for band in self.distractors}
            run_grpo(GRPORunConfig(
                model=str(start), gym=self.gym.url, token=self.gym.config.token, arena_filter="offline-*", out=out,
                max_steps=self.args.grpo_steps, batch_size=self.args.grpo_batch, num_generations=self.args.grpo_generations,
                learning_rate=self.args.grpo_lr, warmup_ratio=self.args.grpo_warmup, max_turns=self.args.max_turns, max_new_tokens=MAX_TOKENS, max_completion_length=2 * self.args.max_turns * MAX_TOKENS,
                temperature=self.args.temperature, reward=reward, distractors=counts, gradient_checkpointing=False, save_steps=100_000,
            ))  # fmt: skip
        return out / "final"

    def heldout(self, model: Path, tag: str, temperature: float) -> list[dict[str, Any]]:
        """Every held-out arena played through the gym with distractors (the same ones for every model: one
        seed): sampled at the training temperature (the policy GRPO trains, `SAMPLED_EPISODES` per arena), or
        greedily (temperature 0, one episode: its most likely play)."""
        from clients.evaluation import EvalConfig, load_records, run_eval

        out = self.work / f"eval-{tag}" / ("greedy" if temperature == 0 else f"t{temperature:g}")
        if not (out / "report.json").exists():
            import torch

            from clients.local_model import load_pretrained
            from clients.policies import local_policy

            torch.manual_seed(0)
            loaded, tokenizer = load_pretrained(str(model))
            policy = local_policy(loaded, tokenizer, max_turns=self.args.max_turns, max_tokens=MAX_TOKENS, temperature=temperature)
            config = EvalConfig(gym=self.gym.url, token=self.gym.config.token, arenas="heldout-*", concurrency=64, out=out,
                                max_turns=self.args.max_turns, max_tokens=MAX_TOKENS, distractors=self.distractors, seed=2,
                                episodes_per_arena=1 if temperature == 0 else SAMPLED_EPISODES)  # fmt: skip
            asyncio.run(run_eval(config, progress=False, policy=policy))
        records = [r for r in load_records(out / "trajectories.jsonl") if r.error is None and r.reward is not None]
        return [{"arena": r.arena_id, "domain": r.domain, "reward": r.reward.reward, "recall": r.reward.recall,  # type: ignore[union-attr]
                 "precision": r.reward.precision, "calls": r.reward.tool_calls, "success": r.reward.reward == 1.0}  # type: ignore[union-attr]
                for r in records]  # fmt: skip

    def evaluate(self, model: Path, tag: str) -> dict[str, list[dict[str, Any]]]:
        return {"sampled": self.heldout(model, tag, self.args.temperature), "greedy": self.heldout(model, tag, 0.0)}


def paired_bootstrap(after: list[dict[str, Any]], before: list[dict[str, Any]], resamples: int = 10_000, seed: int = 0) -> tuple[float, float, float]:
    """The mean reward difference over the arenas both played (an arena's reward: the mean of its episodes),
    with a 95% percentile bootstrap interval (arenas resampled with replacement; pairing removes the arenas'
    own difficulty from the noise)."""
    a, b = per_arena(after), per_arena(before)
    diffs = [a[arena] - b[arena] for arena in a if arena in b]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return sum(diffs) / n, means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def per_arena(rows: list[dict[str, Any]]) -> dict[str, float]:
    episodes: dict[str, list[float]] = {}
    for r in rows:
        episodes.setdefault(r["arena"], []).append(float(r["reward"]))
    return {arena: sum(v) / len(v) for arena, v in episodes.items()}


def summary(rows: list[dict[str, Any]]) -> dict[str, float]:
    n = len(rows)
    return {"n": n, **{k: sum(float(r[k]) for r in rows) / n for k in ("reward", "recall", "precision", "calls", "success")}}


def main() -> None:
    args = parse_args()
    from gym_server.config import ServeConfig
    from gym_server.serve import GymThread
    from gym_server.store import write_bundle
    from synth.arenas.offline import generate

    work = args.work or Path(tempfile.mkdtemp(prefix="astra-staged-run-"))
    work.mkdir(parents=True, exist_ok=True)
    mix = {k: float(v) for k, v in (part.split("=") for part in args.mix.split(","))}
    if not (work / "heldout.jsonl").exists():
        write_bundle(list(generate(args.train, seed=101, mix=mix)), work / "train.jsonl")
        heldout = [a.model_copy(update={"id": a.id.replace("offline-", "heldout-")}) for a in generate(args.heldout, seed=202, mix=mix)]
        write_bundle(heldout, work / "heldout.jsonl")
    stages = set(args.stages.split(","))
    t0 = time.perf_counter()
    walls: dict[str, float] = {}
    results: dict[str, dict[str, list[dict[str, Any]]]] = {}

    def timed(name: str, fn: Any, *a: Any, **k: Any) -> Any:
        start = time.perf_counter()
        out = fn(*a, **k)
        walls[name] = walls.get(name, 0.0) + time.perf_counter() - start
        return out

    with GymThread.private(ServeConfig(port=0, arenas=[str(work / "train.jsonl"), str(work / "heldout.jsonl")])) as gym:
        run = Run(args, work, gym)
        data = timed("oracle data", run.oracle_data)
        base = timed("tokenizer + model", run.base_model, data)
        results["base"] = timed("eval", run.evaluate, base, "base")
        sft = timed("SFT", run.sft, base, data)
        results["SFT"] = timed("eval", run.evaluate, sft, "sft")
        if "main" in stages or "ablations" in stages:
            grpo = timed("GRPO", run.grpo, sft, "grpo")
            results[MAIN_GRPO] = timed("eval", run.evaluate, grpo, "grpo")
        if "ablations" in stages:
            for name, kind, mixing in (("grpo-recall", "recall", True), ("grpo-precision", "precision", True), ("grpo-no-distractors", "f1", False)):
                model = timed("GRPO", run.grpo, sft, name, kind, mixing)
                label = f"GRPO ({kind if kind != 'f1' else 'F1'}, {'distractors' if mixing else 'no distractors in training'})"
                results[label] = timed("eval", run.evaluate, model, name)
    wall = time.perf_counter() - t0
    report = write_report(args, work, results, walls, wall)
    print(report)
    if args.write:
        update_section(args.write, "## Staged training run", report)


def stage_table(results: dict[str, list[dict[str, Any]]]) -> list[str]:
    """One row per stage; each main stage compared with the one before, each ablation with the main GRPO run."""
    table = ["| stage | held-out reward | vs previous stage (95% CI) | success | recall | precision | tool calls / episode |",
             "| --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    previous: list[dict[str, Any]] | None = None
    main_grpo = results.get(MAIN_GRPO)
    for i, (stage, rows) in enumerate(results.items()):
        s = summary(rows)
        against = previous if i < 3 else main_grpo
        delta = ""
        if against is not None:
            mean, lo, hi = paired_bootstrap(rows, against)
            delta = f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]" + (" vs GRPO (F1)" if i >= 3 else "")
        table.append(f"| {stage} | {s['reward']:.3f} | {delta} | {s['success']:.1%} | {s['recall']:.3f} | {s['precision']:.3f} | {s['calls']:.2f} |")
        previous = rows
    return table


def write_report(args: argparse.Namespace, work: Path, results: dict[str, dict[str, list[dict[str, Any]]]], walls: dict[str, float], wall: float) -> str:
    import torch

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"{os.cpu_count()} CPU cores"
    flags = " ".join(f"--{k.replace('_', '-')} {getattr(args, k)}" for k in PRESETS[args.preset] if getattr(args, k) != PRESETS[args.preset][k])
    sampled = {stage: r["sampled"] for stage, r in results.items()}
    greedy = {stage: r["greedy"] for stage, r in results.items()}
    domains = sorted({r["domain"] for rows in sampled.values() for r in rows})
    by_domain = ["| stage | " + " | ".join(f"{d} (sampled / greedy)" for d in domains) + " |", "| --- |" + " --- |" * len(domains)]
    for stage in results:
        cells = [(summary([r for r in sampled[stage] if r["domain"] == d]), summary([r for r in greedy[stage] if r["domain"] == d])) for d in domains]
        by_domain.append(f"| {stage} | " + " | ".join(f"{a['reward']:.3f} / {b['reward']:.3f}" for a, b in cells) + " |")
    (work / "results.json").write_text(json.dumps({k: {kind: summary(v) for kind, v in r.items()} for k, r in results.items()}, indent=2))
    n_arenas = len(per_arena(next(iter(sampled.values())))) if results else 0
    return "\n".join([
        "## Staged training run (bench/tiny_training_run.py)", "",
        f"`python bench/tiny_training_run.py --preset {args.preset}{' ' + flags if flags else ''}` on {device}, {time.strftime('%Y-%m-%d')}, "
        f"{wall / 60:.0f} min ({', '.join(f'{k} {v / 60:.1f}' for k, v in walls.items())} min). A tiny Qwen3 ({args.layers} layers, "
        f"hidden {args.hidden}) from scratch; {args.train} training arenas (seed 101), {n_arenas} held-out arenas (seed 202), mix {args.mix}, "
        f"{args.max_turns} turn(s) per episode; every episode holds distractor tools (bands HIGH,MEDIUM,LOW = {args.distractors}), in the SFT "
        f"data, in GRPO (but for the ablation without them) and in every evaluation. Intervals: paired bootstrap over held-out arenas, "
        f"10,000 resamples.", "",
        f"Held-out, the policy sampling at the training temperature ({args.temperature:g}; {SAMPLED_EPISODES} episodes per arena):", "",
        *stage_table(sampled), "", "Held-out, greedy (one episode per arena):", "", *stage_table(greedy), "",
        "Held-out reward per domain:", "", *by_domain, "",
    ])  # fmt: skip


if __name__ == "__main__":
    main()
