"""Batch routes (`POST /api/episode-batches`, `.../finish`) answer each item exactly as its own request would
have been answered, and `GymClient` coalesces the creations and finishes a step's episodes make at once into
them; a lone call, or a gym without the routes, goes one by one as before."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx2
import pytest
import pytest_asyncio

from clients.agent import AgentResult
from clients.coalescing import ALONE, Coalescer
from clients.gym_client import GymClient, GymError
from clients.policies import OraclePolicy
from clients.runner import run_episode
from gym_server.app import create_app
from gym_server.config import ServeConfig
from gym_server.models import MAX_BATCH
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import AppThread
from tests.conftest import mcp_session, new_episode

ARENAS = ["airline-seats-aa100", "clinic-refills-rx12", "retail-status-o1002"]


async def batch_create(http: httpx2.AsyncClient, url: str, items: list[dict[str, Any]], **kw: Any) -> httpx2.Response:
    return await http.post(f"{url}/api/episode-batches", json={"episodes": items}, **kw)


async def test_a_batch_creates_each_item_as_its_own_request_would(gym, http):
    items = [{"arena_id": ARENAS[0], "seed": 7}, {"arena_id": "no-such-arena"}, {"arena_id": ARENAS[1], "seed": 8}]
    answer = await batch_create(http, gym.url, items)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [201, 404, 201]
    alone = await http.post(f"{gym.url}/api/episodes", json=items[1])
    assert (alone.status_code, alone.json()["error"]) == (404, results[1]["error"])
    twin = await new_episode(http, gym, ARENAS[0], seed=7)
    first = results[0]["created"]
    assert (first["prompt"], first["tools"], first["n_turns"]) == (twin["prompt"], twin["tools"], twin["n_turns"])
    assert first["episode_id"] != results[2]["created"]["episode_id"]
    async with mcp_session(http, results[2]["created"]["mcp_url"]) as session:  # a batch-made episode is a whole episode
        assert {t.name for t in (await session.list_tools()).tools} == {t["name"] for t in results[2]["created"]["tools"]}


async def test_a_batch_finishes_each_item_as_its_own_request_would(gym, http):
    made = [r["created"] for r in (await batch_create(http, gym.url, [{"arena_id": ARENAS[0], "seed": 1}] * 2)).json()["results"]]
    twin = await new_episode(http, gym, ARENAS[0], seed=1)
    for episode in (made[0], twin):
        async with mcp_session(http, episode["mcp_url"]) as session:
            assert not (await session.call_tool("get_flight", {"flight_id": "AA100"})).is_error
    items = [{"episode_id": made[0]["episode_id"], "final_answer": "12"}, {"episode_id": "gone"}, {"episode_id": made[1]["episode_id"]},
             {"episode_id": made[0]["episode_id"], "final_answer": "12"}, {"episode_id": "bad\x00id"}]  # fmt: skip
    answer = await http.post(f"{gym.url}/api/episode-batches/finish", json={"episodes": items})
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [200, 404, 200, 404, 400]
    single = (await http.post(f"{gym.url}/api/episodes/{twin['episode_id']}/finish", json={"final_answer": "12"})).json()
    log = results[0]["log"]
    assert log["scored"] == single["scored"] and log["scored"]["tool_calls"] == 1
    assert [(c["tool"], c["status"], c["result"]) for c in log["calls"]] == [(c["tool"], c["status"], c["result"]) for c in single["calls"]]
    assert results[2]["log"]["calls"] == [] and results[2]["log"]["scored"]["reward"] == 0.0
    for episode in made:  # ended
        assert (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).status_code == 404


@pytest.mark.parametrize(
    "body, status",
    [
        ({"episodes": []}, 422),
        ({"episodes": [{"arena_id": ARENAS[0]}] * (MAX_BATCH + 1)}, 422),
        ({"episodes": [{"arena_id": ARENAS[0], "failure_rate": 2.0}]}, 422),
        ({"episodes": [{"arena_id": ARENAS[0]}], "also": 1}, 422),
        ({"items": [{"arena_id": ARENAS[0]}]}, 422),
    ],
)
async def test_a_malformed_batch_is_refused_whole_and_creates_nothing(gym, http, body, status):
    before = len((await http.get(f"{gym.url}/api/episodes")).json()["episodes"])
    answer = await http.post(f"{gym.url}/api/episode-batches", json=body)
    assert answer.status_code == status and "error" in answer.json()
    assert len((await http.get(f"{gym.url}/api/episodes")).json()["episodes"]) == before
    finish = await http.post(f"{gym.url}/api/episode-batches/finish", json={"episodes": [{"episode_id": "x", "extra": 1}]})
    assert finish.status_code == 422
    assert (await http.post(f"{gym.url}/api/episode-batches", content=b"{not json")).status_code == 400


@pytest_asyncio.fixture(loop_scope="session")
async def seen(gym) -> AsyncIterator[tuple[GymClient, list[str]]]:
    """A `GymClient` whose every request's method and path is recorded."""
    paths: list[str] = []

    async def record(request: httpx2.Request) -> None:
        paths.append(f"{request.method} {request.url.path}")

    async with httpx2.AsyncClient(timeout=60, event_hooks={"request": [record]}) as http:
        yield GymClient(gym.url, http, batch_window_s=0.02), paths  # a loaded CI machine spreads a step's finishes


class Answers:
    """A policy that answers without a tool call once all `n` episodes are playing: a step's episodes, whose
    turns one batch of generation releases together."""

    name, model = "answers", None

    def __init__(self, n: int) -> None:
        self.n, self.playing, self.all_in = n, 0, asyncio.Event()

    async def play(self, ctx: Any) -> AgentResult:
        self.playing += 1
        if self.playing == self.n:
            self.all_in.set()
        await self.all_in.wait()
        return AgentResult(messages=[{"role": "user", "content": ctx.episode.prompt}, {"role": "assistant", "content": "12"}],
                           final_answer="12", turns=1, stop_reason="stop")  # fmt: skip


async def test_a_steps_episodes_are_created_and_finished_in_one_request_each(gym, seen):
    client, paths = seen
    policy = Answers(9)
    records = await asyncio.gather(*(run_episode(client, policy, a, seed=i) for i, a in enumerate(ARENAS * 3)))
    assert all(r.error is None and r.reward is not None for r in records)
    rest = [p for p in paths if not p.endswith("/mcp")]
    assert rest == ["POST /api/episode-batches", "POST /api/episode-batches/finish"]


async def test_coalesced_episodes_score_as_they_do_alone(gym, seen):
    client, paths = seen
    arenas = ARENAS * 3
    together = await asyncio.gather(*(run_episode(client, OraclePolicy(), a, seed=i) for i, a in enumerate(arenas)))
    assert paths.count("POST /api/episode-batches") == 1
    paths.clear()
    alone = [await run_episode(client, OraclePolicy(), a, seed=i) for i, a in enumerate(arenas)]
    assert paths.count("POST /api/episodes") == len(arenas) and not any("batches" in p for p in paths)  # a lone call goes alone
    assert [r.reward for r in together] == [r.reward for r in alone] and all(r.reward and r.reward.reward == 1.0 for r in alone)
    assert [[(c.tool, c.status) for c in r.call_log] for r in together] == [[(c.tool, c.status) for c in r.call_log] for r in alone]


async def test_creations_that_fail_in_a_batch_fail_their_callers_only(gym, seen):
    client, paths = seen
    outcomes = await asyncio.gather(
        run_episode(client, OraclePolicy(), ARENAS[0], seed=1), client.create_episode(_create("missing")), return_exceptions=True
    )
    assert paths.count("POST /api/episode-batches") == 1
    assert outcomes[0].reward.reward == 1.0  # type: ignore[union-attr]
    assert isinstance(outcomes[1], GymError) and "404" in str(outcomes[1]) and "missing" in str(outcomes[1])


def _create(arena_id: str) -> Any:
    from gym_server.models import EpisodeCreate

    return EpisodeCreate(arena_id=arena_id)


def gym_answering_batches(status: int, body: bytes) -> AppThread:
    """A real gym whose batch routes answer `status` and `body` instead (an older gym, or a broken one)."""
    app = create_app(ServeConfig(port=0, sandbox=SandboxConfig(workers=1)))

    async def wrapped(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/api/episode-batches"):
            await send({"type": "http.response.start", "status": status, "headers": [(b"content-type", b"application/json")]})
            await send({"type": "http.response.body", "body": body})
            return
        await app(scope, receive, send)

    return AppThread(wrapped)


@pytest.fixture(scope="module")
def older_gym() -> Any:
    """A gym as it was before the batch routes: they answer 404."""
    with gym_answering_batches(404, b'{"error": "Not Found"}') as running:
        yield running


async def test_a_batch_answer_that_does_not_fit_fails_its_callers_and_creates_nothing_twice():
    paths: list[str] = []

    async def record(request: httpx2.Request) -> None:
        paths.append(f"{request.method} {request.url.path}")

    with gym_answering_batches(200, b'{"results": []}') as lying:
        async with httpx2.AsyncClient(timeout=60, event_hooks={"request": [record]}) as http:
            client = GymClient(lying.url, http)
            outcomes = await asyncio.gather(*(client.create_episode(_create(a)) for a in ARENAS), return_exceptions=True)
    assert all(isinstance(o, GymError) and "0 items for a batch of 3" in str(o) for o in outcomes)
    assert paths == ["POST /api/episode-batches"]  # what the gym did create is unknown: nothing is created again


async def test_a_gym_without_batch_routes_gets_one_request_per_episode(older_gym):
    paths: list[str] = []

    async def record(request: httpx2.Request) -> None:
        paths.append(f"{request.method} {request.url.path}")

    async with httpx2.AsyncClient(timeout=60, event_hooks={"request": [record]}) as http:
        client = GymClient(older_gym.url, http)
        records = await asyncio.gather(*(run_episode(client, OraclePolicy(), a, seed=1) for a in ARENAS))
        assert all(r.error is None and r.reward and r.reward.reward == 1.0 for r in records)
        assert paths.count("POST /api/episode-batches") == 1  # asked once, then never again
        assert paths.count("POST /api/episodes") == len(ARENAS)
        paths.clear()
        await asyncio.gather(*(run_episode(client, OraclePolicy(), a, seed=2) for a in ARENAS))
        assert not any(p.startswith("POST /api/episode-batches") for p in paths)


async def test_the_coalescer_batches_one_iterations_calls_and_settles_each_as_its_own():
    batches: list[tuple[str, list[int]]] = []
    alone: list[int] = []
    abandoned: list[int] = []

    async def send_batch(key: Any, items: list[int]) -> list[Any]:
        batches.append((key, items))
        await asyncio.sleep(0.05)
        return [ALONE if i == 3 else ValueError(f"bad {i}") if i == 2 else i * 10 for i in items]

    async def send_one(item: int) -> int:
        alone.append(item)
        await asyncio.sleep(0.05)
        return item * 100

    async def gone(result: int) -> None:
        abandoned.append(result)

    coalescer: Coalescer[int, int] = Coalescer(send_batch, send_one, gone)
    calls = [asyncio.ensure_future(coalescer.submit("a", i)) for i in range(5)] + [asyncio.ensure_future(coalescer.submit("b", 9))]
    await asyncio.sleep(0.01)
    calls[4].cancel()  # its caller goes away while the batch is out
    outcomes = await asyncio.gather(*calls, return_exceptions=True)
    assert batches == [("a", [0, 1, 2, 3, 4])] and coalescer.batches == 1  # "b" had one item: it went alone
    assert outcomes[:4] == [0, 10, outcomes[2], 300] and isinstance(outcomes[2], ValueError) and outcomes[5] == 900
    assert isinstance(outcomes[4], asyncio.CancelledError)
    await asyncio.sleep(0.01)
    assert sorted(alone) == [3, 9] and abandoned == [40]

    async def broken(key: Any, items: list[int]) -> list[Any]:
        raise RuntimeError("the batch request failed")

    fallback: Coalescer[int, int] = Coalescer(broken, send_one)
    alone.clear()
    assert await asyncio.gather(fallback.submit("a", 1), fallback.submit("a", 2)) == [100, 200] and sorted(alone) == [1, 2]
