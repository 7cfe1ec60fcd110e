"""Bearer auth, arena stores on disk (bundles, directories, the SQLite index), and the CLI verbs."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import sys
from pathlib import Path

import httpx2
import pytest
from pydantic import ValidationError

from gym_server.builtin import builtin_arenas
from gym_server.cli.options import ConfigError, load_config
from gym_server.config import ServeConfig
from gym_server.models import Arena
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from gym_server.store import INDEX_NAME, ArenaStore, InvalidArena, StoreError, write_bundle
from tests.conftest import mcp_session, wait_serving

CLI = [sys.executable, "-m", "gym_server.cli"]


async def test_token_guards_every_rest_path_and_the_mcp_url_is_the_agents_capability():
    config = ServeConfig(port=0, token="s3cret", sandbox=SandboxConfig(workers=1))
    with GymThread(config) as gym:
        async with httpx2.AsyncClient(base_url=gym.url) as anon:
            assert (await anon.get("/healthz")).status_code == 200
            assert (await anon.get("/api/arenas")).status_code == 401
            assert (await anon.post("/api/episodes", json={"arena_id": "airline-seats-aa100"})).status_code == 401
            wrong = await anon.get("/api/arenas", headers={"Authorization": "Bearer nope"})
            assert wrong.status_code == 401 and wrong.headers["www-authenticate"] == "Bearer"
        auth = {"Authorization": "Bearer s3cret"}
        async with httpx2.AsyncClient(base_url=gym.url, headers=auth) as client:
            episode = (await client.post("/api/episodes", json={"arena_id": "airline-seats-aa100"})).json()
            async with mcp_session(client, episode["mcp_url"]) as session:
                assert not (await session.call_tool("get_flight", {"flight_id": "AA100"})).is_error
        async with httpx2.AsyncClient() as anon:  # the agent: no token, only the MCP URL
            async with mcp_session(anon, episode["mcp_url"]) as session:
                assert not (await session.call_tool("get_flight", {"flight_id": "AA100"})).is_error
            bare = episode["mcp_url"].split("?")[0]
            for headers in ({}, auth):  # the id alone opens nothing, and the operator's token is no key
                denied = await anon.post(bare, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers=headers)
                assert denied.status_code == 403 and "key" in denied.json()["error"]["message"]


def test_bundle_and_directory_stores_with_reused_index(tmp_path: Path):
    arenas = builtin_arenas()
    bundle = tmp_path / "store" / "bundle.jsonl"
    assert write_bundle(arenas[:5], bundle) == 5
    single = tmp_path / "store" / "nested" / "one.json"
    single.parent.mkdir()
    single.write_text(arenas[6].model_dump_json(by_alias=True))
    store = ArenaStore([str(tmp_path / "store")])
    assert len(store) == 6 and arenas[6].id in store
    assert store.get(arenas[0].id) == arenas[0]
    index = tmp_path / "store" / INDEX_NAME
    stamp = index.stat().st_mtime_ns
    again = ArenaStore([str(tmp_path / "store")])
    assert again.ids() == store.ids() and index.stat().st_mtime_ns == stamp  # loaded, not rebuilt
    write_bundle(arenas[:6], bundle)  # a changed file: the index is rebuilt
    assert len(ArenaStore([str(tmp_path / "store")])) == 7 and index.stat().st_mtime_ns != stamp
    items, total = ArenaStore([str(bundle)]).summaries(scenario_type="single_hop")
    assert total == len([a for a in arenas[:6] if a.scenario_type.value == "single_hop"]) == len(items) > 0


def test_store_rejects_duplicates_and_reports_invalid_arenas(tmp_path: Path):
    arena = builtin_arenas()[0]
    dup = tmp_path / "dup.jsonl"
    dup.write_text((arena.model_dump_json(by_alias=True) + "\n") * 2)
    with pytest.raises(StoreError, match="appears more than once"):
        ArenaStore([str(dup)])
    with pytest.raises(StoreError, match="appears more than once"):
        ArenaStore(["builtin", str(tmp_path / "dup.jsonl")])
    with pytest.raises(StoreError, match="no such file"):
        ArenaStore([str(tmp_path / "missing")])
    broken = arena.model_dump(mode="json", by_alias=True) | {"id": "broken"}
    broken["subtasks"][0]["depends_on"] = ["s1"]
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    store = ArenaStore([str(path)])
    assert store.ids() == ["broken"]  # listed from the index ...
    with pytest.raises(InvalidArena, match="dependency cycle"):
        store.get("broken")  # ... and refused with its reason when used


def test_arena_model_structural_checks():
    base = builtin_arenas()[2].model_dump(mode="json", by_alias=True)
    cases = {
        "duplicate tool names": lambda a: a["tools"].append(a["tools"][0]),
        "dependency cycle": lambda a: a["subtasks"][0].update(depends_on=["s3"]),
        "depends on unknown": lambda a: a["subtasks"][1].update(depends_on=["s9"]),
        "unknown tool": lambda a: a["subtasks"][0]["gold_call"].update(tool="nope"),
        "do not match the schema": lambda a: a["subtasks"][0]["gold_call"]["arguments"].update(origin=5),
        "does not compile": lambda a: a["tools"][0]["inputSchema"].update(properties={"x": {"type": "strnig"}}),
    }
    for expected, mutate in cases.items():
        data = json.loads(json.dumps(base))
        mutate(data)
        with pytest.raises(ValidationError, match=expected):
            Arena.model_validate(data)


def test_cli_validate_list_show(tmp_path: Path):
    ok = subprocess.run([*CLI, "arenas", "validate"], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "13/13 arenas valid" in ok.stdout
    wrong = builtin_arenas()[0].model_copy(deep=True)
    wrong.id = "wrong-answer"
    wrong.subtasks[0].answer = 13
    write_bundle([wrong], tmp_path / "wrong.jsonl")
    bad = subprocess.run([*CLI, "arenas", "validate", str(tmp_path / "wrong.jsonl")], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1
    assert "not the answer 13" in bad.stdout
    listed = subprocess.run([*CLI, "arenas", "list", "--json"], capture_output=True, text=True, timeout=60)
    assert len(listed.stdout.splitlines()) == 13
    shown = subprocess.run([*CLI, "arenas", "show", "clinic-book-d02"], capture_output=True, text=True, timeout=60)
    assert json.loads(shown.stdout)["subtasks"][1]["gold_call"]["tool"] == "book_appointment"
    missing = subprocess.run([*CLI, "arenas", "show", "nope"], capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "no arena 'nope'" in missing.stderr


def test_cli_episode_prints_a_working_mcp_url(gym):
    done = subprocess.run([*CLI, "episode", "clinic-refills-rx12", "--gym", gym.url], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    url = done.stdout.strip()
    assert url.startswith(gym.url + "/episodes/") and "/mcp?key=" in url
    listed = httpx2.post(url, json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"}, headers={"Accept": "application/json, text/event-stream"})
    assert "refill_prescription" in listed.text
    dead = subprocess.run([*CLI, "episode", "x", "--gym", "http://127.0.0.1:9"], capture_output=True, text=True, timeout=60)
    assert dead.returncode == 2 and "cannot reach the gym" in dead.stderr


def test_serve_config_from_yaml(tmp_path: Path):
    path = tmp_path / "gym.yaml"
    path.write_text("port: 9123\nfailure_rate: 0.2\nsandbox:\n  workers: 3\n")
    config = load_config(ServeConfig, path, {"port": 9000})
    assert config.port == 9000 and config.failure_rate == 0.2 and config.sandbox.workers == 3
    path.write_text("token: op\nagent_tokens: [a, b]\nagent_arenas: ['offline-*']\nagent_limits: {live_episodes: 8, creations_per_minute: 60, burst: 8}\n")
    config = load_config(ServeConfig, path)
    assert config.agent_tokens == ["a", "b"] and config.agent_limits.live_episodes == 8 and config.operator_limits.live_episodes == 10_000
    path.write_text("prot: 1\n")
    with pytest.raises(ConfigError, match="prot: unknown key"):
        load_config(ServeConfig, path)


def test_cli_serve_prints_its_url_and_serves(tmp_path: Path):
    proc = subprocess.Popen([*CLI, "serve", "--port", "0", "--token", "t0k", "--agent-token", "ag3nt", "--agent-arena", "clinic-*", "--workers", "1", "--processes", "1"],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        line = proc.stdout.readline()  # type: ignore[union-attr]
        url = line.split(" at ")[1].split()[0]
        assert "serving 13 arenas" in line and url.startswith("http://127.0.0.1:")
        health = wait_serving(url)
        assert health.json() == {"status": "ok"}  # without the token: only that it serves
        assert httpx2.get(f"{url}/healthz", headers={"Authorization": "Bearer t0k"}).json()["arenas"] == 13
        assert httpx2.get(f"{url}/api/arenas").status_code == 401
        assert httpx2.get(f"{url}/api/arenas", headers={"Authorization": "Bearer t0k"}).status_code == 200
        agent = {"Authorization": "Bearer ag3nt"}
        assert httpx2.get(f"{url}/api/arenas/clinic-book-d02", headers=agent).status_code == 403  # no gold for agents
        assert httpx2.post(f"{url}/api/episodes", json={"arena_id": "airline-seats-aa100"}, headers=agent).status_code == 403
        assert httpx2.post(f"{url}/api/episodes", json={"arena_id": "clinic-book-d02"}, headers=agent).status_code == 201
    finally:
        proc.terminate()
        proc.wait(30)
    bad = subprocess.run([*CLI, "serve", "--arenas", str(tmp_path / "missing")], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "no such file or directory" in bad.stderr


async def test_an_idle_connection_outlives_the_clients_keep_alive(gym):
    """httpx drops idle connections after 5 s. The gym must keep them longer, or a client that reuses one at
    that instant sends into a closing socket and the request fails without being served."""
    reader, writer = await asyncio.open_connection(*gym.url.removeprefix("http://").split(":"))
    request = f"GET /healthz HTTP/1.1\r\nHost: {gym.url.removeprefix('http://')}\r\n\r\n".encode()
    try:
        for attempt in range(2):
            if attempt:
                await asyncio.sleep(5.5)  # longer than httpx's keep-alive: the same connection must still serve
            writer.write(request)
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), 5)
            assert status.startswith(b"HTTP/1.1 200"), status
            while (line := await reader.readline()) not in (b"\r\n", b""):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
    finally:
        writer.close()
