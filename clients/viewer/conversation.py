"""One episode as the episode page shows it: the conversation's turns, each tool call of the model tied to the
gym's log entry for it (arguments, result or error, injected failure, latency, the sub-task it solved, the state
diff it caused), and the sub-tasks left unsolved."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from clients.records import TrajectoryRecord
from gym_server.models import CallLogEntry


@dataclass
class Turn:
    role: str
    text: str
    calls: list[dict[str, Any]] = field(default_factory=list)
    """The model's tool calls: name, arguments (as sent), and the index of the gym's log entry (or None)."""


@dataclass
class EpisodeView:
    turns: list[Turn]
    calls: list[CallLogEntry]
    solved_by_call: dict[int, str]
    """Call index -> the sub-task it solved."""
    unsolved: list[str]


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI content parts
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
    return "" if content is None else str(content)


def episode_view(record: TrajectoryRecord) -> EpisodeView:
    """The model's tool calls are tied to the log's entries in order when both count the same calls (the runner
    makes one gym call per tool call); otherwise the conversation is shown without the ties."""
    turns: list[Turn] = []
    n_calls = 0
    for m in record.messages:
        if not isinstance(m, dict):
            continue
        calls = []
        for call in m.get("tool_calls") or []:
            fn = call.get("function") if isinstance(call, dict) else None
            if isinstance(fn, dict):
                calls.append({"name": str(fn.get("name", "")), "arguments": fn.get("arguments"), "index": n_calls})
                n_calls += 1
        turns.append(Turn(role=str(m.get("role", "?")), text=_text(m.get("content")), calls=calls))
    if n_calls != len(record.call_log):
        for turn in turns:
            for call in turn.calls:
                call["index"] = None
    reward = record.reward
    solved_by = {index: sub for sub, index in (reward.solved_by.items() if reward else [])}
    return EpisodeView(turns=turns, calls=record.call_log, solved_by_call=solved_by, unsolved=reward.unsolved_subtasks if reward else [])
