"""The frame format between the gym and its sandbox processes: a JSON header plus an optional binary blob.

Frame: 4-byte big-endian header length, 4-byte blob length, header (UTF-8 JSON), blob. The gym never unpickles
what a sandbox process sends, so headers are JSON and SQLite images and results travel as raw bytes beside them.
Control messages between the gym and the template use the same layout, one per SOCK_SEQPACKET message.
"""

from __future__ import annotations

import struct

PREFIX = struct.Struct(">II")
MAX_HEADER_BYTES = 16 * 1024 * 1024
MAX_BLOB_BYTES = 256 * 1024 * 1024
MAX_CONTROL_BYTES = 192 * 1024
"""One control message (a SOCK_SEQPACKET datagram) stays below the default socket buffer."""
