"""An episode's process is forked and bound when the episode is created (`SandboxPool.open`), so its first call
pays neither the fork nor the arena's compile nor the state load. Binding runs no arena code, never takes a slot
a call is waiting for, is bounded by `max_idle_processes`, and an episode that ends first leaves nothing behind.
"""

from __future__ import annotations

import asyncio

import pytest_asyncio

from gym_server.sandbox.pool import SandboxConfig, SandboxPool
from gym_server.serve import GymThread
from gym_server.config import ServeConfig
from tests.conftest import mcp_session, new_episode, result_json
from tests.test_sandbox_containment import WORLD

COUNTER = (
    "RAN = []\n"
    "def bump(db, k):\n"
    "    RAN.append(k)\n"
    "    db.execute(\"UPDATE kv SET v = CAST(v AS INTEGER) + 1 WHERE k = ?\", (k,))\n"
    "    return {'v': db.execute(\"SELECT v FROM kv WHERE k = ?\", (k,)).fetchone()['v'], 'ran_here': len(RAN)}\n"
)


@pytest_asyncio.fixture(loop_scope="session", scope="module")
async def pool():
    async with SandboxPool(SandboxConfig(workers=2, max_active=4, cpu_s=1.0, call_timeout_s=3.0, memory_mb=256, max_idle_processes=3)) as pool:
        yield pool


async def bound(pool: SandboxPool, owner: str) -> None:
    for _ in range(300):
        if owner not in pool._opening:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{owner} was never bound")


async def test_the_first_call_is_served_by_the_process_bound_at_creation(pool):
    state = await pool.build_state(WORLD)
    pool.open(COUNTER, state, "ep-1/counter")
    await bound(pool, "ep-1/counter")
    process = pool._owned["ep-1/counter"]
    assert process.code_id is not None and process.held is state  # compiled and holding the episode's state
    spawned = next(process.template.ids)
    first = await pool.call(COUNTER, "bump", {"k": "a"}, state, owner="ep-1/counter")
    second = await pool.call(COUNTER, "bump", {"k": "a"}, first.state, owner="ep-1/counter")
    assert (first.result, second.result) == ({"v": "2", "ran_here": 1}, {"v": "3", "ran_here": 1})  # fresh module per call
    assert pool._owned["ep-1/counter"] is process and next(process.template.ids) == spawned + 1  # no process forked
    pool.release("ep-1")
    assert "ep-1/counter" not in pool._owned


async def test_binding_runs_no_arena_code_and_bad_code_fails_on_the_call_as_before(pool):
    state = await pool.build_state(WORLD)
    spinning = "while True:\n    pass\n"  # would burn its CPU budget if binding ran the module
    pool.open(spinning, state, "ep-2/spin")
    await bound(pool, "ep-2/spin")
    assert "ep-2/spin" in pool._owned
    pool.release("ep-2")
    pool.open("def broken(:\n", state, "ep-3/broken")
    await bound(pool, "ep-3/broken")
    assert "ep-3/broken" not in pool._owned  # nothing kept for code that cannot run
    outcome = await pool.call("def broken(:\n", "broken", {}, state, owner="ep-3/broken")
    assert not outcome.ok and outcome.kind == "tool_error" and "does not compile" in (outcome.error or "")
    pool.release("ep-3")


async def test_an_episode_ended_while_binding_leaves_no_process(pool):
    state = await pool.build_state(WORLD)
    pool.open(COUNTER, state, "ep-4/counter")
    pool.release("ep-4")
    await asyncio.sleep(0.2)
    assert "ep-4/counter" not in pool._owned and "ep-4/counter" not in pool._opening


async def test_binding_is_bounded_by_max_idle_processes(pool):
    state = await pool.build_state(WORLD)
    owners = [f"ep-cap{i}/counter" for i in range(5)]
    for owner in owners:
        pool.open(COUNTER, state, owner)
    for owner in owners:
        await bound(pool, owner)
    assert sum(o in pool._owned for o in owners) == pool.config.max_idle_processes == 3
    unbound = next(o for o in owners if o not in pool._owned)  # forks on its first call, as before
    assert (await pool.call(COUNTER, "bump", {"k": "a"}, state, owner=unbound)).result == {"v": "2", "ran_here": 1}
    for i in range(5):
        pool.release(f"ep-cap{i}")
    assert not [o for o in pool._owned if o.startswith("ep-cap")]


async def test_a_created_episode_has_its_process_before_its_first_call(http):
    with GymThread(ServeConfig(port=0, arenas=["builtin"], sandbox=SandboxConfig(workers=1))) as gym:
        arena = (await http.get(f"{gym.url}/api/arenas/airline-book-cheapest-sfo-jfk")).json()
        before = (await http.get(f"{gym.url}/healthz")).json()["sandbox"]["episode_processes"]
        episode = await new_episode(http, gym, arena["id"])
        for _ in range(300):
            if (await http.get(f"{gym.url}/healthz")).json()["sandbox"]["episode_processes"] == before + 1:
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("no process was bound for the new episode")
        call = arena["subtasks"][0]["gold_call"]
        async with mcp_session(http, episode["mcp_url"]) as client:
            result = await client.call_tool(call["tool"], call["arguments"])
        assert not result.is_error and result_json(result) is not None
        assert (await http.delete(f"{gym.url}/api/episodes/{episode['episode_id']}")).status_code == 204
        assert (await http.get(f"{gym.url}/healthz")).json()["sandbox"]["episode_processes"] == before


async def test_binds_neither_wait_for_nor_take_a_calls_slot():
    spin = "def spin(db):\n    x = 0\n    for i in range(3_000_000):\n        x += i\n    return x\n"
    async with SandboxPool(SandboxConfig(workers=1, max_active=1, cpu_s=5.0, call_timeout_s=10.0, memory_mb=256)) as pool:
        state = await pool.build_state(WORLD)
        busy = asyncio.create_task(pool.call(spin, "spin", {}, state))  # holds the only call slot
        await asyncio.sleep(0.05)
        pool.open(COUNTER, state, "ep-5/counter")
        await bound(pool, "ep-5/counter")
        assert "ep-5/counter" in pool._owned and not busy.done()  # bound while the call still ran
        assert (await busy).result == sum(range(3_000_000))


async def test_a_call_cancels_a_bind_that_has_not_begun(pool):
    state = await pool.build_state(WORLD)
    owners = [f"ep-q{i}/counter" for i in range(3)]
    for owner in owners:  # more binds than bind slots: the last waits its turn
        pool.open(COUNTER, state, owner)
    queued = owners[-1]
    assert queued in pool._opening and queued not in pool._binding
    outcome = await pool.call(COUNTER, "bump", {"k": "a"}, state, owner=queued)
    assert outcome.result == {"v": "2", "ran_here": 1} and queued not in pool._opening
    for i in range(3):
        pool.release(f"ep-q{i}")
