"""Requests in a sandbox process: run an arena function (or build an initial state) against a private
in-memory SQLite image and answer with the result and, when it changed, the new image.

A process serves one episode's calls to one arena (or a single call) and nothing else, so nothing arena code
leaves behind reaches another episode or arena. Arena code can rebind anything in this process's modules, so
everything the process uses after arena code has run is captured when the `Executor` is built, before any
arena code runs, and results are checked by exact type: no arena method runs while a result is measured and
encoded. Every call gets a fresh SQLite handle and a fresh module namespace.
"""

from __future__ import annotations

import io
import json
import json.encoder
import json.scanner
import os
import resource
import sqlite3
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from .ahead import SCHEMA_READ, Ahead
from .frames import MAX_BLOB_BYTES, MAX_HEADER_BYTES, PREFIX
from .guard import CPULimitExceeded, Guard, SandboxViolation
from .statediff import StateDiffer

# SQLite authorizer action codes as literals, so the authorizer reads no module attribute arena code could rebind
_SQLITE_ATTACH, _SQLITE_DETACH, _SQLITE_DENY, _SQLITE_OK = 24, 25, 1, 0
assert (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_DENY, sqlite3.SQLITE_OK) == (24, 25, 1, 0)


_WARM_UP = compile(
    "def touch(db, k, v):\n"
    "    db.execute('INSERT INTO warm VALUES (?, ?)', (k, v))\n"
    "    row = db.execute('SELECT k, v FROM warm WHERE k = ?', (k,)).fetchone()\n"
    "    return {'row': row, 'items': [k, v, None, True], 'n': len(row)}\n",
    "<warm-up>", "exec",
)


class _NoSuchFunction(Exception):
    pass


class ResultRejected(Exception):
    """The arena function returned something the gym does not pass on (not plain JSON, too deep, too large)."""


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row)}


def _deny_attach(action: int, *_: Any) -> int:
    return _SQLITE_DENY if action == _SQLITE_ATTACH or action == _SQLITE_DETACH else _SQLITE_OK


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def describe(exc: BaseException, guard: Guard, type: Any = type, str: Any = str, traceback_type: Any = types.TracebackType) -> str:
    """`Type: message (line N, in function)`, the line being the deepest one in arena code. The traceback walk
    only reads C attributes, so the guard lets its frame reads through; `str(exc)` may be arena code and runs
    after the walk, guarded as usual."""
    where = ""
    tb = exc.__traceback__
    if type(tb) is not traceback_type:
        tb = None  # a property of an arena exception class; walking it would run arena code with frames open
    guard.read_frames(True)
    try:
        while tb is not None:
            code = tb.tb_frame.f_code
            if code.co_filename.startswith("<arena"):
                where = f" (line {tb.tb_lineno}, in {code.co_name})"
            tb = tb.tb_next
    finally:
        guard.read_frames(False)
    try:
        message = str(exc)[:2000]
    except BaseException:
        message = "(its message could not be shown)"
    return f"{type(exc).__name__}: {message}{where}"


class Executor:
    """The references one request needs after arena code has run, captured before it runs."""

    def __init__(self, guard: Guard, builtins_: dict[str, Any], code_cache: dict[str, Any], *, cpu_s: float,
                 memory_mb: int, max_result_bytes: int, max_result_depth: int, max_state_bytes: int, state_diffs: bool = False,
                 max_owed_bytes: int = 8 * 1024 * 1024) -> None:  # fmt: skip
        self.guard, self.builtins, self.code_cache = guard, builtins_, code_cache
        self.cpu_s, self.memory_mb = cpu_s, memory_mb
        self.max_result_bytes, self.max_result_depth, self.max_state_bytes = max_result_bytes, max_result_depth, max_state_bytes
        self._connect, self._compile, self._exec = sqlite3.connect, compile, exec
        self._process_time, self._string_io, self._sys = time.process_time, io.StringIO, sys
        self._scan = json.scanner.c_make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]
        self._encode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
            None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )
        self._pack, self._unpack, self._prefix_size = PREFIX.pack, PREFIX.unpack, PREFIX.size
        self._read, self._write = os.read, os.write
        self._join, self._str, self._dict, self._list, self._type, self._len = b"".join, str, dict, list, type, len
        self._scalars = (str, int, float, bool, type(None))
        self._dict_items = dict.items
        self._memoryview, self._describe = memoryview, describe
        self._no_such_function, self._cpu_limit, self._violation = _NoSuchFunction, CPULimitExceeded, SandboxViolation
        self._rejected = ResultRejected
        self._rusage, self._rusage_self = resource.getrusage, resource.RUSAGE_SELF
        self._row_factory, self._deny, self._sql_error = _dict_row, _deny_attach, sqlite3.OperationalError
        self._ahead, self._execute, self._schema_read = Ahead(), sqlite3.Connection.execute, SCHEMA_READ
        self.last_function: Any = None
        self.repeats = 0
        """How many calls in a row, the last included, ran `last_function`: past one, its statements are compiled
        on the next handle ahead of the next call (`prepare`), if the gym said the call ran alone (`ahead`)."""
        self.ahead = False
        self.cpu_deadline = 0.0
        self.conn: sqlite3.Connection = None  # type: ignore[assignment]
        """Opened by `open()` in the process that serves calls: an executor is built once, in the template."""
        self.held = b""
        """The state image this process's episode holds after its last call."""
        self.prepared = False
        self.differ = StateDiffer(self._new_connection, self.encode_json)
        self.state_diffs, self.max_owed_bytes = state_diffs, max_owed_bytes
        self.owed: list[tuple[Any, bytes, bytes]] = []
        """(seq, before, after) of each writing call whose diff the gym has not asked for yet (`owed_diffs`): a
        diff is computed when the log is read, not beside every call. Consecutive calls share their images."""
        self.owed_bytes = 0
        """The bytes of the images kept for owed diffs (an image two diffs share counts once)."""
        self.ready: list[tuple[Any, dict[str, Any]]] = []
        """Diffs computed ahead of being asked for, because the images kept for them grew past `max_owed_bytes`."""

    # -- framing (the layout of `frames`, on captured callables) ------------------------------------------------
    def read_exact(self, fd: int, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self._read(fd, min(n, 1 << 20))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= self._len(chunk)
        return self._join(chunks)

    def read_request(self, fd: int) -> tuple[dict[str, Any], bytes]:
        head_len, blob_len = self._unpack(self.read_exact(fd, self._prefix_size))
        if head_len > MAX_HEADER_BYTES or blob_len > MAX_BLOB_BYTES:
            raise EOFError  # not a frame the gym would send
        header, _ = self._scan(self.read_exact(fd, head_len).decode(), 0)
        if self._type(header) is not self._dict:
            raise EOFError
        return header, (self.read_exact(fd, blob_len) if blob_len else b"")

    def encode_json(self, value: Any) -> bytes:
        return "".join(self._encode(value, 0)).encode()

    def write_reply(self, fd: int, header: dict[str, Any], blob: bytes = b"") -> None:
        head = self.encode_json(header)
        view = self._memoryview(self._pack(self._len(head), self._len(blob)) + head + blob)
        while view:
            view = view[self._write(fd, view) :]

    # -- state --------------------------------------------------------------------------------------------------
    def _new_connection(self) -> sqlite3.Connection:
        self.guard.expect("sqlite3.connect", "sqlite3.connect/handle")
        try:
            conn = self._connect(":memory:", isolation_level=None, check_same_thread=False)
        finally:
            self.guard.expect()
        conn.row_factory = self._row_factory
        conn.set_progress_handler(self._sql_deadline, 20_000)
        conn.set_authorizer(self._deny)
        return conn

    def grown(self, limit_kb: int) -> bool:
        """Whether this process's peak resident memory passed `limit_kb`: such a process retires after its reply,
        so idle processes kept for episodes stay small."""
        return self._rusage(self._rusage_self).ru_maxrss > limit_kb

    def open(self) -> None:
        self.conn = self._new_connection()

    def reload(self, image: bytes) -> None:
        """A fresh handle holding `image`: nothing the last call left on its handle (TEMP tables, functions,
        settings) reaches the next."""
        self.conn.close()
        self.conn = self._new_connection()
        self.load(image)

    def prepare(self) -> None:
        """Between calls: a fresh handle holding the state the episode now holds, its schema read, so that the
        episode's next call starts at once. Arena code never saw this handle. When the same tool ran twice in a
        row and its call ran alone in the gym's sandbox, the statements its last call compiled are compiled on
        the new handle too (an agent that repeats a tool often repeats it again): compiling them was most of such a
        call's own SQLite work. Under load the gym does not ask for it: CPU spent on a call that never comes
        (an episode's last) is then taken from other calls."""
        warm = self._ahead.statements(self.conn) if self.repeats > 1 and self.ahead else []
        try:
            self.reload(self.held)
            self._execute(self.conn, self._schema_read)
            self._ahead.compile(self.conn, warm)
            self.prepared = True
        except Exception:
            self.prepared = False

    def _sql_deadline(self) -> int:
        return 1 if self.cpu_deadline and self._process_time() > self.cpu_deadline else 0

    def load(self, image: bytes) -> None:
        if image:
            self.conn.set_authorizer(None)  # deserialize attaches internally
            self.conn.deserialize(image)
            self.conn.set_authorizer(self._deny)

    def warm_up(self) -> None:
        """Run a call-shaped piece of our own code on a scratch database, once, in the template: SQLite's library
        initialization and the lazily built caches of the encoder and the interpreter then happen before any
        fork, not in every process (which would also copy every page they touch)."""
        scratch = self._connect(":memory:", isolation_level=None, check_same_thread=False)
        try:
            scratch.row_factory = _dict_row
            scratch.execute("CREATE TABLE warm (k TEXT PRIMARY KEY, v)")
            scratch.deserialize(scratch.serialize())
            namespace: dict[str, Any] = {"__builtins__": self._dict(self.builtins), "__name__": "arena"}
            exec(_WARM_UP, namespace)
            value = namespace["touch"](scratch, "k", 1.5)
            self.check_result(value)
            self._ahead.compile(scratch, self._ahead.statements(scratch))  # as `prepare` does, on the scratch handle
            self._scan(self.encode_json({"ok": True, "arguments": {"k": [1, "v"]}, "seq": 1}).decode(), 0)
            self.owe(1, b"", scratch.serialize())
            self.owed_diffs()
            self.differ.close()
            self.cpu_deadline = 0.0
        finally:
            scratch.close()

    # -- results ------------------------------------------------------------------------------------------------
    def check_result(self, value: Any) -> bytes:
        """Plain JSON values only (exact types: a subclass could run arena code while it is measured), at most
        `max_result_depth` deep, then encoded and measured."""
        t, scalars, limit, items = self._type, self._scalars, self.max_result_depth, self._dict_items
        stack = [(value, 1)]
        nodes = 0
        while stack:
            item, depth = stack.pop()
            nodes += 1
            if nodes > 1_000_000:
                raise self._rejected("the result has more than 1,000,000 values")
            kind = t(item)
            if kind is self._dict or kind is self._list:
                if depth > limit:
                    raise self._rejected(f"the result is nested deeper than {limit} levels")
                if kind is self._dict:
                    for key, child in items(item):
                        if t(key) not in scalars:
                            raise self._rejected(f"a result key is a {t(key).__name__}, not a JSON scalar")
                        stack.append((child, depth + 1))
                else:
                    stack.extend((child, depth + 1) for child in item)
            elif kind not in scalars:
                raise self._rejected(f"a {kind.__name__} in the result is not a JSON value")
        try:
            text = self.encode_json(value)
        except (TypeError, ValueError) as exc:
            raise self._rejected(self._str(exc)) from None
        if self._len(text) > self.max_result_bytes:
            raise self._rejected(f"the result is {self._len(text)} bytes of JSON; the limit is {self.max_result_bytes}")
        return text

    # -- code ---------------------------------------------------------------------------------------------------
    def compiled(self, code_id: str, source: str | None) -> tuple[Any, bool]:
        """The cached code object (compiled by the template before this process was forked) or a fresh one."""
        code = self.code_cache.get(code_id)
        if code is not None:
            return code, False
        if source is None:
            raise KeyError(code_id)
        return self._compile(source, f"<arena {code_id[:12]}>", "exec"), True

    # -- operations ---------------------------------------------------------------------------------------------
    def run_limited(self, fn: Callable[[], Any]) -> Any:
        self.cpu_deadline = self._process_time() + self.cpu_s
        stdout = self._sys.stdout
        self._sys.stdout = self._string_io()
        try:
            return fn()
        finally:
            self._sys.stdout = stdout

    def state_diff(self, before: bytes, after: bytes) -> dict[str, Any]:
        """What a writing call changed, for the call log (see `statediff`); never fails the call it describes."""
        try:
            return self.differ.diff(before, after, self._set_deadline)
        except (MemoryError, RecursionError, self._violation, self._cpu_limit):
            return {"tables": {}, "truncated": True, "error": "the diff could not be computed within the sandbox's limits"}

    def owe(self, seq: Any, before: bytes, after: bytes) -> None:
        owed = self.owed
        shared = owed and before is owed[-1][2]  # the call started from the last one's image: it is kept once
        self.owed_bytes += self._len(after) + (0 if shared else self._len(before))
        owed.append((seq, before, after))

    def keep_owed_within_bound(self) -> None:
        """Between calls: past `max_owed_bytes` of kept images, compute the oldest owed diffs now and keep the
        results (bounded in size), so that a long episode's process does not grow with its calls."""
        owed = self.owed
        while owed and self.owed_bytes > self.max_owed_bytes:
            seq, before, after = owed.pop(0)
            still_kept = owed and owed[0][1] is after  # the next diff's before image
            self.owed_bytes -= self._len(before) + (0 if still_kept else self._len(after))
            self.ready.append((seq, self.state_diff(before, after)))

    def owed_diffs(self) -> bytes:
        """Every owed diff as JSON `[[seq, diff], ...]`, oldest first; nothing is owed afterwards."""
        done, self.ready = self.ready, []
        owed, self.owed, self.owed_bytes = self.owed, [], 0
        for seq, before, after in owed:
            done.append((seq, self.state_diff(before, after)))
        return self.encode_json([[seq, diff] for seq, diff in done])

    def _set_deadline(self, deadline: float) -> None:
        self.cpu_deadline = deadline

    def call(self, req: dict[str, Any], code: Any, image: bytes) -> tuple[dict[str, Any], bytes]:
        """Runs with the guard armed (the caller arms it after `load`). `image` is the state the call starts
        from; a call that changed it answers with the new image, and owes its diff (`diff_owed`)."""
        conn, guard, run, before = self.conn, self.guard, self._exec, image
        namespace: dict[str, Any] = {"__builtins__": self._dict(self.builtins), "__name__": "arena"}
        name, arguments = req["function"], req["arguments"]
        self.repeats = self.repeats + 1 if name == self.last_function else 1
        self.last_function, self.ahead = name, req.get("ahead") is True

        def invoke() -> Any:
            guard.expect_exec(code)
            run(code, namespace)
            table = namespace.get("__tools__")  # generated arenas (emulators) map any tool name to a callable
            fn = table.get(name) if self._type(table) is self._dict else namespace.get(name)
            if not callable(fn):
                raise self._no_such_function(name)
            return self.check_result(fn(conn, **arguments))

        try:
            text = self.run_limited(invoke)
            changed = conn.total_changes > 0
            image = conn.serialize() if changed else b""
            if self._len(image) > self.max_state_bytes:
                return {"ok": False, "kind": "tool_error", "error": f"the call grew the state to {self._len(image)} bytes; the limit is {self.max_state_bytes}"}, b""
            header = {"ok": True, "result_bytes": self._len(text), "changed": changed}
            if changed and self.state_diffs and req.get("diff") is not False:
                header["diff_owed"] = True  # computed when the gym asks for it (`owed_diffs`), not now
                self.owe(req.get("seq"), before, image)
            return header, text + image
        except self._rejected as exc:
            return {"ok": False, "kind": "tool_error", "error": f"tool returned a value the gym does not pass on: {exc}"}, b""
        except self._no_such_function:
            return {"ok": False, "kind": "tool_error", "error": f"the arena defines no function {name!r}"}, b""
        except self._cpu_limit:
            return {"ok": False, "kind": "sandbox_error", "error": f"CPU time limit exceeded ({self.cpu_s:g} s)"}, b""
        except MemoryError:
            return {"ok": False, "kind": "sandbox_error", "error": f"memory limit exceeded ({self.memory_mb} MiB)"}, b""
        except self._violation as exc:
            return {"ok": False, "kind": "sandbox_error", "error": self._str(exc)}, b""
        except self._sql_error as exc:
            if "interrupted" in self._str(exc):
                return {"ok": False, "kind": "sandbox_error", "error": f"CPU time limit exceeded in SQL ({self.cpu_s:g} s)"}, b""
            return {"ok": False, "kind": "tool_error", "error": self._describe(exc, guard)}, b""
        except RecursionError:
            return {"ok": False, "kind": "tool_error", "error": "RecursionError: maximum recursion depth exceeded"}, b""
        except PermissionError as exc:  # the kernel said no (seccomp answers EPERM)
            return {"ok": False, "kind": "sandbox_error", "error": f"operation not permitted in the sandbox: {self._describe(exc, guard)}"}, b""
        except Exception as exc:  # arena code raised: the tool's own error, for the agent to read
            return {"ok": False, "kind": "tool_error", "error": self._describe(exc, guard)}, b""

    def build_state(self, req: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        conn = self.conn

        def build() -> None:
            conn.execute("PRAGMA user_version = 1")  # an image with no table still has a page to serialize
            conn.execute("BEGIN")
            for statement in req["ddl"]:
                conn.execute(statement)
            for table, rows in req["rows"].items():
                for row in rows:
                    cols = list(row)
                    quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in cols)
                    marks = ", ".join("?" for _ in cols)
                    values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in row.values()]
                    conn.execute(f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})', values)
            conn.execute("COMMIT")

        try:
            self.run_limited(build)
            image = conn.serialize()
            if self._len(image) > self.max_state_bytes:
                return {"ok": False, "kind": "tool_error", "error": f"initial state does not build: {self._len(image)} bytes; the limit is {self.max_state_bytes}"}, b""
            return {"ok": True}, image
        except self._cpu_limit:
            return {"ok": False, "kind": "sandbox_error", "error": "CPU time limit exceeded building the state"}, b""
        except MemoryError:
            return {"ok": False, "kind": "sandbox_error", "error": "memory limit exceeded building the state"}, b""
        except Exception as exc:
            return {"ok": False, "kind": "tool_error", "error": f"initial state does not build: {self._describe(exc, self.guard)}"}, b""
