"""JSONL files that a killed run resumes from (trajectories, synthesis stages, generated arenas).

Every writer appends whole lines and flushes; a kill can still leave the last line cut short. Readers skip
such a line rather than fail: the row it held is simply produced again by the resumed run.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar, overload

from pydantic import BaseModel

Row = TypeVar("Row", bound=BaseModel)


@overload
def read_rows(path: Path, model: type[Row]) -> list[Row]: ...
@overload
def read_rows(path: Path, model: None = None) -> list[dict[str, Any]]: ...
def read_rows(path: Path, model: type[BaseModel] | None = None) -> list[Any]:
    """The rows of `path` as `model` (or as JSON objects), none when it does not exist; unreadable lines skipped."""
    if not path.exists():
        return []
    rows: list[Any] = []
    with path.open(encoding="utf-8") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = model.model_validate_json(line) if model is not None else _object(line)
            except ValueError:
                continue  # a line cut short by a kill
            rows.append(row)
    return rows


def append_rows(path: Path, rows: Iterable[BaseModel]) -> None:
    """Append whole lines in one write, flushed, so a kill leaves at most the last line cut short."""
    with path.open("a", encoding="utf-8") as fh:
        fh.write("".join(r.model_dump_json() + "\n" for r in rows))
        fh.flush()


def _object(line: str) -> dict[str, Any]:
    import json

    row = json.loads(line)
    if not isinstance(row, dict):
        raise ValueError("a row must be a JSON object")
    return row
