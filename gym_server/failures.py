"""Failure injection: which calls fail on purpose, decided by (seed, call index) so a run replays exactly.

The decision depends only on the episode's seed and the call's position, never on timing or on other
episodes, so the same seed gives the same failures at the same calls under any concurrency.
"""

from __future__ import annotations

import random

from gym_server.models import FailureKind, FailurePolicy

MESSAGES = {
    FailureKind.timeout: "the tool timed out before answering; the call may be retried",
    FailureKind.unavailable: "503 Service Unavailable: the tool's backend is temporarily unavailable; retry later",
    FailureKind.error_result: "internal error while processing the request (code E_UPSTREAM); retry may succeed",
}


def injected_failure(policy: FailurePolicy, seed: int, call_index: int) -> FailureKind | None:
    if policy.rate <= 0.0:
        return None
    rng = random.Random(f"{seed}:{call_index}")
    if rng.random() >= policy.rate:
        return None
    return policy.kinds[rng.randrange(len(policy.kinds))]
