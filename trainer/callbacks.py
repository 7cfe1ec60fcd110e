"""Trainer callbacks: lean checkpoints and readable metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

RESUME_FILES = ("optimizer.pt", "scheduler.pt", "scaler.pt")
PLOTTED = ("reward", "gym/recall", "gym/precision", "gym/tool_calls", "completions/mean_length", "loss")


def checkpoints(output_dir: str | Path) -> list[Path]:
    found = [p for p in Path(output_dir).glob("checkpoint-*") if p.is_dir() and re.fullmatch(r"checkpoint-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


class KeepResumeStateForNewest(TrainerCallback):
    """Weights are kept at every save; optimizer and scheduler state only in the newest `keep` checkpoints
    (they are most of a checkpoint's size and only the newest is needed to resume)."""

    def __init__(self, keep: int = 2) -> None:
        self.keep = keep

    def on_save(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if not args.should_save:  # under several processes, the one that wrote the checkpoint prunes it
            return
        for old in checkpoints(args.output_dir)[: -self.keep] if self.keep > 0 else checkpoints(args.output_dir):
            for name in RESUME_FILES:
                (old / name).unlink(missing_ok=True)
            for rng in old.glob("rng_state*.pth"):
                rng.unlink()


class MetricsWriter(TrainerCallback):
    """Every log line to `metrics.jsonl`; at the end (and every `plot_every` logs) a PNG of the main curves."""

    def __init__(self, out_dir: str | Path, plot_every: int = 10) -> None:
        self.out = Path(out_dir)
        self.plot_every = plot_every
        self.rows: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        if not logs or not state.is_world_process_zero:  # every rank logs the same gathered metrics: write them once
            return
        row = {"step": state.global_step, **{k: v for k, v in logs.items() if isinstance(v, (int, float))}}
        self.rows.append(row)
        self.out.mkdir(parents=True, exist_ok=True)
        with (self.out / "metrics.jsonl").open("a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")
        if len(self.rows) % self.plot_every == 0:
            self.plot()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.plot()

    def plot(self) -> Path | None:
        keys = [k for k in PLOTTED if any(k in r for r in self.rows)]
        if not keys:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.2), squeeze=False)
        for ax, key in zip(axes[0], keys):
            points = [(r["step"], r[key]) for r in self.rows if key in r]
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o")
            ax.set_title(key)
            ax.set_xlabel("step")
        fig.tight_layout()
        path = self.out / "metrics.png"
        fig.savefig(path, dpi=90)
        plt.close(fig)
        return path
