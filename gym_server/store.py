"""The arena store: arenas from the built-in worlds, JSON files, directories and JSONL bundles, indexed in SQLite.

Listing must be instant at 10,000+ arenas, so opening a store reads each record only far enough for its
index row (id, domain, type, counts) and keeps the raw JSON beside it; the full pydantic validation runs
when an arena is first used. A directory store keeps its index in `.astra-index.sqlite`, rebuilt only when
a file's size or mtime changed.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from gym_server.models import Arena, ArenaSummary, ScenarioType

BUILTIN = "builtin"
INDEX_NAME = ".astra-index.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS arenas (
    id TEXT PRIMARY KEY, domain TEXT, scenario_type TEXT, language TEXT,
    n_subtasks INTEGER, n_tools INTEGER, body TEXT
);
CREATE INDEX IF NOT EXISTS arenas_domain ON arenas(domain);
CREATE INDEX IF NOT EXISTS arenas_type ON arenas(scenario_type);
"""


class ArenaNotFound(KeyError):
    pass


class InvalidArena(ValueError):
    """A stored arena failed validation when it was loaded."""


class StoreError(ValueError):
    """A store path cannot be read (missing, not JSON, records without an id)."""


def _index_row(record: dict[str, Any], where: str) -> tuple[Any, ...]:
    if not isinstance(record, dict) or not isinstance(record.get("id"), str):
        raise StoreError(f"{where}: an arena record must be a JSON object with a string 'id'")
    subtasks = record.get("subtasks") or []
    return (
        record["id"],
        str(record.get("domain", "")),
        str(record.get("scenario_type", "")),
        str(record.get("language", "en")),
        sum(1 for s in subtasks if isinstance(s, dict) and s.get("gold_call")),
        len(record.get("tools") or []),
        json.dumps(record, ensure_ascii=False, separators=(",", ":")),
    )


def iter_records(path: Path) -> Iterator[tuple[dict[str, Any], str]]:
    """Raw arena records of one file: a JSONL bundle, a JSON list, or one JSON arena."""
    try:
        if path.suffix == ".jsonl":
            with path.open(encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    if line.strip():
                        yield json.loads(line), f"{path}:{n}"
            return
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise StoreError(f"{path}: cannot read arenas: {exc}") from None
    for n, record in enumerate(data if isinstance(data, list) else [data]):
        yield record, f"{path}[{n}]"


def _files_of(path: Path) -> list[Path]:
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix in (".json", ".jsonl") and p.is_file())
    if path.is_file():
        return [path]
    raise StoreError(f"{path}: no such file or directory")


class ArenaStore:
    """Read-mostly; safe to share across the server's requests (the index connection is locked)."""

    def __init__(self, sources: Iterable[str | Path] = (BUILTIN,), cache_size: int = 4096) -> None:
        self.sources = [str(s) for s in sources]
        self._db = sqlite3.connect(":memory:", check_same_thread=False)
        self._db.executescript(_SCHEMA)
        self._lock = threading.Lock()
        self._parsed: OrderedDict[str, Arena] = OrderedDict()
        self._cache_size = cache_size
        for source in self.sources:
            self._add_source(source)

    # -- loading -----------------------------------------------------------------------------
    def _add_source(self, source: str) -> None:
        if source == BUILTIN:
            from gym_server.builtin import builtin_arenas

            rows = [_index_row(a.model_dump(mode="json", by_alias=True), "builtin") for a in builtin_arenas()]
            self._insert(rows, "builtin")
            return
        path = Path(source)
        files = _files_of(path)
        fingerprint = hashlib.sha256(
            json.dumps([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files]).encode()
        ).hexdigest()
        index_path = (path if path.is_dir() else path.parent) / (INDEX_NAME if path.is_dir() else f".{path.name}{INDEX_NAME}")
        if self._load_index(index_path, fingerprint):
            return
        rows = [_index_row(record, where) for f in files for record, where in iter_records(f)]
        self._insert(rows, source)
        self._save_index(index_path, fingerprint, rows)

    def add(self, arenas: list[Arena], source: str = "runtime") -> None:
        """Arenas made at run time (fronted MCP servers), listed and served like the others."""
        self._insert([_index_row(a.model_dump(mode="json", by_alias=True), source) for a in arenas], source)
        with self._lock:
            for arena in arenas:
                self._parsed[arena.id] = arena

    def _insert(self, rows: list[tuple[Any, ...]], source: str) -> None:
        with self._lock:
            try:
                with self._db:  # one transaction: a clash leaves nothing of this source behind
                    self._db.executemany("INSERT INTO arenas VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            except sqlite3.IntegrityError:
                raise StoreError(f"{source}: arena id {self._first_clash(rows)!r} appears more than once") from None

    def _first_clash(self, rows: list[tuple[Any, ...]]) -> str:
        seen: set[str] = set()
        for row in rows:
            if row[0] in seen or self._db.execute("SELECT 1 FROM arenas WHERE id = ?", (row[0],)).fetchone():
                return row[0]
            seen.add(row[0])
        return "?"

    def _load_index(self, index_path: Path, fingerprint: str) -> bool:
        if not index_path.is_file():
            return False
        try:
            disk = sqlite3.connect(f"file:{index_path}?mode=ro", uri=True)
            try:
                found = disk.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
                if not found or found[0] != fingerprint:
                    return False
                rows = disk.execute("SELECT * FROM arenas").fetchall()
            finally:
                disk.close()
        except sqlite3.Error:
            return False
        self._insert(rows, str(index_path))
        return True

    @staticmethod
    def _save_index(index_path: Path, fingerprint: str, rows: list[tuple[Any, ...]]) -> None:
        tmp = index_path.with_suffix(".tmp")
        try:
            tmp.unlink(missing_ok=True)
            disk = sqlite3.connect(tmp)
            disk.executescript(_SCHEMA)
            disk.executemany("INSERT INTO arenas VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            disk.execute("INSERT INTO meta VALUES ('fingerprint', ?)", (fingerprint,))
            disk.commit()
            disk.close()
            tmp.replace(index_path)
        except (OSError, sqlite3.Error):
            tmp.unlink(missing_ok=True)  # a read-only store still works; it is just indexed again next time

    # -- reading -----------------------------------------------------------------------------
    def __len__(self) -> int:
        with self._lock:
            return self._db.execute("SELECT COUNT(*) FROM arenas").fetchone()[0]

    def __contains__(self, arena_id: object) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM arenas WHERE id = ?", (arena_id,)).fetchone() is not None

    def _where(self, domain: str | None, scenario_type: str | None, prefix: str | None) -> tuple[str, list[Any]]:
        clauses, args = [], []
        if domain:
            clauses.append("domain = ?")
            args.append(domain)
        if scenario_type:
            clauses.append("scenario_type = ?")
            args.append(ScenarioType(scenario_type).value)
        if prefix:
            clauses.append("id LIKE ? ESCAPE '\\'")
            args.append(prefix.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%")
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", args

    def summaries(
        self, offset: int = 0, limit: int | None = None, domain: str | None = None,
        scenario_type: str | None = None, prefix: str | None = None,
    ) -> tuple[list[ArenaSummary], int]:  # fmt: skip
        where, args = self._where(domain, scenario_type, prefix)
        with self._lock:
            total = self._db.execute(f"SELECT COUNT(*) FROM arenas{where}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT id, domain, scenario_type, language, n_subtasks, n_tools FROM arenas{where}"
                " ORDER BY rowid LIMIT ? OFFSET ?",
                [*args, -1 if limit is None else limit, offset],
            ).fetchall()
        items = [
            ArenaSummary.model_construct(
                id=r[0], domain=r[1], scenario_type=r[2], language=r[3], n_subtasks=r[4], n_tools=r[5]
            )
            for r in rows
        ]
        return items, total

    def ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._db.execute("SELECT id FROM arenas ORDER BY rowid")]

    def raw(self, arena_id: str) -> dict[str, Any]:
        with self._lock:
            row = self._db.execute("SELECT body FROM arenas WHERE id = ?", (arena_id,)).fetchone()
        if row is None:
            raise ArenaNotFound(arena_id)
        return json.loads(row[0])

    def get(self, arena_id: str) -> Arena:
        with self._lock:
            cached = self._parsed.get(arena_id)
            if cached is not None:
                self._parsed.move_to_end(arena_id)
                return cached
        try:
            arena = Arena.model_validate(self.raw(arena_id))
        except ValidationError as exc:
            raise InvalidArena(f"arena {arena_id!r} is invalid: {_short(exc)}") from None
        with self._lock:
            self._parsed[arena_id] = arena
            if len(self._parsed) > self._cache_size:
                self._parsed.popitem(last=False)
        return arena

    def __iter__(self) -> Iterator[str]:
        return iter(self.ids())


def _short(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc + ': ' if loc else ''}{err['msg']}")
    return "; ".join(parts)


def write_bundle(arenas: Iterable[Arena], path: str | Path) -> int:
    """Write arenas as a JSONL bundle (what synthesis produces and `serve --arenas` reads)."""
    n = 0
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as fh:
        for arena in arenas:
            fh.write(arena.model_dump_json(by_alias=True) + "\n")
            n += 1
    tmp.replace(path)
    return n
