"""The episode table's query (filter, sort, page: every field of the query string, anything else a 400) and the
comparison of two runs."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlencode

from pydantic import BaseModel, ConfigDict, Field

from clients.viewer.runs import EpisodeRow, Run

SORT_KEYS = ("line", "reward", "arena_id", "domain", "scenario_type", "n_calls", "n_injected", "error", "judge")


FILTERS = ("domain", "scenario_type", "error", "injected", "min_reward", "max_reward", "min_calls", "max_calls", "q", "source", "kept")


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
    source: str | None = Field(default=None, max_length=20)
    """The episode file (`rank1`: trajectories.rank1.jsonl) of a run with several."""
    kept: Literal["any", "yes", "no"] = "any"
    """Kept by synthesis' filter."""

    def matches(self, r: EpisodeRow) -> bool:
        if self.domain and r.domain != self.domain or self.scenario_type and r.scenario_type != self.scenario_type:
            return False
        if self.source is not None and r.source != self.source or self.kept != "any" and r.kept != (self.kept == "yes"):
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
        return any(getattr(self, f) not in (None, "any") for f in FILTERS)

    def link(self, **changes: Any) -> str:
        """This query with `changes`, as a query string (defaults left out)."""
        data = {**self.model_dump(exclude_defaults=True), **changes}
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
