"""Run folders as the viewer reads them: an index of one summary row per episode (built once, lazily), the
episode itself read back by its byte offset, and the table's filter/sort/page query.

Everything here reads untrusted text (model output, tool results, questions) and only hands it on for the
templates to escape. Runs are named by their position on the command line and episodes by their line number in
`trajectories.jsonl`, never by a path from a request, so no request can name a file.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clients.evaluation import TRAJECTORIES
from clients.records import TrajectoryRecord

CHARTS = ("reward.png", "calls_tokens.png", "pass_hat_k.png", "suite.png")
"""The chart files `clients.evaluation` writes: the only files of a run folder the viewer serves as they are."""
QUESTION_CHARS = 300
SORT_KEYS = ("line", "reward", "arena_id", "domain", "scenario_type", "n_calls", "n_injected", "error")


@dataclass(slots=True)
class EpisodeRow:
    line: int
    offset: int
    arena_id: str
    domain: str
    scenario_type: str
    repeat: int
    reward: float | None
    n_calls: int
    n_injected: int
    error: str | None
    question: str


def _question(messages: list[Any]) -> str:
    for m in messages:
        if isinstance(m, dict) and m.get("role") == "user" and isinstance(m.get("content"), str):
            return m["content"][:QUESTION_CHARS]
    return ""


def _row(line: int, offset: int, data: dict[str, Any]) -> EpisodeRow:
    reward = data.get("reward") if isinstance(data.get("reward"), dict) else None
    calls = data.get("call_log") if isinstance(data.get("call_log"), list) else []
    value = reward.get("reward") if reward else None
    return EpisodeRow(
        line=line, offset=offset, arena_id=str(data.get("arena_id", "")), domain=str(data.get("domain") or ""),
        scenario_type=str(data.get("scenario_type") or ""), repeat=int(data.get("repeat") or 0),
        reward=float(value) if isinstance(value, (int, float)) else None, n_calls=len(calls),
        n_injected=sum(1 for c in calls if isinstance(c, dict) and c.get("injected")),
        error=str(data["error"])[:500] if data.get("error") else None,
        question=_question(data.get("messages") or []),
    )  # fmt: skip


@dataclass
class Run:
    """One run folder. The index is read on first use; a line that is not a JSON object is skipped and counted."""

    path: Path
    _rows: list[EpisodeRow] | None = None
    bad_lines: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def rows(self) -> list[EpisodeRow]:
        with self._lock:
            if self._rows is None:
                self._rows = self._index()
            return self._rows

    def _index(self) -> list[EpisodeRow]:
        rows: list[EpisodeRow] = []
        path = self.path / TRAJECTORIES
        if not path.is_file():
            return rows
        offset = 0
        with path.open("rb") as f:
            for line in f:
                try:
                    data = json.loads(line)
                    if not isinstance(data, dict):
                        raise ValueError
                    rows.append(_row(len(rows), offset, data))
                except (ValueError, TypeError, RecursionError):
                    self.bad_lines += 1
                offset += len(line)
        return rows

    def report(self) -> dict[str, Any] | None:
        try:
            report = json.loads((self.path / "report.json").read_text())
        except (OSError, ValueError, RecursionError):
            return None
        return report if isinstance(report, dict) else None

    def charts(self) -> list[str]:
        return [c for c in CHARTS if (self.path / c).is_file()]

    def record(self, line: int) -> TrajectoryRecord | None:
        rows = self.rows
        if not 0 <= line < len(rows):
            return None
        with (self.path / TRAJECTORIES).open("rb") as f:
            f.seek(rows[line].offset)
            return TrajectoryRecord.model_validate_json(f.readline())


class TableQuery(BaseModel):
    """The episode table's query string; anything else is a 400."""

    model_config = ConfigDict(extra="forbid")

    sort: Literal[SORT_KEYS] = "line"  # type: ignore[valid-type]
    order: Literal["asc", "desc"] = "asc"
    page: int = Field(default=1, ge=1, le=1_000_000)
    per_page: int = Field(default=50, ge=1, le=500)
    domain: str | None = Field(default=None, max_length=200)
    scenario_type: str | None = Field(default=None, max_length=200)
    error: Literal["any", "yes", "no"] = "any"
    injected: Literal["any", "yes", "no"] = "any"
    min_reward: float | None = Field(default=None, ge=0, le=1)
    max_reward: float | None = Field(default=None, ge=0, le=1)
    min_calls: int | None = Field(default=None, ge=0)
    max_calls: int | None = Field(default=None, ge=0)
    q: str | None = Field(default=None, max_length=200)
    """Text in the question (case-insensitive)."""

    def matches(self, r: EpisodeRow) -> bool:
        if self.domain and r.domain != self.domain or self.scenario_type and r.scenario_type != self.scenario_type:
            return False
        if self.error != "any" and (r.error is not None) != (self.error == "yes"):
            return False
        if self.injected != "any" and (r.n_injected > 0) != (self.injected == "yes"):
            return False
        if self.min_reward is not None and (r.reward is None or r.reward < self.min_reward):
            return False
        if self.max_reward is not None and (r.reward is None or r.reward > self.max_reward):
            return False
        if self.min_calls is not None and r.n_calls < self.min_calls or self.max_calls is not None and r.n_calls > self.max_calls:
            return False
        return not self.q or self.q.lower() in r.question.lower()

    def apply(self, rows: list[EpisodeRow]) -> tuple[list[EpisodeRow], int]:
        """The page asked for and how many rows matched. Rows with no value sort last either way."""
        kept = [r for r in rows if self.matches(r)] if self.active else rows
        if self.sort != "line":
            present = [r for r in kept if getattr(r, self.sort) is not None]
            missing = [r for r in kept if getattr(r, self.sort) is None]
            kept = sorted(present, key=lambda r: getattr(r, self.sort), reverse=self.order == "desc") + missing
        elif self.order == "desc":
            kept = kept[::-1]
        start = (self.page - 1) * self.per_page
        return kept[start : start + self.per_page], len(kept)

    @property
    def active(self) -> bool:
        return any(getattr(self, f) not in (None, "any") for f in ("domain", "scenario_type", "error", "injected", "min_reward", "max_reward", "min_calls", "max_calls", "q"))

    def link(self, **changes: Any) -> str:
        """This query with `changes`, as a query string (defaults left out)."""
        data = {**self.model_dump(exclude_defaults=True), **changes}
        from urllib.parse import urlencode

        return "?" + urlencode({k: v for k, v in data.items() if v is not None and v != self.model_fields[k].default})


def compare(a: Run, b: Run) -> dict[str, Any]:
    """Per-arena mean reward in each run (scored episodes only), the delta, and the arenas that flipped between
    solved (mean reward 1) and not."""

    def means(run: Run) -> dict[str, float]:
        sums: dict[str, list[float]] = {}
        for r in run.rows:
            if r.reward is not None:
                sums.setdefault(r.arena_id, []).append(r.reward)
        return {k: sum(v) / len(v) for k, v in sums.items()}

    ma, mb = means(a), means(b)
    rows = []
    for arena in sorted(set(ma) | set(mb)):
        ra, rb = ma.get(arena), mb.get(arena)
        delta = rb - ra if ra is not None and rb is not None else None
        flipped = ra is not None and rb is not None and (ra >= 1.0) != (rb >= 1.0)
        rows.append({"arena_id": arena, "a": ra, "b": rb, "delta": delta, "flipped": flipped})
    rows.sort(key=lambda r: (not r["flipped"], -abs(r["delta"] or 0.0), r["arena_id"]))
    both = [r for r in rows if r["delta"] is not None]
    return {
        "rows": rows,
        "mean_delta": sum(r["delta"] for r in both) / len(both) if both else None,
        "gained": sum(1 for r in rows if r["flipped"] and (r["b"] or 0) >= 1.0),
        "lost": sum(1 for r in rows if r["flipped"] and (r["a"] or 0) >= 1.0),
    }
