"""Framing between the gym and its sandbox workers: a JSON header plus an optional binary blob.

The parent never unpickles anything a worker sends (a compromised worker must not run code in the
server), so headers are JSON and the episode's SQLite image travels as raw bytes beside them.
Frame: 4-byte big-endian header length, 4-byte blob length, header (UTF-8 JSON), blob.
"""

from __future__ import annotations

import json
import struct
from typing import Any

PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_BLOB_BYTES = 256 * 1024 * 1024


class FrameError(Exception):
    """The peer sent something that is not a frame (or one over the size limits)."""


_encode_header = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""Built once: `json.dumps` with options builds a new encoder per call, and this runs on every tool call."""


def encode_frame(header: dict[str, Any], blob: bytes = b"") -> bytes:
    head = _encode_header(header).encode()
    return PREFIX.pack(len(head), len(blob)) + head + blob


def check_prefix(prefix: bytes) -> tuple[int, int]:
    head_len, blob_len = PREFIX.unpack(prefix)
    if head_len > MAX_HEADER_BYTES or blob_len > MAX_BLOB_BYTES:
        raise FrameError(f"frame too large (header {head_len} B, blob {blob_len} B)")
    return head_len, blob_len


def decode_header(raw: bytes) -> dict[str, Any]:
    try:
        header = json.loads(raw)
    except ValueError as exc:
        raise FrameError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a JSON object")
    return header
