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


class TokenTape(BaseModel):
    """An episode as the policy's tokens (GRPO's training sample), recorded while it was played:

    - `prompt_ids`: the rendered system/user turn with the tools, up to the first assistant header;
    - `completion_ids`: every token after it: the model's turns and, between them, the tool-response tokens;
    - `logprobs`: the sampling log-probabilities of the model's tokens (0.0 for the environment's tokens);
    - `env_mask`: 1 for tokens the model generated, 0 for tokens the environment wrote (no loss on them);
    - `truncated`: the last turn was cut off by the token budget."""

    prompt_ids: list[int] = Field(default_factory=list)
    completion_ids: list[int] = Field(default_factory=list)
    logprobs: list[float] = Field(default_factory=list)
    env_mask: list[int] = Field(default_factory=list)
    truncated: bool = False


class TrajectoryRecord(BaseModel):
    """Everything about one episode. `error` is set (and `reward` may be None) when the episode failed."""

    episode_id: str | None = None
    arena_id: str
    domain: str | None = None
    scenario_type: str | None = None
    repeat: int = 0
    """Which of the K attempts at this arena (for pass^k)."""
    seed: int | None = None
    """The episode's seed (failure injection follows it): the same arena and seed replay the same episode."""
    policy: str
    model: str | None = None
    gym_url: str | None = None
    replica_lost: bool = False
    """The episode was lost with the gym (replica or process) that held it: an infrastructure error, replayed
    elsewhere by `eval` and re-rolled by GRPO, never scored."""
    system_prompt: str | None = None
    """The system prompt the policy was given (also the first message): SFT, GRPO and eval share it."""
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
    tokens: TokenTape | None = Field(default=None, exclude=True)
    """The token-level tape of a recorded episode (GRPO); kept in memory, never written to JSONL."""

    @property
    def key(self) -> str:
        return f"{self.arena_id}#{self.repeat}"
