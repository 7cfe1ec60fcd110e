"""Validation of arenas by execution: every gold call, played in dependency order on a fresh state in the
sandbox, must return its sub-answer. (Structural checks run when the arena model is parsed.)"""

from __future__ import annotations

from dataclasses import dataclass, field

from pydantic import ValidationError

from gym_server.answers import result_contains_answer
from gym_server.models import Arena
from gym_server.sandbox.pool import SandboxPool
from gym_server.store import ArenaStore, InvalidArena


@dataclass
class ValidationReport:
    arena_id: str
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


async def validate_arena(arena: Arena, pool: SandboxPool) -> ValidationReport:
    report = ValidationReport(arena.id)
    try:
        state = await pool.build_state(arena.initial_state)
    except ValueError as exc:
        report.problems.append(f"initial state: {exc}")
        return report
    for sub in arena.gold_plan():
        call, sub_id = sub.gold_call, sub.id
        assert call is not None
        outcome = await pool.call(arena.implementation, call.tool, call.arguments, state, diff=False)  # no log records them
        if not outcome.ok:
            report.problems.append(f"sub-task {sub_id}: gold call {call.tool} failed: {outcome.error}")
            return report  # later calls depend on this state; their failures would only echo this one
        if outcome.state is not None:
            state = outcome.state
        if not result_contains_answer(sub.answer, outcome.result):
            report.problems.append(
                f"sub-task {sub_id}: gold call {call.tool} returned {outcome.result!r}, not the answer {sub.answer!r}"
            )
    return report


async def validate_store(store: ArenaStore, pool: SandboxPool, concurrency: int = 8) -> list[ValidationReport]:
    import asyncio

    semaphore = asyncio.Semaphore(concurrency)

    async def one(arena_id: str) -> ValidationReport:
        async with semaphore:
            try:
                arena = store.get(arena_id)
            except (InvalidArena, ValidationError) as exc:
                return ValidationReport(arena_id, [str(exc)])
            return await validate_arena(arena, pool)

    return list(await asyncio.gather(*(one(i) for i in store.ids())))
