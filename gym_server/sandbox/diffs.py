"""The state diffs a sandbox process owes: computed when the log is read, not beside every call.

A writing call's reply goes to the agent with its result and new image and says `diff_owed`; the process keeps the
images and computes what each call changed (`inside/statediff.py`) only when the gym asks, with one `diffs`
request for all it owes (`settle`): when the episode's log is read or the episode ends, when an idle process is
evicted, or (unasked, in a frame after its last reply) when the process retires. So an episode's calls carry no
diff work at all, and reading its log costs one exchange per process instead of a frame per call. The batch is
untrusted JSON: each diff is checked as such (`gym_server.statediff`); a batch that does not come, or comes
malformed, resolves every diff in it as such (`error`, `truncated`) and the process serves nothing more (the
calls' state changes stand). A diff a process never sent (it died first) is recorded as lost with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from gym_server.models import MAX_DIFF_BYTES, StateDiff
from gym_server.sandbox.processes import SandboxProcess
from gym_server.sandbox.protocol import FrameError, decode_header
from gym_server.statediff import checked_diff


def unusable(why: str) -> StateDiff:
    return StateDiff(truncated=True, error=why)


def _parsed(blob: bytes, owed: int) -> dict[int, StateDiff]:
    """`[[seq, diff], ...]` with each diff checked; raises ValueError if the batch itself is not of that shape
    (a single malformed diff only becomes an unusable one) or longer than `owed` diffs can be, which is checked
    before anything is parsed."""
    if len(blob) > 2 + owed * (MAX_DIFF_BYTES + 32):
        raise ValueError("the batch is longer than the diffs owed can be")
    pairs = json.loads(blob)
    if not isinstance(pairs, list):
        raise ValueError("the diffs are not a list")
    diffs = {}
    for pair in pairs:
        if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int):
            raise ValueError("a diff is not a [seq, diff] pair")
        diffs[pair[0]] = checked_diff(pair[1]) or unusable("the sandbox process sent a malformed state diff; the call's change to the state stands")
    return diffs


async def settle(
    process: SandboxProcess, owed: dict[int, asyncio.Future[StateDiff]], seq: int, timeout_s: float,
    kill: Callable[[SandboxProcess], None], *, ask: bool,
) -> None:  # fmt: skip
    """Resolve the `owed` diffs (by the seqs of their calls) from one batch: the answer to the `diffs` request
    numbered `seq` (`ask`: the caller wrote it, before any later request, so that the process answers in that
    order), or sent unasked after the reply numbered `seq` (the process retires). Every future in `owed` is
    resolved when this returns, whatever happened (cancelled too)."""
    why = "sent a malformed batch of state diffs"
    try:
        try:
            async with asyncio.timeout(timeout_s):
                head_len, body = await process.receive()
            header = decode_header(body[:head_len])
            if header.get("seq") != seq or (ask and header.get("ok") is not True):
                raise FrameError("the frame is not the batch of diffs asked for")
            diffs = _parsed(body[head_len:], len(owed))
        except asyncio.TimeoutError:
            why = "did not send the state diffs in time"
        except (EOFError, ConnectionError):
            why = "ended before the state diffs came: they were lost with the process"
        except (FrameError, ValueError, RecursionError, UnicodeDecodeError):
            pass
        else:
            for call_seq, future in owed.items():
                if not future.done():
                    future.set_result(diffs.get(call_seq) or unusable("the sandbox process did not send this call's state diff"))
            if ask and header.get("retire") is True:
                process.broken = True  # it used its CPU or memory allowance and exits: the next call takes a fresh one
                process.close()
            return
        kill(process)
        process.close()
        process.broken = True
        for future in owed.values():
            if not future.done():
                future.set_result(unusable(f"the sandbox process {why}; the calls' changes to the state stand"))
    finally:
        for future in owed.values():
            if not future.done():
                future.set_result(unusable("the gym stopped before the state diff came"))
