"""The state diffs a sandbox process owes: computed when the log is read, not beside every call.

A writing call's reply goes to the agent with its result and new image and says `diff_owed`; the process keeps the
images and computes what each call changed (`inside/statediff.py`) only when the gym asks, with one `diffs`
request for all it owes (`OwedDiffs.settle`): when the episode's log is read or the episode ends, when an idle process is
evicted, or (unasked, in a frame after its last reply) when the process retires. So an episode's calls carry no
diff work at all, and reading its log costs one exchange per process instead of a frame per call. The batch is
untrusted JSON: each diff is checked as such (`gym_server.statediff`); a batch that does not come, or comes
malformed, resolves every diff in it as such (`error`, `truncated`) and the process serves nothing more (the
calls' state changes stand). A diff a process never sent (it died first) is recorded as lost with it.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from typing import Any

from gym_server.models import MAX_DIFF_BYTES, StateDiff
from gym_server.sandbox.processes import SandboxProcess
from gym_server.sandbox.protocol import FrameError, decode_header, encode_frame
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


async def resolve_batch(
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


class OwedDiffs:
    """The diffs the pool's processes owe, by episode: a future per writing call (`owe`), and one batch per process
    when they are asked for (`settle`, `retire`, `release`). A batch is never asked for beside a call on the same
    process: a busy process is asked once its call is done (`SandboxProcess.ask_again`)."""

    def __init__(self, seqs: Iterator[int], timeout_s: float, kill: Callable[[SandboxProcess], None]) -> None:
        self.seqs, self.timeout_s, self.kill = seqs, timeout_s, kill
        self.owing: dict[str, set[SandboxProcess]] = {}
        """By episode id: the processes that owe diffs of its calls."""
        self.reading: set[asyncio.Task[None]] = set()

    def owe(self, process: SandboxProcess, seq: int, owner: str | None) -> asyncio.Future[StateDiff]:
        future = process.owed[seq] = asyncio.get_running_loop().create_future()
        if owner is not None:
            self.owing.setdefault(owner.partition("/")[0], set()).add(process)
        return future

    def settle(self, episode_id: str) -> None:
        """Ask every process that owes diffs of the episode's calls for them. Never blocks; asking again while a
        batch is on its way is free."""
        for process in list(self.owing.get(episode_id, ())):
            if process.owed:
                self.ask(process)
            else:
                self.owing[episode_id].discard(process)
        if not self.owing.get(episode_id, True):
            del self.owing[episode_id]

    def release(self, episode_id: str) -> None:
        """The episode ended: ask what its processes still owe (one that is not its idle process any more, replaced
        say, still owes) and forget them."""
        for process in self.owing.pop(episode_id, ()):
            if not process.busy:
                self.ask(process)

    def retire(self, process: SandboxProcess) -> None:
        """Close an idle process once it has sent the diffs it owes."""
        self.ask(process)
        process.close_when_settled()

    def ask(self, process: SandboxProcess) -> None:
        if not process.owed:
            return
        follows = process.follows
        if process.busy or (follows is not None and not follows.done()):
            process.ask_again = True  # after the call under way (the pool's `_run`) or the batch on its way
            return
        if process.broken or process.channel is None or process.template.dead is not None:
            process.close()  # it can answer nothing more: what it owes is lost with it
            return
        self.read_batch(process, next(self.seqs), ask=True)

    def read_batch(self, process: SandboxProcess, seq: Any, *, ask: bool) -> None:
        """Read a batch of the diffs `process` owes: with `ask`, the `diffs` request is written here and now, so
        that it comes before any request written later (a call's, which then waits for the batch)."""
        owed, process.owed = process.owed, {}
        process.ask_again = False
        if ask:
            try:
                assert process.channel is not None  # it served a call
                process.channel.send(encode_frame({"op": "diffs", "seq": seq}))
            except EOFError:
                process.owed = owed
                process.close()  # closing already: what it owes is lost with it
                return
        task = process.follows = asyncio.get_running_loop().create_task(resolve_batch(process, owed, seq, self.timeout_s, self.kill, ask=ask))
        self.reading.add(task)

        def done(_: asyncio.Task[None]) -> None:
            self.reading.discard(task)
            if process.ask_again and not process.busy:
                self.ask(process)

        task.add_done_callback(done)

    def close(self) -> None:
        """The pool is closing: batches on their way resolve their diffs as the gym's stopping."""
        for task in self.reading:
            task.cancel()
