"""The state diff that follows a writing call's reply.

A call's reply goes to the agent as soon as the sandbox process sends it; the process then computes what the call
changed (`inside/statediff.py`) and sends it as a frame of its own with the call's seq, announced by the reply's
`diff_follows`. The gym reads that frame in the background (`follow`), checks it as the untrusted JSON it is
(`gym_server.statediff`) and fills in the call log's entry; the process's next request waits for it, so frames
never cross. A diff that does not come, or comes malformed, is recorded as such (`error`, `truncated`), and the
process is not used again (the state change of the call itself stands).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from gym_server.models import StateDiff
from gym_server.sandbox.processes import SandboxProcess
from gym_server.sandbox.protocol import FrameError, decode_header
from gym_server.statediff import checked_diff


def unusable(why: str) -> StateDiff:
    return StateDiff(truncated=True, error=why)


async def follow(process: SandboxProcess, seq: object, timeout_s: float, kill: Callable[[SandboxProcess], None]) -> StateDiff:
    """Read the diff that follows the reply numbered `seq`. Whatever goes wrong, the process is killed and closed:
    one that sent something the gym did not ask for serves nothing more."""
    diff, why = None, "sent a malformed state diff"
    try:
        async with asyncio.timeout(timeout_s):
            head_len, body = await process.receive()
        header = decode_header(body[:head_len])
        if header.get("seq") != seq or head_len != len(body):
            raise FrameError("the frame after the reply is not its diff")
        diff = checked_diff(header.get("diff"))
    except asyncio.TimeoutError:
        why = "did not send the state diff in time"
    except (EOFError, ConnectionError):
        why = "ended before the state diff came: it was lost with the process"
    except (FrameError, ValueError):
        why = "sent a frame after the reply that was malformed"
    if diff is not None:
        return diff
    kill(process)
    process.close()
    process.broken = True
    return unusable(f"the sandbox process {why}; the call's change to the state stands")
