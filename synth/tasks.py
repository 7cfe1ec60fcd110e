"""Tasks: chain-conditioned and server-only generation, augmentation along diversity (paraphrase),
complexity (added constraints) and persona, then scoring on clarity, realism and tool necessity.
A task whose scoring fails is rejected with the reason; nothing passes by default."""

from __future__ import annotations

import asyncio
import json
import random

from pydantic import BaseModel, ConfigDict

from clients.llm import LLMClient, LLMError
from gym_server.models import ServerDoc
from synth.graph import ask_for_query, server_header, tool_list
from synth.models import SynthTask, ToolChain, stable_id

PERSONAS = [
    "a busy small-business owner who writes tersely",
    "a retired teacher who is careful and polite",
    "a university student on a tight budget",
    "an operations engineer who wants exact numbers",
    "a travel agent juggling several clients",
    "a nurse checking things between shifts",
    "a non-native English speaker writing simple sentences",
    "a project manager who bundles several requests into one message",
]


class TaskRules(BaseModel):
    model_config = ConfigDict(extra="forbid")

    min_clarity: float = 3.0
    min_realism: float = 3.0
    min_tool_necessity: float = 3.0
    server_only_per_server: int = 2
    augmentations: tuple[str, ...] = ("paraphrase", "complexity", "persona")


async def chain_task(llm: LLMClient, server: ServerDoc, chain: ToolChain) -> SynthTask:
    query = await ask_for_query(llm, (
        f"### STAGE: task_from_chain\n{server_header(server)}"
        f"Write a realistic user request whose solution uses these tools in order: {json.dumps(chain.tools)}. "
        "Include every concrete value the tools will need. "
    ))  # fmt: skip
    if query is None:
        raise LLMError("task generation returned no query")
    return SynthTask(id=stable_id(server.name, "chain", chain.tools, query), server=server.name, query=query, kind="chain", chain=chain.tools)


async def server_tasks(llm: LLMClient, server: ServerDoc, n: int) -> list[SynthTask]:
    answer = await llm.chat_json([{"role": "user", "content": (
        f"### STAGE: server_tasks\nServer {server.name}: {server.description}\nTools:\n{tool_list(server)}\n\n"
        f"Write {n} different realistic user requests this server can solve. Reply with JSON: "
        '{"queries": [REQUEST, ...]}'
    )}])  # fmt: skip
    queries = [q for q in (answer.get("queries") or []) if isinstance(q, str) and q.strip()] if isinstance(answer, dict) else []
    return [SynthTask(id=stable_id(server.name, "server", q), server=server.name, query=q, kind="server_only") for q in queries[:n]]


async def augment(llm: LLMClient, task: SynthTask, kind: str, rng: random.Random) -> SynthTask:
    persona = rng.choice(PERSONAS) if kind == "persona" else None
    instruction = {
        "paraphrase": "Rewrite it with different wording and structure, same intent, same values.",
        "complexity": "Make it harder by adding one realistic constraint or condition, same intent, same values.",
        "persona": f"Rewrite it as {persona} would write it, same intent, same values.",
    }[kind]
    query = await ask_for_query(llm, f"### STAGE: augment\nKind: {kind}\nRequest: {task.query}\n{instruction} Keep the language of the request. ")
    if query is None:
        raise LLMError(f"{kind} augmentation returned no query")
    return task.model_copy(update={"id": stable_id(task.id, kind, query), "query": query, "augmentation": kind, "persona": persona})


async def score(llm: LLMClient, server: ServerDoc, task: SynthTask, rules: TaskRules) -> SynthTask:
    try:
        answer = await llm.chat_json([{"role": "user", "content": (
            f"### STAGE: score_task\n{server_header(server)}Request: {task.query}\n"
            "Rate it from 1 to 5 on clarity (is it unambiguous), realism (would a person ask it) and tool_necessity "
            '(are the tools needed to answer it). Reply with JSON: {"clarity": N, "realism": N, "tool_necessity": N}'
        )}])  # fmt: skip
        scores = {k: float(answer[k]) for k in ("clarity", "realism", "tool_necessity")}
    except (LLMError, KeyError, TypeError, ValueError) as exc:
        return task.model_copy(update={"kept": False, "reason": f"scoring failed: {type(exc).__name__}: {exc}"})
    low = [k for k, floor in (("clarity", rules.min_clarity), ("realism", rules.min_realism), ("tool_necessity", rules.min_tool_necessity)) if scores[k] < floor]
    return task.model_copy(update={"scores": scores, "kept": not low, "reason": f"below threshold: {low}" if low else None})


async def tasks_for_server(llm: LLMClient, server: ServerDoc, chains: list[ToolChain], rules: TaskRules, seed: int = 0) -> list[SynthTask]:
    rng = random.Random(seed)
    base: list[SynthTask] = []
    for result in await asyncio.gather(*(chain_task(llm, server, c) for c in chains if c.verified), return_exceptions=True):
        if isinstance(result, SynthTask):
            base.append(result)
    try:
        base.extend(await server_tasks(llm, server, rules.server_only_per_server))
    except LLMError:
        pass
    variants = await asyncio.gather(
        *(augment(llm, t, kind, random.Random(rng.random())) for t in base for kind in rules.augmentations), return_exceptions=True
    )
    every = base + [v for v in variants if isinstance(v, SynthTask)]
    return list(await asyncio.gather(*(score(llm, server, t, rules) for t in every)))
