"""Tool calls in generated text (`<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, the Qwen/Hermes
convention our chat templates render) turned into OpenAI `tool_calls`, and the text left over."""

from __future__ import annotations

import json
import re
from typing import Any

_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)


def parse_tool_calls(text: str, id_prefix: str = "call") -> tuple[str | None, list[dict[str, Any]]]:
    """(content, tool_calls). A call whose JSON is broken keeps its raw text as `arguments`, so the agent
    loop answers it with a "malformed call" message instead of dropping it."""
    calls: list[dict[str, Any]] = []
    for i, match in enumerate(_CALL.finditer(text)):
        raw = match.group(1)
        name, arguments = "", raw
        try:
            data = json.loads(raw)
            if isinstance(data, dict):
                name = str(data.get("name", ""))
                args = data.get("arguments", {})
                arguments = args if isinstance(args, str) else json.dumps(args)
        except ValueError:
            found = re.search(r'"name"\s*:\s*"([^"]+)"', raw)
            name = found.group(1) if found else ""
        calls.append({"id": f"{id_prefix}_{i}", "type": "function", "function": {"name": name, "arguments": arguments}})
    content = _CALL.sub("", text).strip() or None
    return content, calls
