"""The second layer inside a sandbox process: an audit hook, restricted builtins and an import allow-list.

The boundary is the kernel (see `template`): a fresh unprivileged process in its own namespaces under seccomp,
used for one call. This layer only makes hostile code fail early with a readable message instead of a bare
EPERM, and it keeps honest arena code to the modules the gym promises. It is armed in each call's process
after the process's own setup and before any arena code runs, and never disarmed.
"""

from __future__ import annotations

import builtins
import gc
import sys
from typing import Any

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


class CPULimitExceeded(BaseException):
    """Raised in arena code when its CPU budget runs out (a BaseException so `except Exception` misses it)."""


class Guard:
    """The audit hook's switches. The hook's state lives in closures; arena code can reach neither them nor the
    frames that hold them (frame access is refused, and signal handlers cannot be installed under seccomp).

    A process serves the calls of one episode's arena, so once armed the hook stays armed across calls: the
    process's own steps that it refuses (opening the next call's SQLite handle) are let through one announced
    event at a time, on C callables captured before any arena code ran (`expect`)."""

    def __init__(self) -> None:
        # captured: arena code can rebind module globals and builtins (`list` included)
        denied, violation, new_list = _DENIED_EVENT_PREFIXES, SandboxViolation, list
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
                return  # the process reading a traceback's line numbers; only C attribute reads run meanwhile
            if event.startswith(denied):
                raise violation(f"operation not permitted in the sandbox: {event}")

        def arm() -> None:
            state["armed"] = True

        def expect_exec(code: Any) -> None:
            state["code"] = code

        gc_disable, gc_enable = gc.disable, gc.enable

        def expect(*events: str) -> None:
            """Let exactly these events through, in this order; `expect()` withdraws what was not used. The
            collector is off meanwhile: a collection could run an arena object's finalizer in the window."""
            if events:
                gc_disable()
            state["expect"] = new_list(events)
            if not events:
                gc_enable()

        def read_frames(on: bool) -> None:
            """Allow reading traceback frames. The collector is off meanwhile: a collection could otherwise run
            an arena object's finalizer while frame reads are let through."""
            if on:
                gc_disable()
            state["frames"] = on
            if not on:
                gc_enable()

        sys.addaudithook(hook)
        self.arm, self.expect, self.expect_exec, self.read_frames = arm, expect, expect_exec, read_frames


def _restricted_import(allowed: frozenset[str], real_import: Any = __import__) -> Any:
    def restricted(name: str, globals_: Any = None, locals_: Any = None, fromlist: Any = (), level: int = 0) -> Any:
        root = name.split(".", 1)[0]
        if level != 0 or root not in allowed:
            raise ImportError(f"module {name!r} is not importable in arena code; allowed: {', '.join(sorted(allowed))}")
        return real_import(name, globals_, locals_, fromlist, level)

    return restricted


def safe_builtins(packages: list[str] = ()) -> dict[str, Any]:  # type: ignore[assignment]
    """`packages`: the operator's extra modules (a suite's backends), importable once `preload` has loaded them."""
    safe = {k: v for k, v in vars(builtins).items() if k not in _REMOVED_BUILTINS}
    safe["__import__"] = _restricted_import(ALLOWED_MODULES | {p.split(".", 1)[0] for p in packages})
    return safe


def preload(packages: list[str] = ()) -> None:  # type: ignore[assignment]
    """Import what arena code may import, now: inside a call's process nothing can be read from disk."""
    for name in sorted(ALLOWED_MODULES) + list(PRELOADED_SUBMODULES) + list(packages):
        __import__(name)
