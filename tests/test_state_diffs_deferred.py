"""State diffs follow the call's reply instead of delaying it: the sandbox pool answers a writing call with its
result and state at once and hands over the diff as a task that reads the frame the process sends afterwards.
That frame is untrusted: one that is late, lost, of another call or malformed becomes a diff that says so, and
the process that sent it serves nothing more; the episode's next call gets a fresh one."""

from __future__ import annotations

import asyncio
import json

import pytest

from gym_server.builtin import builtin_arenas
from gym_server.models import StateDiff
from gym_server.sandbox.config import SandboxConfig
from gym_server.sandbox.diffs import follow
from gym_server.sandbox.pool import SandboxPool
from gym_server.sandbox.processes import SandboxProcess
from gym_server.sandbox.protocol import PREFIX

BOOKING = "airline-book-cheapest-sfo-jfk"


async def test_the_pool_answers_before_the_diff_and_the_diff_follows():
    arena = next(a for a in builtin_arenas() if a.id == BOOKING)
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(arena.initial_state)
        owner = "episode-1/" + arena.id
        outcome = await pool.call(arena.implementation, "book_flight", {"flight_id": "B6400", "passenger_id": "P001"}, state, owner=owner)
        assert outcome.ok and outcome.result["status"] == "confirmed" and outcome.state is not None
        assert isinstance(outcome.diff, asyncio.Task)  # the answer came without it
        diff = await outcome.diff
        assert diff.tables["flights"].changed[0].columns == {"seats_left": (5, 4)} and diff.tables["bookings"].n_added == 1
        read = await pool.call(arena.implementation, "get_flight", {"flight_id": "B6400"}, outcome.state, owner=owner)
        assert read.ok and read.result["seats_left"] == 4 and read.diff is None  # a read: no diff follows
        unlogged = await pool.call(arena.implementation, "book_flight", {"flight_id": "B6400", "passenger_id": "P002"}, outcome.state, diff=False)
        assert unlogged.ok and unlogged.state is not None and unlogged.diff is None  # a validation's call: none is made


class FakeProcess:
    """What `follow` uses of a sandbox process, sending one given frame (or none)."""

    def __init__(self, frame: bytes | None) -> None:
        self.frame, self.closed, self.broken = frame, False, False

    async def receive(self) -> tuple[int, bytes]:
        if self.frame is None:
            raise EOFError
        if self.frame == b"never":
            await asyncio.sleep(3600)
        head_len, _ = PREFIX.unpack(self.frame[: PREFIX.size])
        return head_len, self.frame[PREFIX.size :]

    def close(self) -> None:
        self.closed = True


GOOD = {"tables": {"t": {"added": [{"v": 1}], "changed": [], "removed": [], "n_added": 1, "n_changed": 0, "n_removed": 0, "truncated": False}}, "truncated": False}


def frame(header: object, blob: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return PREFIX.pack(len(head), len(blob)) + head + blob


@pytest.mark.parametrize("sent, why", [
    (None, "it was lost with the process"),
    (b"never", "did not send the state diff in time"),
    (frame({"seq": 8, "diff": GOOD}), "was malformed"),  # another call's
    (frame({"seq": 7, "diff": GOOD}, b"extra"), "was malformed"),
    (frame([1, 2]), "was malformed"),
    (PREFIX.pack(3, 0) + b"{{{", "was malformed"),
    (frame({"seq": 7, "diff": {"tables": {"t": {"n_added": -1}}}}), "sent a malformed state diff"),
    (frame({"seq": 7, "diff": "not a diff"}), "sent a malformed state diff"),
    (frame({"seq": 7}), "sent a malformed state diff"),
])  # fmt: skip
async def test_a_diff_that_is_not_one_breaks_the_process_not_the_call(sent, why):
    process, killed = FakeProcess(sent), []
    diff = await follow(process, 7, 0.2, killed.append)  # type: ignore[arg-type]
    assert isinstance(diff, StateDiff) and diff.truncated and why in (diff.error or "") and "stands" in (diff.error or "")
    assert killed == [process] and process.closed and process.broken


async def test_a_good_diff_is_checked_and_passed_on():
    process, killed = FakeProcess(frame({"seq": 7, "diff": GOOD})), []
    diff = await follow(process, 7, 1.0, killed.append)  # type: ignore[arg-type]
    assert diff.tables["t"].n_added == 1 and diff.error is None and not killed


async def test_the_next_call_goes_out_before_the_last_diff_is_in_and_survives_a_broken_one():
    """Back to back on one episode: the next request is written while the last call's diff is still coming (the
    process would otherwise wait out its grace for a request the gym held back), the diff is still read first,
    and when that diff breaks the process, the call is served by a fresh process instead of failing."""
    arena = next(a for a in builtin_arenas() if a.id == BOOKING)
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(arena.initial_state)
        owner = "episode-2/" + arena.id
        book = {"flight_id": "B6400", "passenger_id": "P001"}
        sent_early: list[bool] = []
        request = SandboxProcess.request

        async def spied(process: SandboxProcess, frame: bytes) -> tuple[int, bytes]:
            sent_early.append(process.follows is not None and not process.follows.done())  # its last diff still coming
            return await request(process, frame)

        first = await pool.call(arena.implementation, "book_flight", book, state, owner=owner)
        SandboxProcess.request = spied  # type: ignore[method-assign]
        try:
            second = await pool.call(arena.implementation, "book_flight", {**book, "passenger_id": "P002"}, first.state, owner=owner)
        finally:
            SandboxProcess.request = request  # type: ignore[method-assign]
        assert first.ok and second.ok and sent_early == [True]
        assert (await first.diff).tables["flights"].changed[0].columns == {"seats_left": (5, 4)}
        assert (await second.diff).tables["flights"].changed[0].columns == {"seats_left": (4, 3)}
        process = pool._owned[owner]
        served = process.id

        async def broken() -> StateDiff:  # what `follow` does with a malformed diff
            await asyncio.sleep(0.05)
            process.broken = True
            pool._kill(process)
            process.close()
            return StateDiff(truncated=True, error="broken")

        process.follows = asyncio.get_running_loop().create_task(broken())
        third = await pool.call(arena.implementation, "get_flight", {"flight_id": "B6400"}, second.state, owner=owner)
        assert third.ok and third.result["seats_left"] == 3, third
        assert pool._owned[owner].id != served  # a fresh process took the call


async def test_an_episode_ended_right_after_a_writing_call_keeps_that_calls_diff():
    """The process computes its diff after a short grace; an episode released (or an idle process evicted) within
    it is closed once the diff is in, not before: closing it at once lost the diff with the process."""
    arena = next(a for a in builtin_arenas() if a.id == BOOKING)
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(arena.initial_state)
        diffs = []
        for n in range(3):
            owner = f"episode-{n}/" + arena.id
            outcome = await pool.call(arena.implementation, "book_flight", {"flight_id": "B6400", "passenger_id": "P001"}, state, owner=owner)
            assert outcome.ok and outcome.diff is not None and not outcome.diff.done()
            pool.release(f"episode-{n}")  # at once: its diff is still being computed
            diffs.append(await outcome.diff)
        assert all(d.error is None and d.tables["bookings"].n_added == 1 for d in diffs), diffs
