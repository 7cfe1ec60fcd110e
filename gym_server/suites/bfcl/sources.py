"""The code the sandbox runs for bfcl-mt, as arena code: BFCL's own backend classes and checker, imported once
in the sandbox's template (`SandboxConfig.packages`), driven by these two small modules.

`BACKEND` answers one tool call. The episode's SQLite image holds the entry (`initial_config`, the involved
classes) and every call the backend has run so far; a call rebuilds the instances from the entry exactly as
`execute_multi_turn_func_call` does, replays the earlier calls, runs the new one and appends it. So an episode's
state is its own image and nothing else (no process keeps it), whichever process serves the next call. Calls
run by name on the instance, with the JSON arguments as keywords: no model text is ever evaluated. A call the
sandbox stops (time, memory) leaves no trace, so it is not replayed.

`CHECKER` runs BFCL's `multi_turn_checker` on the call strings the gym rendered (names from the tool list,
arguments as Python literals of JSON values), under a model name used once, and removes the instances the
checker cached in `multi_turn_utils`' globals under that name. BFCL's executor evaluates those strings, so the
checker runs in a single-use process without the audit-hook layer (`SandboxPool.call(guard=False)`).
"""

from __future__ import annotations

BACKEND_TEMPLATE = '''
import copy
import json
from bfcl_eval.constants.executable_backend_config import CLASS_FILE_PATH_MAPPING, STATELESS_CLASSES


def _instances(db):
    row = db.execute("SELECT initial_config, involved_classes, long_context FROM entry").fetchone()
    config = json.loads(row["initial_config"])
    instances = {}
    for name in json.loads(row["involved_classes"]):
        module = __import__(CLASS_FILE_PATH_MAPPING[name], fromlist=[name])
        instance = getattr(module, name)()
        if name not in STATELESS_CLASSES:
            instance._load_scenario(copy.deepcopy(config.get(name, {})), long_context=bool(row["long_context"]))
        instances[name] = instance
    return instances


def _method(instances, name):
    found = None
    for instance in instances.values():  # as BFCL maps names to instances: the last involved class wins
        method = getattr(instance, name, None)
        if type(method).__name__ == "method":
            found = method
    return found


def _run(instances, name, arguments):
    """One call, its result rendered as `execute_multi_turn_func_call` renders it."""
    try:
        method = _method(instances, name)
        if method is None:
            raise NameError(f"name '{name}' is not defined")
        result = method(**arguments)
    except (MemoryError, RecursionError):
        raise
    except Exception as e:
        return f"Error during execution: {str(e)}"
    if type(result) == str:
        return result
    if type(result) == dict:
        try:
            return json.dumps(result)
        except Exception:
            return str(result)
    return str(result)


def _call(db, name, arguments):
    instances = _instances(db)
    for row in db.execute("SELECT name, arguments FROM calls ORDER BY seq").fetchall():
        _run(instances, row["name"], json.loads(row["arguments"]))
    result = _run(instances, name, arguments)
    db.execute("INSERT INTO calls (name, arguments) VALUES (?, ?)", (name, json.dumps(arguments)))
    return result


def _bind(name):
    return lambda db, **arguments: _call(db, name, arguments)


__tools__ = {name: _bind(name) for name in NAMES}
'''

CHECKER = '''
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_checker as _checker
from bfcl_eval.eval_checker.multi_turn_eval import multi_turn_utils as _utils


def check(db, model_name, decoded, ground_truth, entry):
    try:
        verdict = _checker.multi_turn_checker(decoded, ground_truth, entry, entry["id"].rsplit("_", 1)[0], model_name)
    finally:
        cached = _utils.__dict__
        for key in [k for k in cached if k.startswith(model_name + "_")]:
            del cached[key]
    leftover = sum(1 for k in _utils.__dict__ if k.startswith(model_name + "_"))
    message = verdict.get("error_message")
    return {"valid": verdict.get("valid") is True, "error_type": verdict.get("error_type"),
            "error_message": str(message)[:2000] if message is not None else None, "leftover_instances": leftover}
'''


def backend_source(names: list[str]) -> str:
    return f"NAMES = {sorted(set(names))!r}\n" + BACKEND_TEMPLATE
