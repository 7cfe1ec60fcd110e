"""BFCL multi-turn entries as gym arenas, read from the installed `bfcl-eval` package (its `data/` folder).

Each entry becomes one arena: its user turns (`question`, with BFCL's fixed follow-up prompt at a miss_func
turn), its tools (the involved classes' function docs, converted as BFCL converts them for OpenAI-style
function calling, the held-out ones appearing at their turn), and in `suite_data` what the backend and the
checker need (`initial_config`, `involved_classes`, the ground truth). The entry itself goes into the arena's
initial state, so the sandboxed backend reads it from the episode's own SQLite image.
"""

from __future__ import annotations

import copy
import importlib.metadata
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from gym_server.models import Arena, InitialState, Provenance, ScenarioType, ToolSpec, UserTurn

CATEGORIES = ("base", "miss_func", "miss_param", "long_context")
SUITE = "bfcl-mt"
PIN = "2026.3.23"
INSTALL_HINT = (
    f"the bfcl-mt suite needs bfcl-eval, installed light (its full dependency set pulls torch and CUDA): "
    f"`astra-gym suites install bfcl-mt`, or `pip install --no-deps bfcl-eval=={PIN} mpmath==1.3.0 filelock==3.20.0`"
)
BACKEND_MODULE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"
SANDBOX_PACKAGES = (
    "mpmath",
    "bfcl_eval.constants.executable_backend_config",
    *(f"{BACKEND_MODULE}.{m}" for m in ("gorilla_file_system", "math_api", "message_api", "posting_api", "ticket_api",
                                        "trading_bot", "travel_booking", "vehicle_control")),  # fmt: skip
    "bfcl_eval.eval_checker.multi_turn_eval.multi_turn_utils",
    "bfcl_eval.eval_checker.multi_turn_eval.multi_turn_checker",
)
"""What the sandbox imports once in its template: the eight backend classes, BFCL's executor and its checker."""
ENTRY_DDL = [
    "CREATE TABLE entry (id TEXT, initial_config TEXT, involved_classes TEXT, long_context INTEGER)",
    "CREATE TABLE calls (seq INTEGER PRIMARY KEY, turn INTEGER, name TEXT, arguments TEXT)",
]


class BfclMissing(RuntimeError):
    pass


def _package() -> Path:
    try:
        import bfcl_eval
    except ImportError:
        raise BfclMissing(INSTALL_HINT) from None
    return Path(bfcl_eval.__file__).parent


def versions() -> dict[str, str]:
    """The bfcl-eval release and the data version it ships (`BFCL_v4`, `BFCL_v3`): in every verdict and report."""
    _package()
    from bfcl_eval.constants.category_mapping import VERSION_PREFIX

    return {"bfcl-eval": importlib.metadata.version("bfcl-eval"), "data": VERSION_PREFIX}


def arena_id(entry_id: str) -> str:
    return f"bfcl.{entry_id}"


def category_of(entry_id: str) -> str:
    return entry_id.rsplit("_", 1)[0].removeprefix("multi_turn_")


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def openai_tool(doc: dict[str, Any]) -> dict[str, Any]:
    """BFCL's `convert_to_tool(..., GORILLA_TO_OPENAPI, ModelStyle.OPENAI_COMPLETIONS)` for one function doc,
    as an MCP tool (its module imports parsers and retry libraries a light install lacks, so the few lines are
    repeated here; tests compare the result with the original where it is importable)."""
    from bfcl_eval.constants.type_mappings import GORILLA_TO_OPENAPI

    item = copy.deepcopy(doc)
    parameters = item["parameters"]
    parameters["type"] = "object"
    parameters["properties"] = _cast(parameters.get("properties", {}), GORILLA_TO_OPENAPI)
    return {"name": re.sub(r"\.", "_", item["name"]), "description": item.get("description", ""), "inputSchema": parameters}


def _cast(properties: dict[str, Any], mapping: dict[str, str]) -> dict[str, Any]:
    """BFCL's `_cast_to_openai_type`, line for line."""
    for key, value in properties.items():
        if "type" not in value:
            properties[key]["type"] = "string"
        else:
            var_type = value["type"]
            if var_type == "float":
                properties[key]["format"] = "float"
                properties[key]["description"] += " This is a float type value."
            properties[key]["type"] = mapping.get(var_type, "string")
        if properties[key]["type"] in ("array", "object"):
            if "properties" in properties[key]:
                properties[key]["properties"] = _cast(properties[key]["properties"], mapping)
            elif "items" in properties[key]:
                items = properties[key]["items"]
                items["type"] = mapping[items["type"]]
                if items["type"] == "array" and "items" in items:
                    items["items"]["type"] = mapping[items["items"]["type"]]
                elif items["type"] == "object" and "properties" in items:
                    items["properties"] = _cast(items["properties"], mapping)
    return properties


@lru_cache(maxsize=1)
def _function_docs() -> dict[str, list[dict[str, Any]]]:
    from bfcl_eval.constants.executable_backend_config import MULTI_TURN_FUNC_DOC_FILE_MAPPING

    folder = _package() / "data" / "multi_turn_func_doc"
    return {cls: _read_jsonl(folder / name) for cls, name in MULTI_TURN_FUNC_DOC_FILE_MAPPING.items() if (folder / name).exists()}


def load_entries(categories: tuple[str, ...] = CATEGORIES) -> list[tuple[dict[str, Any], list[list[str]]]]:
    """(entry, ground truth per turn) for every entry of the categories, in the data's order."""
    root = _package() / "data"
    prefix = versions()["data"]
    found = []
    for category in categories:
        if category not in CATEGORIES:
            raise ValueError(f"unknown bfcl-mt category {category!r}; known: {', '.join(CATEGORIES)}")
        entries = _read_jsonl(root / f"{prefix}_multi_turn_{category}.json")
        answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(root / "possible_answer" / f"{prefix}_multi_turn_{category}.json")}
        found += [(e, answers[e["id"]]) for e in entries]
    return found


def entry_arena(entry: dict[str, Any], ground_truth: list[list[str]]) -> Arena:
    """One entry as an arena, following `populate_test_cases_with_predefined_functions` (the docs of the involved
    classes, miss_func's held-out docs removed) and `inference_multi_turn_FC` (the held-out docs come back at
    their turn, whose empty user message becomes BFCL's fixed follow-up prompt)."""
    from bfcl_eval.constants.default_prompts import DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC

    docs = [doc for cls in entry["involved_classes"] for doc in _function_docs()[cls]]
    held: dict[int, list[str]] = {int(turn): list(names) for turn, names in (entry.get("missed_function") or {}).items()}
    tools, seen = [], set()
    for doc in docs:
        tool = openai_tool(doc)
        if tool["name"] not in seen:  # BFCL lists a name twice only if two classes share it; the later method wins
            seen.add(tool["name"])
            tools.append(ToolSpec.model_validate(tool))
    turns = []
    for index, messages in enumerate(entry["question"]):
        if index in held:
            message = DEFAULT_USER_PROMPT_FOR_ADDITIONAL_FUNCTION_FC
        else:
            message = "\n\n".join(m["content"] for m in messages if m.get("role") == "user")
        turns.append(UserTurn(message=message, add_tools=[n for n in held.get(index, []) if n in seen]))
    category = category_of(entry["id"])
    long_context = "long_context" in entry["id"] or "composite" in entry["id"]
    return Arena(
        id=arena_id(entry["id"]), domain=f"bfcl-{category}", scenario_type=ScenarioType.multi_hop,
        question=turns[0].message, tools=tools, implementation="", kind="suite", suite=SUITE, failure_rate=0.0,
        turns=turns, validate_arguments=False, hidden_tools_callable=True,
        initial_state=InitialState(ddl=ENTRY_DDL, rows={"entry": [{
            "id": entry["id"], "initial_config": json.dumps(entry.get("initial_config", {})),
            "involved_classes": json.dumps(entry["involved_classes"]), "long_context": int(long_context),
        }]}),
        suite_data={"entry_id": entry["id"], "category": category, "involved_classes": entry["involved_classes"],
                    "initial_config": entry.get("initial_config", {}), "ground_truth": ground_truth, "long_context": long_context},
        provenance=Provenance(source=f"bfcl-eval {versions()['bfcl-eval']} ({versions()['data']})"),
    )  # fmt: skip


def load_arenas(categories: tuple[str, ...] = CATEGORIES) -> list[Arena]:
    return [entry_arena(entry, truth) for entry, truth in load_entries(categories)]
