"""A sandbox worker: runs untrusted arena code, one call at a time, against an in-memory SQLite image.

Started by `gym_server.sandbox.pool` as `python -m gym_server.sandbox.worker`; speaks the frames of
`gym_server.sandbox.protocol` on stdin/stdout. Containment, outermost first:

1. the process itself: the parent kills it on a wall-clock deadline and starts a fresh one;
2. OS limits: address space, file size 0 (no file grows), no core dumps, a per-call CPU budget;
3. its own network namespace when the OS allows it (root, or user namespaces): no interface but a
   downed loopback, so nothing can connect anywhere;
4. an audit hook, armed while arena code runs, that refuses processes, signals, sockets, files,
   imports, ctypes, threads and frame introspection;
5. restricted builtins and an allow-list of importable modules;
6. a fresh state handle per call: the episode's SQLite image is deserialized into a private in-memory
   database that cannot ATTACH files, and the arena module is re-executed into a fresh namespace.

Each call gets the state image and returns the new image only when the code changed it.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import signal
import sqlite3
import sys
import time
import traceback
from collections import OrderedDict
from typing import Any

from gym_server.sandbox.protocol import PREFIX, check_prefix, decode_header, encode_frame

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


class SandboxViolation(PermissionError):
    pass


class _NoSuchFunction(Exception):
    pass


class CPULimitExceeded(BaseException):
    """Raised in arena code when its CPU budget runs out (a BaseException so `except Exception` misses it)."""


def _install_guard() -> tuple[Any, Any]:
    """Add the audit hook; return (arm, disarm). The switch lives in a closure, not a module global, so
    code that escapes the restricted builtins finds no flag to flip."""
    state: dict[str, Any] = {"armed": False, "code": None}

    def hook(event: str, args: tuple[Any, ...]) -> None:
        if not state["armed"]:
            return
        if event == "exec" and args and args[0] is state["code"]:
            state["code"] = None  # the arena module body we are about to run, once
            return
        if event.startswith(_DENIED_EVENT_PREFIXES):
            raise SandboxViolation(f"operation not permitted in the sandbox: {event}")

    def arm(code: Any = None) -> None:
        state["code"] = code
        state["armed"] = True

    def disarm() -> None:
        state["armed"] = False
        state["code"] = None

    sys.addaudithook(hook)
    return arm, disarm


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
    if action in (sqlite3.SQLITE_ATTACH, sqlite3.SQLITE_DETACH):
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK


class Worker:
    def __init__(self, memory_mb: int, arm: Any, disarm: Any) -> None:
        self.memory_mb = memory_mb
        self._arm, self._disarm = arm, disarm
        self.code_cache: OrderedDict[str, Any] = OrderedDict()
        self.safe_builtins = _safe_builtins()
        self.module_snapshot: dict[str, dict[str, Any]] = {}
        self.cpu_deadline: float = 0.0
        self._spare: sqlite3.Connection | None = None

    # -- state -------------------------------------------------------------------------------
    def _new_connection(self) -> sqlite3.Connection:
        conn = sqlite3.connect(":memory:", isolation_level=None, check_same_thread=False)
        conn.row_factory = _dict_row
        conn.set_progress_handler(self._sql_deadline, 20_000)
        return conn

    def prepare_spare(self) -> None:
        """Open the next call's connection while idle: opening one costs more than loading an image into it,
        and arena code never saw this one, so it is as fresh as one opened on demand."""
        if self._spare is None:
            self._spare = self._new_connection()

    def open_state(self, image: bytes) -> sqlite3.Connection:
        conn, self._spare = self._spare or self._new_connection(), None
        if image:
            conn.deserialize(image)  # attaches internally, so the authorizer comes after it
        conn.set_authorizer(_deny_attach)
        return conn

    def _sql_deadline(self) -> int:
        return 1 if self.cpu_deadline and time.process_time() > self.cpu_deadline else 0

    # -- code --------------------------------------------------------------------------------
    def compiled(self, code_id: str, source: str | None) -> Any:
        code = self.code_cache.get(code_id)
        if code is not None:
            self.code_cache.move_to_end(code_id)
            return code
        if source is None:
            raise KeyError(code_id)
        code = compile(source, f"<arena {code_id[:12]}>", "exec")
        self.code_cache[code_id] = code
        if len(self.code_cache) > 256:
            self.code_cache.popitem(last=False)
        return code

    def run_armed(
        self, fn: Any, args: tuple[Any, ...], kwargs: dict[str, Any], *, cpu_s: float, exec_code: Any = None
    ) -> Any:
        import resource

        used = time.process_time()
        self.cpu_deadline = used + cpu_s
        soft = int(used + cpu_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (soft, resource.RLIM_INFINITY))
        stdout, sys.stdout = sys.stdout, io.StringIO()
        self._arm(exec_code)
        try:
            return fn(*args, **kwargs)
        finally:
            self._disarm()
            sys.stdout = stdout
            self.cpu_deadline = 0.0
            resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))

    def restore_tampered_modules(self) -> list[str]:
        """Put back module attributes that arena code replaced, added or deleted; name the modules."""
        tampered = []
        for name, snap in self.module_snapshot.items():
            current = sys.modules[name].__dict__
            if current != snap:
                tampered.append(name)
                current.clear()
                current.update(snap)
        return tampered

    # -- operations --------------------------------------------------------------------------
    def op_call(self, req: dict[str, Any], image: bytes) -> tuple[dict[str, Any], bytes]:
        try:
            code = self.compiled(req["code_id"], req.get("source"))
        except KeyError:
            return {"ok": False, "kind": "need_source"}, b""
        except SyntaxError as exc:
            return {"ok": False, "kind": "tool_error", "error": f"arena code does not compile: {exc}"}, b""
        conn = self.open_state(image)
        namespace: dict[str, Any] = {"__builtins__": dict(self.safe_builtins), "__name__": "arena"}
        name = req["function"]

        def invoke() -> Any:
            exec(code, namespace)  # a fresh module namespace per call: no global survives into the next
            table = namespace.get("__tools__")  # generated arenas (emulators) map any tool name to a callable
            fn = table.get(name) if isinstance(table, dict) else namespace.get(name)
            if not callable(fn):
                raise _NoSuchFunction(name)
            return fn(conn, **req["arguments"])

        try:
            result = self.run_armed(invoke, (), {}, cpu_s=req["cpu_s"], exec_code=code)
            try:
                text = json.dumps(result, ensure_ascii=False, allow_nan=False).encode()
            except (TypeError, ValueError) as exc:
                return {"ok": False, "kind": "tool_error", "error": f"tool returned a value that is not JSON: {exc}"}, b""
            changed = conn.total_changes > 0
            # the result's JSON travels in the blob, ahead of the new image, so it is encoded once
            header = {"ok": True, "result_bytes": len(text), "changed": changed}
            return header, text + conn.serialize() if changed else text
        except _NoSuchFunction:
            return {"ok": False, "kind": "tool_error", "error": f"the arena defines no function {name!r}"}, b""
        except CPULimitExceeded:
            return {"ok": False, "kind": "sandbox_error", "error": f"CPU time limit exceeded ({req['cpu_s']} s)"}, b""
        except MemoryError:
            return {"ok": False, "kind": "sandbox_error", "error": f"memory limit exceeded ({self.memory_mb} MiB)"}, b""
        except SandboxViolation as exc:
            return {"ok": False, "kind": "sandbox_error", "error": str(exc)}, b""
        except sqlite3.OperationalError as exc:
            if "interrupted" in str(exc):
                return {"ok": False, "kind": "sandbox_error", "error": f"CPU time limit exceeded in SQL ({req['cpu_s']} s)"}, b""
            return {"ok": False, "kind": "tool_error", "error": _describe(exc)}, b""
        except RecursionError:
            return {"ok": False, "kind": "tool_error", "error": "RecursionError: maximum recursion depth exceeded"}, b""
        except Exception as exc:  # arena code raised: the tool's own error, for the agent to read
            return {"ok": False, "kind": "tool_error", "error": _describe(exc)}, b""
        finally:
            conn.close()

    def op_build_state(self, req: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        conn = self.open_state(b"")

        def build(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA user_version = 1")  # an image with no table still has a page to serialize
            db.execute("BEGIN")
            for statement in req["ddl"]:
                db.execute(statement)
            for table, rows in req["rows"].items():
                for row in rows:
                    cols = list(row)
                    quoted = ", ".join('"' + c.replace('"', '""') + '"' for c in cols)
                    marks = ", ".join("?" for _ in cols)
                    values = [json.dumps(v) if isinstance(v, (dict, list)) else v for v in row.values()]
                    db.execute(f'INSERT INTO "{table}" ({quoted}) VALUES ({marks})', values)
            db.execute("COMMIT")

        try:
            self.run_armed(build, (conn,), {}, cpu_s=req["cpu_s"])
            return {"ok": True}, conn.serialize()
        except CPULimitExceeded:
            return {"ok": False, "kind": "sandbox_error", "error": "CPU time limit exceeded building the state"}, b""
        except MemoryError:
            return {"ok": False, "kind": "sandbox_error", "error": "memory limit exceeded building the state"}, b""
        except Exception as exc:
            return {"ok": False, "kind": "tool_error", "error": f"initial state does not build: {_describe(exc)}"}, b""
        finally:
            conn.close()


def _describe(exc: BaseException) -> str:
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename.startswith("<arena")]
    where = f" (line {frames[-1].lineno}, in {frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {exc}{where}"


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


def _on_cpu_limit(signum: int, frame: Any) -> None:
    raise CPULimitExceeded()


def _read_exact(fd: int, n: int) -> bytes:
    chunks = []
    while n:
        chunk = os.read(fd, n)
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        n -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def main() -> None:
    import resource

    memory_mb = int(os.environ.get("ASTRA_SANDBOX_MEMORY_MB", "1024"))
    proto_in, proto_out = os.dup(0), os.dup(1)
    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    os.dup2(devnull, 1)
    network_isolated = _isolate_network()

    for name in sorted(ALLOWED_MODULES) + list(PRELOADED_SUBMODULES):
        __import__(name)
    filesystem_hidden = _hide_filesystem()
    guarded = ALLOWED_MODULES | {"builtins", "sys", "os", "sqlite3", "__main__", "gym_server"}
    snapshot = {
        name: dict(mod.__dict__)
        for name, mod in list(sys.modules.items())
        if name.split(".", 1)[0] in guarded and getattr(mod, "__dict__", None) is not None
    }
    signal.signal(signal.SIGXCPU, _on_cpu_limit)
    limit = memory_mb * 1024 * 1024
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_FSIZE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.setrecursionlimit(400)
    arm, disarm = _install_guard()
    worker = Worker(memory_mb, arm, disarm)
    worker.module_snapshot = snapshot
    worker.prepare_spare()

    ready = {"ok": True, "ready": True, "pid": os.getpid(), "network_isolated": network_isolated,
             "filesystem_hidden": filesystem_hidden}  # fmt: skip
    _write_all(proto_out, encode_frame(ready))
    while True:
        try:
            head_len, blob_len = check_prefix(_read_exact(proto_in, PREFIX.size))
            req = decode_header(_read_exact(proto_in, head_len))
            blob = _read_exact(proto_in, blob_len) if blob_len else b""
        except EOFError:
            return
        op = req.get("op")
        try:
            if op == "call":
                header, out_blob = worker.op_call(req, blob)
            elif op == "build_state":
                header, out_blob = worker.op_build_state(req)
            elif op == "ping":
                header, out_blob = {"ok": True, "pid": os.getpid(), "cpu_s": time.process_time()}, b""
            else:
                header, out_blob = {"ok": False, "kind": "sandbox_error", "error": f"unknown op {op!r}"}, b""
        except Exception as exc:  # the worker's own fault, not the arena's: answer, then ask to be replaced
            why = f"sandbox worker failed: {type(exc).__name__}: {exc}"
            header, out_blob = {"ok": False, "kind": "sandbox_error", "error": why, "recycle": why}, b""
        _write_all(proto_out, encode_frame(header, out_blob))
        if op in ("call", "build_state"):
            # Off the reply's critical path, but before the next request is even read: whatever arena code
            # replaced in a shared module (json, os, math, ...) is put back, so no later call sees it.
            worker.restore_tampered_modules()
            worker.prepare_spare()


if __name__ == "__main__":
    main()
