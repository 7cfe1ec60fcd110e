"""A sandbox worker: runs untrusted arena code, one call at a time, against an in-memory SQLite image.

Started by `gym_server.sandbox.pool` as `python -m gym_server.sandbox.worker`; speaks the frames of
`gym_server.sandbox.protocol` on stdin/stdout. Containment, outermost first:

1. the process itself: the parent kills it on a wall-clock deadline and starts a fresh one;
2. OS limits: address space, file size 0 (no file grows), no core dumps, a per-call CPU budget;
3. its own network namespace when the OS allows it (root, or user namespaces): no interface but a
   downed loopback, so nothing can connect anywhere; and a chroot into an empty directory;
4. an audit hook that refuses processes, signals, sockets, files, imports, ctypes, threads and frame
   introspection, armed for good once the worker serves;
5. restricted builtins and an allow-list of importable modules;
6. a fresh state handle per call: the episode's SQLite image is deserialized into a private in-memory
   database that cannot ATTACH files, and the arena module is re-executed into a fresh namespace.

Why the hook is never disarmed: arena code can reach every module through `sys.modules` and rebind any
module attribute (`json.dumps`, `builtins.len`, this module's own globals). Whatever the worker calls after
arena code has run may therefore be arena code in disguise, so it must run under the same guard. The worker's
own operations that the hook refuses (opening the next SQLite connection, setting the CPU limit, compiling
and executing arena source, reading a traceback's frames) are let through one event at a time: the worker
announces the exact event, then calls a C function captured at start-up, which raises that event before any
Python code can run. Those captured references, the guard's switches and the worker's state live only in
`main()`'s frame and the objects it holds, which arena code cannot reach (frames and the garbage collector are
refused). Module attributes that arena code rebinds are put back before the next request is read.

Each call gets the state image and returns the new image only when the code changed it.
"""

from __future__ import annotations

import builtins
import enum
import gc
import io
import json
import json.encoder
import json.scanner
import os
import resource
import select
import signal
import sqlite3
import struct
import sys
import time
import types
from collections.abc import Callable
from typing import Any

from gym_server.sandbox.protocol import MAX_BLOB_BYTES, MAX_HEADER_BYTES, PREFIX

ALLOWED_MODULES = frozenset(
    {
        "bisect", "calendar", "collections", "copy", "dataclasses", "datetime", "decimal", "difflib",
        "enum", "fractions", "functools", "hashlib", "heapq", "itertools", "json", "math", "operator",
        "random", "re", "statistics", "string", "textwrap", "time", "typing", "unicodedata", "uuid",
        "zoneinfo",
    }
)  # fmt: skip
PRELOADED_SUBMODULES = ("collections.abc", "json.decoder", "json.encoder", "re._parser", "typing")

_REMOVED_BUILTINS = frozenset(
    {
        "open", "exec", "eval", "compile", "input", "breakpoint", "help", "exit", "quit", "globals",
        "locals", "vars", "memoryview", "copyright", "credits", "license", "__loader__", "__spec__",
    }
)  # fmt: skip

_DENIED_EVENT_PREFIXES = (
    "os.", "subprocess.", "socket.", "ctypes.", "shutil.", "pty.", "signal.", "_thread.", "sys.",
    "gc.", "object.__getattr__", "object.__setattr__", "object.__delattr__", "open", "import", "exec",
    "compile", "code.__new__", "function.__new__", "sqlite3.", "marshal.", "pickle.", "mmap.",
    "fcntl.", "resource.", "syslog.", "urllib.", "http.", "ftplib.", "smtplib.", "webbrowser.",
    "glob.", "tempfile.", "winreg.", "cpython.",
)  # fmt: skip

# SQLite authorizer action codes, as literals: the authorizer must not look up `sqlite3.SQLITE_ATTACH` at call
# time, where arena code may have rebound it.
_SQLITE_ATTACH, _SQLITE_DETACH, _SQLITE_DENY, _SQLITE_OK = 24, 25, 1, 0
assert (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH, sqlite3.SQLITE_DENY, sqlite3.SQLITE_OK) == (24, 25, 1, 0)

IDLE_GRACE_S = 0.001
"""After replying, the worker sleeps this long (or until the next request) before its housekeeping. A unix
socket write wakes the gym with a hint that the writer is about to sleep, so the gym is often queued on the
worker's CPU; housekeeping right away made the gym wait for it (measured: 0.5 ms of a 1.2 ms round trip)."""


class SandboxViolation(PermissionError):
    pass


class _NoSuchFunction(Exception):
    pass


class CPULimitExceeded(BaseException):
    """Raised in arena code when its CPU budget runs out (a BaseException so `except Exception` misses it)."""


class Guard:
    """The audit hook's switches. The hook's state lives in closures shared with these methods' bound
    callables; arena code can reach neither (see the module docstring)."""

    def __init__(self) -> None:
        # Everything the hook and its switches use is captured now, builtins included: arena code can rebind
        # module globals and `builtins.list`, and the switches run right after arena code returns.
        denied = _DENIED_EVENT_PREFIXES
        violation = SandboxViolation
        new_list = list
        state: dict[str, Any] = {"armed": False, "expect": [], "code": None, "frames": False}

        def hook(event: str, args: tuple[Any, ...]) -> None:
            if not state["armed"]:
                return
            expected = state["expect"]
            if expected and event == expected[0]:
                del expected[0]  # each announced event, once, in order
                return
            if event == "exec" and args and state["code"] is not None and args[0] is state["code"]:
                state["code"] = None  # the arena module body we are about to run, once
                return
            if state["frames"] and event == "object.__getattr__" and args[1:2] in (("tb_frame",), ("f_code",)):
                return  # the worker reading a traceback's line numbers; only C attribute reads run meanwhile
            if event.startswith(denied):
                raise violation(f"operation not permitted in the sandbox: {event}")

        def arm() -> None:
            state["armed"] = True

        gc_disable, gc_enable = gc.disable, gc.enable

        def expect(*events: str) -> None:
            """Let exactly these events through, in this order; `expect()` withdraws what was not used.

            While events are expected the garbage collector is off: a collection could otherwise run the
            finalizer of an arena object between the announcement and the worker's own call, and that
            finalizer would get the announced event."""
            if events:
                gc_disable()
            state["expect"] = new_list(events)
            if not events:
                gc_enable()

        def expect_exec(code: Any) -> None:
            state["code"] = code

        def read_frames(on: bool) -> None:
            """Allow reading traceback frames; the collector is off meanwhile, for the reason `expect` gives."""
            if on:
                gc_disable()
            state["frames"] = on
            if not on:
                gc_enable()

        sys.addaudithook(hook)
        self.arm, self.expect, self.expect_exec, self.read_frames = arm, expect, expect_exec, read_frames


def _restricted_import(name: str, globals_: Any = None, locals_: Any = None, fromlist: Any = (), level: int = 0) -> Any:
    root = name.split(".", 1)[0]
    if level != 0 or root not in ALLOWED_MODULES:
        raise ImportError(f"module {name!r} is not importable in arena code; allowed: {', '.join(sorted(ALLOWED_MODULES))}")
    return __import__(name, globals_, locals_, fromlist, level)


def _safe_builtins() -> dict[str, Any]:
    safe = {k: v for k, v in vars(builtins).items() if k not in _REMOVED_BUILTINS}
    safe["__import__"] = _restricted_import
    return safe


def _dict_row(cursor: sqlite3.Cursor, row: tuple[Any, ...]) -> dict[str, Any]:
    return {col[0]: value for col, value in zip(cursor.description, row)}


def _deny_attach(action: int, *_: Any) -> int:
    return _SQLITE_DENY if action == _SQLITE_ATTACH or action == _SQLITE_DETACH else _SQLITE_OK


def _not_json(value: Any) -> Any:
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _namespaces(modules: list[Any]) -> list[dict[str, Any]]:
    """The attribute dicts of every module and of every plain object a module holds (`json._default_encoder`,
    `random._inst`): those objects are shared by all calls, so rebinding their attributes is tampering too."""
    seen: set[int] = set()
    found: list[dict[str, Any]] = []
    # classes, functions and modules are covered elsewhere (type and function attributes cannot be set under the
    # guard); int constants and enum members carry only names, and specs and loaders only matter to imports
    skipped = (type, types.ModuleType, types.FunctionType, types.BuiltinFunctionType, types.MethodType, int, enum.Enum)
    for module in modules:
        namespace = getattr(module, "__dict__", None)
        if type(namespace) is not dict or id(namespace) in seen:
            continue
        seen.add(id(namespace))
        found.append(namespace)
        for key, value in list(namespace.items()):
            if key in ("__spec__", "__loader__") or isinstance(value, skipped):
                continue
            try:
                attrs = object.__getattribute__(value, "__dict__")
            except Exception:
                continue
            if type(attrs) is dict and id(attrs) not in seen:
                seen.add(id(attrs))
                found.append(attrs)
    return found


class ModuleSnapshot:
    """Every loaded module's attributes, the attributes of the plain objects modules hold, and `sys.modules`
    itself, as they were when the worker started. Mutable containers (a module-level dict or list) are not
    covered: arena code that fills one leaves it filled for later calls on this worker.

    `restore()` compares in C (a dict comparison looks at `is` before `==`), so it is cheap when nothing
    changed. An arena object whose `__eq__` claims equality could hide a rebinding from the comparison; that
    object then only ever runs under the guard, so what it can reach is what arena code reaches anyway."""

    def __init__(self) -> None:
        namespaces = [sys.modules, *_namespaces(list(sys.modules.values()))]  # sys.modules first: it is restored first
        self._dicts = [(ns, dict(ns)) for ns in namespaces]
        self._clear, self._update = dict.clear, dict.update

    def restore(self) -> int:
        """Put back what arena code rebound, added or deleted; return how many namespaces it touched."""
        clear, update = self._clear, self._update
        touched = 0
        for live, saved in self._dicts:
            try:
                same = live == saved
            except BaseException:  # an arena object's __eq__ raised: treat as tampered
                same = False
            if not same:
                clear(live)
                update(live, saved)
                touched += 1
        return touched


class Worker:
    """One worker's state and the references it captured at start-up.

    Everything a call needs after arena code has run is read from this instance, never from a module global:
    module globals are arena-writable, this instance is unreachable to arena code."""

    def __init__(self, memory_mb: int, guard: Guard) -> None:
        self.memory_mb = memory_mb
        self.guard = guard
        self.code_cache: dict[str, Any] = {}
        self.safe_builtins = _safe_builtins()
        self.cpu_deadline: float = 0.0
        self._spare: sqlite3.Connection | None = None
        self._spare_image: bytes | None = None
        self.next_image: bytes = b""
        """The state the next call most likely brings: the one this call left. Under light load the same episode
        keeps landing on this worker (the pool hands out idle workers last-in-first-out)."""
        # captured C callables and constants (see the class docstring)
        self._connect, self._compile, self._exec = sqlite3.connect, compile, exec
        self._setrlimit, self._rlimit_cpu, self._unlimited = resource.setrlimit, resource.RLIMIT_CPU, resource.RLIM_INFINITY
        self._process_time, self._string_io, self._sys = time.process_time, io.StringIO, sys
        self._dict_row, self._deny_attach, self._describe = _dict_row, _deny_attach, _describe
        self._scan = json.scanner.c_make_scanner(json.JSONDecoder())  # type: ignore[attr-defined]
        self._encode = json.encoder.c_make_encoder(  # type: ignore[attr-defined]
            None, _not_json, json.encoder.encode_basestring, None, ":", ",", False, False, False
        )
        self._pack, self._unpack, self._prefix_size = PREFIX.pack, PREFIX.unpack, PREFIX.size
        self._read, self._write, self._select = os.read, os.write, select.select
        self._join, self._str, self._dict, self._type, self._len, self._memoryview = b"".join, str, dict, type, len, memoryview
        self._no_such_function, self._cpu_limit, self._violation = _NoSuchFunction, CPULimitExceeded, SandboxViolation

    # -- framing (see gym_server.sandbox.protocol; re-implemented here on captured callables) ---------------
    def read_exact(self, fd: int, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self._read(fd, n)
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            n -= self._len(chunk)
        return self._join(chunks)

    def read_request(self, fd: int) -> tuple[dict[str, Any], bytes]:
        head_len, blob_len = self._unpack(self.read_exact(fd, self._prefix_size))
        if head_len > MAX_HEADER_BYTES or blob_len > MAX_BLOB_BYTES:
            raise EOFError  # not a frame the gym would send: stop serving rather than guess
        try:
            header, _ = self._scan(self.read_exact(fd, head_len).decode(), 0)
        except StopIteration:
            raise EOFError from None
        if self._type(header) is not self._dict:
            raise EOFError
        return header, (self.read_exact(fd, blob_len) if blob_len else b"")

    def encode_json(self, value: Any) -> bytes:
        return "".join(self._encode(value, 0)).encode()

    def write_reply(self, fd: int, header: dict[str, Any], blob: bytes) -> None:
        head = self.encode_json(header)
        data = self._pack(self._len(head), self._len(blob)) + head + blob
        view = self._memoryview(data)
        while view:
            view = view[self._write(fd, view) :]

    # -- state -------------------------------------------------------------------------------
    def _new_connection(self) -> sqlite3.Connection:
        self.guard.expect("sqlite3.connect", "sqlite3.connect/handle")
        try:
            conn = self._connect(":memory:", isolation_level=None, check_same_thread=False)
        finally:
            self.guard.expect()
        conn.row_factory = self._dict_row
        conn.set_progress_handler(self._sql_deadline, 20_000)
        return conn

    def prepare_spare(self, image: bytes = b"") -> None:
        """Open the next call's connection while idle, load `image` into it and have SQLite read its schema:
        on a new connection, reading the schema costs more than the statements of a typical tool call. Arena
        code never saw this connection, so it is as fresh as one opened on demand."""
        if self._spare is None:
            self._spare = self._new_connection()
        if image and self._spare_image is None:
            try:
                self._spare.deserialize(image)
                self._spare.set_authorizer(self._deny_attach)
                self._spare.execute("SELECT 1 FROM sqlite_master LIMIT 0")
                self._spare_image = image
            except sqlite3.Error:
                self._spare.close()
                self._spare = None

    def open_state(self, image: bytes) -> sqlite3.Connection:
        conn, loaded = self._spare, self._spare_image
        self._spare = self._spare_image = None
        if conn is not None and loaded is not None:
            if loaded == image:
                return conn  # loaded, guarded and its schema read while the worker idled
            if not image:  # an empty database is wanted: start from a new handle
                conn.close()
                conn = None
            else:
                conn.set_authorizer(None)  # deserialize attaches internally; the authorizer is set again below
        conn = conn or self._new_connection()
        if image:
            conn.deserialize(image)
        conn.set_authorizer(self._deny_attach)
        return conn

    def _sql_deadline(self) -> int:
        return 1 if self.cpu_deadline and self._process_time() > self.cpu_deadline else 0

    # -- code --------------------------------------------------------------------------------
    def compiled(self, code_id: str, source: str | None) -> Any:
        code = self.code_cache.pop(code_id, None)
        if code is None:
            if source is None:
                raise KeyError(code_id)
            self.guard.expect("compile")
            try:
                code = self._compile(source, f"<arena {code_id[:12]}>", "exec")
            finally:
                self.guard.expect()
            if self._len(self.code_cache) >= 256:
                del self.code_cache[next(iter(self.code_cache))]
        self.code_cache[code_id] = code  # re-inserted last: the dict's order is the LRU order
        return code

    def run_limited(self, fn: Callable[[], Any], *, cpu_s: float) -> Any:
        """Run `fn` with a CPU budget and a private stdout."""
        used = self._process_time()
        self.cpu_deadline = used + cpu_s
        self.set_cpu_limit(int(used + cpu_s) + 1)
        stdout = self._sys.stdout
        self._sys.stdout = self._string_io()
        try:
            return fn()
        finally:
            self._sys.stdout = stdout
            self.cpu_deadline = 0.0
            self.set_cpu_limit(self._unlimited)

    def set_cpu_limit(self, soft: int) -> None:
        self.guard.expect("resource.setrlimit")
        try:
            self._setrlimit(self._rlimit_cpu, (soft, self._unlimited))
        finally:
            self.guard.expect()

    # -- operations --------------------------------------------------------------------------
    def op_call(self, req: dict[str, Any], image: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            code = self.compiled(req["code_id"], req.get("source"))
        except KeyError:
            return {"ok": False, "kind": "need_source"}, b""
        except SyntaxError as exc:
            return {"ok": False, "kind": "tool_error", "error": f"arena code does not compile: {exc}"}, b""
        self.next_image = image
        conn = self.open_state(image)
        namespace: dict[str, Any] = {"__builtins__": self._dict(self.safe_builtins), "__name__": "arena"}
        name, arguments, guard, run = req["function"], req["arguments"], self.guard, self._exec

        def invoke() -> Any:
            guard.expect_exec(code)
            run(code, namespace)  # a fresh module namespace per call: no global survives into the next
            table = namespace.get("__tools__")  # generated arenas (emulators) map any tool name to a callable
            fn = table.get(name) if self._type(table) is self._dict else namespace.get(name)
            if not callable(fn):
                raise self._no_such_function(name)
            return fn(conn, **arguments)

        try:
            result = self.run_limited(invoke, cpu_s=req["cpu_s"])
            try:
                text = self.encode_json(result)
            except (TypeError, ValueError) as exc:
                return {"ok": False, "kind": "tool_error", "error": f"tool returned a value that is not JSON: {exc}"}, b""
            changed = conn.total_changes > 0
            # the result's JSON travels in the blob, ahead of the new image, so it is encoded once
            header = {"ok": True, "result_bytes": self._len(text), "changed": changed}
            if not changed:
                return header, text
            self.next_image = conn.serialize()
            return header, text + self.next_image
        except self._no_such_function:
            return {"ok": False, "kind": "tool_error", "error": f"the arena defines no function {name!r}"}, b""
        except self._cpu_limit:
            return {"ok": False, "kind": "sandbox_error", "error": f"CPU time limit exceeded ({req['cpu_s']} s)"}, b""
        except MemoryError:
            return {"ok": False, "kind": "sandbox_error", "error": f"memory limit exceeded ({self.memory_mb} MiB)"}, b""
        except self._violation as exc:
            return {"ok": False, "kind": "sandbox_error", "error": self._str(exc)}, b""
        except sqlite3.OperationalError as exc:
            if "interrupted" in self._str(exc):
                return {"ok": False, "kind": "sandbox_error", "error": f"CPU time limit exceeded in SQL ({req['cpu_s']} s)"}, b""
            return {"ok": False, "kind": "tool_error", "error": self._describe(exc, guard)}, b""
        except RecursionError:
            return {"ok": False, "kind": "tool_error", "error": "RecursionError: maximum recursion depth exceeded"}, b""
        except Exception as exc:  # arena code raised: the tool's own error, for the agent to read
            return {"ok": False, "kind": "tool_error", "error": self._describe(exc, guard)}, b""
        finally:
            conn.close()

    def op_build_state(self, req: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        self.next_image = b""
        conn = self.open_state(b"")

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
            self.run_limited(build, cpu_s=req["cpu_s"])
            return {"ok": True}, conn.serialize()
        except self._cpu_limit:
            return {"ok": False, "kind": "sandbox_error", "error": "CPU time limit exceeded building the state"}, b""
        except MemoryError:
            return {"ok": False, "kind": "sandbox_error", "error": "memory limit exceeded building the state"}, b""
        except Exception as exc:
            return {"ok": False, "kind": "tool_error", "error": f"initial state does not build: {self._describe(exc, self.guard)}"}, b""
        finally:
            conn.close()


def _describe(
    exc: BaseException, guard: Guard, type: Any = type, str: Any = str, traceback_type: Any = types.TracebackType
) -> str:
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
        message = str(exc)
    except Exception:
        message = "(its message could not be shown)"
    return f"{type(exc).__name__}: {message}{where}"


def _isolate_network() -> bool:
    """Move into a fresh network namespace (no usable interface); False where the OS does not allow it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        clone_newnet = 0x40000000
        ok = libc.unshare(clone_newnet) == 0
        if not ok and os.geteuid() != 0:
            clone_newuser = 0x10000000
            ok = libc.unshare(clone_newuser | clone_newnet) == 0
        return ok
    except Exception:
        return False
    finally:
        for name in [m for m in sys.modules if m == "ctypes" or m.startswith("ctypes.") or m == "_ctypes"]:
            del sys.modules[name]


def _hide_filesystem() -> bool:
    """chroot into an empty private directory (root, or inside our user namespace); False where not allowed.

    Everything the worker needs is imported before this, so arena code then sees no file at all."""
    jail = os.environ.get("ASTRA_SANDBOX_JAIL")
    if not jail:
        return False
    try:
        os.chroot(jail)
        os.chdir("/")
        return True
    except OSError:
        return False


def _on_cpu_limit(signum: int, frame: Any, limit_exceeded: type[BaseException] = CPULimitExceeded) -> None:
    raise limit_exceeded()


def serve(worker: Worker, snapshot: ModuleSnapshot, proto_in: int, proto_out: int, grace_s: float = IDLE_GRACE_S) -> None:
    """The request loop. Runs with the guard armed; see the module docstring for what it may touch (the grace
    is a default argument so that it is read once, not from an arena-writable global after each call)."""

    def housekeeping() -> None:
        snapshot.restore()
        worker.prepare_spare(worker.next_image)

    while True:
        try:
            req, blob = worker.read_request(proto_in)
        except (EOFError, ValueError, TypeError, KeyError, UnicodeDecodeError):
            return
        op = req.get("op")
        try:
            if op == "call":
                header, out_blob = worker.op_call(req, blob)
            elif op == "build_state":
                header, out_blob = worker.op_build_state(req)
            elif op == "ping":
                header, out_blob = {"ok": True, "pid": os.getpid(), "cpu_s": worker._process_time()}, b""
            else:
                header, out_blob = {"ok": False, "kind": "sandbox_error", "error": f"unknown op {op!r}"}, b""
        except BaseException as exc:  # the worker's own fault, or arena code striking late: answer, then go
            why = f"sandbox worker failed: {worker._type(exc).__name__}"
            header, out_blob = {"ok": False, "kind": "sandbox_error", "error": why, "recycle": why}, b""
        header["seq"] = req.get("seq")
        worker.write_reply(proto_out, header, out_blob)
        if header.get("recycle"):
            return
        if op in ("call", "build_state"):
            # Housekeeping, off the reply's critical path: first let the gym run (IDLE_GRACE_S), then put back
            # what arena code rebound in any module, then open the next call's connection, all before the next
            # request is even read.
            worker._select([proto_in], [], [], grace_s)
            try:  # under a CPU budget: an arena object's __eq__ runs during the comparison
                worker.run_limited(housekeeping, cpu_s=2.0)
            except BaseException:
                return  # the gym sees this worker gone and replaces it


def main() -> None:
    memory_mb = int(os.environ.get("ASTRA_SANDBOX_MEMORY_MB", "1024"))
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    network_isolated = _isolate_network()

    for name in sorted(ALLOWED_MODULES) + list(PRELOADED_SUBMODULES):
        __import__(name)
    filesystem_hidden = _hide_filesystem()
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.setrecursionlimit(400)
    guard = Guard()
    worker = Worker(memory_mb, guard)
    worker.prepare_spare()
    ready = {"ok": True, "ready": True, "pid": os.getpid(), "network_isolated": network_isolated,
             "filesystem_hidden": filesystem_hidden}  # fmt: skip
    worker.write_reply(proto_out, ready, b"")
    snapshot = ModuleSnapshot()  # last: every module the worker will ever load is loaded by now
    guard.arm()
    serve(worker, snapshot, proto_in, proto_out)


if __name__ == "__main__":
    main()
