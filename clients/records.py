"""The trajectory record: one JSONL row per episode, read by SFT export, RL and reports alike."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from gym_server.models import CallLogEntry, RewardBreakdown


class TokenUsage(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0

    def add(self, usage: dict[str, Any] | None) -> None:
        if usage:
            self.prompt_tokens += int(usage.get("prompt_tokens") or 0)
            self.completion_tokens += int(usage.get("completion_tokens") or 0)


class Timings(BaseModel):
    total_s: float = 0.0
    model_s: float = 0.0
    tools_s: float = 0.0


class TrajectoryRecord(BaseModel):
    """Everything about one episode. `error` is set (and `reward` may be None) when the episode failed."""

    episode_id: str | None = None
    arena_id: str
    domain: str | None = None
    scenario_type: str | None = None
    repeat: int = 0
    """Which of the K attempts at this arena (for pass^k)."""
    policy: str
    model: str | None = None
    gym_url: str | None = None
    messages: list[dict[str, Any]] = Field(default_factory=list)
    """OpenAI chat format: system/user/assistant (with tool_calls)/tool messages."""
    tools: list[dict[str, Any]] = Field(default_factory=list)
    """OpenAI tool schemas offered to the model."""
    call_log: list[CallLogEntry] = Field(default_factory=list)
    reward: RewardBreakdown | None = None
    final_answer: Any = None
    turns: int = 0
    stop_reason: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    timings: Timings = Field(default_factory=Timings)
    error: str | None = None

    @property
    def key(self) -> str:
        return f"{self.arena_id}#{self.repeat}"
