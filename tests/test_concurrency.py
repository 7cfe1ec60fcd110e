"""200 episodes at once: no errors, and what one episode writes is never seen by another."""

from __future__ import annotations

import asyncio

from tests.conftest import mcp_session, new_episode, result_json



async def test_200_concurrent_episodes_no_errors_no_leaks(gym, http):
    async def one(i: int) -> tuple[str, str, int]:
        episode = await new_episode(http, gym, "hostile" if i % 2 else "airline-book-cheapest-sfo-jfk", seed=i)
        async with mcp_session(http, episode["mcp_url"]) as client:
            if i % 2:
                # a private key-value state: write this episode's own value, then read it back
                before = result_json(await client.call_tool("echo_state", {}))
                await client.call_tool("set_state", {"value": f"episode-{i}"})
                await asyncio.sleep(0)
                after = result_json(await client.call_tool("echo_state", {}))
                return before, after, i
            booked = await client.call_tool("book_flight", {"flight_id": "B6400", "passenger_id": "P001"})
            assert not booked.is_error, booked
            flight = result_json(await client.call_tool("get_flight", {"flight_id": "B6400"}))
            return "5", str(flight["seats_left"]), i

    results = await asyncio.gather(*(one(i) for i in range(200)))
    for before, after, i in results:
        if i % 2:
            assert before == "initial", f"episode {i} saw another episode's write: {before}"
            assert after == f"episode-{i}"
        else:
            assert after == "4", f"episode {i}: 5 seats minus its own single booking must leave 4, got {after}"
    health = (await http.get(f"{gym.url}/healthz")).json()
    assert health["status"] == "ok"


async def test_deleted_episode_is_gone_and_frees_state(gym, http):
    episode = await new_episode(http, gym, "airline-seats-aa100")
    eid = episode["episode_id"]
    assert (await http.delete(f"{gym.url}/api/episodes/{eid}")).status_code == 204
    assert (await http.get(f"{gym.url}/api/episodes/{eid}")).status_code == 404
    assert (await http.delete(f"{gym.url}/api/episodes/{eid}")).status_code == 404
    gone = await http.post(episode["mcp_url"], json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                           headers={"Accept": "application/json, text/event-stream"})  # fmt: skip
    assert gone.status_code == 404 and "does not exist" in gone.text


async def test_idle_episodes_expire(gym, http):
    manager = gym.app.state.manager
    episode = await new_episode(http, gym, "airline-seats-aa100")
    ttl = manager.limits.episode_ttl_s
    manager.limits.episode_ttl_s = 0.0
    try:
        await asyncio.sleep(0.01)
        assert manager.expire_idle() >= 1
    finally:
        manager.limits.episode_ttl_s = ttl
    assert (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).status_code == 404
