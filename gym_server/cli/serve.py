"""Commands that run a gym or talk to one: `serve`, `emulate` (serve tool docs as emulators) and `episode`."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from clients.llm import LLMConfig
from gym_server.backends import ToolBackend
from gym_server.cli.options import Flag, command
from gym_server.cli.root import app, console, err, fail
from gym_server.config import ServeConfig, UpstreamConfig

if TYPE_CHECKING:
    from starlette.types import ASGIApp

    from gym_server.live import LiveSource, ViewAccess

TOKEN = Flag(envvar="ASTRA_GYM_TOKEN")


class ServeCommandConfig(ServeConfig):
    """What `serve` reads: the gym's own config plus what only the command wires in (the gym knows no LLM)."""

    emulator_llm: LLMConfig | None = Field(default=None, description="Emulators answer by this LLM (cached) instead of by schema.")
    live_pages: bool = Field(default=True, description="Serve the live pages at /view (episodes running now, calls/s, call logs as they grow; the operator's token).")


SERVE_FLAGS = {
    "arenas": Flag("--arenas", "-a"),
    "agent_tokens": Flag("--agent-token"),
    "agent_arenas": Flag("--agent-arena"),
    "allowed_hosts": Flag("--allowed-host"),
    "allowed_origins": Flag("--allowed-origin"),
    "upstreams": Flag("--upstream", parse=UpstreamConfig.parse),
    "sandbox.workers": Flag("--workers"),
    "sandbox.backend": Flag("--sandbox-backend"),
    "sandbox.call_timeout_s": Flag("--call-timeout-s"),
    "sandbox.max_idle_processes": Flag("--max-idle-processes"),
    "sandbox.unsafe": Flag("--unsafe-sandbox"),
    "sandbox.state_diffs": Flag(),
    "suites": Flag("--suite"),
    "suite_categories": Flag("--category"),
}


def serve_backends(config: ServeCommandConfig) -> list[ToolBackend]:
    """The tool backends beyond the gym's sandbox that a serve config asks for (this is the composition root)."""
    from clients.upstreams import upstream_backends
    from emulators.llm_mode import LLMEmulatorBackend

    llm: list[ToolBackend] = [LLMEmulatorBackend(config.emulator_llm)] if config.emulator_llm else []
    return [*upstream_backends(config), *llm]


def live_pages(live: LiveSource, access: ViewAccess) -> ASGIApp:
    """The live viewer pages over a gym's `LiveSource` (gym_server.live.PagesFactory; the gym renders no page itself)."""
    from clients.viewer.live import create_live_viewer

    return create_live_viewer(live, access)


@command(app, "serve", ServeCommandConfig, SERVE_FLAGS)
def serve(config: ServeCommandConfig) -> None:
    """Serve arenas over HTTP: REST at /api, each episode's tools over MCP at /episodes/{id}/mcp?key=KEY."""
    from gym_server.serve import serve as run

    auth = " (bearer token required)" if config.token else ""

    def ready(url: str, gym_app: Any) -> None:
        state = gym_app.state
        what = f"{len(state.store)} arenas" if hasattr(state, "store") else f"{state.processes.n} gym processes"
        console.print(f"[bold green]astra-gym[/] serving {what} at [bold]{url}[/]{auth}")
        console.print(f"  arenas:   GET  {url}/api/arenas")
        console.print(f"  episodes: POST {url}/api/episodes  (or: astra-gym episode ARENA --gym {url})")
        if config.live_pages:
            console.print(f"  live:     {url}/view/" + ("  (log in with the operator's token)" if config.token else ""))

    if config.suites:
        from gym_server.suites.bfcl.data import BfclMissing, versions

        try:
            versions()
        except BfclMissing as exc:
            fail(str(exc))
    try:
        run(config, on_ready=ready, backends=serve_backends, pages=live_pages if config.live_pages else None)
    except OSError as exc:
        fail(f"cannot serve on {config.host}:{config.port}: {exc}")
    except (ValueError, RuntimeError) as exc:  # a store that cannot be read, a bad sandbox backend, a process that failed
        fail(str(exc))


class EmulateConfig(ServeCommandConfig):
    """`emulate`: `serve` over tool docs compiled into emulated servers, each printed with a fresh episode's URL."""

    tooldocs: list[str] = Field(min_length=1, description="Tool docs: files/folders (BFCL, OpenAI, OpenAPI, ServerDoc JSONL), MCP URLs, stdio:COMMAND.")
    store: Path | None = Field(default=None, description="Also write the emulated arenas here (JSONL) for `serve --arenas`.")
    arenas: list[str] = Field(default_factory=list, description="Arena sources served besides the emulated servers.")
    failure_rate: float = Field(default=0.2, ge=0.0, le=1.0, description="Share of calls that fail on purpose (emulated servers, and arenas without a rate of their own).")
    episode_ttl_s: float = Field(default=7 * 24 * 3600.0, gt=0, description="Idle episodes are deleted after this long (the printed URLs stay usable for a week).")

    @model_validator(mode="before")
    @classmethod
    def _llm_cache(cls, data: Any) -> Any:
        """An emulator LLM caches its answers by default, so a rerun replays them."""
        if isinstance(data, dict) and isinstance(data.get("emulator_llm"), dict) and "cache_path" not in data["emulator_llm"]:
            return {**data, "emulator_llm": {**data["emulator_llm"], "cache_path": "runs/emulator-llm-cache.sqlite"}}
        return data


EMULATE_FLAGS = {
    **SERVE_FLAGS,
    "tooldocs": Flag(argument=True),
    "emulator_llm.base_url": Flag("--llm-base-url"),
    "emulator_llm.model": Flag("--llm-model"),
    "emulator_llm.api_key_env": Flag("--llm-api-key-env"),
    "emulator_llm.cache_path": Flag("--llm-cache"),
}


@command(app, "emulate", EmulateConfig, EMULATE_FLAGS)
def emulate(config: EmulateConfig) -> None:
    """Serve tool docs as stateful MCP servers (SQLite state per episode, failure injection) and print URLs."""
    import tempfile
    import time

    import httpx2

    from emulators.compile import compile_server
    from gym_server.serve import GymThread
    from gym_server.store import write_bundle
    from synth.tooldocs import collect

    servers, report = asyncio.run(collect(config.tooldocs))
    for r in report.rejected:
        err.print(f"[yellow]dropped[/] {r.server}{'/' + r.tool if r.tool else ''}: {r.reason}")
    if not servers:
        fail("no usable tool docs")
    arenas = [compile_server(s, config.failure_rate) for s in servers]
    path = config.store or Path(tempfile.mkdtemp(prefix="astra-emulate-")) / "emulators.jsonl"
    write_bundle(arenas, path)
    served = config.model_copy(update={"arenas": [*config.arenas, str(path)]})
    gym = GymThread(served, serve_backends(served), pages=live_pages if config.live_pages else None)
    try:
        gym.start()
    except (RuntimeError, TimeoutError, ValueError) as exc:
        fail(str(exc))
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    llm = config.emulator_llm
    mode = f"LLM {llm.model} (cache {llm.cache_path})" if llm else "schema-driven"
    print(f"astra-gym emulate: {len(arenas)} servers at {gym.url} (failure rate {config.failure_rate:g}, {mode})", flush=True)
    for arena in arenas:
        created = httpx2.post(f"{gym.url}/api/episodes", json={"arena_id": arena.id}, headers=headers, timeout=60).json()
        print(f"  {arena.id:<28} {len(arena.tools):>3} tools  {created['mcp_url']}", flush=True)
    console.print(f"[dim]more episodes: astra-gym episode ARENA --gym {gym.url}; arenas stored in {path}; Ctrl-C stops[/]")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        gym.stop()


class EpisodeCommandConfig(BaseModel):
    """`episode`: one fresh episode on a running gym."""

    model_config = ConfigDict(extra="forbid")

    arena_id: str = Field(description="The arena to play.")
    gym: str = Field(default="http://127.0.0.1:8000", description="The gym's base URL.")
    seed: int | None = Field(default=None, description="Seed of the episode's failures (default: a random one).")
    failure_rate: float | None = Field(default=None, ge=0.0, le=1.0, description="Injected failure rate (default: the arena's).")
    token: str | None = Field(default=None, description="The gym's operator bearer token.")
    as_json: bool = Field(default=False, description="Print the whole episode as JSON.")


@command(app, "episode", EpisodeCommandConfig, {"arena_id": Flag(argument=True), "token": TOKEN, "as_json": Flag("--json")})
def episode(config: EpisodeCommandConfig) -> None:
    """Start an episode on a running gym and print its MCP URL, for any MCP client."""
    import httpx2

    gym = config.gym.rstrip("/")
    body = config.model_dump(include={"arena_id", "seed", "failure_rate"}, exclude_none=True)
    headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
    try:
        response = httpx2.post(f"{gym}/api/episodes", json=body, headers=headers, timeout=30)
    except httpx2.HTTPError as exc:
        fail(f"cannot reach the gym at {config.gym}: {exc}. Is `astra-gym serve` running?")
    if response.status_code in (401, 403):
        fail(f"the gym refused the bearer token ({response.status_code}): {response.text}; pass the operator's --token or set ASTRA_GYM_TOKEN")
    if response.status_code != 201:
        fail(f"the gym answered {response.status_code}: {response.text}")
    data = response.json()
    if config.as_json:
        print(json.dumps(data, indent=2))
        return
    print(data["mcp_url"])
    auth = ' -H "Authorization: Bearer $ASTRA_GYM_TOKEN"' if config.token else ""
    err.print(f"[dim]task:[/] {data['prompt']}")
    err.print("[dim]the MCP URL is the agent's key to this episode's tools, and only to them; as the operator:[/]")
    err.print(f"[dim]score:[/] curl -X POST{auth} {gym}/api/episodes/{data['episode_id']}/score", highlight=False)

