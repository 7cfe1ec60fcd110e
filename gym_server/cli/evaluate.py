"""`eval` (benchmark a policy over a gym's arenas) and `demo` (the first run: generate, serve, evaluate)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field
from rich.markup import escape
from rich.table import Table

from clients.distractors import parse_band_counts
from clients.eval_config import EvalConfig
from gym_server.cli.options import Flag, command
from gym_server.cli.root import app, console, err, fail


@command(app, "eval", EvalConfig, {"token": Flag(envvar="ASTRA_GYM_TOKEN"), "distractors": Flag(parse=parse_band_counts)})
def eval_(config: EvalConfig) -> None:
    """Benchmark a policy over the gym's arenas (or a suite's entries); writes trajectories.jsonl, report.json/.md and charts."""
    from clients.evaluation import EvalAborted, run_eval
    from clients.gym_client import GymError

    try:
        report = asyncio.run(run_eval(config))
    except (EvalAborted, GymError, ValueError) as exc:
        fail(str(exc), code=1)
    if "suite" in report:
        s = report["suite"]
        rows = ", ".join(f"{c} {r['accuracy']:.4f}" for c, r in s["by_category"].items())
        console.print(f"[bold]{s['name']}[/] accuracy {s['overall']['accuracy']:.4f} ({s['overall']['correct']}/{s['overall']['total']}): {rows}")
    o = report["overall"]
    console.print(
        f"[bold]{o['episodes']}[/] episodes, {o['scored']} scored: reward {o['reward']:.3f}, recall {o['recall']:.3f}, "
        f"precision {o['precision']:.3f}, success {o['success_rate']:.1%}; infrastructure errors {o['errors']}"
    )
    for cause, n in report["infrastructure_errors"]["causes"].items():
        err.print(f"[yellow]not played, not scored:[/] {n} x {escape(cause)}", highlight=False)
    console.print(f"report: {config.out / 'report.md'}")


class DemoConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    n: int = Field(default=300, ge=1, description="Offline arenas to generate.")
    out: Path = Field(default=Path("runs/demo"), description="Where the arenas and reports go.")
    concurrency: int = Field(default=16, ge=1, le=4096, description="Episodes in flight.")
    seed: int = Field(default=0, description="Seeds the arenas and the random policy.")


@command(app, "demo", DemoConfig)
def demo(config: DemoConfig) -> None:
    """The first run: offline arenas, a gym serving them, oracle and random agents over MCP, reports. No model, no network."""
    from clients.evaluation import run_eval
    from gym_server.config import ServeConfig
    from gym_server.serve import GymThread
    from gym_server.store import write_bundle
    from synth.arenas.offline import generate, mix_report

    t0 = time.perf_counter()
    out = config.out
    store = out / "arenas.jsonl"
    arenas = list(generate(config.n, config.seed))
    write_bundle(arenas, store)
    (out / "arenas.mix.json").write_text(json.dumps(mix_report(arenas), indent=2))
    console.print(f"[bold]1/3[/] generated {len(arenas)} offline arenas -> {store}")
    with GymThread.private(ServeConfig(port=0, arenas=[str(store)])) as gym:
        console.print(f"[bold]2/3[/] serving them at {gym.url} (MCP per episode at /episodes/ID/mcp?key=KEY)")
        results = {}
        for policy in ("oracle", "random"):
            run = EvalConfig(policy=policy, gym=gym.url, token=gym.config.token, concurrency=config.concurrency, arenas="offline-*", seed=config.seed, out=out / policy)
            results[policy] = asyncio.run(run_eval(run))["overall"]
    table = Table(title=f"{len(arenas)} arenas, played over MCP")
    for col in ("policy", "reward", "recall", "precision", "success", "tool calls", "errors"):
        table.add_column(col)
    for policy, o in results.items():
        table.add_row(policy, f"{o['reward']:.3f}", f"{o['recall']:.3f}", f"{o['precision']:.3f}", f"{o['success_rate']:.1%}", f"{o['tool_calls']:.2f}", str(o["errors"]))
    console.print("[bold]3/3[/] evaluated")
    console.print(table)
    console.print(f"reports: {out / 'oracle' / 'report.md'} and {out / 'random' / 'report.md'}  ({time.perf_counter() - t0:.0f} s)")
    if results["oracle"]["success_rate"] < 1.0:
        fail("the oracle did not solve every arena: the generated store is broken", code=1)
