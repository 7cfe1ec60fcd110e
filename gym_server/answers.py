"""When does a value count as a given answer? One normalization for scoring, validation and synthesis.

Normalization: strings are case-folded, stripped and inner white space collapsed; a string that reads as a
number (optionally with thousands separators, a currency sign or a trailing unit word) compares as that
number; numbers compare with a relative tolerance of 1e-6 and ints equal floats; booleans stay booleans;
lists compare element-wise; dicts key-wise.
"""

from __future__ import annotations

import math
import re
import unicodedata
from typing import Any

_NUMBER = re.compile(r"^[\$€£¥]?\s*([-+]?\d{1,3}(?:,\d{3})+(?:\.\d+)?|[-+]?\d*\.?\d+(?:[eE][-+]?\d+)?)\s*([a-z%°]{0,12})$")


def normalize(value: Any) -> Any:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        try:
            return float(value)
        except OverflowError:  # beyond a double's range: compared exactly, as an int
            return value
    if isinstance(value, float):
        return value
    if isinstance(value, str):
        text = " ".join(unicodedata.normalize("NFKC", value).casefold().split())
        match = _NUMBER.match(text)
        if match:
            return float(match.group(1).replace(",", ""))
        return text
    if isinstance(value, (list, tuple)):
        return [normalize(v) for v in value]
    if isinstance(value, dict):
        return {str(k).casefold(): normalize(v) for k, v in value.items()}
    return str(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return a is b
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return a == b


def answers_equal(expected: Any, given: Any) -> bool:
    return _same(normalize(expected), normalize(given))


def result_contains_answer(expected: Any, result: Any) -> bool:
    """Whether a tool result returned this answer: the whole result, or one field of a returned record.

    Fields count at any depth of dicts, and through lists of exactly one element; the members of a longer
    list do not, so a tool that dumps a whole table does not solve every question about it.
    """
    target = normalize(expected)

    def walk(value: Any) -> bool:
        if _same(target, normalize(value)):
            return True
        if isinstance(value, dict):
            return any(walk(v) for v in value.values())
        if isinstance(value, list) and len(value) == 1:
            return walk(value[0])
        return False

    return walk(result)
