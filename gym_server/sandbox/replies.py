"""The gym's check of a sandbox process's reply to a call: the process ran arena code, so nothing it sends is
trusted. A reply that breaks the frame's own promises (sizes, JSON) is a sandbox error; one that is well formed but
over the configured bounds (bytes, depth, state size) is the tool's error, as the agent should see it."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from gym_server.models import StateDiff
from gym_server.sandbox.config import SandboxConfig, SandboxOutcome


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


def checked_outcome(config: SandboxConfig, reply: dict[str, Any], blob: bytes, state: bytes | None, diff: asyncio.Future[StateDiff] | None, expected: bool) -> SandboxOutcome:
    """A call's reply as the untrusted bytes it is: its sizes, its JSON, its depth; `expected`: a state diff was asked for."""
    limit = config.max_result_bytes
    n = reply.get("result_bytes")
    if type(n) is not int or n != len(blob) or (reply.get("changed") is True) != (state is not None):
        return SandboxOutcome(ok=False, kind="sandbox_error", error="the sandbox process sent a malformed result")
    if n > limit:
        return SandboxOutcome(ok=False, kind="tool_error", error=f"tool returned {n} bytes of JSON; the limit is {limit}")
    try:
        result = json.loads(blob)
    except (ValueError, RecursionError):
        return SandboxOutcome(ok=False, kind="sandbox_error", error="the sandbox process sent a malformed result")
    if _too_deep(result, config.max_result_depth):
        return SandboxOutcome(ok=False, kind="tool_error", error=f"tool returned a result nested deeper than {config.max_result_depth} levels")
    if state is not None and len(state) > config.max_state_bytes:
        return SandboxOutcome(ok=False, kind="tool_error", error=f"the call grew the state to {len(state)} bytes; the limit is {config.max_state_bytes}")
    if state is not None and expected and diff is None:  # asked for: a writing call must announce one
        return SandboxOutcome(ok=False, kind="sandbox_error", error="the sandbox process sent no state diff")
    return SandboxOutcome(ok=True, result=result, state=state, diff=diff)

