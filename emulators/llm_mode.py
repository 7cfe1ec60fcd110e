"""LLM-backed emulation: a model writes each response from the tool doc, the call and the episode's history
(the state), and every response is cached by request so a rerun of the same calls replays exactly.

It runs in the server process (the sandbox has no network) and reads only the episode's own history.
A model failure or an answer that breaks the tool's output schema is an error result, never a success.
"""

from __future__ import annotations

import json
from typing import Any

from clients.llm import LLMClient, LLMConfig, LLMError
from gym_server.backends import ToolAnswer
from gym_server.episodes import Episode
from gym_server.models import Arena, ArenaKind, CallStatus, ToolSpec
from gym_server.schemas import compile_validator

SYSTEM = (
    "You are the backend of the tool server {name!r}: {description}\n"
    "Its tools (JSON Schema inputs and outputs):\n{tools}\n\n"
    "Answer each new call as this server would. Keep the world consistent with the earlier calls and your "
    "earlier answers: ids you created exist, what was deleted is gone, values you reported stay true until a "
    "call changes them. Reply with JSON only: {{\"ok\": true, \"result\": RESULT}} where RESULT conforms to "
    "the tool's output schema, or {{\"ok\": false, \"error\": MESSAGE}} when the call cannot succeed."
)


class LLMEmulator:
    def __init__(self, client: LLMClient, history_limit: int = 40) -> None:
        self.client = client
        self.history_limit = history_limit

    def messages(self, arena: Arena, history: list[dict[str, Any]], tool: ToolSpec, arguments: dict[str, Any]) -> list[dict[str, Any]]:
        tools = json.dumps([t.model_dump(by_alias=True, exclude_none=True) for t in arena.tools], ensure_ascii=False)
        past = "\n".join(json.dumps(h, ensure_ascii=False, sort_keys=True) for h in history[-self.history_limit :]) or "(none)"
        call = json.dumps({"tool": tool.name, "arguments": arguments}, ensure_ascii=False, sort_keys=True)
        return [
            {"role": "system", "content": SYSTEM.format(name=arena.domain, description=arena.question, tools=tools)},
            {"role": "user", "content": f"Earlier calls, oldest first:\n{past}\n\nNew call: {call}"},
        ]

    async def respond(self, arena: Arena, history: list[dict[str, Any]], tool: ToolSpec, arguments: dict[str, Any]) -> tuple[bool, Any]:
        """(True, result) or (False, error message); raises LLMError when the model is unusable."""
        answer = await self.client.chat_json(self.messages(arena, history, tool, arguments))
        if not isinstance(answer, dict) or "ok" not in answer:
            raise LLMError(f"the emulator model answered without an 'ok' field: {str(answer)[:200]}")
        if not answer["ok"]:
            return False, str(answer.get("error") or "the call failed")
        result = answer.get("result")
        if tool.output_schema:
            schema = dict(tool.output_schema)
            if schema.get("type") == "object" and schema.get("properties"):
                schema["required"] = list(schema["properties"])  # a doc's declared fields are what a response holds
            problem = compile_validator(schema).first_error(result)
            if problem:
                raise LLMError(f"the emulator model's result does not match {tool.name}'s output schema: {problem}")
        return True, result


class LLMEmulatorBackend:
    """The gym's backend for `emulator` arenas when a model plays them (`astra-gym emulate --llm-base-url`):
    it replaces the schema emulator's sandboxed code. Each episode's calls and answers are its state."""

    kinds: tuple[ArenaKind, ...] = ("emulator",)

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        self._client: LLMClient | None = None
        self._emulator: LLMEmulator | None = None
        self._history: dict[str, list[dict[str, Any]]] = {}

    async def start(self) -> list[Arena]:
        self._client = await LLMClient(self.config).__aenter__()
        self._emulator = LLMEmulator(self._client)
        return []

    async def call(self, episode: Episode, arena: Arena, tool: ToolSpec, arguments: dict[str, Any]) -> ToolAnswer:
        assert self._emulator is not None, "the gym starts its backends before serving"
        history = self._history.setdefault(episode.id, [])
        try:
            ok, value = await self._emulator.respond(arena, history, tool, arguments)
        except LLMError as exc:
            return ToolAnswer(CallStatus.upstream_error, error=f"the emulator's model failed: {exc}")
        history.append({"tool": tool.name, "arguments": arguments, "ok": ok, "answer": value})
        return ToolAnswer.ok(value) if ok else ToolAnswer(CallStatus.tool_error, error=value)

    def begin(self, episode: Episode) -> None:
        """The model answers from the episode's history; there is nothing to prepare before it has one."""

    def end(self, episode_id: str) -> None:
        self._history.pop(episode_id, None)

    async def close(self) -> None:
        if self._client is not None:
            await self._client.__aexit__(None, None, None)
            self._client = None
