"""Arena synthesis by QA decomposition (ASTRA's RL track), with an LLM:

1. QA synthesis: a main question, its answer, and sub-question/answer pairs whose dependency graph yields the
   answer, for a scenario type and hop budget, grounded in a knowledge record, a user question or a domain.
2. Validation: structural checks (acyclic, dependencies exist, hops within budget) and the paper's four binary
   LLM judgements plus tool necessity; rejects are kept with their reasons.
3. Environment synthesis: per sub-task a tool spec, a harder variant, Python code with its data and the gold
   call; verified in the gym's sandbox (the gold call must return the sub-answer, twice the same, with
   schema-valid arguments and unique names), retried with the error fed back.
4. Merging: sub-environments with the same tool name and parameters are merged into one tool whose data
   serves every member; every member's gold call is re-verified, and a failed merge is undone.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from clients.llm import LLMClient, LLMConfig, LLMError
from gym_server.answers import answers_equal, result_contains_answer
from gym_server.arena_checks import graph_problems
from gym_server.jsonl import read_rows
from gym_server.models import Arena, InitialState, Provenance, ScenarioType
from gym_server.sandbox.pool import SandboxPool
from gym_server.schemas import SchemaError, compile_validator
from synth.models import QAItem, QASub, stable_id

CHECKS = ("dependency_consistency", "subquestion_atomicity", "sequential_rationality", "task_completeness", "tool_necessity")


class SubEnvironment(BaseModel):
    subtask_id: str
    tool: dict[str, Any]
    """MCP tool definition (name, description, inputSchema)."""
    harder_tool: dict[str, Any] | None = None
    code: str
    gold_arguments: dict[str, Any]
    attempts: int = 1


class ArenaSynthRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_hops: int = 1
    max_hops: int = 6
    min_score: float = 1.0
    """Mean of the five binary checks a QA item needs (1.0: all must pass)."""
    max_attempts: int = 3


def shape_problems(item: QAItem, rules: ArenaSynthRules) -> list[str]:
    """The arena's own graph checks, plus what the synthesis rules and the item's declared scenario demand."""
    ids = [s.id for s in item.subtasks]
    problems = graph_problems(item.subtasks)
    if not rules.min_hops <= len(ids) <= rules.max_hops:
        problems.append(f"{len(ids)} hops, outside [{rules.min_hops}, {rules.max_hops}]")
    depends = any(s.depends_on for s in item.subtasks)
    parallel = sum(1 for s in item.subtasks if not s.depends_on) > 1
    expected = {ScenarioType.single_hop: (False, False), ScenarioType.parallel_single_hop: (False, True),
                ScenarioType.multi_hop: (True, False), ScenarioType.parallel_multi_hop: (True, True)}[item.scenario_type]  # fmt: skip
    if item.scenario_type is ScenarioType.single_hop and len(ids) != 1:
        problems.append("a single-hop item has exactly one sub-task")
    elif (depends, parallel) != expected and item.scenario_type is not ScenarioType.single_hop:
        problems.append(f"the graph does not have the shape of {item.scenario_type.value}")
    return problems


async def synthesize_qa(llm: LLMClient, scenario: ScenarioType, domain: str, knowledge: str = "", hops: tuple[int, int] = (1, 6), language: str = "en") -> QAItem:
    answer = await llm.chat_json([{"role": "user", "content": (
        f"### STAGE: qa\nScenario: {scenario.value}\nHops: {hops[0]}-{hops[1]}\nDomain: {domain}\nLanguage: {language}\n"
        f"Knowledge:\n{knowledge or '(none: use general knowledge of the domain)'}\n\n"
        "Write a main question and its answer, decomposed into atomic sub-questions with answers and dependencies "
        '(depends_on lists sub-question ids whose answers it needs). Reply with JSON: {"question": Q, "answer": A, '
        '"subtasks": [{"id": "s1", "question": Q, "answer": A, "depends_on": []}]}'
    )}])  # fmt: skip
    try:
        subs = [QASub.model_validate(s) for s in answer["subtasks"]]
        return QAItem(id=stable_id(scenario.value, domain, knowledge, answer["question"]), scenario_type=scenario, domain=domain,
                      language=language, question=answer["question"], answer=answer["answer"], subtasks=subs, source=knowledge[:200])  # fmt: skip
    except (KeyError, TypeError, ValidationError) as exc:
        raise LLMError(f"the QA answer is malformed: {exc}") from None


async def validate_qa(llm: LLMClient, item: QAItem, rules: ArenaSynthRules) -> QAItem:
    problems = shape_problems(item, rules)
    if problems:
        return item.model_copy(update={"kept": False, "reason": "; ".join(problems)})
    try:
        verdict = await llm.chat_json([{"role": "user", "content": (
            f"### STAGE: validate_qa\nMain question: {item.question}\nAnswer: {item.answer}\n"
            f"Sub-questions: {json.dumps([s.model_dump() for s in item.subtasks], ensure_ascii=False)}\n\n"
            f"Judge each, true or false: {', '.join(CHECKS)}. Reply with JSON: " + "{" + ", ".join(f'"{c}": BOOL' for c in CHECKS) + "}"
        )}])  # fmt: skip
        checks = {c: verdict[c] for c in CHECKS}
        if not all(isinstance(v, bool) for v in checks.values()):
            raise TypeError("every check must be true or false")
    except (LLMError, KeyError, TypeError) as exc:
        return item.model_copy(update={"kept": False, "reason": f"validation failed: {type(exc).__name__}: {exc}"})
    score = sum(checks.values()) / len(checks)
    failed = [c for c, ok in checks.items() if not ok]
    kept = score >= rules.min_score
    return item.model_copy(update={"checks": checks, "score": score, "kept": kept, "reason": None if kept else f"failed checks: {failed}"})


async def _verify(pool: SandboxPool, env: SubEnvironment, answer: Any) -> str | None:
    """None when the gold call, run twice in the sandbox, returns the answer both times; else why not."""
    try:
        validator = compile_validator(env.tool.get("inputSchema") or {})
    except SchemaError as exc:
        return f"inputSchema does not compile: {exc}"
    problem = validator.first_error(env.gold_arguments)
    if problem:
        return f"gold arguments do not fit the schema: {problem}"
    results = []
    for _ in range(2):
        outcome = await pool.call(env.code, env.tool["name"], env.gold_arguments, b"")
        if not outcome.ok:
            return f"the gold call failed: {outcome.error}"
        results.append(outcome.result)
    if results[0] != results[1]:
        return f"not deterministic: {results[0]!r} then {results[1]!r}"
    if not result_contains_answer(answer, results[0]):
        return f"the gold call returned {results[0]!r}, not the answer {answer!r}"
    return None


async def synthesize_environment(llm: LLMClient, pool: SandboxPool, item: QAItem, sub: QASub, rules: ArenaSynthRules) -> SubEnvironment:
    inputs = {d: next(s.answer for s in item.subtasks if s.id == d) for d in sub.depends_on}
    feedback = ""
    for attempt in range(1, rules.max_attempts + 1):
        answer = await llm.chat_json([{"role": "user", "content": (
            f"### STAGE: environment\nDomain: {item.domain}\nSub-question: {sub.question}\nAnswer: {json.dumps(sub.answer)}\n"
            f"Inputs from earlier sub-tasks: {json.dumps(inputs, ensure_ascii=False)}\n{feedback}\n"
            "Write a tool that answers this kind of question: an MCP tool spec, a harder variant of it, Python code "
            "defining `def NAME(db, **arguments)` with its data inline (no imports beyond the standard library, no I/O), "
            'and the gold call. Reply with JSON: {"tool": {"name", "description", "inputSchema"}, "harder_tool": {...}, '
            '"code": CODE, "gold_arguments": {...}}'
        )}])  # fmt: skip
        try:
            env = SubEnvironment(subtask_id=sub.id, tool=answer["tool"], harder_tool=answer.get("harder_tool"), code=answer["code"],
                                 gold_arguments=answer["gold_arguments"], attempts=attempt)  # fmt: skip
        except (KeyError, TypeError, ValidationError) as exc:
            feedback = f"Your previous answer was malformed ({exc}); fix it."
            continue
        problem = await _verify(pool, env, sub.answer)
        if problem is None:
            return env
        feedback = f"Your previous attempt was rejected: {problem}. Fix the code or the data."
    raise LLMError(f"sub-task {sub.id}: no verified environment after {rules.max_attempts} attempts ({feedback})")


async def merge_environments(llm: LLMClient, pool: SandboxPool, envs: list[SubEnvironment], answers: dict[str, Any]) -> list[SubEnvironment]:
    """One tool for each group of equivalent sub-environments (same name and parameters), when every member's
    gold call still returns its answer from the merged code; otherwise the group stays as it was."""
    groups: dict[tuple[str, tuple[str, ...]], list[SubEnvironment]] = {}
    for env in envs:
        key = (env.tool["name"], tuple(sorted((env.tool.get("inputSchema") or {}).get("properties", {}))))
        groups.setdefault(key, []).append(env)
    out: list[SubEnvironment] = []
    for members in groups.values():
        if len(members) == 1:
            out.extend(members)
            continue
        try:
            merged = await llm.chat_json([{"role": "user", "content": (
                "### STAGE: merge\nThese tools have the same intent with different data. Write one tool (same name and "
                "parameters) whose data serves every member. Reply with JSON: {\"code\": CODE}\n"
                + json.dumps([{"code": m.code, "gold_arguments": m.gold_arguments} for m in members], ensure_ascii=False)
            )}])  # fmt: skip
            code = merged["code"]
        except (LLMError, KeyError, TypeError):
            out.extend(members)
            continue
        candidates = [m.model_copy(update={"code": code}) for m in members]
        problems = [await _verify(pool, c, answers[c.subtask_id]) for c in candidates]
        out.extend(candidates if not any(problems) else members)
    return out


def _scoped(name: str, source: str) -> str:
    """Each tool's code in its own function scope, so module-level data of one tool (`DATA = ...`) cannot
    overwrite another's when they share a module."""
    return f"def _make_{name}():\n{textwrap.indent(source, '    ')}\n    return {name}\n\n\n{name} = _make_{name}()\n"


def assemble(item: QAItem, envs: list[SubEnvironment]) -> Arena:
    """The arena the gym serves: one function per distinct tool; names must be unique across code."""
    by_sub = {e.subtask_id: e for e in envs}
    tools: dict[str, dict[str, Any]] = {}
    code: dict[str, str] = {}
    for env in envs:
        name = env.tool["name"]
        if name in code and code[name] != env.code:
            raise ValueError(f"two different implementations of tool {name!r}")
        tools[name] = {"name": name, "description": env.tool.get("description", ""), "inputSchema": env.tool["inputSchema"]}
        code[name] = env.code
    return Arena(
        id=f"llm-{item.scenario_type.value}-{item.id}", domain=item.domain, language=item.language,
        scenario_type=item.scenario_type, question=item.question, final_answer=item.answer,
        subtasks=[{"id": s.id, "question": s.question, "answer": s.answer, "depends_on": s.depends_on,
                   "gold_call": {"tool": by_sub[s.id].tool["name"], "arguments": by_sub[s.id].gold_arguments}} for s in item.subtasks],
        tools=list(tools.values()), implementation="\n\n".join(_scoped(name, source) for name, source in code.items()), initial_state=InitialState(),
        provenance=Provenance(source="llm", generator="synth.arenas.llm_pipeline", notes=item.source[:200] or None),
    )  # fmt: skip


class ArenaOutcome(BaseModel):
    qa: QAItem
    arena: dict[str, Any] | None = None
    stage: Literal["qa", "validation", "environment", "assembly", "done"] = "qa"
    reason: str | None = None


async def synthesize_arena(llm: LLMClient, pool: SandboxPool, scenario: ScenarioType, domain: str, knowledge: str = "",
                           rules: ArenaSynthRules | None = None, language: str = "en") -> ArenaOutcome:  # fmt: skip
    rules = rules or ArenaSynthRules()
    try:
        item = await synthesize_qa(llm, scenario, domain, knowledge, (rules.min_hops, rules.max_hops), language)
    except LLMError as exc:
        empty = QAItem(id=stable_id(scenario.value, domain, knowledge), scenario_type=scenario, domain=domain, question="", answer=None, subtasks=[])
        return ArenaOutcome(qa=empty, stage="qa", reason=str(exc))
    item = await validate_qa(llm, item, rules)
    if not item.kept:
        return ArenaOutcome(qa=item, stage="validation", reason=item.reason)
    try:
        envs = [await synthesize_environment(llm, pool, item, sub, rules) for sub in item.subtasks]
        envs = await merge_environments(llm, pool, envs, {s.id: s.answer for s in item.subtasks})
        used = [s for s in item.subtasks if any(s.id in o.depends_on for o in item.subtasks)]
        for sub in used:  # every non-leaf answer must feed a dependent's gold call
            dependents = [e for e in envs if e.subtask_id in {o.id for o in item.subtasks if sub.id in o.depends_on}]
            if not any(any(answers_equal(sub.answer, v) for v in e.gold_arguments.values()) for e in dependents):
                return ArenaOutcome(qa=item, stage="environment", reason=f"the answer of {sub.id} is not used by the sub-tasks that depend on it")
    except LLMError as exc:
        return ArenaOutcome(qa=item, stage="environment", reason=str(exc))
    try:
        arena = assemble(item, envs)
    except (ValueError, ValidationError) as exc:
        return ArenaOutcome(qa=item, stage="assembly", reason=str(exc))
    return ArenaOutcome(qa=item, arena=arena.model_dump(mode="json", by_alias=True), stage="done")


class LLMArenaConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    llm: LLMConfig = Field(description="The synthesis model.")
    knowledge: str | None = Field(default=None, description="JSONL of {domain, knowledge_corpus} records (ASTRA's format), e.g. ../shared/data/astra_knowledge/en/context.jsonl.")
    domains: list[str] = Field(default_factory=list, description="Domains to use when there is no knowledge file.")
    questions: list[str] = Field(default_factory=list, description="User questions to decompose (each grounds one arena).")
    n: int = Field(default=20, ge=1, description="Synthesis attempts (kept arenas are fewer).")
    scenarios: list[ScenarioType] = Field(default_factory=lambda: list(ScenarioType), description="Scenario types, taken in turn.")
    rules: ArenaSynthRules = Field(default_factory=ArenaSynthRules, description="What a synthesized arena must satisfy.")
    language: str = Field(default="en", description="Language of the arenas: en or zh.")
    concurrency: int = Field(default=8, ge=1, description="Arenas in flight.")
    out: Path = Field(default=Path("runs/arenas/llm.jsonl"), description="JSONL bundle of kept arenas (rejects beside it); re-run to resume.")


async def run_llm_synthesis(config: LLMArenaConfig) -> dict[str, Any]:
    """`n` attempts over the knowledge records (or domains) and scenario types; kept arenas go to `out`, the
    rest with their stage and reason to `out` + `.rejected.jsonl`. Attempts already recorded are skipped."""
    import asyncio

    from gym_server.sandbox.pool import SandboxConfig

    sources: list[tuple[str, str]] = []
    if config.knowledge:
        for line in Path(config.knowledge).read_text(encoding="utf-8").splitlines():
            if line.strip():
                record = json.loads(line)
                sources.append((record.get("domain") or "general", record.get("knowledge_corpus") or ""))
    sources += [(d, "") for d in config.domains]
    sources += [("general", f"User question to decompose: {q}") for q in config.questions]
    if not sources:
        raise ValueError("give --knowledge FILE, a --domain or a --question")
    rejected_path = config.out.with_suffix(".rejected.jsonl")
    config.out.parent.mkdir(parents=True, exist_ok=True)
    done = {row.get("attempt") or (row.get("provenance") or {}).get("attempt") for path in (config.out, rejected_path) for row in read_rows(path)}
    plan = [(i, config.scenarios[i % len(config.scenarios)], *sources[i % len(sources)]) for i in range(config.n)]
    semaphore = asyncio.Semaphore(config.concurrency)
    counts = {"kept": 0, "rejected": 0}
    async with LLMClient(config.llm) as llm, SandboxPool(SandboxConfig()) as pool:

        async def one(i: int, scenario: ScenarioType, domain: str, knowledge: str) -> None:
            attempt = stable_id(i, scenario.value, domain, knowledge)
            if attempt in done:
                return
            async with semaphore:
                outcome = await synthesize_arena(llm, pool, scenario, domain, knowledge, config.rules, config.language)
            if outcome.arena is not None:
                with config.out.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({**outcome.arena, "provenance": {**outcome.arena["provenance"], "attempt": attempt}}) + "\n")
                counts["kept"] += 1
            else:
                with rejected_path.open("a", encoding="utf-8") as fh:
                    fh.write(json.dumps({"attempt": attempt, "stage": outcome.stage, "reason": outcome.reason, "qa": outcome.qa.model_dump(mode="json")}) + "\n")
                counts["rejected"] += 1

        await asyncio.gather(*(one(*p) for p in plan))
        counts["llm"] = llm.usage.model_dump()  # type: ignore[assignment]
    return counts
