"""The gym's check of a state diff a sandbox process sent: untrusted JSON, like a tool's result.

The process that ran arena code computed it (`sandbox/inside/statediff.py`), so the gym trusts nothing in it:
it must be within the byte bound once encoded and fit `StateDiff` exactly, or the call is answered as a
sandbox error (its state change discarded), as for a malformed result.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from gym_server.models import MAX_DIFF_BYTES, StateDiff


def checked_diff(value: Any) -> StateDiff | None:
    """The diff as a `StateDiff`, or None when it is not one (missing, too large, of the wrong shape)."""
    if not isinstance(value, dict):
        return None
    try:
        if len(json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode()) > MAX_DIFF_BYTES:
            return None  # encoded as the sandbox encodes it, which bounds it to MAX_DIFF_BYTES
        return StateDiff.model_validate(value)
    except (ValidationError, ValueError, TypeError, RecursionError):
        return None
