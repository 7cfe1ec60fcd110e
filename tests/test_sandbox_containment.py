"""The sandbox is a kernel boundary: hostile arena code (the attacks of issue 13, tests/fixtures/kernel_attacks.py)
is contained as a tool error, leaves nothing on the host, and never reaches another call.

Every attack runs twice: with both layers, and with the second layer (the audit hook) switched off, which shows
that the namespaces, the unprivileged uid and seccomp hold on their own.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

import pytest
import pytest_asyncio

from gym_server.models import InitialState
from gym_server.sandbox import launch
from gym_server.sandbox.pool import SandboxConfig, SandboxPool, SandboxUnavailable

ATTACKS_SOURCE = (Path(__file__).parent / "fixtures" / "kernel_attacks.py").read_text()
HOST_MARKS = ("/tmp/astra-shell", "/tmp/astra-attached.db", "/tmp/astra-pwned", "/tmp/astra-x")
LIMITS = dict(workers=2, max_active=8, cpu_s=1.0, call_timeout_s=3.0, memory_mb=256)
WORLD = InitialState(ddl=["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"], rows={"kv": [{"k": "a", "v": "1"}]})
CHECK = (
    "import json, re, collections\n"
    "def check(db):\n"
    "    return [json.dumps({'a': 1}), bool(re.match('^D0[0-9]$', 'D07')), repr(collections.Counter(a=1)),\n"
    "            db.execute(\"SELECT v FROM kv WHERE k = 'a'\").fetchone()['v']]\n"
)
CLEAN = ['{"a": 1}', True, "Counter({'a': 1})", "1"]

# attack -> arguments; every one must fail, except those whose Python-level "success" is harmless by construction
ATTACKS = {
    "frame_walk": {}, "chroot_breakout": {}, "host_file": {"path": "/tmp/astra-pwned"}, "list_root": {},
    "run_shell": {}, "fork_bomb": {}, "connect": {"port": 9}, "unix_socket": {}, "outliving_thread": {},
    "remove_authorizer": {}, "load_builtin_module": {}, "spinning_result": {}, "deep_result": {}, "huge_result": {},
    "forge_reply": {}, "exec_memory": {},
}  # fmt: skip
HARMLESS_SUCCESS = {"kill_template": [], "poison_caches": "poisoned"}
"""Under the kernel layer alone these run to their end: nothing is killed, and the poison stays in the process."""


@pytest_asyncio.fixture(loop_scope="session", scope="module", params=[True, False], ids=["both-layers", "kernel-only"])
async def pool(request):
    async with SandboxPool(SandboxConfig(**LIMITS, audit_hook=request.param)) as pool:
        yield pool


@pytest.fixture(autouse=True)
def no_host_marks():
    for mark in HOST_MARKS:
        assert not os.path.exists(mark), f"left over from an earlier run: {mark}"
    yield
    leaked = [m for m in HOST_MARKS if os.path.exists(m)]
    assert not leaked, f"an attack reached the host: {leaked}"


async def assert_next_call_is_clean(pool: SandboxPool, state: bytes) -> None:
    outcome = await pool.call(CHECK, "check", {}, state)
    assert outcome.ok and outcome.result == CLEAN, outcome
    assert pool.health()["alive"] and pool.restarts == 0


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_attack_is_contained_as_an_error(pool, attack):
    state = await pool.build_state(WORLD)
    started = time.perf_counter()
    outcome = await pool.call(ATTACKS_SOURCE, attack, ATTACKS[attack], state)
    assert not outcome.ok, f"{attack} got through: {outcome.result!r}"[:300]
    assert outcome.kind in ("tool_error", "sandbox_error") and outcome.error and outcome.state is None
    assert time.perf_counter() - started < 2.0, "an attack that is refused is refused at once"
    await assert_next_call_is_clean(pool, state)


@pytest.mark.parametrize("attack", sorted(HARMLESS_SUCCESS))
async def test_what_runs_stays_in_its_own_process(pool, attack):
    state = await pool.build_state(WORLD)
    outcome = await pool.call(ATTACKS_SOURCE, attack, {}, state)
    if outcome.ok:  # the kernel layer alone lets the call finish; what it did must not outlive it
        assert outcome.result == HARMLESS_SUCCESS[attack]
    else:
        assert pool.config.audit_hook and "not permitted in the sandbox" in outcome.error
    await assert_next_call_is_clean(pool, state)


async def test_the_kernel_refuses_what_the_second_layer_would(pool):
    """The probe each template start runs: a call's process tries each operation and the kernel says no."""
    isolation = pool.health()["isolation"]
    assert isolation["allowed_in_call"] == []
    assert {"socket_inet", "socket_unix", "open_file", "fork", "kill_other", "setuid_root", "chroot", "signal_handler", "exec_memory"} <= set(isolation["refused_in_call"])
    assert isolation["uid"] not in (0, None) and isolation["capabilities"] == "0000000000000000"
    assert isolation["seccomp"] and isolation["no_new_privs"] and all(isolation["namespaces"].values())


async def test_cpu_spinner_that_swallows_the_limit_is_killed(pool):
    """The CPU limit's signal becomes an exception in arena code; code that swallows it is killed by the kernel
    at the hard limit, one CPU second later (a wall clock long enough for that even on a loaded machine)."""
    async with SandboxPool(SandboxConfig(**{**LIMITS, "call_timeout_s": 20.0}, audit_hook=pool.config.audit_hook)) as own:
        state = await own.build_state(WORLD)
        outcome = await own.call(ATTACKS_SOURCE, "spin", {}, state)
        assert not outcome.ok and outcome.kind == "sandbox_error"
        assert "CPU" in outcome.error, outcome.error
        await assert_next_call_is_clean(own, state)


async def test_a_sleeper_is_killed_at_the_wall_clock(pool):
    state = await pool.build_state(WORLD)
    killed = pool.replaced
    outcome = await pool.call(ATTACKS_SOURCE, "sleep_forever", {}, state)
    assert not outcome.ok and outcome.kind == "sandbox_error" and "wall-clock" in outcome.error
    assert pool.replaced == killed + 1
    await assert_next_call_is_clean(pool, state)


async def test_hostile_calls_as_many_as_waiting_processes_do_not_stall_the_rest(pool):
    """Two sleepers (as many as `workers`) hold their processes; the pool grows up to `max_active`, so the
    other calls run at once."""
    state = await pool.build_state(WORLD)
    sleepers = [asyncio.create_task(pool.call(ATTACKS_SOURCE, "sleep_forever", {}, state)) for _ in range(LIMITS["workers"])]
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    outcomes = await asyncio.gather(*(pool.call(ATTACKS_SOURCE, "echo", {"text": str(i)}, state) for i in range(20)))
    elapsed = time.perf_counter() - started
    assert [o.result for o in outcomes] == [str(i) for i in range(20)]
    assert elapsed < 1.5, f"the other calls waited {elapsed:.2f} s behind the sleepers"
    for task in sleepers:
        task.cancel()
    await asyncio.gather(*sleepers, return_exceptions=True)


async def test_a_cancelled_call_kills_its_process_and_frees_its_slot(pool):
    state = await pool.build_state(WORLD)
    killed = pool.replaced
    task = asyncio.create_task(pool.call(ATTACKS_SOURCE, "sleep_forever", {}, state))
    await asyncio.sleep(0.2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert pool.replaced == killed + 1
    started = time.perf_counter()
    await assert_next_call_is_clean(pool, state)
    assert time.perf_counter() - started < 1.0


async def test_calls_see_exactly_the_state_they_bring():
    source = (
        "def get(db):\n    return db.execute(\"SELECT v FROM kv\").fetchone()['v']\n"
        "def put(db, v):\n    db.execute('UPDATE kv SET v = ?', (v,))\n    return v\n"
    )

    def world(value: str) -> InitialState:
        return InitialState(ddl=["CREATE TABLE kv (v TEXT)"], rows={"kv": [{"v": value}]})

    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        a, b = await pool.build_state(world("a")), await pool.build_state(world("b"))
        put = await pool.call(source, "put", {"v": "a1"}, a)
        assert put.ok and put.state
        seen = [(await pool.call(source, "get", {}, image)).result for image in (b, a, put.state, a, put.state)]
    assert seen == ["b", "a", "a1", "a", "a1"]


async def test_broken_arena_code_is_a_tool_error(pool):
    state = await pool.build_state(InitialState())
    broken = await pool.call("def f(db):\n  return (\n", "f", {}, state)
    assert not broken.ok and broken.kind == "tool_error" and "does not compile" in broken.error
    missing = await pool.call("def f(db):\n  return 1\n", "g", {}, state)
    assert not missing.ok and "defines no function 'g'" in missing.error
    unjson = await pool.call("def f(db):\n  return {1, 2}\n", "f", {}, state)
    assert not unjson.ok and "not a JSON value" in unjson.error
    with pytest.raises(ValueError, match="initial state does not build"):
        await pool.build_state(InitialState(ddl=["CREATE TABLE"]))


async def test_a_dead_template_is_restarted_and_its_calls_are_not_results():
    async with SandboxPool(SandboxConfig(**LIMITS)) as pool:
        state = await pool.build_state(WORLD)
        in_flight = asyncio.create_task(pool.call(ATTACKS_SOURCE, "sleep_forever", {}, state))
        await asyncio.sleep(0.3)
        bwrap = pool._template.proc.pid
        (template,) = Path(f"/proc/{bwrap}/task/{bwrap}/children").read_text().split()
        os.kill(int(template), signal.SIGKILL)  # pid 1 of the sandbox's pid namespace: every call's process goes with it
        with pytest.raises(SandboxUnavailable):
            await in_flight
        await assert_next_call_is_clean_after_restart(pool, state)


async def assert_next_call_is_clean_after_restart(pool: SandboxPool, state: bytes) -> None:
    outcome = await pool.call(CHECK, "check", {}, state)
    assert outcome.ok and outcome.result == CLEAN, outcome
    assert pool.restarts == 1 and pool.health()["isolation"]["seccomp"]


async def test_without_a_kernel_sandbox_the_gym_refuses_unless_told(monkeypatch):
    monkeypatch.setattr(launch, "bwrap_available", lambda: "bubblewrap is not installed (test)")
    with pytest.raises(SandboxUnavailable, match="--unsafe-sandbox"):
        async with SandboxPool(SandboxConfig(workers=1)):
            pass
    async with SandboxPool(SandboxConfig(workers=1, unsafe=True)) as pool:
        health = pool.health()
        assert health["unsafe"] and health["backend"] == "unsafe"
        assert not health["isolation"]["namespaces"]["net"]  # reported as it is, not as configured
        outcome = await pool.call(CHECK, "check", {}, await pool.build_state(WORLD))
        assert outcome.ok and outcome.result == CLEAN


# -- one process per episode and arena ----------------------------------------------------------------------------


async def test_an_episodes_process_serves_only_that_episodes_arena(pool):
    """What an arena's code leaves in its process stays with the same episode's later calls to that arena: the
    next episode, and another arena of the same episode, get processes of their own."""
    state = await pool.build_state(WORLD)
    poisoned = await pool.call(ATTACKS_SOURCE, "poison_caches", {}, state, owner="ep1/attacks")
    if not pool.config.audit_hook:
        assert poisoned.ok  # the kernel alone lets a process poison itself; the point is where that stops
    other_episode = await pool.call(ATTACKS_SOURCE, "check", {}, state, owner="ep2/attacks")
    assert other_episode.ok and other_episode.result == CLEAN, other_episode
    other_arena = await pool.call(CHECK, "check", {}, state, owner="ep1/clean")
    assert other_arena.ok and other_arena.result == CLEAN, other_arena
    same = await pool.call(ATTACKS_SOURCE, "check", {}, state, owner="ep1/attacks")
    if poisoned.ok:  # the kernel layer alone let the poison in: only its own episode's arena sees it
        assert same.ok and same.result != CLEAN
    pool.release("ep1")
    pool.release("ep2")
    assert pool.health()["episode_processes"] == 0


async def test_every_call_gets_a_fresh_handle_and_namespace_in_a_reused_process():
    source = (
        "SEEN = []\n"
        "def dirty(db):\n"
        "    SEEN.append(1)\n"
        "    db.execute('CREATE TEMP TABLE leak (x)')\n"
        "    db.create_function('upper', 1, lambda s: 'hijacked')\n"
        "    db.row_factory = None\n"
        "    return len(SEEN)\n"
        "def probe(db):\n"
        "    temps = db.execute(\"SELECT count(*) AS n FROM sqlite_temp_master\").fetchone()['n']\n"
        "    return [temps, db.execute(\"SELECT upper('a') AS u\").fetchone()['u'], len(SEEN)]\n"
    )
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        state = await pool.build_state(InitialState(ddl=["CREATE TABLE kv (k TEXT, v TEXT)"]))
        for _ in range(2):
            assert (await pool.call(source, "dirty", {}, state, owner="ep/a")).result == 1
            probe = await pool.call(source, "probe", {}, state, owner="ep/a")
            assert probe.ok and probe.result == [0, "A", 0], probe
        assert pool.health()["episode_processes"] == 1 and pool.replaced == 0


async def test_a_reused_process_keeps_a_cpu_budget_per_call_and_idle_processes_are_bounded():
    async with SandboxPool(SandboxConfig(**{**LIMITS, "call_timeout_s": 20.0}, max_idle_processes=2)) as pool:
        state = await pool.build_state(WORLD)
        for owner in ("a/x", "b/x", "c/x"):
            assert (await pool.call(ATTACKS_SOURCE, "echo", {"text": owner}, state, owner=owner)).result == owner
        assert pool.health()["episode_processes"] == 2  # the least recently used was closed
        spun = await pool.call(ATTACKS_SOURCE, "spin", {}, state, owner="c/x")
        assert not spun.ok and "CPU" in spun.error
        again = await pool.call(ATTACKS_SOURCE, "check", {}, state, owner="c/x")
        assert again.ok and again.result == CLEAN


async def test_waiting_for_a_slot_has_a_deadline():
    async with SandboxPool(SandboxConfig(**{**LIMITS, "max_active": 1, "queue_timeout_s": 0.3})) as pool:
        state = await pool.build_state(WORLD)
        sleeper = asyncio.create_task(pool.call(ATTACKS_SOURCE, "sleep_forever", {}, state))
        await asyncio.sleep(0.1)
        started = time.perf_counter()
        with pytest.raises(SandboxUnavailable, match="busy"):
            await pool.call(ATTACKS_SOURCE, "echo", {"text": "x"}, state)
        assert time.perf_counter() - started < 1.0
        sleeper.cancel()
        await asyncio.gather(sleeper, return_exceptions=True)
        assert (await pool.call(ATTACKS_SOURCE, "echo", {"text": "x"}, state)).result == "x"


async def test_a_call_cannot_leave_a_huge_state_nor_an_idle_process_holding_memory(pool):
    state = await pool.build_state(WORLD)
    grown = await pool.call(ATTACKS_SOURCE, "grow_state", {}, state, owner="mem/attacks")
    assert not grown.ok and "limit is" in grown.error and grown.state is None
    held = await pool.call(ATTACKS_SOURCE, "hold_memory", {}, state, owner="mem/attacks")
    assert held.ok  # neither layer forbids it: it is plain memory
    assert "mem/attacks" not in pool._owned  # it grew past keep_rss_mb, so it retired instead of waiting
    pool.release("mem")


async def test_an_episodes_process_sees_exactly_the_state_each_call_brings():
    """The process keeps the state its last call left loaded, and the gym sends no image when the call brings
    that very state; any other state (an older image, another copy) is sent and used."""
    source = (
        "def get(db):\n    return db.execute(\"SELECT v FROM kv\").fetchone()['v']\n"
        "def put(db, v):\n    db.execute('UPDATE kv SET v = ?', (v,))\n    return v\n"
    )
    sent: list[tuple[bool, int]] = []
    async with SandboxPool(SandboxConfig(workers=1)) as pool:
        exchange = pool._exchange

        async def recording(process, header, blob):
            sent.append((header.get("same_state", False), len(blob)))
            return await exchange(process, header, blob)

        pool._exchange = recording  # type: ignore[method-assign]
        world = InitialState(ddl=["CREATE TABLE kv (v TEXT)"], rows={"kv": [{"v": "a"}]})
        a = await pool.build_state(world)
        a1 = (await pool.call(source, "put", {"v": "a1"}, a, owner="ep/kv")).state
        sent.clear()
        copy = bytes(bytearray(a1))  # equal bytes, another object: the gym cannot know the process holds it
        seen = [(await pool.call(source, "get", {}, image, owner="ep/kv")).result for image in (a1, a, copy, a1, a1)]
        assert seen == ["a1", "a", "a1", "a1", "a1"]
        assert [same for same, _ in sent] == [True, False, False, False, True]
        assert sent[0][1] == 0 and sent[1][1] == len(a)
        a2 = (await pool.call(source, "put", {"v": "a2"}, a1, owner="ep/kv")).state
        assert (await pool.call(source, "get", {}, a2, owner="ep/kv")).result == "a2"
