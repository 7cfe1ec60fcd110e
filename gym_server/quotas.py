"""Per-token quotas on episodes: how many may live at once, and how fast they may be created.

Each principal (the operator, each agent token, everyone on an open gym) has its own counters, so one
token that exhausts its quota is refused with 429 and Retry-After while every other token is still served.
The number of principals is fixed by the configuration, so these counters cannot grow without bound.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field

from gym_server.auth import Principal


class TokenLimits(BaseModel):
    model_config = ConfigDict(extra="forbid")

    live_episodes: int = Field(ge=1, description="Episodes one token may hold at once (deleted or expired ones free their slot).")
    creations_per_minute: float = Field(gt=0, description="Sustained rate of episode creation per token.")
    burst: int = Field(ge=1, description="Creations a token may make at once before the rate applies.")


class QuotaExceeded(Exception):
    def __init__(self, message: str, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(slots=True)
class _Account:
    tokens: float
    refilled_at: float
    owned: set[str] = field(default_factory=set)
    pending: int = 0


class Quotas:
    """`live(episode_id)` says whether an episode still exists; ids of ended episodes are pruned lazily."""

    def __init__(self, limits_for: Callable[[Principal], TokenLimits], live: Callable[[str], bool]) -> None:
        self.limits_for = limits_for
        self.live = live
        self._accounts: dict[str, _Account] = {}

    def _account(self, principal: Principal) -> _Account:
        account = self._accounts.get(principal.name)
        if account is None:
            account = self._accounts[principal.name] = _Account(float(self.limits_for(principal).burst), time.monotonic())
        return account

    @contextlib.contextmanager
    def creating(self, principal: Principal) -> Iterator[Callable[[str], None]]:
        """Admit one creation or raise `QuotaExceeded`; the yielded callback records the episode made.

        The slot is held while the episode is built, so concurrent creations cannot overshoot the quota."""
        limits = self.limits_for(principal)
        account = self._account(principal)
        if len(account.owned) + account.pending >= limits.live_episodes:
            # in place: a creation in flight holds this set's `add`, and its episode must not land in a stale copy
            account.owned.difference_update([eid for eid in account.owned if not self.live(eid)])
            if len(account.owned) + account.pending >= limits.live_episodes:
                raise QuotaExceeded(f"this token already holds {limits.live_episodes} live episodes (its quota); delete some", 1)
        now = time.monotonic()
        rate = limits.creations_per_minute / 60.0
        account.tokens = min(float(limits.burst), account.tokens + (now - account.refilled_at) * rate)
        account.refilled_at = now
        if account.tokens < 1.0:
            wait = math.ceil((1.0 - account.tokens) / rate)
            raise QuotaExceeded(f"this token creates episodes faster than its quota of {limits.creations_per_minute:g} per minute", max(1, wait))
        account.tokens -= 1.0
        account.pending += 1
        try:
            yield account.owned.add
        finally:
            account.pending -= 1

    def owns(self, principal: Principal, episode_id: str) -> bool:
        account = self._accounts.get(principal.name)
        return account is not None and episode_id in account.owned
