"""A normalized server doc becomes an emulated arena: the gym then serves it like any arena (per-episode
SQLite state, call log, auth, sandbox), with failure injection at 20% by default."""

from __future__ import annotations

import json
import re
from pathlib import Path

from emulators.engine import DELETE, GET, LIST, UPDATE, _kind_and_verb
from gym_server.models import Arena, InitialState, Provenance, ServerDoc, ToolAnnotations, ToolSpec

ENGINE_SOURCE = (Path(__file__).parent / "engine.py").read_text()
DEFAULT_FAILURE_RATE = 0.2
STATE = InitialState(
    ddl=[
        "CREATE TABLE entities (kind TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (kind, id))",
        "CREATE TABLE counters (kind TEXT PRIMARY KEY, n INTEGER NOT NULL)",
    ]
)


def emulator_id(server: ServerDoc) -> str:
    return "emu-" + re.sub(r"[^A-Za-z0-9_.\-]", "-", server.name)[:120]


def annotated(tool: ToolSpec) -> ToolSpec:
    """The tool with MCP hints that say what the engine does with its calls, unless its doc declared its own:
    a get or list changes nothing; every other verb writes (an unknown one is recorded as an action), and an
    update or delete overwrites. A client then repeats only what is safe to repeat."""
    if tool.annotations is not None:
        return tool
    verb = _kind_and_verb(tool.name)[1]
    hints = ToolAnnotations.reading() if verb in GET | LIST else ToolAnnotations.writing(destructive=verb in UPDATE | DELETE)
    return tool.model_copy(update={"annotations": hints})


def compile_server(server: ServerDoc, failure_rate: float = DEFAULT_FAILURE_RATE) -> Arena:
    served = [annotated(t) for t in server.tools]
    tools = {t.name: t.model_dump(by_alias=True, exclude_none=True) for t in served}
    implementation = (
        ENGINE_SOURCE
        + "\n\nTOOLS = json.loads(" + repr(json.dumps(tools)) + ")\n\n\n"
        + "def _bind(name):\n    return lambda _state, /, **arguments: _emulate(_state, name, arguments)\n\n\n"
        + "__tools__ = {name: _bind(name) for name in TOOLS}\n"
    )
    return Arena(
        id=emulator_id(server), domain=server.domain or server.name, scenario_type="single_hop",
        question=server.description or f"Tools of {server.title or server.name}", tools=served,
        implementation=implementation, initial_state=STATE, kind="emulator", failure_rate=failure_rate,
        provenance=Provenance(source="emulator", generator="emulators.compile", notes=server.title or server.name),
    )  # fmt: skip
