"""`arenas list|show|validate`: look into an arena store without serving it."""

from __future__ import annotations

import asyncio
from typing import Any

import typer
from pydantic import BaseModel, ConfigDict, Field, model_validator
from rich.table import Table

from gym_server.cli.options import Flag, command
from gym_server.cli.root import arenas_app, console, fail
from gym_server.sandbox.config import SandboxConfig

def _store() -> Any:
    return Field(default_factory=lambda: ["builtin"], description="Arena sources: 'builtin', files, directories (repeatable).")


STORE_FLAG = Flag("--arenas", "-a")


class ArenasListConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arenas: list[str] = _store()
    domain: str | None = Field(default=None, description="Only this domain.")
    scenario_type: str | None = Field(default=None, description="Only this scenario type.")
    limit: int = Field(default=50, ge=1, description="Rows to show.")
    as_json: bool = Field(default=False, description="JSON lines instead of a table.")


@command(arenas_app, "arenas list", ArenasListConfig, {"arenas": STORE_FLAG, "as_json": Flag("--json")})
def arenas_list(config: ArenasListConfig) -> None:
    """List the arenas of a store."""
    from gym_server.store import ArenaStore

    try:
        items, total = ArenaStore(config.arenas).summaries(0, config.limit, config.domain, config.scenario_type)
    except ValueError as exc:
        fail(str(exc))
    if config.as_json:
        for item in items:
            print(item.model_dump_json())
        return
    table = Table(title=f"{total} arenas" + (f" (first {len(items)})" if total > len(items) else ""))
    for col in ("id", "domain", "scenario_type", "n_subtasks", "n_tools"):
        table.add_column(col)
    for i in items:
        table.add_row(i.id, i.domain, i.scenario_type, str(i.n_subtasks), str(i.n_tools))
    console.print(table)


class ArenasShowConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    arena_id: str = Field(description="The arena to print.")
    arenas: list[str] = _store()


@command(arenas_app, "arenas show", ArenasShowConfig, {"arena_id": Flag(argument=True), "arenas": STORE_FLAG})
def arenas_show(config: ArenasShowConfig) -> None:
    """Print one arena as JSON (gold calls included)."""
    from gym_server.store import ArenaNotFound, ArenaStore, InvalidArena

    try:
        arena = ArenaStore(config.arenas).get(config.arena_id)
    except ArenaNotFound:
        fail(f"no arena {config.arena_id!r} in the store")
    except (InvalidArena, ValueError) as exc:
        fail(str(exc))
    print(arena.model_dump_json(by_alias=True, indent=2))


class ArenasValidateConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    paths: list[str] = Field(default_factory=lambda: ["builtin"], description="Stores to validate (default: builtin).")
    sandbox: SandboxConfig = Field(default_factory=lambda: SandboxConfig(workers=2), description="The sandbox that runs the gold calls.")

    @model_validator(mode="before")
    @classmethod
    def _two_workers(cls, data: Any) -> Any:
        """Each gold call runs once: two workers unless told otherwise, whatever else the sandbox is given."""
        if isinstance(data, dict) and isinstance(data.get("sandbox"), dict):
            return {**data, "sandbox": {"workers": 2, **data["sandbox"]}}
        return data


VALIDATE_FLAGS = {"paths": Flag(argument=True), "sandbox.workers": Flag("--workers"), "sandbox.unsafe": Flag("--unsafe-sandbox")}


@command(arenas_app, "arenas validate", ArenasValidateConfig, VALIDATE_FLAGS)
def arenas_validate(config: ArenasValidateConfig) -> None:
    """Check a store: schema, DAG, unique tool names, and every gold call run in the sandbox."""
    from gym_server.sandbox.pool import SandboxPool, SandboxUnavailable
    from gym_server.store import ArenaStore
    from gym_server.validation import validate_store

    try:
        store = ArenaStore(config.paths)
    except ValueError as exc:
        fail(str(exc))

    async def run() -> list:
        async with SandboxPool(config.sandbox) as pool:
            return await validate_store(store, pool)

    try:
        reports = asyncio.run(run())
    except SandboxUnavailable as exc:
        fail(str(exc))
    bad = [r for r in reports if not r.ok]
    for r in bad:
        console.print(f"[red]✗[/] {r.arena_id}")
        for p in r.problems:
            console.print(f"    {p}")
    console.print(f"{len(reports) - len(bad)}/{len(reports)} arenas valid")
    if bad:
        raise typer.Exit(1)
