"""The one turn loop: every policy that is a chat model (an OpenAI-compatible endpoint, a local transformers
model, GRPO's token-level sampler) plays through `run_agent`, so evaluation, synthesis and training follow
the same rules:

- the system prompt is the run's (`DEFAULT_SYSTEM_PROMPT` unless a run overrides it), sent first;
- every tool call of a turn runs concurrently through the MCP toolbox, results appended in call order;
- malformed tool calls (arguments that are not a JSON object) are answered with an error message the model
  can correct, and never reach the gym;
- the loop stops when the model answers without a tool call ("answer"), when a turn is cut off by the token
  budget ("length": its calls were never finished, so none runs and there is no final answer), or after
  `max_turns` model turns ("max_turns"): the last turn's calls are executed (they count for the reward like
  every call the model made), and the model gets no further turn, so there is no final answer.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import httpx2

from clients.llm import ChatHTTPError, post_chat_completion
from clients.prompts import (
    DEFAULT_SYSTEM_PROMPT,  # noqa: F401  (its home is light: configs import it)
)
from clients.records import Timings, TokenTape, TokenUsage
from clients.toolbox import MCPToolbox


class ModelEndpointError(RuntimeError):
    """The chat endpoint could not be reached or kept failing: the run must stop, not score zeros."""


class ChatModel(Protocol):
    """Anything that answers a chat-completions request in OpenAI's response format."""

    @property
    def model_id(self) -> str: ...

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]: ...


@dataclass
class ChatEndpoint:
    base_url: str
    model: str
    http: httpx2.AsyncClient
    api_key: str | None = None
    temperature: float = 0.0
    retries: int = 3
    timeout_s: float = 300.0

    @property
    def model_id(self) -> str:
        return self.model

    async def complete(self, messages: list[dict[str, Any]], tools: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
        body: dict[str, Any] = {"model": self.model, "messages": messages, "max_tokens": max_tokens, "temperature": self.temperature}
        if tools:
            body["tools"] = tools
        try:
            data, _ = await post_chat_completion(
                self.http, self.base_url, body, api_key=self.api_key, retries=self.retries, timeout_s=self.timeout_s
            )
        except ChatHTTPError as exc:
            raise ModelEndpointError(str(exc)) from None
        return data


@dataclass
class AgentResult:
    messages: list[dict[str, Any]]
    final_answer: str | None
    turns: int
    stop_reason: str
    usage: TokenUsage = field(default_factory=TokenUsage)
    timings: Timings = field(default_factory=Timings)
    tokens: TokenTape | None = None
    """The token-level tape, when the policy sampled through a recording model (GRPO)."""


def parse_arguments(raw: Any) -> tuple[dict[str, Any] | None, str | None]:
    if isinstance(raw, dict):
        return raw, None
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        return {}, None
    try:
        value = json.loads(raw)
    except (TypeError, ValueError) as exc:
        return None, f"the arguments are not valid JSON ({exc}); send a JSON object"
    if not isinstance(value, dict):
        return None, f"the arguments must be a JSON object, not {type(value).__name__}"
    return value, None


async def run_agent(
    endpoint: ChatModel,
    toolbox: MCPToolbox,
    prompt: str,
    *,
    system_prompt: str | None = DEFAULT_SYSTEM_PROMPT,
    max_turns: int = 16,
    max_tokens: int = 1024,
    tools: list[dict[str, Any]] | None = None,
    history: list[dict[str, Any]] | None = None,
) -> AgentResult:
    """`history`: the conversation so far (a multi-turn episode's earlier turns); `prompt` is then the next user
    message, and `max_turns` counts the model turns of this user turn only."""
    tools = toolbox.openai_tools() if tools is None else tools
    if history is None:
        messages: list[dict[str, Any]] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    else:
        messages = history
    messages.append({"role": "user", "content": prompt})
    usage, timings = TokenUsage(), Timings()
    started = time.perf_counter()

    def done(final: str | None, turns: int, reason: str) -> AgentResult:
        timings.total_s = time.perf_counter() - started
        return AgentResult(messages, final, turns, reason, usage, timings)

    for turn in range(1, max_turns + 1):
        t0 = time.perf_counter()
        data = await endpoint.complete(messages, tools, max_tokens)
        timings.model_s += time.perf_counter() - t0
        usage.add(data.get("usage"))
        choice = data["choices"][0]
        message = choice["message"]
        assistant: dict[str, Any] = {"role": "assistant", "content": message.get("content")}
        if choice.get("finish_reason") == "length":  # cut off mid-turn: its calls were never finished
            messages.append(assistant)
            return done(None, turn, "length")
        tool_calls = message.get("tool_calls") or []
        if tool_calls:
            assistant["tool_calls"] = [
                {"id": tc.get("id") or f"call_{turn}_{i}", "type": "function",
                 "function": {"name": (tc.get("function") or {}).get("name", ""), "arguments": (tc.get("function") or {}).get("arguments", "")}}
                for i, tc in enumerate(tool_calls)
            ]  # fmt: skip
        messages.append(assistant)
        if not tool_calls:
            return done(message.get("content"), turn, "answer")
        t0 = time.perf_counter()
        outputs = await asyncio.gather(*(_execute(toolbox, c) for c in assistant["tool_calls"]))
        timings.tools_s += time.perf_counter() - t0
        for call, output in zip(assistant["tool_calls"], outputs):
            messages.append({"role": "tool", "tool_call_id": call["id"], "name": call["function"]["name"], "content": output})
        if toolbox.transport_errors:  # the gym stopped answering: more model turns would be spent on nothing
            return done(None, turn, "gym_unreachable")
    return done(None, max_turns, "max_turns")


async def _execute(toolbox: MCPToolbox, call: dict[str, Any]) -> str:
    name = call["function"]["name"]
    arguments, problem = parse_arguments(call["function"]["arguments"])
    if arguments is None:
        return f"Error: malformed call to {name!r}: {problem}."
    return (await toolbox.call(name, arguments)).text
