"""`synth tools|chains|tasks|trajectories|sft|arenas`: synthesis, each stage resumable from its output."""

from __future__ import annotations

import asyncio
import json
import time
from functools import partial
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field, model_validator

from clients.llm import LLMConfig
from gym_server.cli.options import Flag, command
from gym_server.cli.root import console, fail, synth_app
from synth.arenas.llm_pipeline import LLMArenaConfig
from synth.configs import SFTSynthConfig, Stage
from synth.tooldocs import QualityRules


class SynthToolsConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    sources: list[str] = Field(min_length=1, description="Files or folders (BFCL, OpenAI tools, OpenAPI, ServerDoc JSONL), MCP URLs, or stdio:COMMAND.")
    out: Path = Field(default=Path("tooldocs.jsonl"), description="Normalized servers, one JSON per line (a drop report beside it).")
    quality: QualityRules = Field(default_factory=QualityRules, description="What a server and its tools need to be kept.")


TOOLS_FLAGS = {"sources": Flag(argument=True), "quality.min_tools": Flag("--min-tools"), "quality.min_description_chars": Flag("--min-description-chars")}


@command(synth_app, "synth tools", SynthToolsConfig, TOOLS_FLAGS)
def synth_tools(config: SynthToolsConfig) -> None:
    """Collect and normalize tool documents into one schema, grouped by server, with a quality filter."""
    from synth.tooldocs import collect

    servers, report = asyncio.run(collect(config.sources, config.quality))
    out = config.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(s.model_dump_json(by_alias=True, exclude_none=True) + "\n" for s in servers))
    report_path = out.with_name(out.stem + ".report.json")
    report_path.write_text(report.model_dump_json(indent=2))
    console.print(f"{report.servers_kept}/{report.servers_in} servers, {report.tools_kept}/{report.tools_in} tools kept -> {out}")
    for r in report.rejected[:20]:
        console.print(f"  [yellow]dropped[/] {r.server}{'/' + r.tool if r.tool else ''}: {r.reason}")
    if len(report.rejected) > 20:
        console.print(f"  ... {len(report.rejected) - 20} more in {report_path}")
    if not servers:
        raise typer.Exit(1)


def _llm_defaults(data: Any, cache: Any) -> Any:
    """A synthesis LLM given as a mapping caches in the run's folder by default (`cache(data)`), so a re-run
    replays every answered request; its concurrency follows the run's."""
    if not (isinstance(data, dict) and isinstance(data.get("llm"), dict)):
        return data
    llm = dict(data["llm"])
    llm.setdefault("cache_path", str(cache(data)))
    if "concurrency" in data:
        llm.setdefault("concurrency", data["concurrency"])
    return {**data, "llm": llm}


class SFTSynthCommandConfig(SFTSynthConfig):
    """`synth chains|tasks|trajectories|sft`: the pipeline's config, its LLM cached in `out` unless told."""

    @model_validator(mode="before")
    @classmethod
    def _llm(cls, data: Any) -> Any:
        return _llm_defaults(data, lambda d: Path(d.get("out") or cls.model_fields["out"].default) / "llm-cache.sqlite")


LLM_FLAGS = {"llm.base_url": Flag("--llm-base-url"), "llm.model": Flag("--model"), "llm.api_key_env": Flag("--api-key-env")}
SFT_FLAGS = {**LLM_FLAGS, "tooldocs": Flag("--tooldocs"), "upstreams": Flag("--upstream")}
SFT_VERBS: dict[str, tuple[tuple[Stage, ...], str]] = {
    "chains": (("chains",), "Tool-chain graph, weighted random walks, verified chains -> chains.jsonl."),
    "tasks": (("tasks",), "Chain-conditioned and server-only tasks, augmented and scored -> tasks.jsonl."),
    "trajectories": (("trajectories", "export"), "Rollouts over MCP, seven-axis judge, filter, SFT export."),
    "sft": (("chains", "tasks", "trajectories", "export"), "The whole SFT pipeline: chains, tasks, trajectories, export (resumable)."),
}


def run_sft_stages(config: SFTSynthConfig, stages: tuple[Stage, ...]) -> None:
    from clients.llm import LLMError
    from synth.pipeline import run_pipeline

    try:
        summary = asyncio.run(run_pipeline(config, stages))
    except (LLMError, RuntimeError, ValueError) as exc:
        fail(f"{exc} (finished work is kept in {config.out}; re-run the same command to resume)", code=1)
    console.print_json(json.dumps(summary, default=str))


for _verb, (_stages, _help) in SFT_VERBS.items():
    command(synth_app, f"synth {_verb}", SFTSynthCommandConfig, SFT_FLAGS, help=_help)(partial(run_sft_stages, stages=_stages))


class SynthArenasConfig(LLMArenaConfig):
    """`synth arenas`: offline (seeded worlds, no LLM) or llm (QA decomposition over knowledge, `LLMArenaConfig`)."""

    mode: Literal["offline", "llm"] = Field(default="offline", description="offline (seeded worlds, no LLM) | llm (QA decomposition over knowledge).")
    n: int = Field(default=1000, ge=1, description="How many arenas (llm: attempts).")
    seed: int = Field(default=0, description="offline: seeds the worlds' generator.")
    worlds: list[str] = Field(default_factory=list, description="offline: only these worlds (airline, clinic, retail); default all.")
    out: Path = Field(default=Path("runs/arenas/offline.jsonl"), description="JSONL bundle the gym serves as it is (serve --arenas OUT).")
    llm: LLMConfig | None = Field(default=None, description="llm: the synthesis model.")  # type: ignore[assignment]

    @model_validator(mode="before")
    @classmethod
    def _llm_cache(cls, data: Any) -> Any:
        return _llm_defaults(data, lambda d: Path(d.get("out") or cls.model_fields["out"].default).with_suffix(".llm-cache.sqlite"))

    @model_validator(mode="after")
    def _llm_mode_needs_llm(self) -> SynthArenasConfig:
        if self.mode == "llm" and self.llm is None:
            raise ValueError("--mode llm needs --llm-base-url and --model (llm.base_url and llm.model in YAML)")
        return self


ARENAS_FLAGS = {**LLM_FLAGS, "domains": Flag("--domain"), "questions": Flag("--question")}


@command(synth_app, "synth arenas", SynthArenasConfig, ARENAS_FLAGS)
def synth_arenas(config: SynthArenasConfig) -> None:
    """Synthesize an arena store; prints its scenario-type and hop mix beside the paper's RL set."""
    from gym_server.store import write_bundle
    from synth.arenas.offline import generate, mix_report

    out = config.out
    if config.mode == "llm":
        from clients.llm import LLMError
        from synth.arenas.llm_pipeline import run_llm_synthesis

        try:
            counts = asyncio.run(run_llm_synthesis(config))
        except (LLMError, ValueError, OSError) as exc:
            fail(f"{exc} (kept arenas stay in {out}; re-run to resume)", code=1)
        console.print(f"kept {counts['kept']}, rejected {counts['rejected']} -> {out} (rejects with reasons: {out.with_suffix('.rejected.jsonl')})")
        return
    t0 = time.perf_counter()
    arenas = list(generate(config.n, config.seed, worlds=config.worlds or None))
    write_bundle(arenas, out)
    report = mix_report(arenas)
    out.with_suffix(".mix.json").write_text(json.dumps(report, indent=2))
    console.print(f"{len(arenas)} arenas in {time.perf_counter() - t0:.1f} s -> {out}")
    console.print_json(json.dumps(report))
