"""Adaptive Batch Filling (ASTRA): GRPO learns nothing from a group whose rewards are all equal, so only groups
with non-zero reward variance enter an optimization batch. A buffer keeps valid groups; each batch takes the
first n of them, rolls out more prompts while it is short, and carries the overflow to the next batch.
TRL 1.16 has no such filtering: this wraps the rollout function.
"""

from __future__ import annotations

import random
import statistics
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer.episodes import EpisodeTokens

PlayFn = Callable[[list[Any]], list[EpisodeTokens]]
"""Plays prompts (already repeated per group) and returns one episode each, in order."""


@dataclass
class ABFStats:
    groups_played: int = 0
    groups_dropped: int = 0
    groups_drawn: int = 0
    """Groups rolled out beyond the trainer's own prompts to fill a batch."""
    carried: int = 0
    batches: int = 0
    short_batches: int = 0
    """Batches that still had too few valid groups after `max_extra_rounds` (filled with zero-advantage groups)."""


@dataclass
class AdaptiveBatchFiller:
    play: PlayFn
    extra_prompts: list[Any]
    group_size: int
    max_extra_rounds: int = 4
    seed: int = 0
    signal: str = "reward"
    """The reward breakdown's field GRPO trains on (F1 by default): a group is valid when it varies."""
    buffer: deque[list[EpisodeTokens]] = field(default_factory=deque)
    stats: ABFStats = field(default_factory=ABFStats)

    def __post_init__(self) -> None:
        self._rng = random.Random(self.seed)

    def has_signal(self, group: list[EpisodeTokens]) -> bool:
        rewards = [float(e.reward.get(self.signal, 0.0)) for e in group]
        return len(rewards) > 1 and statistics.pvariance(rewards) > 0.0

    def _play_groups(self, prompts: list[Any], flat: list[list[EpisodeTokens]]) -> None:
        """Valid groups go to the buffer; flat ones to `flat`, the batch's last resort."""
        episodes = self.play(prompts)
        for start in range(0, len(episodes), self.group_size):
            group = episodes[start : start + self.group_size]
            self.stats.groups_played += 1
            if self.has_signal(group):
                self.buffer.append(group)
            else:
                self.stats.groups_dropped += 1
                flat.append(group)

    def fill(self, prompts: list[Any]) -> list[EpisodeTokens]:
        """One batch of `len(prompts) // group_size` groups, valid ones first."""
        needed = len(prompts) // self.group_size
        self.stats.batches += 1
        self.stats.carried += min(len(self.buffer), needed)
        flat: list[list[EpisodeTokens]] = []
        if len(self.buffer) < needed:
            self._play_groups(prompts, flat)
        rounds = 0
        while len(self.buffer) < needed and rounds < self.max_extra_rounds and self.extra_prompts:
            rounds += 1
            short = needed - len(self.buffer)
            picks = [self._rng.choice(self.extra_prompts) for _ in range(short)]
            self.stats.groups_drawn += short
            self._play_groups([p for p in picks for _ in range(self.group_size)], flat)
        batch: list[EpisodeTokens] = []
        while self.buffer and len(batch) < len(prompts):
            batch.extend(self.buffer.popleft())
        if len(batch) < len(prompts):
            # nothing better was found: zero-advantage groups, which GRPO ignores. The ones this call already
            # played serve; playing the prompts again would cost a rollout round for no gradient.
            self.stats.short_batches += 1
            while flat and len(batch) < len(prompts):
                batch.extend(flat.pop(0))
            if len(batch) < len(prompts):
                batch.extend(self.play(prompts[len(batch) :]))
        return batch

    def log(self) -> dict[str, float]:
        s = self.stats
        return {"abf/groups_played": s.groups_played, "abf/groups_dropped": s.groups_dropped, "abf/groups_drawn": s.groups_drawn,
                "abf/buffer": len(self.buffer), "abf/short_batches": s.short_batches}  # fmt: skip
