"""Parsing untrusted JSON with limits, so a hostile body is a clear 400 and never a crash further in.

`json.loads` alone accepts what later code cannot handle: nesting ~1,000 deep raises RecursionError,
integers past 4,300 digits raise a bare ValueError (and smaller ones overflow `float()`), `1e999` reads
as infinity, `NaN` is not JSON at all, and a lone UTF-16 surrogate (`"\\ud800"`) becomes a `str` that no
UTF-8 encoder (SQLite, a JSON dump with `ensure_ascii=False`, a log line) will take. `parse_json`
refuses all of these with a `JSONLimitError` naming the problem. One parser serves the REST bodies and
the MCP endpoint's JSON-RPC bodies.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

MAX_DEPTH = 64
"""Deepest nesting of arrays and objects. Tool arguments and answers are shallow; 64 leaves room."""

MAX_INT_DIGITS = 64
"""Longest integer literal (sign excluded). Far past 64-bit ids and seeds, far below what breaks `float()`."""


class JSONLimitError(ValueError):
    """The body is not JSON, or is JSON this server will not take; the message says which and why."""


def _parse_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise JSONLimitError(f"an integer has {len(text.lstrip('-'))} digits; at most {MAX_INT_DIGITS} are accepted")
    return int(text)


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise JSONLimitError(f"the number {text[:40]}{'...' if len(text) > 40 else ''} is out of range for a double")
    return value


def _reject_constant(name: str) -> Any:
    raise JSONLimitError(f"request body is not valid JSON: {name} is not a JSON value")


_decoder = json.JSONDecoder(parse_int=_parse_int, parse_float=_parse_float, parse_constant=_reject_constant)


def _check_text(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise JSONLimitError("a string holds a lone UTF-16 surrogate (an unpaired \\ud800-\\udfff escape); strings must be valid Unicode") from None


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
"""A `\\uD800`-`\\uDFFF` escape: in text decoded from strict UTF-8 the only way a lone surrogate gets in."""


def _may_break_limits(text: str, from_utf8: bool) -> bool:
    """Whether `check_tree` could refuse what `text` decodes to, by two C scans of the text instead of a walk
    of the value: nesting needs an opening bracket per level, and a lone surrogate needs either an escape or
    (in text that did not come from UTF-8) a non-ASCII character. Both overcount (brackets in strings, an
    escaped backslash before `u`), which only means the walk runs."""
    if text.count("[") + text.count("{") > MAX_DEPTH:
        return True
    if not from_utf8 and not text.isascii():
        return True
    return _SURROGATE_ESCAPE.search(text) is not None


def check_tree(value: Any, max_depth: int = MAX_DEPTH) -> None:
    """Depth and text checks over an already decoded value, iteratively (a deep value must not recurse)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, str):
            _check_text(node)
        elif isinstance(node, (dict, list)):
            if depth >= max_depth:
                raise JSONLimitError(f"the JSON value is nested deeper than {max_depth} levels")
            if isinstance(node, dict):
                for key, item in node.items():
                    _check_text(key)
                    stack.append((item, depth + 1))
            else:
                stack.extend((item, depth + 1) for item in node)


def parse_json(body: bytes | str) -> Any:
    """Decode a JSON document under this module's limits; raises JSONLimitError with the reason."""
    try:
        text = body.decode("utf-8") if isinstance(body, bytes) else body
    except UnicodeDecodeError as exc:
        raise JSONLimitError(f"request body is not valid JSON: it is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        value = _decoder.decode(text)
    except JSONLimitError:
        raise
    except RecursionError:
        raise JSONLimitError(f"the JSON value is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:  # JSONDecodeError, and int() refusing a literal past the interpreter's limit
        raise JSONLimitError(f"request body is not valid JSON: {exc}") from None
    if _may_break_limits(text, isinstance(body, bytes)):  # every tool call comes through here: most need no walk
        check_tree(value)
    return value
