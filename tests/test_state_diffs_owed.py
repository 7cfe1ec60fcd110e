"""State diffs are owed, not sent: the sandbox pool answers a writing call with its result and state at once and
hands over a future for the diff, which the process computes only when the gym asks (`SandboxPool.settle`: the
episode's log is read, the episode ends, an idle process is evicted) or when it retires. A batch is untrusted:
one that is late, lost, of another request or malformed resolves every diff in it as such and the process serves
nothing more; one malformed diff in a good batch spoils only itself. No owed diff is ever left unresolved."""

from __future__ import annotations

import asyncio
import json
import sqlite3

import pytest

from gym_server.builtin import builtin_arenas
from gym_server.models import StateDiff
from gym_server.sandbox.config import SandboxConfig
from gym_server.sandbox.diffs import resolve_batch
from gym_server.sandbox.inside.execute import Executor
from gym_server.sandbox.pool import SandboxPool
from gym_server.sandbox.processes import SandboxProcess
from gym_server.sandbox.protocol import PREFIX

BOOKING = "airline-book-cheapest-sfo-jfk"


def booking():
    return next(a for a in builtin_arenas() if a.id == BOOKING)


def seats(diff: StateDiff) -> tuple[int, int]:
    return diff.tables["flights"].changed[0].columns["seats_left"]


async def test_a_writing_call_owes_its_diff_until_the_log_is_read():
    arena = booking()
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(arena.initial_state)
        owner = "episode-1/" + arena.id
        outcome = await pool.call(arena.implementation, "book_flight", {"flight_id": "B6400", "passenger_id": "P001"}, state, owner=owner)
        assert outcome.ok and outcome.result["status"] == "confirmed" and outcome.state is not None
        await asyncio.sleep(0.2)
        assert outcome.diff is not None and not outcome.diff.done()  # nobody asked: nothing was computed or sent
        pool.settle("episode-1")
        diff = await asyncio.wait_for(outcome.diff, 5)
        assert seats(diff) == (5, 4) and diff.tables["bookings"].n_added == 1
        read = await pool.call(arena.implementation, "get_flight", {"flight_id": "B6400"}, outcome.state, owner=owner)
        assert read.ok and read.result["seats_left"] == 4 and read.diff is None  # a read owes nothing
        unlogged = await pool.call(arena.implementation, "book_flight", {"flight_id": "B6400", "passenger_id": "P002"}, outcome.state, diff=False)
        assert unlogged.ok and unlogged.state is not None and unlogged.diff is None  # a validation's call: none is made


async def test_an_episodes_owed_diffs_come_in_one_batch_in_order():
    arena = booking()
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(arena.initial_state)
        owner = "episode-2/" + arena.id
        diffs = []
        for passenger in ("P001", "P002", "P003"):
            outcome = await pool.call(arena.implementation, "book_flight", {"flight_id": "B6400", "passenger_id": passenger}, state, owner=owner)
            assert outcome.ok and outcome.diff is not None
            state, diffs = outcome.state, [*diffs, outcome.diff]
        batches = []
        read_batch = pool.diffs.read_batch

        def counted(process: SandboxProcess, seq: object, *, ask: bool) -> None:
            batches.append((len(process.owed), ask))
            read_batch(process, seq, ask=ask)

        pool.diffs.read_batch = counted  # type: ignore[method-assign]
        pool.settle("episode-2")
        pool.settle("episode-2")  # asked twice while the batch is on its way: still one batch
        done = await asyncio.wait_for(asyncio.gather(*diffs), 5)
        assert batches == [(3, True)] and [seats(d) for d in done] == [(5, 4), (4, 3), (3, 2)]
        pool.settle("episode-2")
        assert batches == [(3, True)]  # nothing owed: nothing asked


async def test_a_call_goes_out_while_a_batch_is_on_its_way_and_survives_a_broken_one():
    """A call made while its process's batch is coming is written at once (the process answers the batch first),
    and when a batch breaks the process, the call is served by a fresh process instead of failing."""
    arena = booking()
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(arena.initial_state)
        owner = "episode-3/" + arena.id
        book = {"flight_id": "B6400", "passenger_id": "P001"}
        first = await pool.call(arena.implementation, "book_flight", book, state, owner=owner)
        sent_early: list[bool] = []
        request = SandboxProcess.request

        async def spied(process: SandboxProcess, frame: bytes) -> tuple[int, bytes]:
            sent_early.append(process.follows is not None and not process.follows.done())  # its batch still coming
            return await request(process, frame)

        pool.settle("episode-3")
        SandboxProcess.request = spied  # type: ignore[method-assign]
        try:
            second = await pool.call(arena.implementation, "book_flight", {**book, "passenger_id": "P002"}, first.state, owner=owner)
        finally:
            SandboxProcess.request = request  # type: ignore[method-assign]
        assert first.ok and second.ok and sent_early == [True]
        assert seats(await first.diff) == (5, 4)
        process = pool._owned[owner]
        served = process.id

        async def broken() -> None:  # what `resolve_batch` does with a malformed batch
            await asyncio.sleep(0.05)
            process.broken = True
            pool._kill(process)
            process.close()

        process.follows = asyncio.get_running_loop().create_task(broken())
        third = await pool.call(arena.implementation, "get_flight", {"flight_id": "B6400"}, second.state, owner=owner)
        assert third.ok and third.result["seats_left"] == 3, third
        assert pool._owned[owner].id != served  # a fresh process took the call
        second_diff = await asyncio.wait_for(second.diff, 5)
        assert second_diff.truncated and "lost with the sandbox process" in (second_diff.error or "")  # resolved, not left waiting


async def test_an_episode_ended_or_evicted_right_after_a_writing_call_keeps_that_calls_diff():
    """Releasing an episode (or evicting its idle process) asks for what the process owes before closing it."""
    arena = booking()
    async with SandboxPool(SandboxConfig(workers=1, max_idle_processes=1)) as pool:
        state = await pool.build_state(arena.initial_state)
        diffs = []
        for n in range(3):
            owner = f"episode-{n}/" + arena.id
            outcome = await pool.call(arena.implementation, "book_flight", {"flight_id": "B6400", "passenger_id": "P001"}, state, owner=owner)
            assert outcome.ok and outcome.diff is not None and not outcome.diff.done()
            diffs.append(outcome.diff)  # episode-0's process is evicted by episode-1's call (one idle process kept)
        pool.release("episode-2")
        done = await asyncio.wait_for(asyncio.gather(diffs[0], diffs[2]), 5)
        assert all(d.error is None and d.tables["bookings"].n_added == 1 for d in done), done
        pool.release("episode-1")
        assert (await asyncio.wait_for(diffs[1], 5)).tables["bookings"].n_added == 1


SPIN_SOURCE = '''
def put(db, k):
    db.execute("INSERT INTO kv VALUES (?, 1)", (k,))
    return {"k": k}

def spin(db):
    n = 0
    while True:
        n += 1
'''


async def test_a_process_retiring_on_its_cpu_budget_sends_what_it_owes_and_one_killed_loses_it_loudly():
    async with SandboxPool(SandboxConfig(workers=1, cpu_s=0.5, call_timeout_s=10)) as pool:
        from gym_server.models import InitialState

        state = await pool.build_state(InitialState(ddl=["CREATE TABLE kv (k TEXT PRIMARY KEY, v)"], rows={}))
        put = await pool.call(SPIN_SOURCE, "put", {"k": "a"}, state, owner="episode-cpu/a")
        spun = await pool.call(SPIN_SOURCE, "spin", {}, put.state, owner="episode-cpu/a")
        assert not spun.ok and "CPU time limit" in (spun.error or "")
        diff = await asyncio.wait_for(put.diff, 5)  # it retired, and sent its batch after the reply
        assert diff.error is None and diff.tables["kv"].added == [{"k": "a", "v": 1}]
    async with SandboxPool(SandboxConfig(workers=1, cpu_s=5, call_timeout_s=0.3)) as pool:
        state = await pool.build_state(InitialState(ddl=["CREATE TABLE kv (k TEXT PRIMARY KEY, v)"], rows={}))
        put = await pool.call(SPIN_SOURCE, "put", {"k": "a"}, state, owner="episode-wall/a")
        spun = await pool.call(SPIN_SOURCE, "spin", {}, put.state, owner="episode-wall/a")
        assert not spun.ok and "wall-clock" in (spun.error or "")
        diff = await asyncio.wait_for(put.diff, 5)  # killed: the diff it owed is recorded as lost, never waited on forever
        assert diff.truncated and "lost with the sandbox process" in (diff.error or "")


class FakeProcess:
    """What `resolve_batch` uses of a sandbox process when a retiring one sends its batch unasked."""

    def __init__(self, frame: bytes | None) -> None:
        self.frame, self.closed, self.broken, self.owed = frame, False, False, {}

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


def batch(*pairs: object) -> bytes:
    return json.dumps(list(pairs)).encode()


async def settled(sent: bytes | None) -> tuple[FakeProcess, list[StateDiff], list[object]]:
    process, killed = FakeProcess(sent), []
    loop = asyncio.get_running_loop()
    owed = {11: loop.create_future(), 12: loop.create_future()}
    await resolve_batch(process, owed, 7, 0.2, killed.append, ask=False)  # type: ignore[arg-type]
    return process, [owed[11].result(), owed[12].result()], killed


@pytest.mark.parametrize("sent, why", [
    (None, "lost with the process"),
    (b"never", "did not send the state diffs in time"),
    (frame({"seq": 8}, batch([11, GOOD])), "malformed batch"),  # another request's
    (frame([1, 2]), "malformed batch"),
    (PREFIX.pack(3, 0) + b"{{{", "malformed batch"),
    (frame({"seq": 7}, b"not json"), "malformed batch"),
    (frame({"seq": 7}, b'{"11": {}}'), "malformed batch"),
    (frame({"seq": 7}, batch([11])), "malformed batch"),
    (frame({"seq": 7}, batch(["11", GOOD])), "malformed batch"),
    (frame({"seq": 7}, b"[" * 100_000), "malformed batch"),
    (frame({"seq": 7}, b"[" + b" " * (2 * 17 * 1024) + b"]"), "malformed batch"),  # longer than two diffs can be: never parsed
])  # fmt: skip
async def test_a_batch_that_is_not_one_breaks_the_process_and_resolves_every_diff_in_it(sent, why):
    process, diffs, killed = await settled(sent)
    assert all(d.truncated and why in (d.error or "") and "stand" in (d.error or "") for d in diffs), diffs
    assert killed == [process] and process.closed and process.broken


async def test_a_good_batch_resolves_its_diffs_and_one_bad_or_missing_diff_spoils_only_itself():
    process, diffs, killed = await settled(frame({"seq": 7}, batch([11, GOOD], [99, GOOD])))
    assert diffs[0].tables["t"].n_added == 1 and diffs[0].error is None
    assert diffs[1].truncated and "did not send this call's state diff" in (diffs[1].error or "")
    assert not killed and not process.closed
    process, diffs, killed = await settled(frame({"seq": 7}, batch([11, {"tables": {"t": {"n_added": -1}}}], [12, GOOD])))
    assert "malformed state diff" in (diffs[0].error or "") and diffs[1].tables["t"].n_added == 1 and not killed


async def test_a_cancelled_batch_leaves_no_diff_unresolved():
    process, killed = FakeProcess(b"never"), []
    owed = {11: asyncio.get_running_loop().create_future()}
    task = asyncio.create_task(resolve_batch(process, owed, 7, 60, killed.append, ask=False))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert "gym stopped" in (owed[11].result().error or "")


class NoGuard:
    def expect(self, *events: str) -> None:
        pass


def image(*rows: int) -> bytes:
    db = sqlite3.connect(":memory:")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY)")
    db.executemany("INSERT INTO t VALUES (?)", [(r,) for r in rows])
    db.commit()
    return db.serialize()


def test_a_process_keeps_at_most_its_bound_of_images_and_computes_the_oldest_diffs_early():
    """Past `max_owed_bytes` the oldest owed diffs are computed between calls and kept as results: the images a
    long episode's process holds stay bounded, and the batch still answers every call in order."""
    images = [image(*range(n)) for n in range(6)]
    executor = Executor(NoGuard(), {}, {}, cpu_s=5, memory_mb=512, max_result_bytes=1 << 20, max_result_depth=64,  # type: ignore[arg-type]
                        max_state_bytes=1 << 24, state_diffs=True, max_owed_bytes=3 * len(images[1]))  # fmt: skip
    for seq in range(1, 6):
        executor.owe(seq, images[seq - 1], images[seq])  # a chain: each call starts from the last one's image
        executor.keep_owed_within_bound()
        assert executor.owed_bytes <= executor.max_owed_bytes
    assert [seq for seq, _ in executor.ready] == [1, 2, 3] and [seq for seq, _, _ in executor.owed] == [4, 5]
    assert executor.owed_bytes == 3 * len(images[1])  # three images for two diffs: the shared one counts once
    answered = json.loads(executor.owed_diffs())
    assert [seq for seq, _ in answered] == [1, 2, 3, 4, 5]
    assert [diff["tables"]["t"]["added"] for _, diff in answered] == [[{"k": n}] for n in range(5)]
    assert executor.owed == [] and executor.ready == [] and executor.owed_bytes == 0


def test_images_two_diffs_do_not_share_count_twice_and_leave_the_count_whole():
    """A call that started from an image other than the last call's (the gym sent the state again) keeps both."""
    a, b, c, d = image(), image(1), image(1, 2), image(1, 2, 3)
    executor = Executor(NoGuard(), {}, {}, cpu_s=5, memory_mb=512, max_result_bytes=1 << 20, max_result_depth=64,  # type: ignore[arg-type]
                        max_state_bytes=1 << 24, state_diffs=True, max_owed_bytes=1 << 30)  # fmt: skip
    executor.owe(1, a, b)
    executor.owe(2, c, d)  # not from b
    assert executor.owed_bytes == len(a) + len(b) + len(c) + len(d)
    executor.max_owed_bytes = len(c) + len(d)
    executor.keep_owed_within_bound()
    assert [seq for seq, _ in executor.ready] == [1] and executor.owed_bytes == len(c) + len(d)
    assert [seq for seq, _ in json.loads(executor.owed_diffs())] == [1, 2]
