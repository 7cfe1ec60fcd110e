"""Hostile arena code is contained, reported as a tool error, and the gym keeps answering."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gym_server.models import InitialState
from gym_server.sandbox.pool import SandboxConfig, SandboxPool, resolve_backend, SandboxUnavailable, docker_engine_reachable
from tests.conftest import mcp_session, new_episode, result_text


HOSTILE = {
    "spin": "CPU time limit exceeded",
    "allocate": "memory limit exceeded",
    "fork": "not importable",
    "shell": "not importable",
    "escape_shell": "not permitted in the sandbox: os.system",
    "connect": "not permitted in the sandbox",
    "write_file": "not permitted in the sandbox: open",
    "attach_file": "not authorized",
}


@pytest.mark.parametrize("tool", sorted(HOSTILE))
async def test_hostile_code_is_contained_and_reported(gym, http, tool):
    episode = await new_episode(http, gym, "hostile")
    async with mcp_session(http, episode["mcp_url"]) as client:
        result = await client.call_tool(tool, {})
        assert result.is_error
        assert HOSTILE[tool] in result_text(result), result_text(result)
        # the server answers the next request, in the same episode, with its state intact
        after = await client.call_tool("echo_state", {})
        assert not after.is_error and result_text(after) == '"initial"'
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert log["calls"][0]["status"] in ("sandbox_error", "tool_error")
    assert log["calls"][0]["error"]
    for leaked in ("/tmp/astra-escaped", "/tmp/astra-escaped-write", "/tmp/astra-escaped.db"):
        assert not os.path.exists(leaked)
    assert (await http.get(f"{gym.url}/healthz")).status_code == 200


async def test_wall_clock_kill_replaces_the_worker():
    config = SandboxConfig(workers=1, call_timeout_s=0.5, cpu_s=30, memory_mb=256)
    source = "import time\ndef nap(db):\n    time.sleep(10)\ndef ok(db):\n    return 'fine'\n"
    async with SandboxPool(config) as pool:
        state = await pool.build_state(InitialState())
        slow = await pool.call(source, "nap", {}, state)
        assert not slow.ok and slow.kind == "sandbox_error" and "wall-clock" in slow.error
        fine = await pool.call(source, "ok", {}, state)
        assert fine.ok and fine.result == "fine"
        assert pool.replaced == 1


async def test_workers_are_isolated_from_network_and_files():
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        health = pool.health()
        if os.geteuid() == 0:
            assert health["network_isolated"] and health["filesystem_hidden"]


async def test_monkeypatched_modules_are_restored_before_the_next_call():
    tamper = "import json, math\ndef f(db):\n    json.dumps = lambda *a, **k: 'evil'\n    math.pi = 3\n    return 'done'\n"
    check = "import json, math\ndef f(db):\n    return [json.dumps([1]), math.pi]\n"
    async with SandboxPool(SandboxConfig(workers=1)) as pool:  # one worker: the next call runs where the patch ran
        state = await pool.build_state(InitialState())
        await pool.call(tamper, "f", {}, state)
        after = await pool.call(check, "f", {}, state)
        assert after.ok and after.result == ["[1]", 3.141592653589793]
        assert pool.replaced <= 1


async def test_fresh_namespace_per_call_no_module_globals_leak():
    source = "SEEN = []\ndef remember(db, x):\n    SEEN.append(x)\n    return len(SEEN)\n"
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(InitialState())
        counts = [(await pool.call(source, "remember", {"x": i}, state)).result for i in range(3)]
    assert counts == [1, 1, 1]


async def test_every_call_gets_a_fresh_connection():
    """TEMP tables, connection settings and SQL functions a call leaves on its handle never reach the next call,
    even on the same worker whose next connection was opened while it idled."""
    source = (
        "def dirty(db):\n"
        "    db.execute('CREATE TEMP TABLE leak (x)')\n"
        "    db.execute('CREATE TEMP TRIGGER t AFTER UPDATE ON kv BEGIN INSERT INTO leak VALUES (1); END')\n"
        "    db.create_function('upper', 1, lambda s: 'hijacked')\n"
        "    db.row_factory = None\n"
        "    return 'dirty'\n"
        "def probe(db):\n"
        "    temps = db.execute(\"SELECT count(*) AS n FROM sqlite_temp_master\").fetchone()['n']\n"
        "    return [temps, db.execute(\"SELECT upper('a') AS u\").fetchone()['u']]\n"
    )
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(InitialState(ddl=["CREATE TABLE kv (k TEXT, v TEXT)"]))
        for _ in range(2):
            assert (await pool.call(source, "dirty", {}, state)).result == "dirty"
            probe = await pool.call(source, "probe", {}, state)
            assert probe.ok and probe.result == [0, "A"], probe
        assert pool.replaced == 0


async def test_broken_arena_code_is_a_tool_error():
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(InitialState())
        broken = await pool.call("def f(db):\n  return (\n", "f", {}, state)
        assert not broken.ok and broken.kind == "tool_error" and "does not compile" in broken.error
        missing = await pool.call("def f(db):\n  return 1\n", "g", {}, state)
        assert not missing.ok and "defines no function 'g'" in missing.error
        unjson = await pool.call("def f(db):\n  return {1, 2}\n", "f", {}, state)
        assert not unjson.ok and "not JSON" in unjson.error
        with pytest.raises(ValueError, match="initial state does not build"):
            await pool.build_state(InitialState(ddl=["CREATE TABLE"]))


def test_docker_backend_is_optional():
    if docker_engine_reachable():
        pytest.skip("a Docker engine answers here")
    assert resolve_backend(SandboxConfig(backend="auto")) == "process"
    with pytest.raises(SandboxUnavailable, match="no Docker engine"):
        resolve_backend(SandboxConfig(backend="docker"))


# -- arena code that rewrites the worker around it ------------------------------------------------------------
# Arena code reaches every module through sys.modules and can rebind anything in them, including the worker's
# own globals. These tests plant such rebindings and check that nothing planted ever runs unguarded.

REBIND_THE_GUARD = """
import collections
def unguard(db):
    modules = collections._sys.modules
    me = modules["__main__"]
    me._DENIED_EVENT_PREFIXES = ("nothing-is-denied",)
    me.SandboxViolation = KeyError
    me.ALLOWED_MODULES = frozenset({"os", "socket"})
    return modules["os"].listdir("/")
"""


async def test_rebinding_the_guards_globals_lifts_nothing():
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(InitialState())
        outcome = await pool.call(REBIND_THE_GUARD, "unguard", {}, state)
        assert not outcome.ok and outcome.kind == "sandbox_error", outcome
        assert "not permitted in the sandbox: os.listdir" in outcome.error


PLANT_HIJACKS = """
import collections, json
def plant(db):
    sys = collections._sys
    os, builtins = sys.modules["os"], sys.modules["builtins"]
    marks = sys.path  # a list no restore resets: where the hijacks leave word for the probe

    def hijack(*args, **kwargs):
        try:
            os.listdir("/")
            marks.append("astra-escaped")
        except BaseException:
            marks.append("astra-contained")
        return "hijacked"

    class Planted(Exception):
        def __str__(self):
            return hijack()

    class FakeModule:
        setrlimit = connect = staticmethod(hijack)

    json.dumps = json.loads = hijack
    json._default_encoder.encode = json._default_decoder.decode = hijack
    for name in ("len", "type", "str", "callable", "memoryview", "isinstance", "dict", "zip"):
        setattr(builtins, name, hijack)
    sys.modules["resource"] = sys.modules["sqlite3"] = FakeModule()
    me = sys.modules["__main__"]
    for name in ("_describe", "_dict_row", "_deny_attach", "_not_json", "_restricted_import", "PREFIX"):
        setattr(me, name, hijack)
    raise Planted()

def probe(db):
    import collections, json
    sys = collections._sys
    marks = [m for m in sys.path if m.startswith("astra-")]
    return {"marks": marks, "dumps": json.dumps([1]), "len": len("abc"), "fake": type(sys.modules["resource"]).__name__}
"""


async def test_code_planted_for_the_worker_runs_guarded_and_is_gone_by_the_next_call():
    async with SandboxPool(SandboxConfig(workers=1)) as pool:  # one worker: the probe runs where the plant ran
        state = await pool.build_state(InitialState(ddl=["CREATE TABLE kv (k TEXT, v TEXT)"]))
        planted = await pool.call(PLANT_HIJACKS, "plant", {}, state)
        assert not planted.ok
        probe = await pool.call(PLANT_HIJACKS, "probe", {}, state)
        assert probe.ok, probe
        assert "astra-escaped" not in probe.result["marks"]
        assert "astra-contained" in probe.result["marks"]  # the worker did call a hijack: the test tests something
        assert probe.result["dumps"] == "[1]" and probe.result["len"] == 3 and probe.result["fake"] == "module"
        write = await pool.call("def f(db):\n    db.execute('INSERT INTO kv VALUES (1, 2)')\n    return 'ok'\n", "f", {}, state)
        assert write.ok and write.result == "ok" and write.state


async def test_a_worker_that_quit_while_idle_is_replaced_before_use():
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(InitialState())
        (only,) = pool._all
        only.kill()
        await only.proc.wait()
        outcome = await pool.call("def f(db):\n    return 'fine'\n", "f", {}, state)
        assert outcome.ok and outcome.result == "fine"
        assert pool.replaced == 1


async def test_a_reply_that_does_not_answer_the_request_is_refused(monkeypatch):
    stale = Path(__file__).parent / "fixtures" / "stale_worker.py"
    monkeypatch.setattr(SandboxPool, "_argv", lambda self: [sys.executable, str(stale)])
    async with SandboxPool(SandboxConfig(workers=1, backend="process")) as pool:
        outcome = await pool.call("def f(db):\n    return 1\n", "f", {}, b"")
        assert not outcome.ok and outcome.kind == "sandbox_error"
        assert "does not answer this request" in outcome.error
        assert pool.replaced == 1


async def test_each_call_sees_the_state_it_brings_not_the_one_the_worker_expected():
    """A worker preloads the state its last call left, for the next call; a call that brings another state
    (another episode, or an older image of the same one) must see exactly that one."""
    source = (
        "def get(db):\n    return db.execute(\"SELECT v FROM kv\").fetchone()['v']\n"
        "def put(db, v):\n    db.execute('UPDATE kv SET v = ?', (v,))\n    return v\n"
    )

    def world(value: str) -> InitialState:
        return InitialState(ddl=["CREATE TABLE kv (v TEXT)"], rows={"kv": [{"v": value}]})

    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        a, b = await pool.build_state(world("a")), await pool.build_state(world("b"))
        put = await pool.call(source, "put", {"v": "a1"}, a)
        assert put.ok and put.state
        seen = [(await pool.call(source, "get", {}, image)).result for image in (b, a, put.state, a, put.state, put.state)]
    assert seen == ["b", "a", "a1", "a", "a1", "a1"]


GC_WINDOW_PROBE = """
import gc, sqlite3, sys
from gym_server.sandbox.worker import Guard

guard = Guard()
guard.arm()
marks = []

class Ghost:  # an arena object whose finalizer tries the event the worker is about to be allowed
    def __del__(self):
        try:
            sqlite3.connect(sys.argv[1])
            marks.append("escaped")
        except PermissionError:
            marks.append("denied")

guard.expect("sqlite3.connect", "sqlite3.connect/handle")
collector_was_on = gc.isenabled()
for _ in range(5000):  # garbage cycles that an automatic collection would finalize right here
    ghost = Ghost()
    ghost.me = ghost
del ghost
connection = sqlite3.connect(":memory:")  # the worker's own call gets the announced events
guard.expect()
gc.collect()  # the ghosts are finalized now, with nothing announced
print(collector_was_on, gc.isenabled(), sorted(set(marks)), connection is not None)
"""


def test_no_arena_finalizer_runs_while_the_guard_lets_an_event_through(tmp_path):
    """While the worker announces an event to the guard, the collector is off: a finalizer run by a collection
    in that window would otherwise get the event (here: opening a file-backed SQLite database)."""
    target = tmp_path / "escaped.db"
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-c", GC_WINDOW_PROBE, str(target)], capture_output=True, text=True, env=env, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "True", "['denied']", "True"]
    assert not target.exists()


POISON_THE_GUARDS_OWN_CALLS = """
import collections
def poison(db):
    sys = collections._sys
    builtins, os = sys.modules["builtins"], sys.modules["os"]
    marks = sys.path

    class Matches:
        def __eq__(self, other):
            return True

    class AllowAll:  # what the guard would hold as its list of announced events, if it built it with our `list`
        def __bool__(self):
            return True
        def __getitem__(self, i):
            return Matches()
        def __delitem__(self, i):
            pass

    class Spy:  # compared by the worker's restore after the call; tries a refused operation from there
        def __eq__(self, other):
            try:
                os.listdir("/")
                marks.append("astra-escaped")
            except BaseException:
                marks.append("astra-contained")
            return False

    builtins.list = lambda *args: AllowAll()
    collections.namedtuple = Spy()
    return "poisoned"

def probe(db):
    import collections
    return [m for m in collections._sys.path if m.startswith("astra-")]
"""


async def test_builtins_rebound_by_arena_code_never_reach_the_guards_state():
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(InitialState())
        await pool.call(POISON_THE_GUARDS_OWN_CALLS, "poison", {}, state)
        marks = await pool.call(POISON_THE_GUARDS_OWN_CALLS, "probe", {}, state)
        assert marks.ok, marks
        assert "astra-contained" in marks.result and "astra-escaped" not in marks.result
