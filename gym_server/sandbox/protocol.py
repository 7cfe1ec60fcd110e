"""The gym's side of the frame format in `inside.frames` (the sandbox side re-implements reading and writing on
callables it captured before arena code ran)."""

from __future__ import annotations

import json
from typing import Any

from gym_server.sandbox.inside.frames import MAX_BLOB_BYTES, MAX_HEADER_BYTES, PREFIX

__all__ = ["PREFIX", "FrameError", "check_prefix", "decode_control", "decode_header", "encode_frame"]


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
    except (ValueError, RecursionError) as exc:
        raise FrameError(f"header is not JSON: {exc}") from None
    if not isinstance(header, dict):
        raise FrameError("header is not a JSON object")
    return header


def decode_control(message: bytes) -> tuple[dict[str, Any], bytes]:
    """One control message (a whole SOCK_SEQPACKET datagram) from the template."""
    if len(message) < PREFIX.size:
        raise FrameError("control message shorter than its prefix")
    head_len, payload_len = check_prefix(message[: PREFIX.size])
    if PREFIX.size + head_len + payload_len != len(message):
        raise FrameError("control message length does not match its prefix")
    body = message[PREFIX.size :]
    return decode_header(body[:head_len]), body[head_len:]
