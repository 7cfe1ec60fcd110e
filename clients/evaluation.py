"""`astra-gym eval`: play many episodes concurrently, append each finished one to trajectories.jsonl, then
write report.json, report.md and PNG charts. Re-running with the same --out resumes: finished episodes
(those with no error) are not played again. A dead gym or model endpoint stops the run with a clear error;
what was finished stays on disk. An episode that could not be played is an infrastructure error: reports
count it apart and never average it into the rewards, and a run in which no episode could be played fails."""

from __future__ import annotations

import asyncio
import fnmatch
import json
import os
import re
from collections import Counter, defaultdict
from math import comb
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from clients.agent import ChatEndpoint, ModelEndpointError
from clients.distractors import DistractorSampler
from clients.eval_config import EvalConfig
from clients.gym_client import GymClient, GymError
from clients.policies import ChatPolicy, OraclePolicy, Policy, RandomPolicy, local_policy
from clients.records import TrajectoryRecord
from clients.runner import episode_seed, run_episode
from clients.toolbox import shared_http_client
from gym_server.jsonl import read_rows
from gym_server.models import DistractorRef

TRAJECTORIES = "trajectories.jsonl"
MAX_REPLAYS = 3
"""Times one episode is played again after being lost with its gym replica (each replay on a live gym)."""


class EvalAborted(RuntimeError):
    pass


def make_policy(config: EvalConfig, http: Any) -> Policy:
    if config.policy == "oracle":
        return OraclePolicy()
    if config.policy == "random":
        return RandomPolicy()
    if config.policy == "local":
        if not config.model:
            raise ValueError("the local policy needs --model (a hub name or a folder for from_pretrained)")
        from clients.local_model import load_pretrained

        model, tokenizer = load_pretrained(config.model)
        return local_policy(model, tokenizer, max_turns=config.max_turns, max_tokens=config.max_tokens)
    if not config.base_url or not config.model:
        raise ValueError("the openai policy needs --base-url and --model")
    key = os.environ.get(config.api_key_env) if config.api_key_env else None
    if config.api_key_env and key is None:
        raise ValueError(f"environment variable {config.api_key_env} is not set")
    return ChatPolicy(ChatEndpoint(config.base_url, config.model, http, key), config.max_turns, config.max_tokens)


def load_records(path: Path) -> list[TrajectoryRecord]:
    return read_rows(path, TrajectoryRecord)  # a line cut short by a kill: that episode is simply played again


async def run_eval(config: EvalConfig, progress: bool = True, policy: Policy | None = None) -> dict[str, Any]:
    """`policy` plays instead of the one `config.policy` names (a policy built in code, e.g. in tests)."""
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "config.json").write_text(config.model_dump_json(indent=2))
    path = config.out / TRAJECTORIES
    done = {r.key for r in load_records(path) if r.error is None}
    gym_thread = None
    if not config.gym:
        from gym_server.config import ServeConfig
        from gym_server.serve import GymThread

        suite = {"arenas": [], "suites": [config.suite], "suite_categories": config.categories} if config.suite else {}
        gym_thread = GymThread.private(ServeConfig(port=0, **suite)).start()  # it records state diffs, as every gym does by default
    try:
        async with shared_http_client(max_connections=max(64, config.concurrency * 4)) as http:
            if gym_thread is not None:
                gym = GymClient(gym_thread.url, http, gym_thread.config.token)
            else:
                gym = GymClient(config.gym, http, config.token)  # type: ignore[arg-type]
            policy = policy or make_policy(config, http)
            patterns = [p.strip() for p in config.arenas.split(",") if p.strip()]
            arenas = [a for a in await gym.arenas() if any(fnmatch.fnmatchcase(a.id, p) for p in patterns)]
            if config.suite:  # a suite's arenas are `bfcl.ID`, their domain `bfcl-CATEGORY`
                arenas = [a for a in arenas if a.id.startswith("bfcl.") and (not config.categories or a.domain.removeprefix("bfcl-") in config.categories)]
            if not arenas:
                raise ValueError(f"no arena matches {config.arenas!r}")
            todo = [(a, k) for a in arenas for k in range(config.episodes_per_arena) if f"{a.id}#{k}" not in done]
            distractors = await distractor_draws(gym, arenas, config) if any(config.distractors.values()) else {}
            await _play_all(config, gym, policy, todo, path, progress, distractors)
    finally:
        if gym_thread is not None:
            gym_thread.stop()
    records = load_records(path)
    report = build_report(records, config)
    write_report(report, records, config.out)
    failed = report["infrastructure_errors"]
    if report["overall"]["scored"] == 0 and failed["episodes"]:
        cause = next(iter(failed["causes"]))
        raise EvalAborted(f"no episode could be played ({failed['episodes']} infrastructure errors, nothing scored); the cause: {cause}")
    return report


async def distractor_draws(gym: GymClient, arenas: list[Any], config: EvalConfig) -> dict[str, list[DistractorRef]]:
    """Each arena's distractor tools, drawn once from the evaluated arenas' tools in id order with the run's
    seed: every policy evaluated with one config meets the same irrelevant tools, and a resumed run too."""
    specs = await gym.arena_specs(sorted(a.id for a in arenas))
    sampler = DistractorSampler(specs, config.distractors, seed=config.seed)
    return {spec.id: sampler.sample(spec.id) for spec in specs}


def error_cause(error: str) -> str:
    """An error message with its URLs (episode ids, keys) taken out, so equal causes count together."""
    return re.sub(r"https?://\S+", "<url>", error)[:300]


async def _play_all(config: EvalConfig, gym: GymClient, policy: Policy, todo: list, path: Path, show: bool,
                    distractors: dict[str, list[DistractorRef]]) -> None:  # fmt: skip
    semaphore = asyncio.Semaphore(config.concurrency)
    fatal: list[BaseException] = []
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), disable=not show) as bar, path.open("a", encoding="utf-8") as out:  # fmt: skip
        task = bar.add_task(f"eval {policy.name}", total=len(todo), status="")
        rewards: list[float] = []

        async def one(summary: Any, k: int) -> None:
            async with semaphore:
                if fatal:
                    return
                for _ in range(MAX_REPLAYS + 1):  # an episode lost with its gym is played again on a live one
                    try:
                        record = await run_episode(
                            gym, policy, summary.id, repeat=k, seed=episode_seed(config.seed, summary.id, k), failure_rate=config.failure_rate,
                            domain=summary.domain, scenario_type=summary.scenario_type, system_prompt=config.system_prompt,
                            distractors=distractors.get(summary.id, ()),
                        )  # fmt: skip
                    except (GymError, ModelEndpointError) as exc:
                        fatal.append(exc)
                        return
                    out.write(record.model_dump_json() + "\n")
                    out.flush()
                    if not record.replica_lost or fatal:
                        break
                if record.reward is not None:
                    rewards.append(record.reward.reward)
                mean = sum(rewards) / len(rewards) if rewards else 0.0
                bar.update(task, advance=1, status=f"mean reward {mean:.3f}")

        await asyncio.gather(*(one(a, k) for a, k in todo))
    if fatal:
        raise EvalAborted(f"{fatal[0]} (finished episodes are kept in {path}; re-run the same command to resume)")


def pass_hat_k(successes: list[int], trials: int, k: int) -> float:
    """tau-bench's pass^k: the chance that k attempts drawn from the trials all succeed, averaged over arenas."""
    vals = [comb(c, k) / comb(trials, k) for c in successes]
    return sum(vals) / len(vals) if vals else 0.0


def _aggregate(records: list[TrajectoryRecord]) -> dict[str, Any]:
    scored = [r for r in records if r.reward is not None]
    n = len(scored)

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    return {
        "episodes": len(records),
        "errors": sum(1 for r in records if r.error),
        "success_rate": mean([1.0 if r.reward.reward >= 1.0 else 0.0 for r in scored]),  # type: ignore[union-attr]
        "reward": mean([r.reward.reward for r in scored]),  # type: ignore[union-attr]
        "recall": mean([r.reward.recall for r in scored]),  # type: ignore[union-attr]
        "precision": mean([r.reward.precision for r in scored]),  # type: ignore[union-attr]
        "tool_calls": mean([float(r.reward.tool_calls) for r in scored]),  # type: ignore[union-attr]
        "tokens": mean([float(r.usage.prompt_tokens + r.usage.completion_tokens) for r in scored]),
        "scored": n,
    }


def build_report(records: list[TrajectoryRecord], config: EvalConfig) -> dict[str, Any]:
    latest: dict[str, TrajectoryRecord] = {}
    for r in records:  # a resumed run may hold an errored and a finished attempt: the last one counts
        latest[r.key] = r
    final = list(latest.values())
    by: dict[str, dict[str, list[TrajectoryRecord]]] = {"scenario_type": defaultdict(list), "domain": defaultdict(list)}
    for r in final:
        by["scenario_type"][r.scenario_type or "?"].append(r)
        by["domain"][r.domain or "?"].append(r)
    failed = [r for r in final if r.error]
    lost = {r.key for r in records if r.replica_lost}
    report: dict[str, Any] = {
        "policy": config.policy, "model": config.model, "overall": _aggregate(final),
        "infrastructure_errors": {
            "episodes": len(failed), "causes": dict(Counter(error_cause(r.error or "") for r in failed).most_common(5)),
            "lost_with_their_gym": sum(r.replica_lost for r in records),
            "replayed": sum(1 for r in final if r.reward is not None and r.key in lost),
        },
        "by_scenario_type": {k: _aggregate(v) for k, v in sorted(by["scenario_type"].items())},
        "by_domain": {k: _aggregate(v) for k, v in sorted(by["domain"].items())},
    }  # fmt: skip
    if config.suite:
        report["suite"] = suite_report(final, config.suite)
    trials = config.episodes_per_arena
    if trials > 1:
        per_arena: dict[str, int] = defaultdict(int)
        for r in final:
            per_arena[r.arena_id] += int(r.reward is not None and r.reward.reward >= 1.0)
        report["pass_hat_k"] = {str(k): pass_hat_k(list(per_arena.values()), trials, k) for k in range(1, trials + 1)}
    return report


def suite_report(records: list[TrajectoryRecord], suite: str) -> dict[str, Any]:
    """The suite's own numbers: accuracy per category and overall (entries whose verdict is valid, over scored
    entries), the verdicts' error types, and the versions that produced them."""
    verdicts = [r.reward.verdict for r in records if r.reward is not None and r.reward.verdict is not None]
    by: dict[str, list[bool]] = defaultdict(list)
    for v in verdicts:
        by[v.category or "?"].append(v.valid)
    accuracy = {c: {"correct": sum(ok), "total": len(ok), "accuracy": sum(ok) / len(ok)} for c, ok in sorted(by.items())}
    correct = sum(v.valid for v in verdicts)
    return {
        "name": suite, "versions": verdicts[0].versions if verdicts else {},
        "overall": {"correct": correct, "total": len(verdicts), "accuracy": correct / len(verdicts) if verdicts else 0.0},
        "by_category": accuracy,
        "error_types": dict(Counter(v.error_type or "?" for v in verdicts if not v.valid).most_common()),
    }  # fmt: skip


def _suite_markdown(suite: dict[str, Any]) -> list[str]:
    versions = ", ".join(f"{k} {v}" for k, v in suite["versions"].items())
    md = [f"## Suite {suite['name']} ({versions})", "", "| category | correct | total | accuracy |", "|---|---|---|---|"]
    for name, row in [*suite["by_category"].items(), ("overall", suite["overall"])]:
        md.append(f"| {name} | {row['correct']} | {row['total']} | {row['accuracy']:.4f} |")
    md += ["", "| error type | entries |", "|---|---|"] + [f"| {k} | {n} |" for k, n in suite["error_types"].items()] + [""]
    return md


def write_report(report: dict[str, Any], records: list[TrajectoryRecord], out: Path) -> None:
    (out / "report.json").write_text(json.dumps(report, indent=2))
    cols = ["episodes", "errors", "success_rate", "reward", "recall", "precision", "tool_calls", "tokens"]

    def table(title: str, rows: dict[str, dict[str, Any]]) -> list[str]:
        lines = [f"## {title}", "", "| | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
        for name, agg in rows.items():
            lines.append(f"| {name} | " + " | ".join(f"{agg[c]:.3f}" if isinstance(agg[c], float) else str(agg[c]) for c in cols) + " |")
        return lines + [""]

    md = [f"# Evaluation: {report['policy']}" + (f" ({report['model']})" if report.get("model") else ""), ""]
    if "suite" in report:
        md += _suite_markdown(report["suite"])
    md += table("Overall", {"all": report["overall"]})
    md += table("By scenario type", report["by_scenario_type"])
    md += table("By domain", report["by_domain"])
    infra = report.get("infrastructure_errors") or {"episodes": 0, "causes": {}}
    if infra["episodes"]:
        md += ["## Infrastructure errors", "", f"{infra['episodes']} episodes could not be played; they are counted in `errors`, "
               "not scored, and left out of every reward above. Most common causes:", ""]  # fmt: skip
        md += [f"- {n} x {cause}" for cause, n in infra["causes"].items()] + [""]
    if infra.get("lost_with_their_gym"):
        md += [f"{infra['lost_with_their_gym']} episode plays were lost with their gym (a replica or process died) and played again "
               f"on a live one; {infra['replayed']} of those episodes are scored above, once each.", ""]  # fmt: skip
    if "pass_hat_k" in report:
        md += ["## pass^k", "", "| k | pass^k |", "|---|---|"] + [f"| {k} | {v:.3f} |" for k, v in report["pass_hat_k"].items()] + [""]
    charts = ["reward.png", "calls_tokens.png", *(["pass_hat_k.png"] if "pass_hat_k" in report else []), *(["suite.png"] if "suite" in report else [])]
    md += ["Charts: " + ", ".join(charts), ""]
    (out / "report.md").write_text("\n".join(md))
    _charts(report, out)


def _charts(report: dict[str, Any], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    for ax, key, title in ((axes[0], "by_scenario_type", "by scenario type"), (axes[1], "by_domain", "by domain")):
        groups = list(report[key])
        width = 0.25
        for i, metric in enumerate(("reward", "recall", "precision")):
            ax.bar([g + i * width for g in range(len(groups))], [report[key][n][metric] for n in groups], width, label=metric)
        ax.set_xticks([g + width for g in range(len(groups))], groups, rotation=20, ha="right")
        ax.set_ylim(0, 1.3)
        ax.set_title(title)
        ax.legend(loc="upper center", ncol=3)
    fig.tight_layout()
    fig.savefig(out / "reward.png", dpi=100)
    plt.close(fig)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4))
    groups = list(report["by_scenario_type"])
    axes[0].bar(groups, [report["by_scenario_type"][g]["tool_calls"] for g in groups])
    axes[0].set_title("mean tool calls by scenario type")
    axes[1].bar(groups, [report["by_scenario_type"][g]["tokens"] for g in groups])
    axes[1].set_title("mean tokens by scenario type")
    for ax in axes:
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    fig.savefig(out / "calls_tokens.png", dpi=100)
    plt.close(fig)
    if "suite" in report:
        suite = report["suite"]
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        names = [*suite["by_category"], "overall"]
        axes[0].bar(names, [suite["by_category"].get(n, suite["overall"])["accuracy"] for n in names])
        axes[0].set_ylim(0, 1.05)
        axes[0].set_title(f"{suite['name']} accuracy by category")
        axes[1].barh(list(suite["error_types"]) or ["(none)"], list(suite["error_types"].values()) or [0])
        axes[1].set_title("error types")
        fig.tight_layout()
        fig.savefig(out / "suite.png", dpi=100)
        plt.close(fig)
    if "pass_hat_k" in report:
        fig, ax = plt.subplots(figsize=(5, 4))
        ks = list(report["pass_hat_k"])
        ax.plot([int(k) for k in ks], [report["pass_hat_k"][k] for k in ks], marker="o")
        ax.set_xlabel("k")
        ax.set_ylabel("pass^k")
        ax.set_ylim(0, 1.05)
        fig.tight_layout()
        fig.savefig(out / "pass_hat_k.png", dpi=100)
        plt.close(fig)
