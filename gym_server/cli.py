"""`astra-gym`: the command line. Each verb builds its pydantic config from flags (or `--config FILE`)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from pydantic import Field
from rich.console import Console
from rich.table import Table

from clients.llm import LLMConfig
from gym_server.backends import ToolBackend
from gym_server.config import ServeConfig
from gym_server.models import FailureKind

app = typer.Typer(no_args_is_help=True, add_completion=False, help="astra-gym: an MCP-native agent gym.")
arenas_app = typer.Typer(no_args_is_help=True, help="Inspect and validate arena stores.")
app.add_typer(arenas_app, name="arenas")
synth_app = typer.Typer(no_args_is_help=True, help="Synthesize tool docs, tasks, trajectories and arenas.")
app.add_typer(synth_app, name="synth")
console = Console()
err = Console(stderr=True, soft_wrap=True)

UNSAFE_HELP = "Run arena code without the kernel sandbox where bubblewrap, namespaces or seccomp are missing (trusted arenas only; every call's log says so). Also: ASTRA_GYM_UNSAFE_SANDBOX=1."
ArenasOpt = Annotated[Optional[list[str]], typer.Option("--arenas", "-a", help="Arena sources: 'builtin', files, directories (repeatable).")]


class ServeCommandConfig(ServeConfig):
    """What `serve` reads: the gym's own config plus what only the command wires in (the gym knows no LLM)."""

    emulator_llm: LLMConfig | None = Field(default=None, description="Emulators answer by this LLM (cached) instead of by schema.")


def serve_backends(config: ServeCommandConfig) -> list[ToolBackend]:
    """The tool backends beyond the gym's sandbox that a serve config asks for (this is the composition root)."""
    from clients.upstreams import upstream_backends
    from emulators.llm_mode import LLMEmulatorBackend

    llm: list[ToolBackend] = [LLMEmulatorBackend(config.emulator_llm)] if config.emulator_llm else []
    return [*upstream_backends(config), *llm]


def _fail(message: str, code: int = 2) -> None:
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}")  # messages quote user input and brackets, not markup
    raise typer.Exit(code)


@app.command()
def serve(
    config: Annotated[Optional[Path], typer.Option(help="YAML file with ServeConfig fields (and emulator_llm).")] = None,
    host: Annotated[Optional[str], typer.Option(help="Interface to bind.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to bind (0: a free one).")] = None,
    arenas: ArenasOpt = None,
    token: Annotated[Optional[str], typer.Option(help="The operator's bearer token (default: $ASTRA_GYM_TOKEN).")] = None,
    agent_token: Annotated[Optional[list[str]], typer.Option(help="A scoped token for remote agents: own episodes on --agent-arena, no gold, no logs (repeatable).")] = None,
    agent_arena: Annotated[Optional[list[str]], typer.Option(help="Glob over arena ids that agent tokens may open (repeatable; default: all).")] = None,
    public_url: Annotated[Optional[str], typer.Option(help="Base URL used in episode MCP URLs.")] = None,
    allowed_host: Annotated[Optional[list[str]], typer.Option(help="Host header served besides loopback, IP addresses and --public-url's (repeatable; '*': any).")] = None,
    allowed_origin: Annotated[Optional[list[str]], typer.Option(help="Browser Origin accepted besides loopback and --public-url's (repeatable; '*': any).")] = None,
    failure_rate: Annotated[Optional[float], typer.Option(help="Default injected failure rate.")] = None,
    failure_kinds: Annotated[Optional[list[FailureKind]], typer.Option(help="Injected failure kinds (repeatable).")] = None,
    episode_ttl_s: Annotated[Optional[float], typer.Option(help="Idle episode lifetime.")] = None,
    processes: Annotated[Optional[int], typer.Option(help="Gym processes on this machine (default: one per core); process i serves MCP on port+1+i.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Sandbox worker processes.")] = None,
    sandbox_backend: Annotated[Optional[str], typer.Option(help="auto | process | docker")] = None,
    call_timeout_s: Annotated[Optional[float], typer.Option(help="Wall-clock limit of one tool call.")] = None,
    unsafe_sandbox: Annotated[Optional[bool], typer.Option("--unsafe-sandbox", help=UNSAFE_HELP)] = None,
    upstream: Annotated[Optional[list[str]], typer.Option(help="Front a real MCP server: NAME=COMMAND or NAME=URL (repeatable).")] = None,
    otel_spans: Annotated[Optional[bool], typer.Option("--otel-spans/--no-otel-spans", help="Emit the MCP SDK's OpenTelemetry span per message.")] = None,
) -> None:
    """Serve arenas over HTTP: REST at /api, each episode's tools over MCP at /episodes/{id}/mcp?key=KEY."""
    from gym_server.serve import serve as run

    sandbox = {k: v for k, v in {"workers": workers, "backend": sandbox_backend, "call_timeout_s": call_timeout_s, "unsafe": unsafe_sandbox}.items() if v is not None}
    try:
        cfg = ServeCommandConfig.load(
            config, host=host, port=port, arenas=arenas, token=token, agent_tokens=agent_token, agent_arenas=agent_arena,
            public_url=public_url, failure_rate=failure_rate, allowed_hosts=allowed_host, allowed_origins=allowed_origin,
            failure_kinds=failure_kinds, episode_ttl_s=episode_ttl_s, sandbox=sandbox or None, otel_spans=otel_spans,
            processes=processes,
        )  # fmt: skip
        if upstream:
            from gym_server.config import UpstreamConfig

            cfg.upstreams.extend(UpstreamConfig.parse(u) for u in upstream)
    except (ValueError, OSError) as exc:
        _fail(str(exc))
    auth = " (bearer token required)" if cfg.token else ""

    def ready(url: str, gym_app: object) -> None:
        state = gym_app.state  # type: ignore[attr-defined]
        what = f"{len(state.store)} arenas" if hasattr(state, "store") else f"{state.processes.n} gym processes"
        console.print(f"[bold green]astra-gym[/] serving {what} at [bold]{url}[/]{auth}")
        console.print(f"  arenas:   GET  {url}/api/arenas")
        console.print(f"  episodes: POST {url}/api/episodes  (or: astra-gym episode ARENA --gym {url})")

    try:
        run(cfg, on_ready=ready, backends=serve_backends)
    except OSError as exc:
        _fail(f"cannot serve on {cfg.host}:{cfg.port}: {exc}")
    except (ValueError, RuntimeError) as exc:  # a store that cannot be read, a bad sandbox backend, a process that failed
        _fail(str(exc))


@arenas_app.command("list")
def arenas_list(
    arenas: ArenasOpt = None,
    domain: Annotated[Optional[str], typer.Option(help="Only this domain.")] = None,
    scenario_type: Annotated[Optional[str], typer.Option(help="Only this scenario type.")] = None,
    limit: Annotated[int, typer.Option(help="Rows to show.")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines instead of a table.")] = False,
) -> None:
    """List the arenas of a store."""
    from gym_server.store import ArenaStore

    try:
        store = ArenaStore(arenas or ["builtin"])
        items, total = store.summaries(0, limit, domain, scenario_type)
    except ValueError as exc:
        _fail(str(exc))
    if as_json:
        for item in items:
            print(item.model_dump_json())
        return
    table = Table(title=f"{total} arenas" + (f" (first {len(items)})" if total > len(items) else ""))
    for col in ("id", "domain", "scenario_type", "n_subtasks", "n_tools"):
        table.add_column(col)
    for i in items:
        table.add_row(i.id, i.domain, i.scenario_type, str(i.n_subtasks), str(i.n_tools))
    console.print(table)


@arenas_app.command("show")
def arenas_show(arena_id: str, arenas: ArenasOpt = None) -> None:
    """Print one arena as JSON (gold calls included)."""
    from gym_server.store import ArenaNotFound, ArenaStore, InvalidArena

    try:
        arena = ArenaStore(arenas or ["builtin"]).get(arena_id)
    except ArenaNotFound:
        _fail(f"no arena {arena_id!r} in the store")
    except (InvalidArena, ValueError) as exc:
        _fail(str(exc))
    print(arena.model_dump_json(by_alias=True, indent=2))


@arenas_app.command("validate")
def arenas_validate(
    paths: Annotated[Optional[list[str]], typer.Argument(help="Stores to validate (default: builtin).")] = None,
    workers: Annotated[int, typer.Option(help="Sandbox workers.")] = 2,
    unsafe_sandbox: Annotated[bool, typer.Option("--unsafe-sandbox", help=UNSAFE_HELP)] = False,
) -> None:
    """Check a store: schema, DAG, unique tool names, and every gold call run in the sandbox."""
    from gym_server.sandbox.pool import SandboxConfig, SandboxPool, SandboxUnavailable
    from gym_server.store import ArenaStore
    from gym_server.validation import validate_store

    try:
        store = ArenaStore(paths or ["builtin"])
    except ValueError as exc:
        _fail(str(exc))

    async def run() -> list:
        async with SandboxPool(SandboxConfig(workers=workers, unsafe=True) if unsafe_sandbox else SandboxConfig(workers=workers)) as pool:
            return await validate_store(store, pool)

    try:
        reports = asyncio.run(run())
    except SandboxUnavailable as exc:
        _fail(str(exc))
    bad = [r for r in reports if not r.ok]
    for r in bad:
        console.print(f"[red]✗[/] {r.arena_id}")
        for p in r.problems:
            console.print(f"    {p}")
    console.print(f"{len(reports) - len(bad)}/{len(reports)} arenas valid")
    if bad:
        raise typer.Exit(1)


@app.command()
def episode(
    arena_id: str,
    gym: Annotated[str, typer.Option(help="The gym's base URL.")] = "http://127.0.0.1:8000",
    seed: Annotated[Optional[int], typer.Option()] = None,
    failure_rate: Annotated[Optional[float], typer.Option()] = None,
    token: Annotated[Optional[str], typer.Option(envvar="ASTRA_GYM_TOKEN", help="Bearer token.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole episode as JSON.")] = False,
) -> None:
    """Start an episode on a running gym and print its MCP URL, for any MCP client."""
    import httpx2

    body = {"arena_id": arena_id, "seed": seed, "failure_rate": failure_rate}
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        response = httpx2.post(f"{gym.rstrip('/')}/api/episodes", json={k: v for k, v in body.items() if v is not None}, headers=headers, timeout=30)
    except httpx2.HTTPError as exc:
        _fail(f"cannot reach the gym at {gym}: {exc}. Is `astra-gym serve` running?")
    if response.status_code in (401, 403):
        _fail(f"the gym refused the bearer token ({response.status_code}): {response.text}; pass the operator's --token or set ASTRA_GYM_TOKEN")
    if response.status_code != 201:
        _fail(f"the gym answered {response.status_code}: {response.text}")
    data = response.json()
    if as_json:
        print(json.dumps(data, indent=2))
        return
    print(data["mcp_url"])
    auth = ' -H "Authorization: Bearer $ASTRA_GYM_TOKEN"' if token else ""
    err.print(f"[dim]task:[/] {data['prompt']}")
    err.print("[dim]the MCP URL is the agent's key to this episode's tools, and only to them; as the operator:[/]")
    err.print(f"[dim]score:[/] curl -X POST{auth} {gym.rstrip('/')}/api/episodes/{data['episode_id']}/score", highlight=False)


@app.command("eval")
def eval_(
    config: Annotated[Optional[Path], typer.Option(help="YAML file with EvalConfig fields.")] = None,
    policy: Annotated[Optional[str], typer.Option(help="oracle | random | openai | local")] = None,
    model: Annotated[Optional[str], typer.Option(help="Model name (openai policy).")] = None,
    base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible base URL.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="Env var with the API key.")] = None,
    arenas: Annotated[Optional[str], typer.Option(help="Comma-separated glob patterns over arena ids.")] = None,
    concurrency: Annotated[Optional[int], typer.Option(help="Episodes in flight.")] = None,
    episodes_per_arena: Annotated[Optional[int], typer.Option(help="K attempts per arena.")] = None,
    gym: Annotated[Optional[str], typer.Option(help="Gym URLs, comma-separated (default: an in-process gym).")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="ASTRA_GYM_TOKEN", help="Gym bearer token.")] = None,
    failure_rate: Annotated[Optional[float], typer.Option(help="Injected failure rate per episode.")] = None,
    max_turns: Annotated[Optional[int], typer.Option()] = None,
    max_tokens: Annotated[Optional[int], typer.Option()] = None,
    system_prompt: Annotated[Optional[str], typer.Option(help="System prompt of every episode (default: the built-in one).")] = None,
    seed: Annotated[Optional[int], typer.Option()] = None,
    out: Annotated[Optional[Path], typer.Option(help="Output folder (re-run to resume).")] = None,
) -> None:
    """Benchmark a policy over the gym's arenas; writes trajectories.jsonl, report.json/.md and charts."""
    import yaml
    from pydantic import ValidationError

    from clients.evaluation import EvalAborted, EvalConfig, run_eval
    from clients.gym_client import GymError

    given = dict(policy=policy, model=model, base_url=base_url, api_key_env=api_key_env, arenas=arenas,
                 concurrency=concurrency, episodes_per_arena=episodes_per_arena, gym=gym, token=token,
                 failure_rate=failure_rate, max_turns=max_turns, max_tokens=max_tokens, system_prompt=system_prompt, seed=seed, out=out)  # fmt: skip
    try:
        data = yaml.safe_load(config.read_text()) if config else {}
        cfg = EvalConfig.model_validate({**(data or {}), **{k: v for k, v in given.items() if v is not None}})
    except (ValidationError, OSError, yaml.YAMLError) as exc:
        _fail(str(exc))
    try:
        report = asyncio.run(run_eval(cfg))
    except (EvalAborted, GymError, ValueError) as exc:
        _fail(str(exc), code=1)
    o = report["overall"]
    console.print(
        f"[bold]{o['episodes']}[/] episodes, {o['scored']} scored: reward {o['reward']:.3f}, recall {o['recall']:.3f}, "
        f"precision {o['precision']:.3f}, success {o['success_rate']:.1%}; infrastructure errors {o['errors']}"
    )
    from rich.markup import escape

    for cause, n in report["infrastructure_errors"]["causes"].items():
        err.print(f"[yellow]not played, not scored:[/] {n} x {escape(cause)}", highlight=False)
    console.print(f"report: {cfg.out / 'report.md'}")


@synth_app.command("tools")
def synth_tools(
    sources: Annotated[list[str], typer.Argument(help="Files or folders (BFCL, OpenAI tools, OpenAPI, ServerDoc JSONL), MCP URLs, or stdio:COMMAND.")],
    out: Annotated[Path, typer.Option(help="Normalized servers, one JSON per line.")] = Path("tooldocs.jsonl"),
    min_tools: Annotated[int, typer.Option(help="Servers with fewer usable tools are dropped.")] = 2,
    min_description_chars: Annotated[int, typer.Option(help="Tools with shorter descriptions are dropped.")] = 12,
) -> None:
    """Collect and normalize tool documents into one schema, grouped by server, with a quality filter."""
    from synth.tooldocs import QualityRules, collect

    servers, report = asyncio.run(collect(sources, QualityRules(min_tools=min_tools, min_description_chars=min_description_chars)))
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


@app.command()
def emulate(
    tooldocs: Annotated[list[str], typer.Argument(help="Tool docs: files/folders (BFCL, OpenAI, OpenAPI, ServerDoc JSONL), MCP URLs, stdio:COMMAND.")],
    failure_rate: Annotated[float, typer.Option(help="Share of calls that fail on purpose.")] = 0.2,
    port: Annotated[int, typer.Option(help="Port (0: a free one).")] = 8000,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    token: Annotated[Optional[str], typer.Option(envvar="ASTRA_GYM_TOKEN", help="Bearer token.")] = None,
    store: Annotated[Optional[Path], typer.Option(help="Also write the emulated arenas here (JSONL) for `serve --arenas`.")] = None,
    llm_base_url: Annotated[Optional[str], typer.Option(help="Answer by an LLM at this OpenAI-compatible URL instead of by schema.")] = None,
    llm_model: Annotated[Optional[str], typer.Option(help="The emulator LLM's model name.")] = None,
    llm_api_key_env: Annotated[Optional[str], typer.Option(help="Env var with the LLM's API key.")] = None,
    llm_cache: Annotated[Path, typer.Option(help="SQLite cache of LLM responses (reruns replay from it).")] = Path("runs/emulator-llm-cache.sqlite"),
) -> None:
    """Serve tool docs as stateful MCP servers (SQLite state per episode, failure injection) and print URLs."""
    import tempfile

    from emulators.compile import compile_server
    from gym_server.store import write_bundle
    from clients.llm import LLMConfig
    from emulators.llm_mode import LLMEmulatorBackend
    from synth.tooldocs import collect

    emulator_llm = None
    if llm_base_url:
        if not llm_model:
            _fail("--llm-base-url needs --llm-model")
        emulator_llm = LLMConfig(base_url=llm_base_url, model=llm_model, api_key_env=llm_api_key_env, cache_path=llm_cache)
    servers, report = asyncio.run(collect(tooldocs))
    for r in report.rejected:
        err.print(f"[yellow]dropped[/] {r.server}{'/' + r.tool if r.tool else ''}: {r.reason}")
    if not servers:
        _fail("no usable tool docs")
    arenas = [compile_server(s, failure_rate) for s in servers]
    path = store or Path(tempfile.mkdtemp(prefix="astra-emulate-")) / "emulators.jsonl"
    write_bundle(arenas, path)
    cfg = ServeConfig(host=host, port=port, arenas=[str(path)], token=token, episode_ttl_s=7 * 24 * 3600)
    import time

    import httpx2

    from gym_server.serve import GymThread

    gym = GymThread(cfg, [LLMEmulatorBackend(emulator_llm)] if emulator_llm else [])
    try:
        gym.start()
    except (RuntimeError, TimeoutError) as exc:
        _fail(str(exc))
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    mode = f"LLM {llm_model} (cache {llm_cache})" if emulator_llm else "schema-driven"
    print(f"astra-gym emulate: {len(arenas)} servers at {gym.url} (failure rate {failure_rate:g}, {mode})", flush=True)
    for arena in arenas:
        created = httpx2.post(f"{gym.url}/api/episodes", json={"arena_id": arena.id}, headers=headers, timeout=60).json()
        print(f"  {arena.id:<28} {len(arena.tools):>3} tools  {created['mcp_url']}", flush=True)
    console.print(f"[dim]more episodes: astra-gym episode ARENA --gym {gym.url}; arenas stored in {path}; Ctrl-C stops[/]")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        gym.stop()


def _sft_command(stages: tuple[str, ...]):
    def command(
        tooldocs: Annotated[Optional[list[str]], typer.Option("--tooldocs", help="Tool doc sources, emulated in rollouts (repeatable).")] = None,
        upstream: Annotated[Optional[list[str]], typer.Option(help="Real MCP servers NAME=COMMAND|URL (repeatable).")] = None,
        llm_base_url: Annotated[Optional[str], typer.Option(help="OpenAI-compatible URL of the synthesis model.")] = None,
        model: Annotated[Optional[str], typer.Option(help="Synthesis (and, by default, rollout) model.")] = None,
        api_key_env: Annotated[Optional[str], typer.Option(help="Env var with the API key.")] = None,
        agent_model: Annotated[Optional[str], typer.Option(help="Model that plays the rollouts.")] = None,
        concurrency: Annotated[int, typer.Option(help="LLM requests and rollouts in flight.")] = 16,
        chains_per_server: Annotated[int, typer.Option()] = 6,
        min_reward: Annotated[float, typer.Option(help="Judge reward a trajectory needs to be kept.")] = 0.6,
        seed: Annotated[int, typer.Option()] = 0,
        out: Annotated[Path, typer.Option(help="Pipeline folder (re-run to resume).")] = Path("runs/sft"),
        config: Annotated[Optional[Path], typer.Option(help="YAML with SFTSynthConfig fields.")] = None,
    ) -> None:
        import yaml
        from pydantic import ValidationError

        from clients.llm import LLMError
        from synth.pipeline import SFTSynthConfig, run_pipeline

        data = (yaml.safe_load(config.read_text()) or {}) if config else {}
        llm = dict(data.pop("llm", {}) or {})
        llm.update({k: v for k, v in {"base_url": llm_base_url, "model": model, "api_key_env": api_key_env}.items() if v})
        llm.setdefault("concurrency", concurrency)
        llm.setdefault("cache_path", str(out / "llm-cache.sqlite"))
        given = {"tooldocs": tooldocs, "upstreams": upstream, "agent_model": agent_model, "concurrency": concurrency,
                 "chains_per_server": chains_per_server, "min_reward": min_reward, "seed": seed, "out": out}  # fmt: skip
        try:
            cfg = SFTSynthConfig.model_validate({**data, **{k: v for k, v in given.items() if v is not None}, "llm": llm})
        except ValidationError as exc:
            _fail(str(exc))
        try:
            summary = asyncio.run(run_pipeline(cfg, stages))  # type: ignore[arg-type]
        except (LLMError, RuntimeError, ValueError) as exc:
            _fail(f"{exc} (finished work is kept in {cfg.out}; re-run the same command to resume)", code=1)
        console.print_json(json.dumps(summary, default=str))

    return command


synth_app.command("chains", help="Tool-chain graph, weighted random walks, verified chains -> chains.jsonl.")(_sft_command(("chains",)))
synth_app.command("tasks", help="Chain-conditioned and server-only tasks, augmented and scored -> tasks.jsonl.")(_sft_command(("tasks",)))
synth_app.command("trajectories", help="Rollouts over MCP, seven-axis judge, filter, SFT export.")(_sft_command(("trajectories", "export")))
synth_app.command("sft", help="The whole SFT pipeline: chains, tasks, trajectories, export (resumable).")(_sft_command(("chains", "tasks", "trajectories", "export")))


@synth_app.command("arenas")
def synth_arenas(
    mode: Annotated[str, typer.Option(help="offline (seeded worlds, no LLM) | llm (QA decomposition over knowledge)")] = "offline",
    n: Annotated[int, typer.Option(help="How many arenas (llm: attempts).")] = 1000,
    seed: Annotated[int, typer.Option()] = 0,
    worlds: Annotated[Optional[list[str]], typer.Option(help="offline: only these worlds (airline, clinic, retail).")] = None,
    out: Annotated[Path, typer.Option(help="JSONL bundle the gym serves as it is (serve --arenas OUT).")] = Path("runs/arenas/offline.jsonl"),
    llm_base_url: Annotated[Optional[str], typer.Option(help="llm: OpenAI-compatible URL.")] = None,
    model: Annotated[Optional[str], typer.Option(help="llm: model name.")] = None,
    api_key_env: Annotated[Optional[str], typer.Option(help="llm: env var with the API key.")] = None,
    knowledge: Annotated[Optional[Path], typer.Option(help="llm: {domain, knowledge_corpus} JSONL (e.g. ../shared/data/astra_knowledge/en/context.jsonl).")] = None,
    domain: Annotated[Optional[list[str]], typer.Option(help="llm: domains to use without a knowledge file.")] = None,
    question: Annotated[Optional[list[str]], typer.Option(help="llm: user questions to decompose into arenas.")] = None,
    language: Annotated[str, typer.Option(help="llm: en or zh.")] = "en",
    concurrency: Annotated[int, typer.Option(help="llm: arenas in flight.")] = 8,
) -> None:
    """Synthesize an arena store; prints its scenario-type and hop mix beside the paper's RL set."""
    from gym_server.store import write_bundle
    from synth.arenas.offline import generate, mix_report

    import time

    if mode == "llm":
        from synth.arenas.llm_pipeline import LLMArenaConfig, run_llm_synthesis
        from clients.llm import LLMConfig, LLMError

        if not (llm_base_url and model):
            _fail("--mode llm needs --llm-base-url and --model")
        cfg = LLMArenaConfig(
            llm=LLMConfig(base_url=llm_base_url, model=model, api_key_env=api_key_env, cache_path=out.with_suffix(".llm-cache.sqlite")),
            knowledge=str(knowledge) if knowledge else None, domains=domain or [], questions=question or [], n=n, language=language, concurrency=concurrency, out=out,
        )  # fmt: skip
        try:
            counts = asyncio.run(run_llm_synthesis(cfg))
        except (LLMError, ValueError, OSError) as exc:
            _fail(f"{exc} (kept arenas stay in {out}; re-run to resume)", code=1)
        console.print(f"kept {counts['kept']}, rejected {counts['rejected']} -> {out} (rejects with reasons: {out.with_suffix('.rejected.jsonl')})")
        return
    if mode != "offline":
        _fail("--mode is offline or llm")

    t0 = time.perf_counter()
    arenas = list(generate(n, seed, worlds=worlds))
    write_bundle(arenas, out)
    report = mix_report(arenas)
    out.with_suffix(".mix.json").write_text(json.dumps(report, indent=2))
    console.print(f"{len(arenas)} arenas in {time.perf_counter() - t0:.1f} s -> {out}")
    console.print_json(json.dumps(report))


@app.command()
def demo(
    n: Annotated[int, typer.Option(help="Offline arenas to generate.")] = 300,
    out: Annotated[Path, typer.Option(help="Where the arenas and reports go.")] = Path("runs/demo"),
    concurrency: Annotated[int, typer.Option()] = 16,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """The first run: offline arenas, a gym serving them, oracle and random agents over MCP, reports. No model, no network."""
    import time

    from clients.evaluation import EvalConfig, run_eval
    from gym_server.serve import GymThread
    from gym_server.store import write_bundle
    from synth.arenas.offline import generate, mix_report

    t0 = time.perf_counter()
    store = out / "arenas.jsonl"
    arenas = list(generate(n, seed))
    write_bundle(arenas, store)
    (out / "arenas.mix.json").write_text(json.dumps(mix_report(arenas), indent=2))
    console.print(f"[bold]1/3[/] generated {len(arenas)} offline arenas -> {store}")
    with GymThread.private(ServeConfig(port=0, arenas=[str(store)])) as gym:
        console.print(f"[bold]2/3[/] serving them at {gym.url} (MCP per episode at /episodes/ID/mcp?key=KEY)")
        results = {}
        for policy in ("oracle", "random"):
            cfg = EvalConfig(policy=policy, gym=gym.url, token=gym.config.token, concurrency=concurrency, arenas="offline-*", seed=seed, out=out / policy)
            results[policy] = asyncio.run(run_eval(cfg))["overall"]
    table = Table(title=f"{len(arenas)} arenas, played over MCP")
    for col in ("policy", "reward", "recall", "precision", "success", "tool calls", "errors"):
        table.add_column(col)
    for policy, o in results.items():
        table.add_row(policy, f"{o['reward']:.3f}", f"{o['recall']:.3f}", f"{o['precision']:.3f}", f"{o['success_rate']:.1%}", f"{o['tool_calls']:.2f}", str(o["errors"]))
    console.print("[bold]3/3[/] evaluated")
    console.print(table)
    console.print(f"reports: {out / 'oracle' / 'report.md'} and {out / 'random' / 'report.md'}  ({time.perf_counter() - t0:.0f} s)")
    if results["oracle"]["success_rate"] < 1.0:
        _fail("the oracle did not solve every arena: the generated store is broken", code=1)


train_app = typer.Typer(no_args_is_help=True, help="Train with TRL: SFT, then multi-turn GRPO against the gym.")
app.add_typer(train_app, name="train")


@train_app.command("sft")
def train_sft(
    model: Annotated[str, typer.Option(help="Hub name or folder (from_pretrained), or 'tiny'.")],
    data: Annotated[Path, typer.Option(help="JSONL with messages + tools (synth sft/train.jsonl or eval trajectories).")],
    out: Annotated[Path, typer.Option()] = Path("runs/train-sft"),
    max_steps: Annotated[int, typer.Option()] = 100,
    batch_size: Annotated[int, typer.Option()] = 4,
    learning_rate: Annotated[float, typer.Option()] = 2e-5,
    lora_rank: Annotated[Optional[int], typer.Option(help="Train LoRA adapters of this rank (needs peft).")] = None,
    save_steps: Annotated[int, typer.Option()] = 50,
    resume: Annotated[bool, typer.Option(help="Resume from the newest checkpoint in --out.")] = False,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward (off pays off for small models).")] = True,
) -> None:
    """Supervised fine-tuning on tool-use conversations, assistant tokens only."""
    from trainer.train import SFTRunConfig, run_sft

    try:
        result = run_sft(SFTRunConfig(model=model, data=data, out=out, max_steps=max_steps, batch_size=batch_size,
                                      learning_rate=learning_rate, lora_rank=lora_rank, save_steps=save_steps, resume=resume,
                                      gradient_checkpointing=gradient_checkpointing))  # fmt: skip
    except (ValueError, OSError) as exc:
        _fail(str(exc), code=1)
    console.print_json(json.dumps(result))


@train_app.command("grpo")
def train_grpo(
    model: Annotated[str, typer.Option(help="Hub name or folder (from_pretrained), or 'tiny'.")],
    arenas: ArenasOpt = None,
    arena_filter: Annotated[str, typer.Option(help="Glob over arena ids used as prompts.")] = "*",
    gym: Annotated[Optional[str], typer.Option(help="Gym URLs (default: an in-process gym over --arenas).")] = None,
    token: Annotated[Optional[str], typer.Option(envvar="ASTRA_GYM_TOKEN", help="The --gym's bearer token.")] = None,
    out: Annotated[Path, typer.Option()] = Path("runs/train-grpo"),
    max_steps: Annotated[int, typer.Option()] = 100,
    batch_size: Annotated[int, typer.Option()] = 8,
    num_generations: Annotated[int, typer.Option()] = 4,
    learning_rate: Annotated[float, typer.Option()] = 1e-6,
    max_turns: Annotated[int, typer.Option()] = 6,
    max_new_tokens: Annotated[int, typer.Option(help="Per assistant turn.")] = 256,
    abf: Annotated[bool, typer.Option(help="Adaptive Batch Filling.")] = True,
    distractors: Annotated[str, typer.Option(help="Distractor tools per band, high,medium,low.")] = "1,1,1",
    save_steps: Annotated[int, typer.Option()] = 50,
    keep_resume_state: Annotated[int, typer.Option(help="Checkpoints that keep optimizer/scheduler state.")] = 2,
    resume: Annotated[bool, typer.Option()] = False,
    vllm_server: Annotated[Optional[str], typer.Option(help="Sample turns with a `trl vllm-serve` server at this URL (needs vllm here too).")] = None,
    gradient_checkpointing: Annotated[bool, typer.Option(help="Recompute activations in backward (off pays off for small models).")] = True,
    system_prompt: Annotated[Optional[str], typer.Option(help="System prompt of every episode (default: the built-in one, as in eval).")] = None,
    failure_rate: Annotated[Optional[float], typer.Option(help="Injected failure rate per episode (default: the arena's).")] = None,
) -> None:
    """Online multi-turn GRPO (beta 0, no entropy term) with rollouts over MCP and the gym's F1 reward."""
    from clients.agent import ModelEndpointError
    from clients.gym_client import GymError
    from clients.runner import EpisodeNotPlayed
    from trainer.train import GRPORunConfig, run_grpo

    try:
        counts = dict(zip(("high", "medium", "low"), (int(x) for x in distractors.split(","))))
        cfg = GRPORunConfig(model=model, arenas=arenas or ["builtin"], arena_filter=arena_filter, gym=gym, token=token, out=out, max_steps=max_steps,
                            batch_size=batch_size, num_generations=num_generations, learning_rate=learning_rate, max_turns=max_turns,
                            max_new_tokens=max_new_tokens, abf=abf, distractors=counts, save_steps=save_steps,
                            keep_resume_state=keep_resume_state, resume=resume, vllm_server=vllm_server,
                            gradient_checkpointing=gradient_checkpointing, failure_rate=failure_rate,
                            **({"system_prompt": system_prompt} if system_prompt is not None else {}))  # fmt: skip
        result = run_grpo(cfg)
    except (ValueError, OSError, GymError, EpisodeNotPlayed, ModelEndpointError) as exc:
        _fail(str(exc), code=1)
    console.print_json(json.dumps(result))


def main() -> None:
    app(prog_name="astra-gym")


if __name__ == "__main__":
    sys.exit(main())
