"""`serve --processes N`: one REST front over N gym processes, each serving its own episodes' MCP directly."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from urllib.parse import urlsplit

import httpx2
import pytest

from gym_server.config import ServeConfig
from gym_server.front import create_front
from gym_server.quotas import TokenLimits
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import AppThread
from gym_server.workers import process_cpus, usable_cpus
from tests.conftest import mcp_session, result_json, wait_serving

OP = {"Authorization": "Bearer op-t0ken"}
AGENT = {"Authorization": "Bearer agent-t0ken"}
ARENA = "retail-return-headphones"


def front(**overrides: object) -> AppThread:
    config = ServeConfig(
        port=0, token="op-t0ken", agent_tokens=["agent-t0ken"], sandbox=SandboxConfig(workers=1),
        agent_limits=TokenLimits(live_episodes=3, creations_per_minute=600, burst=20), **overrides,
    )  # fmt: skip
    return AppThread(create_front(config, 2))


@pytest.fixture(scope="module")
def gyms() -> Iterator[AppThread]:
    with front(pin_cpus=True) as running:
        yield running


def port_of(url: str) -> int:
    return urlsplit(url).port  # type: ignore[return-value]


async def create(http: httpx2.AsyncClient, base: str, headers: dict[str, str] = OP) -> dict:
    response = await http.post(f"{base}/api/episodes", json={"arena_id": ARENA}, headers=headers)
    assert response.status_code == 201, response.text
    return response.json()


async def test_episodes_spread_over_processes_and_mcp_goes_to_the_owner(gyms: AppThread, http: httpx2.AsyncClient):
    made = [await create(http, gyms.url) for _ in range(4)]
    owners = {e["episode_id"].split(".")[0] for e in made}
    ports = {port_of(e["mcp_url"]) for e in made}
    assert owners == {"p0", "p1"} and len(ports) == 2 and port_of(gyms.url) not in ports
    episode = made[0]
    async with mcp_session(http, episode["mcp_url"]) as client:
        result = await client.call_tool("get_order", {"order_id": "O-1001"})
    assert result_json(result)["customer_id"] == "C1"
    log = await http.get(f"{gyms.url}/api/episodes/{episode['episode_id']}", headers=OP)
    assert [c["tool"] for c in log.json()["calls"]] == ["get_order"]  # the front reached the owner's call log
    score = await http.post(f"{gyms.url}/api/episodes/{episode['episode_id']}/score", json={"final_answer": None}, headers=OP)
    assert score.status_code == 200 and score.json()["tool_calls"] == 1
    other = f"{gyms.url}/api/episodes/{made[1]['episode_id']}"
    turn = await http.post(f"{other}/turns", json={}, headers=OP)
    assert turn.status_code == 409, turn.text  # the owner answered: a one-turn episode has no next turn to open
    finished = await http.post(f"{other}/finish", json={}, headers=OP)
    assert finished.status_code == 200 and finished.json()["scored"]["tool_calls"] == 0
    assert (await http.get(other, headers=OP)).status_code == 404
    for e in [made[0], *made[2:]]:
        assert (await http.delete(f"{gyms.url}/api/episodes/{e['episode_id']}", headers=OP)).status_code == 204
    assert (await http.get(f"{gyms.url}/api/episodes/{episode['episode_id']}", headers=OP)).status_code == 404


async def test_batches_spread_over_processes_and_finish_at_each_owner(gyms: AppThread, http: httpx2.AsyncClient):
    items = [{"arena_id": ARENA}, {"arena_id": "no-such-arena"}, *[{"arena_id": ARENA}] * 3]
    answer = await http.post(f"{gyms.url}/api/episode-batches", json={"episodes": items}, headers=OP)
    assert answer.status_code == 200, answer.text
    results = answer.json()["results"]
    assert [r["status"] for r in results] == [201, 404, 201, 201, 201] and "no-such-arena" in results[1]["error"]
    made = [r["created"] for r in results if r["created"]]
    assert {e["episode_id"].split(".")[0] for e in made} == {"p0", "p1"}
    for episode in made:  # each mcp_url names its owner's own port, and works there
        owner = gyms.app.state.processes.by_name[episode["episode_id"].split(".")[0]]
        assert port_of(episode["mcp_url"]) == owner.port
    async with mcp_session(http, made[-1]["mcp_url"]) as client:
        assert result_json(await client.call_tool("get_order", {"order_id": "O-1001"}))["customer_id"] == "C1"
    finish = [{"episode_id": e["episode_id"], "final_answer": None} for e in made] + [{"episode_id": "nosuch.x"}, {"episode_id": "p0"}]
    finished = await http.post(f"{gyms.url}/api/episode-batches/finish", json={"episodes": finish}, headers=OP)
    statuses = [r["status"] for r in finished.json()["results"]]
    assert statuses == [200] * len(made) + [404, 404], finished.text
    assert finished.json()["results"][len(made) - 1]["log"]["scored"]["tool_calls"] == 1
    for episode in made:
        assert (await http.get(f"{gyms.url}/api/episodes/{episode['episode_id']}", headers=OP)).status_code == 404
    assert (await http.post(f"{gyms.url}/api/episode-batches", json={"episodes": [{"arena_id": ARENA}]})).status_code == 401
    assert (await http.post(f"{gyms.url}/api/episode-batches", json={"episodes": []}, headers=OP)).status_code == 422
    process = made[0]["mcp_url"].split("/episodes/")[0]  # a process's own port: no batch dodges the front either
    direct = await http.post(f"{process}/api/episode-batches", json={"episodes": [{"arena_id": ARENA}]}, headers={**OP, "x-astra-front": "guess"})
    assert direct.status_code == 403


async def test_healthz_reports_every_process(gyms: AppThread, http: httpx2.AsyncClient):
    public = (await http.get(f"{gyms.url}/healthz")).json()
    assert public["status"] == "ok" and [p["status"] for p in public["processes"]] == ["ok", "ok"]
    assert "episodes" not in public and "sandbox" not in public["processes"][0]  # counts are the operator's
    operator = (await http.get(f"{gyms.url}/healthz", headers=OP)).json()
    assert {p["name"] for p in operator["processes"]} == {"p0", "p1"}
    assert all(p["arenas"] == 13 and p["sandbox"]["alive"] for p in operator["processes"])


async def test_each_process_runs_with_its_sandbox_on_a_cpu_of_its_own(gyms: AppThread, http: httpx2.AsyncClient):
    cpus = usable_cpus()
    reports = {p["name"]: p for p in (await http.get(f"{gyms.url}/healthz", headers=OP)).json()["processes"]}
    for slot, name in enumerate(("p0", "p1")):
        pinned = [cpus[slot % len(cpus)]]
        assert reports[name]["cpus"] == pinned and reports[name]["sandbox"]["cpus"] == pinned  # the template, and its forks
    assert usable_cpus() == cpus  # the front itself stays unpinned


def test_which_processes_are_pinned():
    assert process_cpus(None, 2, [0, 1]) == [0, 1]  # one per CPU: pinned
    assert process_cpus(None, 4, [2, 5, 6, 9]) == [2, 5, 6, 9]
    assert process_cpus(None, 1, [0, 1]) == [None]  # fewer processes than CPUs: a sandbox may use the rest
    assert process_cpus(None, 3, [0, 1]) == [None] * 3
    assert process_cpus(None, 1, [0]) == [None]
    assert process_cpus(True, 3, [4, 7]) == [4, 7, 4]
    assert process_cpus(False, 2, [0, 1]) == [None, None]
    assert process_cpus(True, 2, []) == [None, None]  # the platform does not say


async def test_auth_holds_on_the_front_and_on_every_process(gyms: AppThread, http: httpx2.AsyncClient):
    assert (await http.post(f"{gyms.url}/api/episodes", json={"arena_id": ARENA})).status_code == 401
    assert (await http.get(f"{gyms.url}/api/arenas", headers={"Authorization": "Bearer wrong"})).status_code == 401
    episode = await create(http, gyms.url)
    process = episode["mcp_url"].split("/episodes/")[0]
    # a process's own port: creating there would dodge the front's quotas, even with the operator's token
    direct = await http.post(f"{process}/api/episodes", json={"arena_id": ARENA}, headers={**OP, "x-astra-front": "guess"})
    assert direct.status_code == 403 and "front" in direct.json()["error"]
    assert (await http.get(f"{process}/api/episodes/{episode['episode_id']}")).status_code == 401
    keyless = episode["mcp_url"].split("?")[0]
    refused = await http.post(keyless, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=OP)
    assert refused.status_code == 403  # the episode key, not a bearer token, opens its tools
    # the front does not carry MCP: it points at the owner, key and all
    moved = await http.post(f"{gyms.url}/episodes/{episode['episode_id']}/mcp?key=k", json={})
    assert moved.status_code == 307 and moved.headers["location"].startswith(process)
    assert (await http.get(f"{gyms.url}/api/episodes/nosuch.x", headers=OP)).status_code == 404
    assert (await http.get(f"{gyms.url}/api/episodes/{'p0.' + 'x' * 300}", headers=OP)).status_code == 400


async def test_an_agent_tokens_quota_is_whole_across_processes(gyms: AppThread, http: httpx2.AsyncClient):
    """An agent token's episodes all live on one process, so N processes do not give it N quotas."""
    made = [await create(http, gyms.url, AGENT) for _ in range(3)]
    assert len({e["episode_id"].split(".")[0] for e in made}) == 1
    over = await http.post(f"{gyms.url}/api/episodes", json={"arena_id": ARENA}, headers=AGENT)
    assert over.status_code == 429 and over.headers["retry-after"]
    other = await create(http, gyms.url)
    assert (await http.get(f"{gyms.url}/api/episodes/{other['episode_id']}", headers=AGENT)).status_code == 404  # not its own
    for e in made:
        assert (await http.delete(f"{gyms.url}/api/episodes/{e['episode_id']}", headers=AGENT)).status_code == 204
    await create(http, gyms.url, AGENT)


async def test_a_dead_process_loses_only_its_episodes_and_is_replaced(http: httpx2.AsyncClient):
    with front(pin_cpus=True) as gyms:
        made = [await create(http, gyms.url) for _ in range(4)]
        doomed = gyms.app.state.processes.slots[1]
        lost = [e for e in made if e["episode_id"].startswith("p1.")]
        kept = [e for e in made if e["episode_id"].startswith("p0.")]
        os.kill(doomed.process.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while doomed.alive and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        for e in lost:  # a clear infrastructure error, never a score
            gone = await http.post(f"{gyms.url}/api/episodes/{e['episode_id']}/score", json={}, headers=OP)
            assert gone.status_code == 410 and "p1" in gone.json()["error"] and "exited" in gone.json()["error"]
        finishing = [{"episode_id": e["episode_id"]} for e in [*lost, kept[0]]]  # in a batch too: lost, not unanswered
        results = (await http.post(f"{gyms.url}/api/episode-batches/finish", json={"episodes": finishing}, headers=OP)).json()["results"]
        assert [r["status"] for r in results] == [410] * len(lost) + [200]
        kept = kept[1:]
        with pytest.raises(httpx2.ConnectError):
            await http.post(lost[0]["mcp_url"], json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"})
        async with mcp_session(http, kept[0]["mcp_url"]) as client:  # the other process serves on
            assert result_json(await client.call_tool("get_order", {"order_id": "O-1001"}))["customer_id"] == "C1"
        health = (await http.get(f"{gyms.url}/healthz")).json()
        assert health["status"] in ("degraded", "ok")
        assert (await create(http, gyms.url))["episode_id"].split(".")[0] in ("p0", "p1r1")
        while (await http.get(f"{gyms.url}/healthz")).json()["status"] != "ok":  # the slot gets a new process
            assert time.monotonic() < deadline + 60
            await asyncio.sleep(0.2)
        names = {p["name"] for p in (await http.get(f"{gyms.url}/healthz")).json()["processes"]}
        assert names == {"p0", "p1r1"}
        cpus = usable_cpus()
        replaced = next(p for p in (await http.get(f"{gyms.url}/healthz", headers=OP)).json()["processes"] if p["name"] == "p1r1")
        assert replaced["cpus"] == [cpus[1 % len(cpus)]]  # the replacement takes its slot's CPU
        fresh = [await create(http, gyms.url) for _ in range(2)]
        assert {e["episode_id"].split(".")[0] for e in fresh} == {"p0", "p1r1"}
        assert (await http.get(f"{gyms.url}/api/episodes/{lost[0]['episode_id']}", headers=OP)).status_code == 410
        pids = [g.process.pid for g in gyms.app.state.processes.by_name.values()]
    for pid in pids:  # stopping the front stops every process it started
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.parametrize("pin", [True, False])
def test_cli_serve_one_process_pins_only_when_asked(pin: bool):
    """One process is left to the scheduler by default (its sandbox may use every CPU); `--pin-cpus` pins it."""
    flags = ["--pin-cpus"] if pin else []
    proc = subprocess.Popen([sys.executable, "-m", "gym_server.cli", "serve", "--port", "0", "--processes", "1", "--workers", "1", *flags],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = line.split(" at ")[1].split()[0]
        health = wait_serving(url).json()  # no token: everyone is the operator
        cpus = usable_cpus()
        assert health["cpus"] == health["sandbox"]["cpus"] == (cpus[:1] if pin else cpus)
    finally:
        proc.terminate()
        proc.wait(30)


def test_cli_serve_processes(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gym_server.cli", "serve", "--port", "0", "--processes", "2", "--workers", "1"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        assert "serving 2 gym processes" in line
        url = line.split(" at ")[1].split()[0]
        health = wait_serving(url)
        assert [p["status"] for p in health.json()["processes"]] == ["ok", "ok"]
    finally:
        proc.terminate()
        proc.wait(30)
    bad = subprocess.run([sys.executable, "-m", "gym_server.cli", "serve", "--port", "0", "--processes", "2", "--arenas", str(tmp_path / "missing")],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "no such file or directory" in bad.stderr
