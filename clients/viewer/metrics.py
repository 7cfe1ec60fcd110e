"""A training run's curves: `metrics.jsonl` (`trainer.callbacks.MetricsWriter`, one row of numbers per logged
step) as series per step, grouped into the charts the run page draws with the vendored uPlot.

The file is the trainer's, but it is still read as untrusted: rows that are not objects with an integer `step`
are skipped and counted, values that are not finite numbers are gaps, and a run's keys and points are bounded
(a long run is thinned to every k-th step for the charts; its figures are over every step).
"""

from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METRICS = "metrics.jsonl"
MAX_POINTS = 2000
"""Points per series sent to the browser; a longer run is thinned (every k-th step, and the last)."""
MAX_KEYS = 200

GROUPS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("reward", ("reward", "reward_std", "rewards/*")),
    ("recall and precision", ("gym/recall", "gym/precision")),
    ("tool calls and solved sub-tasks", ("gym/tool_calls", "gym/solved")),
    ("completion lengths", ("completions/*_length",)),
    ("adaptive batch filling (groups drawn, dropped, played)", ("abf/*",)),
    ("loss", ("loss", "train_loss")),
)
"""The main charts, in this order, each of the keys its patterns match (GRPO's gym/* and abf/* come from
`trainer.rollout.gym_reward`; the others are TRL's). Every other key is charted below them, by its prefix."""


@dataclass(slots=True)
class Chart:
    title: str
    keys: list[str]
    main: bool


@dataclass
class Metrics:
    steps: list[int]
    """Every logged step, in order (a step logged twice, as after a resume, keeps its last row)."""
    series: dict[str, list[float | None]]
    charts: list[Chart]
    bad_lines: int = 0
    dropped_keys: int = 0
    stride: int = 1
    figures: list[dict[str, Any]] = field(default_factory=list)
    """Per key: first, last, min and max over every step."""

    def payload(self) -> dict[str, Any]:
        """What the page's charts read (every `stride`-th step, and the last)."""
        keep = [i for i in range(len(self.steps)) if i % self.stride == 0 or i == len(self.steps) - 1]
        return {
            "steps": [self.steps[i] for i in keep],
            "series": {k: [v[i] for i in keep] for k, v in self.series.items()},
            "charts": [{"title": c.title, "keys": c.keys} for c in self.charts],
        }


def _value(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        return None
    return float(v)


def charts_for(keys: list[str]) -> list[Chart]:
    charts, left = [], list(keys)
    for title, patterns in GROUPS:
        found = [k for p in patterns for k in left if fnmatch.fnmatchcase(k, p)]
        found = list(dict.fromkeys(found))
        if found:
            charts.append(Chart(title, found, main=True))
            left = [k for k in left if k not in found]
    by_prefix: dict[str, list[str]] = {}
    for key in left:
        by_prefix.setdefault(key.rsplit("/", 1)[0] if "/" in key else key, []).append(key)
    charts += [Chart(prefix, ks, main=False) for prefix, ks in by_prefix.items()]
    return charts


def read_metrics(path: Path) -> Metrics | None:
    """None when the file does not exist or cannot be read."""
    by_step: dict[int, dict[str, float | None]] = {}
    keys: dict[str, None] = {}
    bad = dropped = 0
    try:
        with path.open("rb") as f:
            for line in f:
                try:
                    row = json.loads(line)
                except (ValueError, RecursionError):
                    bad += 1
                    continue
                step = row.get("step") if isinstance(row, dict) else None
                if isinstance(step, bool) or not isinstance(step, int):
                    bad += 1
                    continue
                values = by_step.setdefault(step, {})
                for k, v in row.items():
                    if k == "step" or not isinstance(k, str):
                        continue
                    if k not in keys and len(keys) >= MAX_KEYS:
                        dropped += 1
                        continue
                    keys.setdefault(k)
                    values[k] = _value(v)
    except OSError:
        return None
    steps = sorted(by_step)
    series = {k: [by_step[s].get(k) for s in steps] for k in keys}
    series = {k: v for k, v in series.items() if any(x is not None for x in v)}  # a key that is never a number: no chart
    figures = []
    for k, values in series.items():
        present = [x for x in values if x is not None]
        figures.append({"key": k, "first": present[0], "last": present[-1], "min": min(present), "max": max(present), "n": len(present)})
    return Metrics(steps, series, charts_for(list(series)), bad, dropped, max(1, math.ceil(len(steps) / MAX_POINTS)), figures)
