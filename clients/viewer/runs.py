"""Run folders as the viewer reads them: an index of one summary row per episode (built once, lazily), the
episode itself read back by its file and byte offset, and what kind of run the folder holds.

A run's episodes are in `trajectories.jsonl` (eval, synthesis, one-process GRPO) and in
`trajectories.rank{R}.jsonl` (GRPO under several processes, one file per rank: `trainer.distributed`); every
such file is indexed, in rank order. A synthesis run's lines are judged trajectories (`synth.models.
JudgedTrajectory`: the rollout under `record`, the judge's `verdict`, the filter's `kept`), read here as plain
JSON since the viewer sits below synth in the layers.

Everything here reads untrusted text (model output, tool results, questions) and only hands it on for the
templates to escape. Runs are named by their position on the command line and episodes by their position in the
run's index, never by a path from a request, so no request can name a file.
"""

from __future__ import annotations

import json
import re
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from clients.evaluation import TRAJECTORIES
from clients.records import TrajectoryRecord
from clients.viewer.metrics import METRICS, Metrics, read_metrics

CHARTS = ("reward.png", "calls_tokens.png", "pass_hat_k.png", "suite.png")
"""The chart files `clients.evaluation` writes: the only files of a run folder the viewer serves as they are."""
QUESTION_CHARS = 300
RANK_FILE = re.compile(r"trajectories\.rank(\d{1,4})\.jsonl")
SYNTH_FILES = ("summary.json", "tasks.jsonl", "chains.jsonl")
"""Files only a synthesis run (`synth.pipeline`) writes."""
RunKind = Literal["eval", "training", "synthesis"]


def trajectory_files(folder: Path) -> list[Path]:
    """The run's episode files: `trajectories.jsonl`, then the rank files by rank."""
    ranks = sorted((int(m.group(1)), p) for p in folder.glob("trajectories.rank*.jsonl") if (m := RANK_FILE.fullmatch(p.name)) and p.is_file())
    main = folder / TRAJECTORIES
    return ([main] if main.is_file() else []) + [p for _, p in ranks]


def is_run_folder(folder: Path) -> bool:
    """Episodes, an eval's report, a training run's metrics or a synthesis run's summary: something to show."""
    return folder.is_dir() and bool(trajectory_files(folder) or any((folder / f).is_file() for f in ("report.json", METRICS, "summary.json")))


@dataclass(slots=True)
class EpisodeRow:
    line: int
    """Its position in the run's index: the episode's name in URLs."""
    file: int
    offset: int
    source: str
    """The file it came from, shortly: 'main' for trajectories.jsonl, 'rank1' for trajectories.rank1.jsonl."""
    arena_id: str
    domain: str
    scenario_type: str
    repeat: int
    reward: float | None
    n_calls: int
    n_injected: int
    error: str | None
    question: str
    judge: float | None = None
    """A synthesis rollout's judged reward."""
    kept: bool | None = None
    """Whether synthesis' filter kept it for SFT."""


@dataclass(slots=True)
class Episode:
    record: TrajectoryRecord
    source: str
    judged: dict[str, Any] | None = None
    """A synthesis rollout's judgement: `verdict` (scores, reasons, reward, error), `kept`, `reason`, `task`."""


def _question(messages: list[Any]) -> str:
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"][:QUESTION_CHARS]
    return ""


def _judged(data: dict[str, Any]) -> bool:
    return isinstance(data.get("record"), dict) and isinstance(data.get("verdict"), dict)


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _row(line: int, file: int, offset: int, source: str, data: dict[str, Any]) -> EpisodeRow:
    judge = kept = None
    if _judged(data):
        judge, kept = _number(data["verdict"].get("reward")), bool(data.get("kept"))
        data = data["record"]
    reward = data.get("reward") if isinstance(data.get("reward"), dict) else None
    calls = data.get("call_log") if isinstance(data.get("call_log"), list) else []
    return EpisodeRow(
        line=line, file=file, offset=offset, source=source, arena_id=str(data.get("arena_id", "")), domain=str(data.get("domain") or ""),
        scenario_type=str(data.get("scenario_type") or ""), repeat=int(_number(data.get("repeat")) or 0),
        reward=_number(reward.get("reward")) if reward else None, n_calls=len(calls),
        n_injected=sum(1 for c in calls if isinstance(c, dict) and c.get("injected")),
        error=str(data["error"])[:500] if data.get("error") else None,
        question=_question(data.get("messages") or []), judge=judge, kept=kept,
    )  # fmt: skip


def _source(path: Path) -> str:
    m = RANK_FILE.fullmatch(path.name)
    return f"rank{int(m.group(1))}" if m else "main"


@dataclass
class Run:
    """One run folder. The index is read on first use; a line that is not a JSON object is skipped and counted."""

    path: Path
    _rows: list[EpisodeRow] | None = None
    bad_lines: int = 0
    files: list[Path] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def kind(self) -> RunKind:
        if (self.path / METRICS).is_file():
            return "training"
        if any((self.path / f).is_file() for f in SYNTH_FILES):
            return "synthesis"
        return "eval"

    @property
    def rows(self) -> list[EpisodeRow]:
        with self._lock:
            if self._rows is None:
                self.files = trajectory_files(self.path)
                self._rows = self._index()
            return self._rows

    @property
    def sources(self) -> list[str]:
        """The labels of the run's episode files, when it has more than one."""
        labels = [_source(p) for p in self.files]
        return labels if len(labels) > 1 else []

    def _index(self) -> list[EpisodeRow]:
        rows: list[EpisodeRow] = []
        for file, path in enumerate(self.files):
            offset, source = 0, _source(path)
            with path.open("rb") as f:
                for line in f:
                    try:
                        data = json.loads(line)
                        if not isinstance(data, dict):
                            raise ValueError
                        rows.append(_row(len(rows), file, offset, source, data))
                    except (ValueError, TypeError, RecursionError):
                        self.bad_lines += 1
                    offset += len(line)
        return rows

    def _json(self, name: str) -> dict[str, Any] | None:
        try:
            data = json.loads((self.path / name).read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return data if isinstance(data, dict) else None

    def report(self) -> dict[str, Any] | None:
        """An eval run's report.json."""
        return self._json("report.json")

    def synthesis_summary(self) -> dict[str, Any] | None:
        """A synthesis run's summary.json (what each stage kept and dropped, the LLM's usage)."""
        return self._json("summary.json")

    def metrics(self) -> Metrics | None:
        """A training run's metrics per step (read anew each time: a run still training adds steps)."""
        return read_metrics(self.path / METRICS)

    def overview(self) -> dict[str, Any]:
        """The runs page's line: an eval's report figures, a training run's steps and last reward, a synthesis
        run's rollouts."""
        line: dict[str, Any] = dict.fromkeys(("policy", "episodes", "steps", "reward", "success"))
        line["kind"] = self.kind
        report = self.report()
        overall = report.get("overall") if report else None
        if report and isinstance(overall, dict):
            line.update(policy=report.get("policy"), episodes=overall.get("episodes"), reward=_number(overall.get("reward")), success=_number(overall.get("success_rate")))
        if line["kind"] == "training" and (metrics := self.metrics()) is not None:
            last = {f["key"]: f["last"] for f in metrics.figures}
            line.update(steps=metrics.steps[-1] if metrics.steps else 0, reward=last.get("reward"))
        if line["kind"] == "synthesis" and (summary := self.synthesis_summary()):
            rolled = summary.get("trajectories")
            line.update(episodes=rolled.get("rolled_out") if isinstance(rolled, dict) else None)
        return line

    def charts(self) -> list[str]:
        return [c for c in CHARTS if (self.path / c).is_file()]

    def episode(self, line: int) -> Episode | None:
        rows = self.rows
        if not 0 <= line < len(rows):
            return None
        row = rows[line]
        with self.files[row.file].open("rb") as f:
            f.seek(row.offset)
            data = json.loads(f.readline())
        judged = None
        if isinstance(data, dict) and _judged(data):
            judged = {k: data.get(k) for k in ("verdict", "kept", "reason", "task")}
            data = data["record"]
        return Episode(TrajectoryRecord.model_validate(data), row.source, judged)
