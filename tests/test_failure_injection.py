"""Injected failures: the rate holds, the same seed replays exactly, every one is marked in the log."""

from __future__ import annotations

import asyncio

from gym_server.failures import injected_failure
from gym_server.models import FailureKind, FailurePolicy
from tests.conftest import mcp_session, new_episode


async def _run(http, gym, seeds: list[int], calls_each: int) -> list[list[str | None]]:
    async def one(seed: int) -> list[str | None]:
        episode = await new_episode(http, gym, "airline-seats-aa100", seed=seed, failure_rate=0.2)
        async with mcp_session(http, episode["mcp_url"]) as client:
            for _ in range(calls_each):
                await client.call_tool("get_flight", {"flight_id": "AA100"})
        log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
        await http.delete(f"{gym.url}/api/episodes/{episode['episode_id']}")
        assert all((c["injected"] is not None) == (c["status"] == "injected_failure") for c in log["calls"])
        return [c["injected"] for c in log["calls"]]

    return list(await asyncio.gather(*(one(s) for s in seeds)))


async def test_rate_02_over_2000_seeded_calls_lands_in_band_and_replays(gym, http):
    seeds = list(range(100, 110))
    first = await _run(http, gym, seeds, 200)
    flat = [k for run in first for k in run]
    assert len(flat) == 2000
    share = sum(k is not None for k in flat) / len(flat)
    assert 0.17 <= share <= 0.23, share
    assert {k for k in flat if k} == {k.value for k in FailureKind}
    again = await _run(http, gym, seeds[:2], 200)
    assert again == first[:2]
    other = await _run(http, gym, [999], 60)
    assert other[0] != first[0][:60]


async def test_injected_failures_count_as_calls_in_the_reward(gym, http):
    episode = await new_episode(http, gym, "airline-seats-aa100", seed=1, failure_rate=1.0, failure_kinds=["unavailable"])
    async with mcp_session(http, episode["mcp_url"]) as client:
        result = await client.call_tool("get_flight", {"flight_id": "AA100"})
    assert result.is_error and "503" in result.content[0].text
    score = (await http.post(f"{gym.url}/api/episodes/{episode['episode_id']}/score")).json()
    assert score["tool_calls"] == 1 and score["solved"] == 0 and score["reward"] == 0.0


def test_decision_depends_only_on_seed_and_index():
    policy = FailurePolicy(rate=0.5)
    a = [injected_failure(policy, 42, i) for i in range(500)]
    assert a == [injected_failure(policy, 42, i) for i in range(500)]
    assert a != [injected_failure(policy, 43, i) for i in range(500)]
    assert all(injected_failure(FailurePolicy(rate=0.0), 42, i) is None for i in range(100))
