"""Fewer requests per episode: `POST .../finish` scores an episode, returns its final log and ends it, and a
run reuses the gym's `server/discover` result (its cache hint allows it) instead of probing once per episode."""

from __future__ import annotations

import collections
import json
from typing import Any

import httpx2
import mcp_types as types
import pytest

import gym_server.mcp_endpoint as mcp_endpoint
from clients.gym_client import GymClient
from clients.policies import OraclePolicy
from clients.runner import run_episode
from clients.toolbox import DiscoverCache
from tests.conftest import mcp_session, new_episode

ARENA = "airline-seats-aa100"


async def test_finish_scores_returns_the_final_log_with_its_diffs_and_ends_the_episode(gym, http):
    episode = await new_episode(http, gym, ARENA)
    eid = episode["episode_id"]
    async with mcp_session(http, episode["mcp_url"]) as session:
        booked = await session.call_tool("book_flight", {"flight_id": "AA100", "passenger_id": "P001"})
        assert not booked.is_error
    refused = await http.post(f"{gym.url}/api/episodes/{eid}/finish", json={"final_answer": 1, "extra": True})
    assert refused.status_code == 422 and (await http.get(f"{gym.url}/api/episodes/{eid}")).status_code == 200
    finished = await http.post(f"{gym.url}/api/episodes/{eid}/finish", json={"final_answer": "12"})
    assert finished.status_code == 200, finished.text
    log = finished.json()
    assert [c["tool"] for c in log["calls"]] == ["book_flight"] and log["calls"][0]["status"] == "ok"
    assert log["calls"][0]["diff"]["tables"], "the log waited for the call's state diff"
    assert log["scored"]["tool_calls"] == 1 and log["scored"]["n_subtasks"] >= 1
    assert (await http.get(f"{gym.url}/api/episodes/{eid}")).status_code == 404
    assert (await http.post(f"{gym.url}/api/episodes/{eid}/finish", json={})).status_code == 404
    first = await new_episode(http, gym, ARENA)  # the first score is final, finish included
    path = f"{gym.url}/api/episodes/{first['episode_id']}"
    scored = (await http.post(f"{path}/score", json={"final_answer": "wrong"})).json()
    assert (await http.post(f"{path}/finish", json={"final_answer": "12"})).json()["scored"] == scored


@pytest.fixture
def mcp_methods(monkeypatch: pytest.MonkeyPatch) -> collections.Counter[str]:
    """The MCP methods the gym (a thread of this process) was asked for."""
    seen: collections.Counter[str] = collections.Counter()
    real = mcp_endpoint.EpisodeMCPEndpoint.__call__

    async def spy(self: Any, scope: Any, receive: Any, send: Any) -> None:
        async def reading() -> Any:
            message = await receive()
            if message.get("body"):
                seen[json.loads(message["body"]).get("method")] += 1
            return message

        await real(self, scope, reading, send)

    monkeypatch.setattr(mcp_endpoint.EpisodeMCPEndpoint, "__call__", spy)
    return seen


async def test_a_run_probes_the_gym_once_and_records_every_episode_in_full(gym, http, mcp_methods):
    client = GymClient(gym.url, http)
    records = [await run_episode(client, OraclePolicy(), ARENA, seed=i) for i in range(4)]
    assert mcp_methods["server/discover"] == 1 and mcp_methods["tools/list"] == 4, mcp_methods
    assert sum(mcp_methods.values()) == 1 + 4 + sum(len(r.call_log) for r in records)
    for record in records:
        assert record.error is None and record.reward is not None and record.reward.reward == 1.0
        assert record.call_log and all(c.status == "ok" for c in record.call_log)
        assert (await http.get(f"{gym.url}/api/episodes/{record.episode_id}")).status_code == 404  # ended
    fresh = GymClient(gym.url, http)  # another run's client knows nothing yet: it probes once too
    await run_episode(fresh, OraclePolicy(), ARENA, seed=9)
    assert mcp_methods["server/discover"] == 2


def discover(ttl_ms: int, scope: str = "public", versions: tuple[str, ...] = ("2026-07-28",)) -> types.DiscoverResult:
    return types.DiscoverResult(supported_versions=list(versions), capabilities=types.ServerCapabilities(), ttl_ms=ttl_ms, cache_scope=scope)


def test_discover_results_are_reused_only_as_their_hints_allow():
    now = [100.0]
    cache = DiscoverCache(clock=lambda: now[0])
    url = "http://127.0.0.1:8000/episodes/e1/mcp?key=k1"
    cache.put(url, discover(0))
    cache.put(url, discover(60_000, scope="private"))  # another episode's key is another authorization context
    cache.put(url, discover(60_000, versions=("2099-01-01",)))  # no version this client speaks
    cache.put(url, None)  # a legacy server: nothing discovered
    assert cache.get(url) is None
    kept = discover(60_000)
    cache.put(url, kept)
    assert cache.get("http://127.0.0.1:8000/episodes/e2/mcp?key=k2") is kept  # the same server, another episode
    assert cache.get("http://127.0.0.1:8001/episodes/e2/mcp") is None  # another gym process
    now[0] += 59.9
    assert cache.get(url) is kept
    now[0] += 0.2
    assert cache.get(url) is None  # stale: the next connection probes again


async def test_the_gym_marks_its_discover_result_public_for_minutes(gym, http):
    episode = await new_episode(http, gym, ARENA)
    async with mcp_session(http, episode["mcp_url"]) as session:
        result = session.session.discover_result
    assert result is not None and result.cache_scope == "public" and result.ttl_ms >= 60_000
    assert httpx2.URL(episode["mcp_url"]).params.get("key") not in json.dumps(result.model_dump(mode="json"))
