"""One episode as GRPO trains on it: the token tape of a played episode and the gym's reward breakdown."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clients.records import TrajectoryRecord
from clients.runner import EpisodeNotPlayed


@dataclass
class EpisodeTokens:
    """One episode as GRPO trains on it."""

    prompt_ids: list[int]
    completion_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    env_mask: list[int] = field(default_factory=list)
    reward: dict[str, Any] = field(default_factory=dict)
    turns: int = 0
    truncated: bool = False

    @classmethod
    def of(cls, record: TrajectoryRecord) -> EpisodeTokens:
        tape, reward = record.tokens, record.reward
        if tape is None or reward is None:
            raise EpisodeNotPlayed(f"episode {record.episode_id} on {record.arena_id} has no token tape or no reward")
        return cls(tape.prompt_ids, tape.completion_ids, tape.logprobs, tape.env_mask, reward.model_dump(), record.turns, tape.truncated)
