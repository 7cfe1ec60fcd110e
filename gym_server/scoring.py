"""ASTRA's F1 trajectory reward, computed from an episode's call log and its arena (nothing else).

recall r = n_hat / n, precision p = n_hat / c, reward = 2pr / (p + r), 0 when n_hat = 0. n counts the
sub-tasks that have a gold call; c counts every call the agent made, failed, injected and cancelled ones included.
A sub-task is solved by a successful call of its own tool (not a distractor) whose result returned its
sub-answer (`gym_server.answers.result_contains_answer`) and that passed every argument value the question
names (`named_arguments`): asked about doctor D01, a call for D04 whose record happens to hold the same
specialty solves nothing. Without that rule a wrong entity scores whenever its value coincides (a stock of 0,
a shared specialty): a guess earns reward, and RL learns the guess. A call solves at most one sub-task, so
precision never exceeds 1.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from gym_server.answers import answers_equal, normalize, result_contains_answer
from gym_server.models import Arena, CallLogEntry, CallStatus, JSONValue, RewardBreakdown, SubTask


def named_arguments(arena: Arena, sub: SubTask) -> dict[str, str]:
    """The gold call's string arguments whose value the sub-question or the question names as a word (an id,
    a city, a date): the entity the user asked about, which a call must name too. Values found by an earlier
    call (a flight the search returned) are not named, so any route to them still counts."""
    assert sub.gold_call is not None
    text = f"{sub.question}\n{arena.question}".casefold()
    return {
        key: value
        for key, value in sub.gold_call.arguments.items()
        if isinstance(value, str) and len(value.strip()) >= 2
        and re.search(rf"(?<!\w){re.escape(value.strip().casefold())}(?!\w)", text)
    }  # fmt: skip


def _passes_named(call: CallLogEntry, named: dict[str, str]) -> bool:
    arguments: Any = call.arguments if isinstance(call.arguments, dict) else {}
    return all(isinstance(arguments.get(k), str) and normalize(arguments[k]) == normalize(v) for k, v in named.items())


def score_episode(arena: Arena, calls: Sequence[CallLogEntry], final_answer: JSONValue = None) -> RewardBreakdown:
    plan = arena.gold_plan()
    used: set[int] = set()
    solved: list[str] = []
    solved_by: dict[str, int] = {}
    for sub in plan:
        assert sub.gold_call is not None
        named = named_arguments(arena, sub)
        for call in calls:
            if call.index in used or call.status is not CallStatus.ok or call.source_arena is not None:
                continue
            if call.tool == sub.gold_call.tool and _passes_named(call, named) and result_contains_answer(sub.answer, call.result):
                used.add(call.index)
                solved.append(sub.id)
                solved_by[sub.id] = call.index
                break
    n, n_hat, c = len(plan), len(solved), len(calls)
    recall = n_hat / n if n else 0.0
    precision = n_hat / c if c else 0.0
    reward = 2 * precision * recall / (precision + recall) if n_hat else 0.0
    return RewardBreakdown(
        reward=reward,
        recall=recall,
        precision=precision,
        solved=n_hat,
        n_subtasks=n,
        tool_calls=c,
        solved_subtasks=solved,
        solved_by=solved_by,
        unsolved_subtasks=[sub.id for sub in plan if sub.id not in solved_by],
        final_answer_correct=None if final_answer is None else answers_equal(arena.final_answer, final_answer),
    )
