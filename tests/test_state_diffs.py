"""Per-call state diffs in the call log, on the built-in worlds through the real gym: a booking adds a row and
changes a seat count, a cancellation changes two tables, a read records nothing; and the diff a sandbox process
sends is checked as untrusted (a hostile arena cannot make the gym log a huge or malformed diff)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from gym_server.config import ServeConfig
from gym_server.models import Arena, MAX_DIFF_BYTES
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from gym_server.statediff import checked_diff
from tests.conftest import mcp_session, new_episode, result_json

BOOKING_ARENA = "airline-book-cheapest-sfo-jfk"

BULK_SOURCE = '''
def bulk(db, n):
    db.executemany("INSERT INTO kv VALUES (?, ?)", [(f"k{i:05d}", "x" * 500) for i in range(n)])
    return {"n": n}

def blob(db):
    db.execute("UPDATE kv SET v = ? WHERE k = 'a'", (b"\\x00\\x01" * 10,))
    return {}

def hijack(db):
    # arena code reaches its own handle: a row factory and a TEMP table shadowing `kv` must not reach the diff
    db.execute("CREATE TEMP TABLE kv (k TEXT PRIMARY KEY, v TEXT)")
    db.execute("INSERT INTO temp.kv VALUES ('fake', 'fake')")
    db.execute("INSERT INTO main.kv VALUES ('real', 'real')")
    db.row_factory = lambda cursor, row: 1 / 0
    return {}

def rowid_only(db):
    db.execute("INSERT INTO log VALUES ('hello')")
    db.execute("DELETE FROM log WHERE rowid = 1")
    return {}
'''


def bulk_arena() -> Arena:
    names = {"bulk": {"n": {"type": "integer"}}, "blob": {}, "hijack": {}, "rowid_only": {}}
    tools = [{"name": n, "inputSchema": {"type": "object", "properties": p}} for n, p in names.items()]
    return Arena.model_validate({
        "id": "diff-bulk", "domain": "test", "scenario_type": "single_hop", "question": "write", "final_answer": 1,
        "tools": tools, "implementation": BULK_SOURCE,
        "initial_state": {"ddl": ["CREATE TABLE kv (k TEXT PRIMARY KEY, v)", "CREATE TABLE log (line TEXT)"],
                          "rows": {"kv": [{"k": "a", "v": "1"}], "log": [{"line": "first"}]}},
        "subtasks": [{"id": "s1", "question": "bulk", "answer": 1, "gold_call": {"tool": "bulk", "arguments": {"n": 1}}}],
    })  # fmt: skip


@pytest.fixture(scope="module")
def diff_gym(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GymThread]:
    store = tmp_path_factory.mktemp("diffs") / "diffs.jsonl"
    store.write_text(bulk_arena().model_dump_json(by_alias=True) + "\n")
    config = ServeConfig(port=0, arenas=["builtin", str(store)], sandbox=SandboxConfig(workers=1, max_state_bytes=64 * 1024 * 1024, state_diffs=True))
    with GymThread(config) as running:
        yield running


async def calls_of(http, gym, arena_id: str, calls: list[tuple[str, dict]]) -> list[dict]:
    episode = await new_episode(http, gym, arena_id)
    async with mcp_session(http, episode["mcp_url"]) as client:
        for tool, arguments in calls:
            await client.call_tool(tool, arguments)
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    return log["calls"]


async def test_a_booking_adds_a_row_and_changes_a_seat_count(diff_gym, http):
    calls = await calls_of(http, diff_gym, BOOKING_ARENA, [
        ("get_flight", {"flight_id": "B6400"}),
        ("book_flight", {"flight_id": "B6400", "passenger_id": "P001"}),
    ])  # fmt: skip
    read, booking = calls
    assert read["status"] == "ok" and read["diff"] is None  # a read changes nothing: no diff
    assert booking["status"] == "ok", booking
    tables = booking["diff"]["tables"]
    assert set(tables) == {"flights", "bookings"}
    assert tables["flights"]["n_changed"] == 1 and tables["flights"]["n_added"] == 0
    assert tables["flights"]["changed"] == [{"key": {"id": "B6400"}, "columns": {"seats_left": [5, 4]}}]
    added = tables["bookings"]["added"]
    assert tables["bookings"]["n_added"] == 1 and added[0]["flight_id"] == "B6400" and added[0]["passenger_id"] == "P001"
    assert added[0]["status"] == "confirmed" and booking["diff"]["truncated"] is False


async def test_cancelling_changes_the_booking_and_gives_the_seat_back(diff_gym, http):
    booking_id = None
    episode = await new_episode(http, diff_gym, BOOKING_ARENA)
    async with mcp_session(http, episode["mcp_url"]) as client:
        booking_id = result_json(await client.call_tool("book_flight", {"flight_id": "AA100", "passenger_id": "P002"}))["booking_id"]
        await client.call_tool("cancel_booking", {"booking_id": booking_id})
        await client.call_tool("cancel_booking", {"booking_id": booking_id})  # already cancelled: a tool error
    calls = (await http.get(f"{diff_gym.url}/api/episodes/{episode['episode_id']}")).json()["calls"]
    cancel, again = calls[1], calls[2]
    assert cancel["diff"]["tables"]["bookings"]["changed"] == [{"key": {"id": booking_id}, "columns": {"status": ["confirmed", "cancelled"]}}]
    assert cancel["diff"]["tables"]["flights"]["changed"] == [{"key": {"id": "AA100"}, "columns": {"seats_left": [11, 12]}}]
    assert again["status"] == "tool_error" and again["diff"] is None


async def test_a_large_write_is_counted_in_full_and_shown_truncated(diff_gym, http):
    (call,) = await calls_of(http, diff_gym, "diff-bulk", [("bulk", {"n": 3000})])
    kv = call["diff"]["tables"]["kv"]
    assert call["status"] == "ok" and kv["n_added"] == 3000 and kv["truncated"] is True and call["diff"]["truncated"] is True
    assert len(kv["added"]) <= 20
    import json

    assert len(json.dumps(call["diff"], ensure_ascii=False, separators=(",", ":")).encode()) <= MAX_DIFF_BYTES


async def test_blobs_are_described_and_rowid_tables_compare_by_rowid(diff_gym, http):
    blob, rowid = await calls_of(http, diff_gym, "diff-bulk", [("blob", {}), ("rowid_only", {})])
    assert blob["diff"]["tables"]["kv"]["changed"] == [{"key": {"k": "a"}, "columns": {"v": ["1", "<20 bytes>"]}}]
    log = rowid["diff"]["tables"]["log"]
    assert log["removed"] == [{"line": "first"}] and log["added"] == [{"line": "hello"}] and log["n_changed"] == 0


async def test_what_arena_code_leaves_on_its_handle_does_not_reach_the_diff(diff_gym, http):
    (call,) = await calls_of(http, diff_gym, "diff-bulk", [("hijack", {})])
    assert call["status"] == "ok", call
    assert call["diff"]["tables"] == {"kv": {"added": [{"k": "real", "v": "real"}], "changed": [], "removed": [],
                                             "n_added": 1, "n_changed": 0, "n_removed": 0, "truncated": False}}  # fmt: skip


@pytest.mark.parametrize("hostile", [
    None, "not a dict", {"tables": {"t": {"n_added": -1}}}, {"tables": {}, "extra": 1},
    {"tables": {"t": {"added": [{"v": "x" * (MAX_DIFF_BYTES + 1)}], "n_added": 1}}},
    {"tables": {"t": {"changed": [{"key": {}, "columns": {"c": [1]}}]}}},
    {"tables": {"t": {"added": [{"v": float("nan")}]}}},
])  # fmt: skip
def test_the_gym_refuses_a_diff_it_did_not_expect(hostile):
    assert checked_diff(hostile) is None


def test_the_gym_accepts_a_diff_of_the_sandboxs_shape():
    diff = checked_diff({"tables": {"t": {"added": [{"v": 1}], "changed": [{"key": {"id": 1}, "columns": {"c": [1, 2]}}],
                                          "removed": [], "n_added": 1, "n_changed": 1, "n_removed": 0, "truncated": False}},
                         "truncated": False})  # fmt: skip
    assert diff is not None and diff.tables["t"].changed[0].columns == {"c": (1, 2)}


async def test_a_gym_not_asked_for_diffs_records_none(http):
    """`state_diffs=False`: no diff is computed or expected; the booking still books."""
    with GymThread(ServeConfig(port=0, arenas=["builtin"], sandbox=SandboxConfig(workers=1, state_diffs=False))) as plain:
        calls = await calls_of(http, plain, BOOKING_ARENA, [("book_flight", {"flight_id": "B6400", "passenger_id": "P001"})])
    assert calls[0]["status"] == "ok" and calls[0]["diff"] is None


async def test_a_gym_records_diffs_by_default(http):
    """Diffs are off the call's path (they follow the reply), so every gym records them unless told not to."""
    assert SandboxConfig().state_diffs is True and ServeConfig().sandbox.state_diffs is True
    with GymThread(ServeConfig(port=0, arenas=["builtin"], sandbox=SandboxConfig(workers=1))) as plain:
        calls = await calls_of(http, plain, BOOKING_ARENA, [
            ("book_flight", {"flight_id": "B6400", "passenger_id": "P001"}),
            ("get_flight", {"flight_id": "B6400"}),  # the same process serves it: it read the diff before this request
            ("book_flight", {"flight_id": "B6400", "passenger_id": "P002"}),
        ])  # fmt: skip
    assert [c["status"] for c in calls] == ["ok", "ok", "ok"]
    assert calls[0]["diff"]["tables"]["flights"]["changed"][0]["columns"] == {"seats_left": [5, 4]}
    assert calls[1]["diff"] is None and calls[2]["diff"]["tables"]["flights"]["changed"][0]["columns"] == {"seats_left": [4, 3]}


KEPT_HANDLE_STRESS = """
import json, random, sqlite3
from gym_server.sandbox.inside.statediff import StateDiffer

def connect():
    return sqlite3.connect(":memory:", isolation_level=None)

def image(*sql):
    db = connect()
    for statement in sql:
        db.execute(statement)
    return db.serialize()

kv = image("CREATE TABLE kv (k TEXT PRIMARY KEY, v)", "INSERT INTO kv VALUES ('a', 1)")
kv2 = image("CREATE TABLE kv (k TEXT PRIMARY KEY, v)", "INSERT INTO kv VALUES ('a', 2)", "INSERT INTO kv VALUES ('b', 3)")
other = image("CREATE TABLE other (x INTEGER)", "INSERT INTO other VALUES (7)")
odd = image('CREATE TABLE "we""ird" (a, b, c, PRIMARY KEY (c, a))', 'INSERT INTO "we""ird" VALUES (1, 2, 3)')
# the same table name under other CREATE statements: a differ that kept columns by name alone would misread them
kv_wide = image("CREATE TABLE kv (k TEXT PRIMARY KEY, v, w)", "INSERT INTO kv VALUES ('a', 1, 'x')")
kv_rekeyed = image("CREATE TABLE kv (k TEXT, v INTEGER PRIMARY KEY)", "INSERT INTO kv VALUES ('a', 1)")
images = [b"", b"not a database at all", kv, kv2, other, odd, kv_wide, kv_rekeyed]
encode = lambda value: json.dumps(value).encode()
kept, rng = StateDiffer(connect, encode), random.Random(7)
for _ in range(3000):
    before, after = rng.choice(images), rng.choice(images)
    assert kept.diff(before, after, lambda _: None) == StateDiffer(connect, encode).diff(before, after, lambda _: None)
assert set(kept.diff(kv2, other, lambda _: None)["tables"]) == {"kv", "other"}
assert kept.diff(b"not a database at all", kv, lambda _: None)["error"]
assert kept.diff(kv, kv2, lambda _: None)["tables"]["kv"]["n_changed"] == 1
assert kept.diff(kv, odd, lambda _: None)["tables"]['we"ird']["added"] == [{"a": 1, "b": 2, "c": 3}]
assert kept.diff(kv, kv_wide, lambda _: None)["tables"]["kv"]["changed"] == [{"key": {"k": "a"}, "columns": {"w": [None, "x"]}}]
assert kept.diff(kv_wide, kv_wide, lambda _: None) == {"tables": {}, "truncated": False}
print("ok")
"""


def test_a_kept_differ_handle_answers_as_a_fresh_one_across_schemas_and_empty_states():
    """The sandbox process keeps one differ handle for all its diffs: each diff must see only its own two images,
    whatever the last one loaded (other tables, no tables at all, bytes that are no database). Run in a process of
    its own: the first version of the kept handle crashed SQLite (a segfault) after a few hundred schema changes."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", KEPT_HANDLE_STRESS], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
