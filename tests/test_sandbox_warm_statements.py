"""A sandbox process compiles a repeated tool's statements on the next call's fresh handle ahead of the call.

The executor is driven in this process as the sandbox drives it (`call`, then `prepare` between calls), so
each test can look at the handle the next call will get. The last test runs the same through a real sandbox.
"""

from __future__ import annotations

import asyncio
import builtins
import json
from typing import Any

from gym_server.models import InitialState
from gym_server.sandbox.inside.execute import Executor
from gym_server.sandbox.pool import SandboxConfig, SandboxPool

COUNTER = '''
def bump(db, key):
    db.execute("INSERT INTO counters VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1", (key,))
    return db.execute("SELECT key, n FROM counters WHERE key = ?", (key,)).fetchone()

def look(db, key):
    return db.execute("SELECT n FROM counters WHERE key = ? AND n > 0", (key,)).fetchone()
'''
INSERT = "INSERT INTO counters VALUES (?, 1) ON CONFLICT(key) DO UPDATE SET n = n + 1"
SELECT = "SELECT key, n FROM counters WHERE key = ?"

HOSTILE = '''
def leave_callbacks(db):
    db.execute("SELECT 1").fetchone()
    db.set_authorizer(lambda *a: RECORD.append("authorizer") or 0)
    db.set_progress_handler(lambda: RECORD.append("progress"), 1)
    db.set_trace_callback(lambda sql: RECORD.append("trace"))
    db.row_factory = lambda cursor, row: RECORD.append("row") or row
    db.text_factory = lambda raw: RECORD.append("text") or raw.decode()
    return 1

def pragma_then_read(db):
    was = db.execute("PRAGMA foreign_keys").fetchone()
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("PRAGMA recursive_triggers = ON")
    return was

def close_it(db):
    db.execute("SELECT 2").fetchone()
    db.close()
    return 1
'''


class NoGuard:
    def expect(self, *events: str) -> None:
        pass

    def expect_exec(self, code: Any) -> None:
        pass

    def read_frames(self, on: bool) -> None:
        pass


def executor(**names: Any) -> Executor:
    ex = Executor(NoGuard(), {**vars(builtins), **names}, {}, cpu_s=5, memory_mb=512, max_result_bytes=1 << 20,  # type: ignore[arg-type]
                  max_result_depth=64, max_state_bytes=1 << 24)  # fmt: skip
    ex.open()
    ex.conn.execute("CREATE TABLE counters (key TEXT PRIMARY KEY, n INTEGER)")
    ex.held = ex.conn.serialize()
    ex.prepare()
    return ex


def run(ex: Executor, code: Any, function: str, ahead: bool = True, **arguments: Any) -> Any:
    """One call on the prepared handle, as `Template.call` makes it; the next handle is not prepared yet.
    `ahead`: the gym ran this call alone, so the process may compile for the next one."""
    header, out = ex.call({"function": function, "arguments": arguments, "seq": 1, "ahead": ahead}, code, ex.held)
    if header.get("ok") and header.get("changed"):
        ex.held = out[header["result_bytes"] :]
    return json.loads(out[: header["result_bytes"]]) if header.get("ok") else header


def compiled(ex: Executor) -> dict[str, int]:
    """The statements the handle holds compiled, with how many times each ran."""
    return {row["sql"]: row["run"] for row in ex.conn.execute("SELECT sql, run FROM sqlite_stmt").fetchall()}


def test_a_tool_called_twice_in_a_row_finds_its_statements_compiled_and_uses_them():
    ex, code = executor(), compile(COUNTER, "<arena test>", "exec")
    assert run(ex, code, "bump", key="k") == {"key": "k", "n": 1}
    ex.prepare()
    assert INSERT not in compiled(ex)  # once is not yet a repeat
    assert run(ex, code, "bump", key="k") == {"key": "k", "n": 2}
    ex.prepare()
    ahead = compiled(ex)
    assert ahead.get(INSERT) == 0 and ahead.get(SELECT) == 0  # compiled, never run: the state is untouched
    assert ex.conn.execute("SELECT n FROM counters").fetchone() == {"n": 2}
    assert run(ex, code, "bump", key="k") == {"key": "k", "n": 3}
    used = compiled(ex)
    assert used[INSERT] == 1 and used[SELECT] == 1  # the call ran the statements compiled ahead, not new ones


def test_nothing_is_compiled_ahead_when_the_gym_ran_other_calls_beside():
    """Under load the CPU is the bottleneck: a process compiles ahead only on the gym's word that its call ran alone."""
    ex, code = executor(), compile(COUNTER, "<arena test>", "exec")
    for _ in range(3):
        run(ex, code, "bump", ahead=False, key="k")
        ex.prepare()
        assert INSERT not in compiled(ex)
    run(ex, code, "bump", key="k")
    ex.prepare()
    assert INSERT in compiled(ex)


def test_a_tool_that_alternates_gets_nothing_compiled_ahead():
    ex, code = executor(), compile(COUNTER, "<arena test>", "exec")
    for function in ("bump", "look", "bump", "look"):
        run(ex, code, function, key="k")
        ex.prepare()
        assert not {INSERT, SELECT, "SELECT n FROM counters WHERE key = ? AND n > 0"} & compiled(ex).keys()


def test_callbacks_arena_code_leaves_on_its_handle_never_run_while_its_statements_are_read():
    record: list[str] = []
    ex, code = executor(RECORD=record), compile(HOSTILE, "<arena test>", "exec")
    for _ in range(3):
        assert run(ex, code, "leave_callbacks") == 1
        left = list(record)
        ex.prepare()
        assert record == left, record[len(left) :]
    assert ex.prepared and "SELECT 1" in compiled(ex)  # the statements were read, and compiled on the new handle


def test_a_pragma_is_never_compiled_ahead():
    """SQLite applies some PRAGMAs when it compiles them: compiling one ahead would carry it to the fresh handle."""
    ex, code = executor(), compile(HOSTILE, "<arena test>", "exec")
    for _ in range(4):
        assert run(ex, code, "pragma_then_read") == {"foreign_keys": 0}
        ex.prepare()
    assert ex.conn.execute("PRAGMA recursive_triggers").fetchone() == {"recursive_triggers": 0}


def test_a_handle_arena_code_closed_leaves_the_next_call_ready():
    ex, hostile, counter = executor(), compile(HOSTILE, "<arena test>", "exec"), compile(COUNTER, "<arena test>", "exec")
    for _ in range(2):
        run(ex, hostile, "close_it")
        ex.prepare()
        assert ex.prepared
    assert run(ex, counter, "bump", key="k") == {"key": "k", "n": 1}


async def test_repeated_calls_in_a_real_sandbox_keep_their_results_and_no_pragma():
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(InitialState(ddl=["CREATE TABLE counters (key TEXT PRIMARY KEY, n INTEGER)"], rows={}))
        results = []
        for _ in range(4):
            outcome = await pool.call(COUNTER, "bump", {"key": "k"}, state, owner="e1/a")
            state = outcome.state or state
            results.append(outcome.result)
        assert results == [{"key": "k", "n": n} for n in (1, 2, 3, 4)]
        for _ in range(3):
            outcome = await pool.call(HOSTILE, "pragma_then_read", {}, state, owner="e2/a")
            assert outcome.ok and outcome.result == {"foreign_keys": 0}, outcome


async def test_the_gym_asks_for_statements_ahead_only_for_a_call_that_ran_alone():
    async with SandboxPool(SandboxConfig(workers=2)) as pool:
        state = await pool.build_state(InitialState(ddl=["CREATE TABLE counters (key TEXT PRIMARY KEY, n INTEGER)"], rows={}))
        sent: list[dict[str, Any]] = []
        exchange = pool._exchange

        async def recording(process: Any, header: dict[str, Any], blob: bytes) -> Any:
            sent.append(header)
            return await exchange(process, header, blob)

        pool._exchange = recording  # type: ignore[method-assign]
        await pool.call(COUNTER, "bump", {"key": "k"}, state, owner="e1/a")
        assert [h.get("ahead") for h in sent] == [True]
        sent.clear()
        await asyncio.gather(*(pool.call(COUNTER, "bump", {"key": "k"}, state, owner=f"e{i}/a") for i in range(2, 5)))
        assert len(sent) == 3 and [h.get("ahead") for h in sent].count(True) <= 1  # the first may start alone
        assert pool.active == 0
