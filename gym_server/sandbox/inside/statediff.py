"""The state diff of one writing call, computed in the sandbox process that ran it.

Only this process may open the episode's images with SQLite (they are untrusted bytes to the gym), and it holds
both: the image the call started from and the one it left. Both are loaded into a fresh handle that arena code
never saw (so nothing it registered on its own handle, a row factory, a function, a TEMP table, runs or
shadows a table here); SQLite finds the rows that differ (EXCEPT, both ways), which are then matched by
primary key (rowid when a table declares none) into added, changed and removed; at most `max_rows_scanned`
differing rows per table and side are read, and the answer is bounded in rows shown, value length and encoded
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

Schema = tuple[tuple[Any, ...], ...]
"""An image's `sqlite_master` rows: (type, name, tbl_name, rootpage, sql)."""

SCHEMAS_KEPT = 16
"""Schemas (their tables' CREATE statements) whose columns and keys a differ keeps; past that it starts over."""


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
        self._error = (sqlite3.Error, TypeError, ValueError, AttributeError)
        """What a diff can meet on an image arena code wrote (a `sqlite_master` name that is no text, say)."""
        self._conn: sqlite3.Connection | None = None
        self._empty: bytes | None = None
        self._seen: tuple[Schema, Schema, bytes, bytes] | None = None
        """The `sqlite_master` rows and text encodings of the images the kept handle holds (`_open`)."""
        self._schemas: dict[tuple[tuple[str, str], ...], dict[str, tuple[list[str], list[str]]]] = {}
        """Columns and keys by the tables' (name, CREATE statement) pairs (`_tables`)."""

    def diff(self, before: bytes, after: bytes, set_deadline: Callable[[float], None]) -> dict[str, Any]:
        """`{"tables": {name: {"added", "changed", "removed", "n_added", "n_changed", "n_removed", "truncated"}},
        "truncated": bool}`; tables with no difference are left out. `set_deadline` arms the SQL progress
        handler of the handle this opens with this diff's own CPU budget."""
        set_deadline(self._process_time() + DIFF_CPU_S)
        try:
            conn, old_schema, new_schema = self._open(before, after)
            old_tables, new_tables = self._tables(conn, "old", old_schema), self._tables(conn, "main", new_schema)
            tables: dict[str, Any] = {}
            for name in self._sorted({**old_tables, **new_tables}):
                table = self._table(conn, name, old_tables.get(name), new_tables.get(name))
                if table["n_added"] or table["n_changed"] or table["n_removed"] or table["truncated"]:
                    tables[name] = table
            return self._bounded({"tables": tables, "truncated": self._any(t["truncated"] for t in tables.values())})
        except self._error as exc:
            self.close()  # a handle an error left in doubt is not used again
            return {"tables": {}, "truncated": True, "error": f"the diff could not be computed: {self._str(exc)[:200]}"}

    def _open(self, before: bytes, after: bytes) -> tuple[sqlite3.Connection, Schema, Schema]:
        """This process's differ handle, the after image loaded as `main` and the before image as `old`, so that
        SQLite itself finds the rows that differ (EXCEPT) and unchanged rows never reach Python, with what each
        image's `sqlite_master` holds. The handle is kept between diffs (arena code never sees it): its prepared
        statements survive, which halves a diff's CPU on small states (bench/state_diff_cost.py). But a prepared
        statement (and the schema SQLite parsed) belongs to the schemas the handle held when it was prepared,
        and SQLite tells a new schema only by its cookie, which two images can share with different tables
        (arena code can even set it): a `PRAGMA table_info` then answered the last image's columns. So the
        handle serves only images whose `sqlite_master` (and text encoding) match those it last held; any other
        pair gets a fresh handle."""
        empty = self._empty_image()
        after, before = after or empty, before or empty
        conn = self._conn or self._fresh()
        conn.deserialize(after)
        conn.deserialize(before, name="old")
        seen = (self._schema(conn, "old"), self._schema(conn, "main"), before[56:60], after[56:60])
        if self._seen is not None and seen != self._seen:
            self.close()
            conn = self._fresh()
            conn.deserialize(after)
            conn.deserialize(before, name="old")
        self._seen = seen
        return conn, seen[0], seen[1]

    def _fresh(self) -> sqlite3.Connection:
        conn = self._connect()
        conn.row_factory = None
        conn.set_authorizer(None)  # our own handle: attach and deserialize (which attaches internally)
        conn.execute("ATTACH ':memory:' AS old")
        self._conn = conn
        return conn

    def _schema(self, conn: sqlite3.Connection, schema: str) -> Schema:
        """Every row of the image's `sqlite_master`, read as data (page 1), which no stale statement misreads."""
        return self._tuple(conn.execute(f"SELECT type, name, tbl_name, rootpage, sql FROM {schema}.sqlite_master ORDER BY rowid").fetchall())

    def close(self) -> None:
        """Close the kept handle: the template calls it after its warm-up, so that no process forked from it
        inherits an open SQLite handle (SQLite's state must not cross a fork)."""
        conn, self._conn, self._seen = self._conn, None, None
        if conn is not None:
            conn.close()

    def _empty_image(self) -> bytes:
        """A database without tables (SQLite will not load zero bytes)."""
        if self._empty is None:
            conn = self._connect()
            try:
                conn.set_authorizer(None)
                conn.execute("CREATE TABLE x (a)")
                conn.execute("DROP TABLE x")
                self._empty = conn.serialize()
            finally:
                conn.close()
        return self._empty

    def _tables(self, conn: sqlite3.Connection, schema: str, rows: Schema) -> dict[str, tuple[list[str], list[str]]]:
        """Table name -> (its columns, its key columns: the primary key in key order, or [] for rowid). A table's
        columns and key follow from its name and CREATE statement alone, so they are read once per set of
        statements (one PRAGMA per table) and kept: an episode's calls seldom change its schema, and reading it
        for every diff cost as much as the rest of a small one. One PRAGMA per table, not the `pragma_table_info`
        table-valued function: on a handle whose databases were replaced (`deserialize`, as this kept handle's
        are for every diff) a cached plan of that function read freed schema memory and crashed the process
        (SQLite 3.x, reproduced in tests/test_state_diffs.py)."""
        statements = self._tuple(self._sorted(
            (name, sql) for kind, name, _, _, sql in rows if kind == "table" and name[:7].lower() != "sqlite_"
        ))  # fmt: skip
        known = self._schemas.get(statements)
        if known is not None:
            return known
        tables: dict[str, tuple[list[str], list[str]]] = {}
        for name, _ in statements:
            quoted = '"' + name.replace('"', '""') + '"'
            info = conn.execute(f"PRAGMA {schema}.table_info({quoted})").fetchall()
            tables[name] = ([row[1] for row in info], [column for _, column in self._sorted((row[5], row[1]) for row in info if row[5])])
        if self._len(self._schemas) >= SCHEMAS_KEPT:
            self._schemas.clear()
        self._schemas[statements] = tables
        return tables

    def _only_in(self, conn: sqlite3.Connection, name: str, schema: str, other: str | None, key: list[str]) -> tuple[list[str], dict[Any, tuple[Any, ...]], bool]:
        """Rows of `schema`.`name` not in `other`.`name` (all its rows when `other` is None), keyed; at most
        `max_rows_scanned`, and whether there were more."""
        quoted = '"' + name.replace('"', '""') + '"'
        select = f"SELECT {'rowid, ' if not key else ''}* FROM {{}}.{quoted}"
        sql = select.format(schema) + (f" EXCEPT {select.format(other)}" if other else "") + " LIMIT ?"
        cursor = conn.execute(sql, (self.max_rows_scanned + 1,))
        columns = [d[0] for d in cursor.description][0 if key else 1 :]
        where = [columns.index(k) for k in key]
        rows: dict[Any, tuple[Any, ...]] = {}
        for n, raw in self._enumerate(cursor):
            if n == self.max_rows_scanned:
                return columns, rows, True
            row = raw if key else raw[1:]
            rows[self._tuple(row[i] for i in where) if key else raw[0]] = row
        return columns, rows, False

    def _table(self, conn: sqlite3.Connection, name: str, old: tuple[list[str], list[str]] | None, new: tuple[list[str], list[str]] | None) -> dict[str, Any]:
        key = (new or old)[1]  # type: ignore[index]
        same = old is not None and new is not None and old == new  # same columns: SQLite compares whole rows
        none: tuple[list[str], dict[Any, tuple[Any, ...]], bool] = ([], {}, False)
        new_cols, new_rows, new_cut = self._only_in(conn, name, "main", "old" if same else None, key) if new else none
        old_cols, old_rows, old_cut = self._only_in(conn, name, "old", "main" if same else None, key) if old else none
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
