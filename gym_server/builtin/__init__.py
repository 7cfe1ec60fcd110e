"""The built-in arenas: one folder per world (`tools.py`, `tools.json`, `world.json`, `arenas.json`).

A world folder reads top to bottom: the tools' code, their MCP definitions, the initial data, then the
questions asked of it with their gold calls. Every arena of a world shares its code, tools and data.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

from gym_server.models import Arena, InitialState, Provenance, ToolSpec

WORLDS_DIR = Path(__file__).parent


def world_names() -> list[str]:
    return sorted(p.name for p in WORLDS_DIR.iterdir() if (p / "arenas.json").is_file())


@cache
def load_world(name: str) -> tuple[Arena, ...]:
    folder = WORLDS_DIR / name
    source = (folder / "tools.py").read_text()
    tools = [ToolSpec.model_validate(t) for t in json.loads((folder / "tools.json").read_text())]
    state = InitialState.model_validate(json.loads((folder / "world.json").read_text()))
    arenas = []
    for spec in json.loads((folder / "arenas.json").read_text()):
        arenas.append(
            Arena.model_validate(
                {
                    "domain": name,
                    "tools": tools,
                    "implementation": source,
                    "initial_state": state,
                    "provenance": Provenance(source="builtin", notes=f"gym_server/builtin/{name}"),
                    **spec,
                }
            )
        )
    return tuple(arenas)


def builtin_arenas() -> list[Arena]:
    return [arena for name in world_names() for arena in load_world(name)]
