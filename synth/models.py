"""On-disk formats of the SFT synthesis track: every stage reads and writes JSONL rows of these."""

from __future__ import annotations

import hashlib
import json
from typing import Any, Literal

from pydantic import BaseModel, Field

from gym_server.models import ScenarioType

JUDGE_AXES = (
    "query_understanding",
    "planning",
    "tool_response_understanding",
    "tool_response_conditioned_planning",
    "tool_call_status",
    "tool_conciseness",
    "final_answer_quality",
)
"""ASTRA's seven trajectory-quality axes; the trajectory reward is their mean."""


def stable_id(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


class ToolChain(BaseModel):
    """A plausible sequence of a server's tools, with why (the verification verdicts)."""

    id: str
    server: str
    tools: list[str]
    weight: float = 0.0
    """Product of the transition weights walked (how typical the chain is)."""
    verified: bool = False
    votes: list[bool] = Field(default_factory=list)
    back_translation: list[str] = Field(default_factory=list)
    reason: str | None = None
    """Why it was rejected (None when kept)."""


class SynthTask(BaseModel):
    id: str
    server: str
    query: str
    kind: Literal["chain", "server_only"]
    chain: list[str] = Field(default_factory=list)
    augmentation: Literal["original", "paraphrase", "complexity", "persona"] = "original"
    persona: str | None = None
    language: str = "en"
    scores: dict[str, float] = Field(default_factory=dict)
    """clarity, realism, tool_necessity on 1..5."""
    kept: bool = False
    reason: str | None = None


class JudgeVerdict(BaseModel):
    scores: dict[str, float] = Field(default_factory=dict)
    """Each of `JUDGE_AXES` in [0, 1]."""
    reasons: dict[str, str] = Field(default_factory=dict)
    reward: float | None = None
    """The mean of the seven scores; None when the judgement failed."""
    error: str | None = None


class JudgedTrajectory(BaseModel):
    """A rollout (the clients' `TrajectoryRecord`, as a dict) with its judgement and the filter's decision."""

    id: str
    task: SynthTask
    record: dict[str, Any]
    verdict: JudgeVerdict
    kept: bool = False
    reason: str | None = None


class Rejection(BaseModel):
    server: str
    tool: str | None = None
    reason: str


class FilterReport(BaseModel):
    """What the tool-doc filter kept and dropped (`servers.report.json`)."""

    servers_in: int = 0
    servers_kept: int = 0
    tools_in: int = 0
    tools_kept: int = 0
    rejected: list[Rejection] = Field(default_factory=list)


class QASub(BaseModel):
    """A sub-question of a synthesized QA item (what becomes an arena's sub-task)."""

    id: str
    question: str
    answer: Any
    depends_on: list[str] = Field(default_factory=list)


class QAItem(BaseModel):
    """A synthesized main question with its sub-question graph; a rejected one is kept in the rejected JSONL."""

    id: str
    scenario_type: ScenarioType
    domain: str
    language: str = "en"
    question: str
    answer: Any
    subtasks: list[QASub]
    source: str = ""
    checks: dict[str, bool] = Field(default_factory=dict)
    score: float | None = None
    kept: bool = False
    reason: str | None = None
