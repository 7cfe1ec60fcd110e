"""Policies: who plays an episode. All of them act only through the episode's MCP toolbox.

- `oracle`: the arena's gold calls in dependency order (the validity check of every arena, and the upper
  bound of every report); it plays through the agent loop like a model, so its trajectories are SFT data too.
- `random`: schema-valid random calls to random tools (the lower bound).
- `openai`: a model behind an OpenAI-compatible endpoint, through `clients.agent.run_agent`.
- `local`: a transformers model in this process (`clients.local_model.TokenChatModel`), same loop.

Every policy gets the run's system prompt from the episode context and puts it first in its conversation,
scripted ones included, so oracle trajectories used as SFT data carry the prompt eval and GRPO send.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from typing import Any, Protocol

from clients.agent import AgentResult, ChatModel, run_agent
from clients.gym_client import GymClient
from clients.toolbox import MCPToolbox
from gym_server.models import EpisodeCreated


@dataclass
class EpisodeContext:
    gym: GymClient
    episode: EpisodeCreated
    arena_id: str
    toolbox: MCPToolbox
    seed: int
    system_prompt: str | None = None


class Policy(Protocol):
    name: str
    model: str | None

    async def play(self, ctx: EpisodeContext) -> AgentResult: ...

    async def next_turn(self, ctx: EpisodeContext, turn: int, message: str, previous: AgentResult) -> AgentResult:
        """Play user turn `turn` (>= 1) of a multi-turn episode in the same conversation (`previous.messages`)."""
        ...


class ScriptedModel:
    """A chat model that makes fixed calls, one per turn, then answers: scripted policies play through the
    same loop (and its rules: malformed calls, a gym that stops answering) as every other policy."""

    model_id = "scripted"

    def __init__(self, calls: list[tuple[str, dict[str, Any]]], answer: Any, offset: int = 0) -> None:
        self.calls = calls
        self.answer = answer if isinstance(answer, str) or answer is None else json.dumps(answer)
        self.offset = offset
        """Assistant messages already in the conversation (earlier user turns), not part of this script."""

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        turn = sum(1 for m in messages if m["role"] == "assistant") - self.offset
        message: dict[str, Any] = {"role": "assistant", "content": self.answer}
        if turn < len(self.calls):
            name, arguments = self.calls[turn]
            call = {"id": f"call_{turn}", "type": "function", "function": {"name": name, "arguments": json.dumps(arguments)}}
            message = {"role": "assistant", "content": None, "tool_calls": [call]}
        return {"choices": [{"index": 0, "message": message, "finish_reason": "tool_calls" if turn < len(self.calls) else "stop"}]}


async def _scripted(
    ctx: EpisodeContext, calls: list[tuple[str, dict[str, Any]]], answer: Any, prompt: str | None = None, history: list[dict[str, Any]] | None = None
) -> AgentResult:  # fmt: skip
    """Play fixed calls one per turn, then answer; the script's length is its turn budget."""
    model = ScriptedModel(calls, answer, offset=sum(1 for m in history or [] if m["role"] == "assistant"))
    return await run_agent(model, ctx.toolbox, ctx.episode.prompt if prompt is None else prompt, system_prompt=ctx.system_prompt,
                           max_turns=len(calls) + 1, history=history)  # fmt: skip


class OraclePolicy:
    """Gold calls: an arena's in dependency order; a suite entry's per user turn (its ground truth, in the
    admin view's `suite_data`, each call string read as a name and literal arguments)."""

    name = "oracle"
    model = None

    async def play(self, ctx: EpisodeContext) -> AgentResult:
        arena = await ctx.gym.arena(ctx.arena_id)  # the admin view carries the gold calls
        if arena.kind == "suite":
            return await _scripted(ctx, suite_turn_calls(arena, 0), None)
        calls = [(s.gold_call.tool, dict(s.gold_call.arguments)) for s in arena.gold_plan()]  # type: ignore[union-attr]
        return await _scripted(ctx, calls, arena.final_answer)

    async def next_turn(self, ctx: EpisodeContext, turn: int, message: str, previous: AgentResult) -> AgentResult:
        arena = await ctx.gym.arena(ctx.arena_id)
        return await _scripted(ctx, suite_turn_calls(arena, turn), None, prompt=message, history=previous.messages)


def suite_turn_calls(arena: Any, turn: int) -> list[tuple[str, dict[str, Any]]]:
    """A BFCL ground-truth turn as (name, arguments): call strings are data (read with `ast.literal_eval`, never
    evaluated), positional arguments named in the tool's parameter order."""
    import ast

    schemas = {t.name: list((t.input_schema.get("properties") or {})) for t in arena.tools}
    calls = []
    for text in (arena.suite_data or {}).get("ground_truth", [])[turn]:
        node = ast.parse(text, mode="eval").body
        assert isinstance(node, ast.Call) and isinstance(node.func, ast.Name), f"not a call: {text!r}"
        arguments = {str(k.arg): ast.literal_eval(k.value) for k in node.keywords}
        for position, value in enumerate(node.args):
            arguments[schemas[node.func.id][position]] = ast.literal_eval(value)
        calls.append((node.func.id, arguments))
    return calls


def random_value(schema: dict[str, Any], rng: random.Random, depth: int = 0) -> Any:
    """A value that satisfies a simple JSON Schema (types, enum, ranges, lengths, nested objects/arrays)."""
    if "enum" in schema:
        return rng.choice(schema["enum"])
    if "const" in schema:
        return schema["const"]
    kind = schema.get("type", "string")
    if isinstance(kind, list):
        kind = rng.choice([k for k in kind if k != "null"] or ["null"])
    if kind == "integer":
        lo, hi = int(schema.get("minimum", 0)), int(schema.get("maximum", 100))
        return rng.randint(lo, max(lo, hi))
    if kind == "number":
        lo, hi = float(schema.get("minimum", 0)), float(schema.get("maximum", 1000))
        return round(rng.uniform(lo, max(lo, hi)), 2)
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "null":
        return None
    if kind == "array":
        n = rng.randint(int(schema.get("minItems", 0)), max(int(schema.get("minItems", 0)), min(int(schema.get("maxItems", 3)), 3)))
        return [random_value(schema.get("items", {}), rng, depth + 1) for _ in range(n)]
    if kind == "object":
        props = schema.get("properties", {})
        required = set(schema.get("required", []))
        return {k: random_value(v, rng, depth + 1) for k, v in props.items() if k in required or (depth < 2 and rng.random() < 0.5)}
    lo = int(schema.get("minLength", 1))
    hi = max(lo, min(int(schema.get("maxLength", 8)), 12))
    return "".join(rng.choice(string.ascii_uppercase + string.digits) for _ in range(rng.randint(lo, hi)))


class RandomPolicy:
    name = "random"
    model = None

    def __init__(self, max_calls: int = 4) -> None:
        self.max_calls = max_calls

    def _calls(self, ctx: EpisodeContext, rng: random.Random) -> list[tuple[str, dict[str, Any]]]:
        tools = ctx.toolbox.tools
        calls = []
        for _ in range(rng.randint(1, self.max_calls)):
            tool = rng.choice(tools)
            calls.append((tool.name, random_value(tool.input_schema or {"type": "object"}, rng)))
        return calls

    async def play(self, ctx: EpisodeContext) -> AgentResult:
        return await _scripted(ctx, self._calls(ctx, random.Random(ctx.seed)), None)

    async def next_turn(self, ctx: EpisodeContext, turn: int, message: str, previous: AgentResult) -> AgentResult:
        return await _scripted(ctx, self._calls(ctx, random.Random(ctx.seed * 1000 + turn)), None, prompt=message, history=previous.messages)


class ChatPolicy:
    """A chat model (an OpenAI-compatible endpoint, a local transformers model, a token sampler) in the agent loop."""

    def __init__(self, endpoint: ChatModel, max_turns: int = 16, max_tokens: int = 1024, name: str = "openai") -> None:
        self.name = name
        self.endpoint = endpoint
        self.model = endpoint.model_id
        self.max_turns = max_turns
        self.max_tokens = max_tokens

    async def play(self, ctx: EpisodeContext) -> AgentResult:
        return await run_agent(
            self.endpoint, ctx.toolbox, ctx.episode.prompt,
            system_prompt=ctx.system_prompt, max_turns=self.max_turns, max_tokens=self.max_tokens,
        )  # fmt: skip

    async def next_turn(self, ctx: EpisodeContext, turn: int, message: str, previous: AgentResult) -> AgentResult:
        return await run_agent(
            self.endpoint, ctx.toolbox, message, max_turns=self.max_turns, max_tokens=self.max_tokens, history=previous.messages,
        )  # fmt: skip


def local_policy(model: object, tokenizer: object, max_turns: int = 16, max_tokens: int = 1024, temperature: float = 0.0) -> ChatPolicy:
    """A transformers model sampled in this process (greedy by default; at a training run's temperature to
    measure the policy GRPO trains), through the same loop as a served model; the turns of concurrent
    episodes are generated in batches."""
    from clients.local_model import LocalChatPolicy, TokenChatModel, hf_sampler

    sampler = hf_sampler(model, tokenizer, temperature, with_logprobs=False)
    return LocalChatPolicy(TokenChatModel(tokenizer, sampler, "local"), max_turns, max_tokens)
