"""The SFT synthesis pipeline, stage by stage, each reading and writing JSONL in one folder:

    servers.jsonl -> chains.jsonl -> tasks.jsonl -> trajectories.jsonl -> sft/train.jsonl + sft/stats.json

Every stage skips what its output already holds, and every LLM request goes through the cached client, so
a killed run restarts where it stopped without repeating a request. Rollouts run against a gym started
in-process that serves the servers: tool docs as emulators (20% injected failures), `--upstream` servers
as the real thing.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from rich.progress import Progress

from clients.agent import ChatEndpoint
from clients.gym_client import GymClient
from clients.llm import LLMClient
from clients.policies import ChatPolicy
from clients.runner import run_episode
from clients.toolbox import shared_http_client
from emulators.compile import compile_server, emulator_id
from gym_server.jsonl import append_rows, read_rows
from gym_server.models import ServerDoc
from synth.graph import sample_chains
from synth.configs import STAGES, SFTSynthConfig, Stage
from synth.models import JudgedTrajectory, JudgeVerdict, SynthTask, ToolChain, stable_id
from synth.tasks import tasks_for_server
from synth.tooldocs import collect
from synth.trajectories import apply_filter, export_sft, judge

async def _servers(config: SFTSynthConfig) -> tuple[list[ServerDoc], dict[str, str]]:
    """The servers and, for each, the arena id rollouts use (emulator or fronted upstream)."""
    from clients.upstreams import describe
    from gym_server.config import UpstreamConfig

    path = config.out / "servers.jsonl"
    arena_of: dict[str, str] = {}
    servers: list[ServerDoc] = []
    if config.tooldocs:
        docs, report = await collect(config.tooldocs)
        (config.out / "servers.report.json").write_text(report.model_dump_json(indent=2))
        for doc in docs:
            servers.append(doc)
            arena_of[doc.name] = emulator_id(doc)
    for spec in config.upstreams:
        upstream = UpstreamConfig.parse(spec)
        arena = await describe(upstream)
        doc = ServerDoc(name=upstream.name, description=f"the MCP server {upstream.name}", tools=arena.tools)
        servers.append(doc)
        arena_of[doc.name] = upstream.arena_id
    path.write_text("".join(s.model_dump_json(by_alias=True) + "\n" for s in servers))
    return servers, arena_of


async def run_pipeline(config: SFTSynthConfig, stages: tuple[Stage, ...] = STAGES, show: bool = True) -> dict[str, Any]:
    config.out.mkdir(parents=True, exist_ok=True)
    (config.out / "config.json").write_text(config.model_dump_json(indent=2))
    servers, arena_of = await _servers(config)
    by_name = {s.name: s for s in servers}
    summary: dict[str, Any] = {"servers": len(servers)}
    async with LLMClient(config.llm) as llm:
        with Progress(disable=not show) as progress:
            if "chains" in stages:
                summary["chains"] = await _chains(config, llm, servers, progress)
            if "tasks" in stages:
                summary["tasks"] = await _tasks(config, llm, by_name, progress)
            if "trajectories" in stages:
                summary["trajectories"] = await _trajectories(config, llm, by_name, arena_of, progress)
        summary["llm"] = llm.usage.model_dump()
    if "export" in stages:
        judged = apply_filter(read_rows(config.out / "trajectories.jsonl", JudgedTrajectory), config.min_reward, config.top_percent)
        summary["export"] = export_sft(judged, config.out / "sft", {s.name: {t.name for t in s.tools} for s in servers})
    (config.out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary


async def _chains(config: SFTSynthConfig, llm: LLMClient, servers: list[ServerDoc], progress: Progress) -> dict[str, int]:
    path = config.out / "chains.jsonl"
    done = {c.server for c in read_rows(path, ToolChain)}
    todo = [s for s in servers if s.name not in done]
    task = progress.add_task("chains", total=len(todo))
    for server in todo:  # one write per server: a kill never leaves a server half-recorded
        chains = await sample_chains(llm, server, config.chains_per_server, config.seed, 2, config.max_chain_len)
        append_rows(path, chains or [ToolChain(id=stable_id(server.name, "none"), server=server.name, tools=[], reason="no chain proposed")])
        progress.advance(task)
    rows = read_rows(path, ToolChain)
    return {"verified": sum(c.verified for c in rows), "rejected": sum(not c.verified for c in rows)}


async def _tasks(config: SFTSynthConfig, llm: LLMClient, by_name: dict[str, ServerDoc], progress: Progress) -> dict[str, int]:
    path = config.out / "tasks.jsonl"
    chains = read_rows(config.out / "chains.jsonl", ToolChain)
    done = {t.server for t in read_rows(path, SynthTask)}
    todo = [name for name in dict.fromkeys(c.server for c in chains) if name not in done and name in by_name]
    task = progress.add_task("tasks", total=len(todo))
    for name in todo:
        rows = await tasks_for_server(llm, by_name[name], [c for c in chains if c.server == name], config.task_rules, config.seed)
        append_rows(path, rows)
        progress.advance(task)
    rows = read_rows(path, SynthTask)
    return {"kept": sum(t.kept for t in rows), "rejected": sum(not t.kept for t in rows)}


async def _trajectories(config: SFTSynthConfig, llm: LLMClient, by_name: dict[str, ServerDoc], arena_of: dict[str, str], progress: Progress) -> dict[str, int]:
    from clients.upstreams import upstream_backends
    from gym_server.config import ServeConfig, UpstreamConfig
    from gym_server.serve import GymThread
    from gym_server.store import write_bundle

    path = config.out / "trajectories.jsonl"
    done = {t.id for t in read_rows(path, JudgedTrajectory)}
    tasks = [t for t in read_rows(config.out / "tasks.jsonl", SynthTask) if t.kept and t.id not in done and t.server in arena_of]
    store = config.out / "emulators.jsonl"
    write_bundle([compile_server(s, config.failure_rate) for n, s in by_name.items() if arena_of[n].startswith("emu-")], store)
    gym_config = ServeConfig(port=0, arenas=[str(store)], upstreams=[UpstreamConfig.parse(u) for u in config.upstreams])
    bar = progress.add_task("rollouts", total=len(tasks))
    semaphore = asyncio.Semaphore(config.concurrency)
    with GymThread.private(gym_config, upstream_backends(gym_config)) as gym_thread:
        async with shared_http_client() as http:
            gym = GymClient(gym_thread.url, http, gym_thread.config.token)
            endpoint = ChatEndpoint(config.agent_base_url or config.llm.base_url, config.agent_model or config.llm.model, http)
            policy = ChatPolicy(endpoint, max_turns=config.max_turns)

            async def one(task: SynthTask) -> None:
                async with semaphore:
                    seed = int(task.id[:8], 16) + config.seed  # per task: failures land on different calls
                    record = await run_episode(gym, policy, arena_of[task.server], seed=seed, prompt=task.query, system_prompt=config.system_prompt)
                    # a rollout the gym did not serve is not judged: it says nothing about the agent
                    verdict = JudgeVerdict(error=f"not played: {record.error}") if record.error else await judge(llm, task, record)
                    append_rows(path, [JudgedTrajectory(id=task.id, task=task, record=record.model_dump(mode="json"), verdict=verdict)])
                    progress.advance(bar)

            await asyncio.gather(*(one(t) for t in tasks))
    rows = read_rows(path, JudgedTrajectory)
    failed = [r.record["error"] for r in rows if r.record.get("error")]
    if tasks and rows and len(failed) == len(rows):
        raise RuntimeError(f"no rollout could be played ({len(failed)} infrastructure errors); the first: {failed[0]}")
    return {"rolled_out": len(rows), "judged": sum(r.verdict.reward is not None for r in rows), "not_played": len(failed)}
