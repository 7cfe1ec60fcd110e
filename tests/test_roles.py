"""Roles on a gym with a token: the operator, scoped agent tokens, and an agent holding only its MCP URL.

Each test plays the attacker first: what a holder of a weaker credential tries, and that it is refused."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx2
import pytest
import pytest_asyncio
from mcp.shared.exceptions import MCPError

from gym_server.builtin import builtin_arenas
from gym_server.config import ServeConfig
from gym_server.quotas import QuotaExceeded, TokenLimits
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from tests.conftest import mcp_session

OPERATOR, AGENT_A, AGENT_B = "op-s3cret", "agent-a-s3cret", "agent-b-s3cret"
ARENA = "airline-seats-aa100"
MCP_HEADERS = {"Accept": "application/json, text/event-stream"}
LIST_TOOLS = {"jsonrpc": "2.0", "id": 1, "method": "tools/list"}


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def locked() -> Iterator[GymThread]:
    config = ServeConfig(
        port=0, token=OPERATOR, agent_tokens=[AGENT_A, AGENT_B], agent_arenas=["airline-*"], sandbox=SandboxConfig(workers=2),
        agent_limits=TokenLimits(live_episodes=3, creations_per_minute=600, burst=50),
    )  # fmt: skip
    with GymThread(config) as gym:
        yield gym


@pytest_asyncio.fixture(loop_scope="session")
async def client(locked: GymThread) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=locked.url, timeout=30) as http:
        yield http


async def create(client: httpx2.AsyncClient, token: str, arena_id: str = ARENA, **body: object) -> dict:
    response = await client.post("/api/episodes", json={"arena_id": arena_id, **body}, headers=bearer(token))
    assert response.status_code == 201, response.text
    return response.json()


async def test_an_agent_holding_only_its_mcp_url_reaches_its_tools_and_nothing_else(locked, client):
    mine, other = await create(client, OPERATOR), await create(client, OPERATOR)
    url, key = mine["mcp_url"], mine["mcp_url"].split("?key=")[1]
    assert mine["episode_id"] not in key and len(key) >= 32
    async with mcp_session(client, url) as session:  # no bearer token at all: the URL is the capability
        assert not (await session.call_tool("get_flight", {"flight_id": "AA100"})).is_error
    eid = mine["episode_id"]
    attempts = [  # what the agent tries with what it holds: the key, as a bearer token and bare
        ("GET", f"/api/arenas/{ARENA}"), ("GET", f"/api/episodes/{eid}"), ("POST", f"/api/episodes/{eid}/score"),
        ("DELETE", f"/api/episodes/{eid}"), ("POST", "/api/episodes"), ("GET", "/api/arenas"),
    ]  # fmt: skip
    for method, path in attempts:
        for headers in ({}, bearer(key), {"Authorization": key}):
            response = await client.request(method, path, headers=headers, json={"arena_id": ARENA})
            assert response.status_code == 401, (method, path, headers, response.text)
    # another episode: its id with this key, or with the operator's token, opens nothing
    stolen = other["mcp_url"].split("?")[0] + f"?key={key}"
    for target, headers in ((stolen, {}), (other["mcp_url"].split("?")[0], bearer(OPERATOR)), (url.split("?")[0], {})):
        denied = await client.post(target, json=LIST_TOOLS, headers={**MCP_HEADERS, **headers})
        assert denied.status_code == 403, target
    twice = await client.post(f"{url}&key={key}", json=LIST_TOOLS, headers=MCP_HEADERS)
    assert twice.status_code == 403  # an ambiguous key is no key
    log = (await client.get(f"/api/episodes/{eid}", headers=bearer(OPERATOR))).json()
    assert len(log["calls"]) == 1 and log["scored"] is None  # the denied requests reached nothing
    other_log = (await client.get(f"/api/episodes/{other['episode_id']}", headers=bearer(OPERATOR))).json()
    assert other_log["calls"] == []


async def test_the_operator_creates_scores_reads_and_deletes(locked, client):
    gold = await client.get(f"/api/arenas/{ARENA}", headers={"Authorization": f"bEaReR  {OPERATOR}"})  # RFC 9110: any case
    assert gold.status_code == 200 and gold.json()["subtasks"][0]["gold_call"]
    episode = await create(client, OPERATOR, seed=7, failure_rate=0.0)
    eid = episode["episode_id"]
    assert (await client.get(f"/api/episodes/{eid}", headers=bearer(OPERATOR))).json()["seed"] == 7
    assert (await client.post(f"/api/episodes/{eid}/score", headers=bearer(OPERATOR), json={})).status_code == 200
    assert (await client.delete(f"/api/episodes/{eid}", headers=bearer(OPERATOR))).status_code == 204
    assert (await client.get(f"/api/episodes/{eid}", headers=bearer(OPERATOR))).status_code == 404
    for scheme in ("Basic", "Token", ""):
        refused = await client.get("/api/arenas", headers={"Authorization": f"{scheme} {OPERATOR}".strip()})
        assert refused.status_code == 401 and refused.headers["www-authenticate"] == "Bearer"


async def test_healthz_says_more_only_to_the_operator(locked, client):
    for headers in ({}, bearer("wrong"), bearer(AGENT_A)):
        assert (await client.get("/healthz", headers=headers)).json() == {"status": "ok"}
    full = (await client.get("/healthz", headers=bearer(OPERATOR))).json()
    assert full["status"] == "ok" and full["arenas"] == 13 and "sandbox" in full


async def test_a_second_score_returns_the_first_and_the_tools_stop_answering(locked, client):
    arena = next(a for a in builtin_arenas() if a.id == ARENA)
    episode = await create(client, OPERATOR)
    eid = episode["episode_id"]
    async with mcp_session(client, episode["mcp_url"]) as session:
        for sub in arena.scored_subtasks:
            assert not (await session.call_tool(sub.gold_call.tool, sub.gold_call.arguments)).is_error  # type: ignore[union-attr]
        first = await client.post(f"/api/episodes/{eid}/score", headers=bearer(OPERATOR), json={"final_answer": "wrong"})
        assert first.status_code == 200 and first.json()["final_answer_correct"] is False
        with pytest.raises(MCPError, match="is scored"):
            await session.call_tool("get_flight", {"flight_id": "AA100"})
    again = await client.post(f"/api/episodes/{eid}/score", headers=bearer(OPERATOR), json={"final_answer": arena.final_answer})
    assert again.status_code == 200 and again.json() == first.json()  # the right answer, too late: no oracle
    log = (await client.get(f"/api/episodes/{eid}", headers=bearer(OPERATOR))).json()
    assert len(log["calls"]) == len(arena.scored_subtasks)  # the refused call is not in the log
    assert log["scored"] == first.json()


async def test_agent_tokens_play_their_own_episodes_without_gold_or_logs(locked, client):
    theirs = await create(client, AGENT_B)
    mine = await create(client, AGENT_A)
    eid = mine["episode_id"]
    listed = await client.get("/api/arenas", headers=bearer(AGENT_A))
    assert listed.status_code == 200 and "gold_call" not in listed.text
    forbidden = [("GET", f"/api/arenas/{ARENA}", {}), ("GET", f"/api/episodes/{eid}", {}),
                 ("POST", "/api/episodes", {"arena_id": "clinic-refills-rx12"}),  # not exposed to agents
                 ("POST", "/api/episodes", {"arena_id": ARENA, "seed": 1}),  # a chosen seed predicts failures
                 ("POST", "/api/episodes", {"arena_id": ARENA, "failure_rate": 0.0})]  # fmt: skip
    for method, path, body in forbidden:
        response = await client.request(method, path, headers=bearer(AGENT_A), json=body)
        assert response.status_code == 403, (path, body, response.text)
    for method, path in (("GET", ""), ("POST", "/score"), ("DELETE", "")):  # another token's episode does not exist for it
        response = await client.request(method, f"/api/episodes/{theirs['episode_id']}{path}", headers=bearer(AGENT_A), json={})
        assert response.status_code == 404
    scored = await client.post(f"/api/episodes/{eid}/score", headers=bearer(AGENT_A), json={})
    assert scored.status_code == 200 and scored.json()["tool_calls"] == 0
    finish = await client.post(f"/api/episodes/{eid}/finish", json={}, headers=bearer(AGENT_A))
    assert finish.status_code == 403 and "calls" not in finish.text  # finishing its own episode does not open the log
    assert (await client.delete(f"/api/episodes/{eid}", headers=bearer(AGENT_A))).status_code == 204
    assert (await client.get(f"/api/episodes/{theirs['episode_id']}", headers=bearer(OPERATOR))).status_code == 200
    await client.delete(f"/api/episodes/{theirs['episode_id']}", headers=bearer(AGENT_B))


async def test_one_token_exhausting_its_quota_leaves_the_others_served(locked, client):
    held = [await create(client, AGENT_A) for _ in range(3)]
    over = await client.post("/api/episodes", json={"arena_id": ARENA}, headers=bearer(AGENT_A))
    assert over.status_code == 429 and int(over.headers["retry-after"]) >= 1 and "quota" in over.json()["error"]
    other = await create(client, AGENT_B)  # the other agent and the operator are still served
    await create(client, OPERATOR)
    await client.delete(f"/api/episodes/{held[0]['episode_id']}", headers=bearer(AGENT_A))
    held[0] = await create(client, AGENT_A)  # a deleted episode frees its slot
    for episode in [*held, other]:
        token = AGENT_B if episode is other else AGENT_A
        assert (await client.delete(f"/api/episodes/{episode['episode_id']}", headers=bearer(token))).status_code == 204


async def test_a_batch_holds_an_agent_to_what_its_single_requests_may_do(locked, client):
    """A batch is no way around a rule: an agent's items outside its arenas, with its own seed, or past its quota
    are refused item by item as their single requests are, and it cannot finish (nor see the log of) any
    episode, its own included."""
    items = [{"arena_id": ARENA}, {"arena_id": "clinic-refills-rx12"}, {"arena_id": ARENA, "seed": 3}, *[{"arena_id": ARENA}] * 4]
    answer = await client.post("/api/episode-batches", json={"episodes": items}, headers=bearer(AGENT_A))
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [201, 403, 403, 201, 201, 429, 429]  # the quota holds 3 live episodes
    assert all(r["retry_after_s"] >= 1 for r in results[5:]) and "quota" in results[5]["error"]
    mine = [r["created"]["episode_id"] for r in results if r["status"] == 201]
    theirs = await create(client, AGENT_B)
    finish = [{"episode_id": mine[0]}, {"episode_id": theirs["episode_id"]}]
    refused = (await client.post("/api/episode-batches/finish", json={"episodes": finish}, headers=bearer(AGENT_A))).json()["results"]
    assert [r["status"] for r in refused] == [403, 404] and all(r["log"] is None for r in refused)
    unauthenticated = await client.post("/api/episode-batches", json={"episodes": [{"arena_id": ARENA}]})
    assert unauthenticated.status_code == 401
    for eid in mine:  # nothing was finished: still live, then ended by their owner
        assert (await client.delete(f"/api/episodes/{eid}", headers=bearer(AGENT_A))).status_code == 204
    assert (await client.delete(f"/api/episodes/{theirs['episode_id']}", headers=bearer(AGENT_B))).status_code == 204


async def test_creation_rate_is_limited_per_token():
    config = ServeConfig(
        port=0, token=OPERATOR, agent_tokens=[AGENT_A], sandbox=SandboxConfig(workers=1),
        agent_limits=TokenLimits(live_episodes=100, creations_per_minute=6, burst=2),
    )  # fmt: skip
    with GymThread(config) as gym:
        async with httpx2.AsyncClient(base_url=gym.url, timeout=30) as client:
            for _ in range(2):
                await create(client, AGENT_A)
            throttled = await client.post("/api/episodes", json={"arena_id": ARENA}, headers=bearer(AGENT_A))
            assert throttled.status_code == 429 and 1 <= int(throttled.headers["retry-after"]) <= 10
            assert "per minute" in throttled.json()["error"]
            await create(client, OPERATOR)


def test_agent_tokens_need_an_operator_token_and_must_differ_from_it():
    with pytest.raises(ValueError, match="need an operator token"):
        ServeConfig(token=None, agent_tokens=["a"])
    with pytest.raises(ValueError, match="must not be the operator"):
        ServeConfig(token="same", agent_tokens=["same"])


async def test_a_request_without_the_key_does_not_keep_an_episode_alive(locked, client):
    episode = await create(client, OPERATOR)
    held = locked.app.state.manager.get(episode["episode_id"])
    held.last_used -= 1000.0  # idle for a while
    stale = held.last_used
    bare = episode["mcp_url"].split("?")[0]
    assert (await client.post(f"{bare}?key=guess", json=LIST_TOOLS, headers=MCP_HEADERS)).status_code == 403
    assert held.last_used == stale  # the TTL still runs: a stranger cannot pin episodes in memory
    assert (await client.post(episode["mcp_url"], json=LIST_TOOLS, headers=MCP_HEADERS)).status_code == 200
    assert held.last_used > stale


async def test_an_open_gym_still_needs_the_episodes_key_on_its_mcp_url(gym, http):
    episode = (await http.post(f"{gym.url}/api/episodes", json={"arena_id": ARENA})).json()
    bare = episode["mcp_url"].split("?")[0]
    assert (await http.post(bare, json=LIST_TOOLS, headers=MCP_HEADERS)).status_code == 403
    assert (await http.post(episode["mcp_url"], json=LIST_TOOLS, headers=MCP_HEADERS)).status_code == 200
    assert "sandbox" in (await http.get(f"{gym.url}/healthz")).json()  # no token: everyone is the operator


def test_quota_pruning_keeps_an_episode_whose_creation_was_in_flight():
    from gym_server.auth import Principal, Role
    from gym_server.quotas import Quotas

    live = {"b"}
    quotas = Quotas(lambda p: TokenLimits(live_episodes=2, creations_per_minute=600, burst=10), live.__contains__)
    agent = Principal(Role.agent, "agent-1")
    with quotas.creating(agent) as owned:
        owned("gone")  # an episode that has since ended
    with quotas.creating(agent) as building_a:
        with quotas.creating(agent) as building_b:  # at the limit: prunes "gone" while A is still being built
            building_b("b")
        live.add("a")
        building_a("a")
    assert quotas.owns(agent, "a") and quotas.owns(agent, "b") and not quotas.owns(agent, "gone")
    with pytest.raises(QuotaExceeded, match="2 live episodes"):
        with quotas.creating(agent):
            pass
