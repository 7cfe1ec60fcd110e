"""The state diff of one writing call, computed in the sandbox process that ran it.

Only this process may open the episode's images with SQLite (they are untrusted bytes to the gym), and it holds
both: the image the call started from and the one it left. Each is loaded into a fresh handle that arena code
never saw (so nothing it registered on its own handle, a row factory, a function, a TEMP table, runs or
shadows a table here), rows are compared by primary key (rowid when a table declares none), at most
`max_rows_scanned` rows per table are read, and the answer is bounded in rows shown, value length and encoded
bytes, with `truncated` set wherever something was left out. The gym checks the answer again
(`gym_server.statediff`) as the untrusted JSON it is.

Like `Executor`, this runs after arena code has run in this process, so every callable it uses is captured when
it is built, before any arena code runs.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from typing import Any

DIFF_CPU_S = 0.5
"""CPU seconds a diff may take (its own budget, so a call that used most of its own still gets one)."""


class StateDiffer:
    def __init__(self, connect: Callable[[], sqlite3.Connection], encode: Callable[[Any], bytes], *,
                 max_rows_scanned: int = 20_000, max_rows_shown: int = 20, max_value_chars: int = 200,
                 max_bytes: int = 16 * 1024) -> None:  # fmt: skip
        # max_bytes = models.MAX_DIFF_BYTES (this process imports nothing of the gym's)
        self._connect, self._encode = connect, encode
        self.max_rows_scanned, self.max_rows_shown = max_rows_scanned, max_rows_shown
        self.max_value_chars, self.max_bytes = max_value_chars, max_bytes
        self._len, self._type, self._str, self._sorted, self._zip = len, type, str, sorted, zip
        self._bytes, self._scalars, self._tuple = bytes, (str, int, float, type(None)), tuple
        self._dict, self._any, self._enumerate, self._float = dict, any, enumerate, float
        self._process_time = time.process_time
        self._error = sqlite3.Error

    def diff(self, before: bytes, after: bytes, set_deadline: Callable[[float], None]) -> dict[str, Any]:
        """`{"tables": {name: {"added", "changed", "removed", "n_added", "n_changed", "n_removed", "truncated"}},
        "truncated": bool}`; tables with no difference are left out. `set_deadline` arms the SQL progress
        handler of the handles this opens with this diff's own CPU budget."""
        set_deadline(self._process_time() + DIFF_CPU_S)
        old, new = self._open(before), self._open(after)
        try:
            old_tables, new_tables = self._tables(old), self._tables(new)
            tables: dict[str, Any] = {}
            for name in self._sorted({**old_tables, **new_tables}):
                table = self._table(name, old if name in old_tables else None, new if name in new_tables else None,
                                    new_tables.get(name) or old_tables[name])  # fmt: skip
                if table["n_added"] or table["n_changed"] or table["n_removed"] or table["truncated"]:
                    tables[name] = table
            return self._bounded({"tables": tables, "truncated": self._any(t["truncated"] for t in tables.values())})
        except self._error as exc:
            return {"tables": {}, "truncated": True, "error": f"the diff could not be computed: {self._str(exc)[:200]}"}
        finally:
            old.close()
            new.close()

    def _open(self, image: bytes) -> sqlite3.Connection:
        conn = self._connect()
        conn.row_factory = None
        if image:
            conn.set_authorizer(None)  # deserialize attaches internally
            conn.deserialize(image)
        return conn

    def _tables(self, conn: sqlite3.Connection) -> dict[str, list[str]]:
        """Table name -> its key columns (primary key, in key order), or [] for rowid."""
        names = [r[0] for r in conn.execute(
            "SELECT name FROM main.sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'"
        )]  # fmt: skip
        tables = {}
        for name in names:
            info = conn.execute("SELECT name, pk FROM pragma_table_info(?, 'main')", (name,)).fetchall()
            tables[name] = [c for c, pk in self._sorted((r for r in info if r[1]), key=lambda r: r[1])]
        return tables

    def _rows(self, conn: sqlite3.Connection | None, name: str, key: list[str]) -> tuple[list[str], dict[Any, tuple[Any, ...]], bool]:
        if conn is None:
            return [], {}, False
        quoted = '"' + name.replace('"', '""') + '"'
        cursor = conn.execute(f"SELECT {'rowid, ' if not key else ''}* FROM main.{quoted} LIMIT ?", (self.max_rows_scanned + 1,))
        columns = [d[0] for d in cursor.description][0 if key else 1 :]
        where = [columns.index(k) for k in key]
        rows: dict[Any, tuple[Any, ...]] = {}
        for n, raw in self._enumerate(cursor):
            if n == self.max_rows_scanned:
                return columns, rows, True
            row = raw if key else raw[1:]
            rows[self._tuple(row[i] for i in where) if key else raw[0]] = row
        return columns, rows, False

    def _table(self, name: str, old: sqlite3.Connection | None, new: sqlite3.Connection | None, key: list[str]) -> dict[str, Any]:
        old_cols, old_rows, old_cut = self._rows(old, name, key)
        new_cols, new_rows, new_cut = self._rows(new, name, key)
        shown, value = self.max_rows_shown, self._value
        added, removed, changed = [], [], []
        n_added = n_removed = n_changed = 0
        for k, row in new_rows.items():
            before = old_rows.get(k)
            if before is None:
                n_added += 1
                if n_added <= shown:
                    added.append({c: value(v) for c, v in self._zip(new_cols, row)})
            elif before != row or old_cols != new_cols:
                n_changed += 1
                if n_changed <= shown:
                    was = self._dict(self._zip(old_cols, before))
                    cells = {c: [value(was.get(c)), value(v)] for c, v in self._zip(new_cols, row) if was.get(c) != v}
                    changed.append({"key": self._key(k, key, new_cols, row), "columns": cells})
        for k, row in old_rows.items():
            if k not in new_rows:
                n_removed += 1
                if n_removed <= shown:
                    removed.append({c: value(v) for c, v in self._zip(old_cols, row)})
        truncated = old_cut or new_cut or n_added > shown or n_changed > shown or n_removed > shown
        return {"added": added, "changed": changed, "removed": removed, "n_added": n_added, "n_changed": n_changed,
                "n_removed": n_removed, "truncated": truncated}  # fmt: skip

    def _key(self, k: Any, key: list[str], columns: list[str], row: tuple[Any, ...]) -> dict[str, Any]:
        if not key:
            return {"rowid": k}
        return {c: self._value(row[columns.index(c)]) for c in key}

    def _value(self, v: Any) -> Any:
        t = self._type(v)
        if t is self._bytes:
            return f"<{self._len(v)} bytes>"
        if t is self._scalars[0] and self._len(v) > self.max_value_chars:
            return v[: self.max_value_chars] + "…"
        if t is self._float and v - v != 0:
            return self._str(v)  # inf is no JSON number
        return v if t in self._scalars else self._str(t)

    def _bounded(self, diff: dict[str, Any]) -> dict[str, Any]:
        """Within `max_bytes` encoded: drop listed rows (keeping the counts) from the largest table down."""
        if self._len(self._encode(diff)) <= self.max_bytes:
            return diff
        diff["truncated"] = True
        for table in self._sorted(diff["tables"].values(), key=lambda t: -self._len(self._encode(t))):
            table["added"], table["changed"], table["removed"], table["truncated"] = [], [], [], True
            if self._len(self._encode(diff)) <= self.max_bytes:
                return diff
        names = self._sorted(diff["tables"])
        while names and self._len(self._encode(diff)) > self.max_bytes:
            del diff["tables"][names.pop()]  # thousands of tables changed: name what fits
        return diff
