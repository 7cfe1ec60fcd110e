"""A call the client gives up on is stopped: state unchanged, logged as cancelled, the episode free at once.

`slow_write` (tests/fixtures/hostile_tools.py) writes, then sleeps 2.5 s (under the test gym's 3 s wall-clock
limit). Were it not stopped, the write would land when it finished and the next call would wait for it.
"""

from __future__ import annotations

import asyncio
import time

import httpx2
import pytest
from mcp.shared.exceptions import MCPError

from tests.conftest import MCP_HEADERS, mcp_session, new_episode, result_json

SLOW_S = 2.5
STARTED_S = 0.8
"""How long the tests give the slow call to start before they give up on it: long enough for a loaded machine (at
0.3 s, a full suite's run once cancelled the call before it reached the gym, which then rightly logged nothing)."""


def _call(request_id: int, name: str, arguments: dict) -> dict:
    return {"jsonrpc": "2.0", "id": request_id, "method": "tools/call", "params": {"name": name, "arguments": arguments}}


async def _assert_stopped(gym, http, episode: dict, started: float) -> None:
    async with mcp_session(http, episode["mcp_url"]) as client:
        t0 = time.perf_counter()
        state = await client.call_tool("echo_state", {})
        assert time.perf_counter() - t0 < SLOW_S / 3, "the next call waited for the cancelled one"
        assert result_json(state) == "initial"
        await asyncio.sleep(max(0.0, started + SLOW_S + 0.3 - time.perf_counter()))  # past when the slow call would have ended
        assert result_json(await client.call_tool("echo_state", {})) == "initial"
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert [(c["tool"], c["status"]) for c in log["calls"]] == [("slow_write", "cancelled"), ("echo_state", "ok"), ("echo_state", "ok")]
    assert "cancelled" in log["calls"][0]["error"]
    score = (await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score")).json()
    assert score["tool_calls"] == 3  # a cancelled call is a call the agent made


async def test_sdk_client_timeout_cancels_the_call_legacy(gym, http):
    """2025-era: the SDK client's read timeout sends `notifications/cancelled` on its own POST."""
    episode = await new_episode(http, gym, "hostile")
    started = time.perf_counter()
    async with mcp_session(http, episode["mcp_url"], mode="legacy") as client:
        with pytest.raises(MCPError):
            await client.call_tool("slow_write", {"value": "changed"}, read_timeout_seconds=STARTED_S)
    await _assert_stopped(gym, http, episode, started)


async def test_sdk_client_cancellation_cancels_the_call_2026(gym, http):
    """2026-07-28: the caller's cancellation aborts the POST, which that spec defines as cancelling it."""
    episode = await new_episode(http, gym, "hostile")
    started = time.perf_counter()
    async with mcp_session(http, episode["mcp_url"], mode="2026-07-28") as client:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(STARTED_S):
                await client.call_tool("slow_write", {"value": "changed"})
    await _assert_stopped(gym, http, episode, started)


async def test_dropped_connection_cancels_the_call(gym):
    episode_http = httpx2.AsyncClient(timeout=30)
    async with episode_http:
        episode = await new_episode(episode_http, gym, "hostile")
        started = time.perf_counter()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(STARTED_S):  # the request is abandoned and its connection closed
                await episode_http.post(episode["mcp_url"], json=_call(1, "slow_write", {"value": "changed"}), headers=MCP_HEADERS)
        await _assert_stopped(gym, episode_http, episode, started)


async def test_notifications_cancelled_names_one_request_of_this_episode(gym, http):
    episode, other = await new_episode(http, gym, "hostile"), await new_episode(http, gym, "hostile")
    url = episode["mcp_url"]
    slow = asyncio.ensure_future(http.post(url, json=_call(7, "slow_write", {"value": "changed"}), headers=MCP_HEADERS))
    await asyncio.sleep(STARTED_S)
    cancel = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": {"requestId": 7, "reason": "enough"}}
    for wrong in ({"requestId": "7"}, {"requestId": 8}):  # other ids name nothing
        assert (await http.post(url, json={**cancel, "params": wrong}, headers=MCP_HEADERS)).status_code == 202
    assert (await http.post(other["mcp_url"], json=cancel, headers=MCP_HEADERS)).status_code == 202  # another episode's URL
    queued = asyncio.ensure_future(http.post(url, json=_call(9, "echo_state", {}), headers=MCP_HEADERS))
    await asyncio.sleep(0.1)
    assert (await http.post(url, json={**cancel, "params": {"requestId": 9}}, headers=MCP_HEADERS)).status_code == 202
    assert (await queued).json()["error"]["code"] == -32800  # cancelled before its turn: it never runs
    assert not slow.done()
    t0 = time.perf_counter()
    assert (await http.post(url, json=cancel, headers=MCP_HEADERS)).status_code == 202
    answer = await slow
    assert time.perf_counter() - t0 < SLOW_S / 3
    assert answer.json()["error"]["code"] == -32800 and answer.json()["id"] == 7
    log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
    assert [c["status"] for c in log["calls"]] == ["cancelled"]


async def test_a_request_is_watched_for_a_disconnect_only_once_it_runs_long():
    """The connection watcher is a task of its own: a call answered within `WATCH_AFTER_S` never starts one (its
    `receive` is never read), and one that runs longer is cancelled by the disconnect all the same."""
    from gym_server.mcp_cancel import WATCH_AFTER_S, InFlight, serve_until_disconnect

    reads: list[float] = []

    async def disconnecting_receive() -> dict:
        reads.append(time.perf_counter())
        return {"type": "http.disconnect"}

    async def quick(scope, receive, send) -> None:
        assert (await receive())["body"] == b"{}"  # the body read before the call is replayed

    inflight = InFlight()
    await serve_until_disconnect(quick, {}, b"{}", disconnecting_receive, None, inflight)
    await asyncio.sleep(WATCH_AFTER_S * 2)
    assert reads == [] and not inflight.cancelled.is_set()

    async def slow(scope, receive, send) -> None:
        await receive()
        await asyncio.sleep(WATCH_AFTER_S * 20)

    inflight = InFlight()
    started = time.perf_counter()
    call = asyncio.ensure_future(serve_until_disconnect(slow, {}, b"{}", disconnecting_receive, None, inflight))
    await asyncio.wait_for(inflight.cancelled.wait(), WATCH_AFTER_S * 10)
    assert len(reads) == 1 and WATCH_AFTER_S * 0.9 <= reads[0] - started < WATCH_AFTER_S * 10
    call.cancel()
