"""The seven-axis judge of synthesized tasks' trajectories (played by the episode runner, `clients.runner`,
against emulators with 20% failure injection or fronted real servers), the filter, and the SFT export."""

from __future__ import annotations

import json
import statistics
from collections import Counter
from pathlib import Path
from typing import Any

from clients.records import TrajectoryRecord
from clients.llm import LLMClient, LLMError
from synth.models import JUDGE_AXES, JudgedTrajectory, JudgeVerdict, SynthTask

RUBRIC = {
    "query_understanding": "Did the assistant grasp what the user asked, including every constraint?",
    "planning": "Was the sequence of tool calls a sensible plan for the request?",
    "tool_response_understanding": "Did the assistant read the tool results correctly (values, errors)?",
    "tool_response_conditioned_planning": "Did later steps adapt to what earlier tools returned (retries after failures, using returned ids)?",
    "tool_call_status": "Were the calls well-formed and successful (no avoidable errors)?",
    "tool_conciseness": "Were there no redundant or irrelevant calls?",
    "final_answer_quality": "Is the final answer correct, complete and grounded in the tool results?",
}


def _transcript(record: TrajectoryRecord) -> str:
    lines = []
    for m in record.messages:
        if m["role"] == "assistant" and m.get("tool_calls"):
            calls = "; ".join(f"{c['function']['name']}({c['function']['arguments']})" for c in m["tool_calls"])
            lines.append(f"ASSISTANT calls: {calls}" + (f" | says: {m['content']}" if m.get("content") else ""))
        else:
            lines.append(f"{m['role'].upper()}: {m.get('content')}")
    return "\n".join(lines)


async def judge(llm: LLMClient, task: SynthTask, record: TrajectoryRecord) -> JudgeVerdict:
    """Each axis scored in [0, 1] with a reason; any missing or malformed axis fails the whole verdict."""
    rubric = "\n".join(f"- {k}: {v}" for k, v in RUBRIC.items())
    prompt = (
        f"### STAGE: judge\nUser request: {task.query}\n\nTrajectory:\n{_transcript(record)}\n\n"
        f"Score the assistant on each axis from 0 to 1:\n{rubric}\n"
        'Reply with JSON: {"AXIS": {"score": S, "reason": WHY}, ...} for all seven axes.'
    )
    try:
        answer = await llm.chat_json([{"role": "user", "content": prompt}])
        if not isinstance(answer, dict):
            raise ValueError("the judgement is not a JSON object")
        scores, reasons = {}, {}
        for axis in JUDGE_AXES:
            item = answer.get(axis)
            if not isinstance(item, dict) or not isinstance(item.get("score"), (int, float)) or isinstance(item.get("score"), bool):
                raise ValueError(f"axis {axis!r} has no numeric score")
            if not 0.0 <= float(item["score"]) <= 1.0:
                raise ValueError(f"axis {axis!r} scored {item['score']}, outside [0, 1]")
            scores[axis] = float(item["score"])
            reasons[axis] = str(item.get("reason", ""))
    except (LLMError, ValueError) as exc:
        return JudgeVerdict(error=f"{type(exc).__name__}: {exc}")
    return JudgeVerdict(scores=scores, reasons=reasons, reward=statistics.fmean(scores.values()))


def apply_filter(items: list[JudgedTrajectory], min_reward: float | None = 0.6, top_percent: float | None = None) -> list[JudgedTrajectory]:
    """Keep by threshold, or the top percent by reward; failed rollouts and failed judgements never pass."""
    scored = [i for i in items if i.verdict.reward is not None and not i.record.get("error")]
    cutoff = min_reward if min_reward is not None else 0.0
    if top_percent is not None and scored:
        ranked = sorted((i.verdict.reward for i in scored), reverse=True)  # type: ignore[misc]
        cutoff = max(cutoff, ranked[max(0, int(len(ranked) * top_percent / 100) - 1)])
    out = []
    for item in items:
        if item.record.get("error"):
            reason = f"rollout failed: {item.record['error']}"
        elif item.verdict.reward is None:
            reason = f"judge failed: {item.verdict.error}"
        elif item.verdict.reward < cutoff:
            reason = f"reward {item.verdict.reward:.3f} below {cutoff:.3f}"
        else:
            reason = None
        out.append(item.model_copy(update={"kept": reason is None, "reason": reason}))
    return out


def export_sft(items: list[JudgedTrajectory], out_dir: Path, tools_by_server: dict[str, set[str]]) -> dict[str, Any]:
    """`train.jsonl` with `messages` (OpenAI tool-call format, the system prompt first), `tools` (JSON string,
    as TRL reads it) and `system_prompt`, loadable with `datasets.load_dataset("json", data_files=...)`, plus
    the paper-style stats."""
    out_dir.mkdir(parents=True, exist_ok=True)
    kept = [i for i in items if i.kept]
    calls_per_sample: list[int] = []
    used: dict[str, set[str]] = {}
    with (out_dir / "train.jsonl").open("w", encoding="utf-8") as fh:
        for item in kept:
            messages = item.record["messages"]
            n_calls = sum(len(m.get("tool_calls") or []) for m in messages)
            calls_per_sample.append(n_calls)
            for m in messages:
                for c in m.get("tool_calls") or []:
                    used.setdefault(item.task.server, set()).add(c["function"]["name"])
            row = {"id": item.id, "server": item.task.server, "reward": item.verdict.reward, "messages": messages,
                   "tools": json.dumps(item.record["tools"], ensure_ascii=False), "system_prompt": item.record.get("system_prompt")}  # fmt: skip
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
    total_tools = sum(len(v) for v in tools_by_server.values())
    stats = {
        "samples": len(kept),
        "rejected": len(items) - len(kept),
        "rejection_reasons": dict(Counter((i.reason or "").split(":")[0] for i in items if not i.kept)),
        "mean_messages": statistics.fmean(len(i.record["messages"]) for i in kept) if kept else 0.0,
        "mean_tool_calls": statistics.fmean(calls_per_sample) if kept else 0.0,
        "tool_call_count_distribution": dict(sorted(Counter(calls_per_sample).items())),
        "functions_covered": sum(len(v) for v in used.values()),
        "functions_total": total_tools,
        "servers": len({i.task.server for i in kept}),
    }
    (out_dir / "stats.json").write_text(json.dumps(stats, indent=2))
    return stats
