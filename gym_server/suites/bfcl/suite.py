"""The bfcl-mt suite behind the tool-backend protocol: its entries as arenas, their calls answered by BFCL's
backend classes in the sandbox (`sources.BACKEND_TEMPLATE`), their episodes scored by BFCL's checker, also in
the sandbox (`sources.CHECKER`)."""

from __future__ import annotations

import asyncio
import dataclasses
import keyword
import secrets
from typing import TYPE_CHECKING, Any

from gym_server.backends import SandboxBackend, ToolAnswer
from gym_server.models import Arena, CallStatus, RewardBreakdown, SuiteVerdict, ToolSpec
from gym_server.sandbox.pool import SandboxPool
from gym_server.suites.bfcl import data
from gym_server.suites.bfcl.sources import CHECKER, backend_source

if TYPE_CHECKING:
    from gym_server.episodes import Episode

FORCE_TERMINATED = "multi_turn:force_terminated"
CHECKER_ERROR = "astra:checker_stopped"


def render_call(name: str, arguments: dict[str, Any]) -> str:
    """The call string BFCL's checker executes: `name(key=literal, ...)`. The name is one of the episode's tools
    and every key a Python identifier (checked before), and `repr` of a JSON value is a Python literal, so the
    string holds one call and nothing else."""
    return f"{name}({', '.join(f'{key}={value!r}' for key, value in arguments.items())})"


def bad_keys(arguments: dict[str, Any]) -> list[str]:
    return [k for k in arguments if not (isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) and k.isascii())]


class BfclSuite(SandboxBackend):
    suite = data.SUITE
    kinds = (f"suite:{data.SUITE}",)  # type: ignore[assignment]

    def __init__(self, pool: SandboxPool, categories: tuple[str, ...] = data.CATEGORIES) -> None:
        super().__init__(pool)
        self.categories = tuple(categories)
        self.versions: dict[str, str] = {}

    async def start(self) -> list[Arena]:
        """Raises `BfclMissing` (with the install command) when bfcl-eval is not installed."""
        arenas = await asyncio.to_thread(data.load_arenas, self.categories)
        self.versions = data.versions()
        source = backend_source([t.name for a in arenas for t in a.tools])
        for arena in arenas:
            arena.implementation = source  # one string for all: compiled once by the sandbox, by its digest
        return arenas

    def begin(self, episode: Episode) -> None:
        """As the sandbox's own arenas: the episode's process is forked and bound before its first call."""
        arena = episode.arena
        self.pool.open(arena.implementation, episode.states[arena.id], owner=f"{episode.id}/{arena.id}")

    async def call(self, episode: Episode, arena: Arena, tool: ToolSpec, arguments: dict[str, Any]) -> ToolAnswer:
        if keys := bad_keys(arguments):
            return ToolAnswer(CallStatus.invalid_arguments, error=f"argument names must be Python identifiers: {', '.join(map(repr, keys))[:300]}")
        answer = await super().call(episode, arena, tool, arguments)
        return dataclasses.replace(answer, rendered=render_call(tool.name, arguments))  # its state diff kept

    async def score(self, episode: Episode) -> RewardBreakdown:
        arena = episode.arena
        suite_data = arena.suite_data or {}
        truth: list[list[str]] = suite_data["ground_truth"]
        category = str(suite_data.get("category"))
        reached = episode.turn + 1
        if reached < len(truth):  # as BFCL's runner: a conversation cut short is failed before any check
            verdict = SuiteVerdict(
                suite=self.suite, category=category, valid=False, error_type=FORCE_TERMINATED, versions=self.versions,
                error_message=f"Model was force-terminated during inference phase. The length of the model result turns ({reached}) "
                f"does not match the length of the ground truth turns ({len(truth)}).",
            )  # fmt: skip
        else:
            verdict = await self._check(episode, suite_data, category, truth)
        valid = 1.0 if verdict.valid else 0.0
        return RewardBreakdown(reward=valid, recall=valid, precision=valid, solved=int(verdict.valid), n_subtasks=1,
                               tool_calls=len(episode.calls), verdict=verdict)  # fmt: skip

    @staticmethod
    def decoded_calls(episode: Episode, n_turns: int) -> list[list[list[str]]]:
        """The model's calls per turn and step, as BFCL decodes them: only calls the backend ran (a call the gym
        refused never reached BFCL's classes), each its own step (the verdict does not depend on the grouping)."""
        turns: list[list[list[str]]] = [[] for _ in range(n_turns)]
        for call in episode.calls:
            if call.status is CallStatus.ok and call.rendered is not None and call.turn < n_turns:
                turns[call.turn].append([call.rendered])
        return turns

    async def _check(self, episode: Episode, suite_data: dict[str, Any], category: str, truth: list[list[str]]) -> SuiteVerdict:
        entry = {"id": suite_data["entry_id"], "initial_config": suite_data["initial_config"], "involved_classes": suite_data["involved_classes"]}
        arguments = {"model_name": f"astra_gym_{secrets.token_hex(8)}", "decoded": self.decoded_calls(episode, len(truth)),
                     "ground_truth": truth, "entry": entry}  # fmt: skip
        outcome = await self.pool.call(CHECKER, "check", arguments, b"", guard=False, diff=False)
        if not outcome.ok or not isinstance(outcome.result, dict):
            return SuiteVerdict(suite=self.suite, category=category, valid=False, error_type=CHECKER_ERROR, versions=self.versions,
                                error_message=f"the checker did not finish in the sandbox: {outcome.error}")  # fmt: skip
        result = outcome.result
        return SuiteVerdict(suite=self.suite, category=category, valid=result.get("valid") is True, error_type=result.get("error_type"),
                            error_message=result.get("error_message"), versions=self.versions)  # fmt: skip
