"""Compiling a repeated tool's statements on the next call's fresh handle, before the call (`Executor.prepare`).

The statements come from the handle arena code just used, so they are read with every callback arena code could
have left on it switched off, and only statements that do nothing until stepped are compiled: SQLite applies
some PRAGMAs when it compiles them. Everything used here is captured when the `Ahead` is built, in the
template, before any arena code runs (see `execute`).
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterable

SCHEMA_READ = "SELECT 1 FROM sqlite_master LIMIT 0"
"""The statement `prepare` runs on each fresh handle to read its schema (never compiled ahead for a call)."""
_COMPILED = "SELECT sql FROM sqlite_stmt LIMIT 64"
"""The statements a handle holds compiled (SQLite's `sqlite_stmt` table; Python's statement cache keeps a call's)."""
_WARMABLE = re.compile(r"\s*(?:SELECT|INSERT|UPDATE|DELETE|REPLACE|WITH|VALUES)\b", re.IGNORECASE)
"""Statements that do nothing until stepped. A PRAGMA can take effect when it is compiled, so none is warmed."""
MAX_WARMED = 16
MAX_WARMED_CHARS = 8192


class Ahead:
    def __init__(self) -> None:
        base = sqlite3.Connection
        self._execute, self._fetchall, self._sqlite_error = base.execute, sqlite3.Cursor.fetchall, sqlite3.Error
        self._set_authorizer, self._set_progress, self._set_trace = base.set_authorizer, base.set_progress_handler, base.set_trace_callback
        self._set_rows, self._set_text = base.row_factory.__set__, base.text_factory.__set__  # type: ignore[attr-defined]
        self._warmable, self._never_binds = _WARMABLE.match, range(1 << 40)
        self._type, self._len, self._str, self._tuple = type, len, str, tuple
        self._skipped = (_COMPILED, SCHEMA_READ)
        self._max_warmed, self._max_warmed_chars = MAX_WARMED, MAX_WARMED_CHARS

    def statements(self, conn: sqlite3.Connection) -> list[str]:
        """The statements `conn` (the handle arena code just used) holds compiled, read with every callback arena
        code could have left on it switched off first (captured C methods: nothing of arena code's runs here)."""
        try:
            self._set_authorizer(conn, None)
            self._set_progress(conn, None, 0)
            self._set_trace(conn, None)
            self._set_rows(conn, None)
            self._set_text(conn, self._str)
            rows = self._fetchall(self._execute(conn, _COMPILED))
        except Exception:
            return []  # the handle was closed, or is otherwise unusable: the next call compiles its own
        warm: list[str] = []
        for row in rows:
            sql = row[0] if self._type(row) is self._tuple and self._len(row) == 1 else None
            if self._type(sql) is self._str and self._len(sql) <= self._max_warmed_chars and sql not in self._skipped and self._warmable(sql):
                warm.append(sql)
                if self._len(warm) >= self._max_warmed:
                    break
        return warm

    def compile(self, conn: sqlite3.Connection, statements: Iterable[str]) -> None:
        """Into the handle's statement cache, never run: no statement takes 2**40 parameters."""
        for sql in statements:
            try:
                self._execute(conn, sql, self._never_binds)
            except self._sqlite_error:
                pass  # the ProgrammingError about the bindings, or a statement this state no longer compiles
