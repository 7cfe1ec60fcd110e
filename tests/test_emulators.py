"""Tool docs served as stateful emulated MCP servers inside the gym: BFCL, OpenAPI, OpenAI tools JSON."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from clients.policies import random_value
from emulators.compile import compile_server
from gym_server.config import EpisodeLimits, ServeConfig
from gym_server.episodes import EpisodeManager
from gym_server.models import EpisodeCreate, ServerDoc
from gym_server.sandbox.pool import SandboxConfig, SandboxPool
from gym_server.serve import GymThread
from gym_server.store import ArenaStore, write_bundle
from synth.tooldocs import detect_and_load
from tests.conftest import mcp_session, new_episode, result_json

FIXTURES = Path(__file__).parent / "fixtures"


def _servers() -> list[ServerDoc]:
    servers = []
    for path in [*sorted((FIXTURES / "bfcl").glob("*.json")), FIXTURES / "petstore_openapi.json"]:
        servers.extend(detect_and_load(path)[0])
    weather = [
        {"type": "function", "function": {"name": "create_alert", "description": "Create a weather alert for a city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}, "level": {"type": "integer"}}, "required": ["city"]}}},
        {"type": "function", "function": {"name": "list_alerts", "description": "List the weather alerts, by city.", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}},
    ]  # fmt: skip
    path = Path(tempfile.mkdtemp(prefix="astra-emulators-")) / "weather_tools.json"  # the file name names the server
    path.write_text(json.dumps(weather))
    servers.extend(detect_and_load(path)[0])
    return servers


@pytest.fixture(scope="module")
def emulated(tmp_path_factory):
    servers = _servers()
    path = tmp_path_factory.mktemp("emu") / "emulators.jsonl"
    write_bundle([compile_server(s) for s in servers], path)
    with GymThread(ServeConfig(port=0, arenas=[str(path)], sandbox=SandboxConfig(workers=2))) as gym:
        yield gym, path


async def test_state_persists_within_an_episode_and_never_across(emulated, http):
    gym, _ = emulated
    first = await new_episode(http, gym, "emu-ticket_api", failure_rate=0.0)
    async with mcp_session(http, first["mcp_url"]) as client:
        created = result_json(await client.call_tool("create_ticket", {"title": "Printer on fire", "priority": 5}))
        assert created["title"] == "Printer on fire" and created["status"] == "open" and created["description"] == ""
        found = result_json(await client.call_tool("get_ticket", {"ticket_id": created["id"]}))
        assert found["title"] == "Printer on fire" and found["priority"] == 5
        await client.call_tool("close_ticket", {"ticket_id": created["id"]})
        assert result_json(await client.call_tool("get_ticket", {"ticket_id": created["id"]}))["status"] == "closed"
    second = await new_episode(http, gym, "emu-ticket_api", failure_rate=0.0)
    async with mcp_session(http, second["mcp_url"]) as client:
        missing = await client.call_tool("get_ticket", {"ticket_id": created["id"]})
        assert missing.is_error and "no ticket" in missing.content[0].text


async def test_every_tool_of_every_suite_answers_over_mcp(emulated, http):
    gym, _ = emulated
    rng = random.Random(0)
    for server in _servers():
        episode = await new_episode(http, gym, f"emu-{server.name}", failure_rate=0.0)
        async with mcp_session(http, episode["mcp_url"]) as client:
            listed = {t.name: t for t in (await client.list_tools()).tools}
            assert set(listed) == {t.name for t in server.tools}
            for name, tool in listed.items():
                result = await client.call_tool(name, random_value(tool.input_schema, rng))
                if result.is_error:  # only the world's own answers (e.g. not found), never the sandbox's
                    assert result.content[0].text.startswith("Tool error"), (server.name, name, result.content[0].text)
                elif tool.output_schema and tool.output_schema.get("properties"):
                    assert set(tool.output_schema["properties"]) <= set(result.structured_content), (server.name, name)


async def test_openapi_and_openai_docs_become_working_servers(emulated, http):
    gym, _ = emulated
    pets = await new_episode(http, gym, "emu-pet_store", failure_rate=0.0)
    async with mcp_session(http, pets["mcp_url"]) as client:
        pet = result_json(await client.call_tool("create_pet", {"name": "Rex", "species": "dog", "price": 120.0}))
        assert pet["name"] == "Rex" and isinstance(pet["id"], int)
        assert result_json(await client.call_tool("get_pet", {"pet_id": pet["id"]}))["species"] == "dog"
        listing = result_json(await client.call_tool("list_pets", {"species": "dog"}))
        assert [p["name"] for p in listing["result"]] == ["Rex"]
    weather = await new_episode(http, gym, "emu-weather_tools", failure_rate=0.0)
    async with mcp_session(http, weather["mcp_url"]) as client:
        await client.call_tool("create_alert", {"city": "Oslo", "level": 2})
        await client.call_tool("create_alert", {"city": "Lima"})
        alerts = result_json(await client.call_tool("list_alerts", {"city": "oslo"}))
        assert [a["city"] for a in alerts] == ["Oslo"]


async def test_emulators_fail_20_percent_by_default_reproducibly(emulated):
    _, path = emulated
    async with SandboxPool(SandboxConfig(workers=2)) as pool:
        manager = EpisodeManager(ArenaStore([str(path)]), pool, EpisodeLimits())

        async def run(seed: int) -> list:
            episode = await manager.create(EpisodeCreate(arena_id="emu-ticket_api", seed=seed))
            assert episode.failure.rate == 0.2
            for i in range(400):
                await manager.call_tool(episode, "get_ticket", {"ticket_id": i})
            return [c.injected for c in episode.calls]

        runs = await asyncio.gather(*(run(s) for s in range(5)))
        flat = [k for r in runs for k in r]
        share = sum(k is not None for k in flat) / len(flat)
        assert len(flat) == 2000 and 0.17 <= share <= 0.23, share
        assert await run(3) == runs[3]


def test_cli_emulate_serves_and_prints_mcp_urls(tmp_path):
    proc = subprocess.Popen([sys.executable, "-m", "gym_server.cli", "emulate", str(FIXTURES / "bfcl" / "ticket_api.json"),
                             str(FIXTURES / "bfcl" / "math_api.json"), "--port", "0", "--store", str(tmp_path / "emu.jsonl")],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        lines = [proc.stdout.readline() for _ in range(3)]  # type: ignore[union-attr]
        urls = [line.split()[-1] for line in lines[1:]]
        assert "2 servers" in lines[0] and all("/mcp?key=" in u for u in urls)
        import httpx2

        listed = httpx2.post(urls[0], json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
                             headers={"Accept": "application/json, text/event-stream"}, timeout=30)  # fmt: skip
        names = {t["name"] for t in listed.json()["result"]["tools"]}
        assert "create_ticket" in names and "mean" not in names  # the first URL serves the first doc's tools only
        assert len((tmp_path / "emu.jsonl").read_text().splitlines()) == 2
    finally:
        proc.terminate()
        proc.wait(30)


async def test_llm_mode_answers_from_history_caches_and_fails_closed(gym, http, tmp_path):
    from clients.llm import LLMConfig
    from emulators.llm_mode import LLMEmulatorBackend
    from gym_server.serve import AppThread
    from tests.fixtures.scripted_llm import create_scripted_llm

    weather = [s for s in _servers() if s.name == "weather_tools"] + [s for s in _servers() if s.name == "ticket_api"]
    path = tmp_path / "emu.jsonl"
    write_bundle([compile_server(s) for s in weather], path)
    with AppThread(create_scripted_llm(gym.url)) as llm:
        async def session(model: str) -> list:
            config = ServeConfig(port=0, arenas=[str(path)], sandbox=SandboxConfig(workers=1))
            backend = LLMEmulatorBackend(LLMConfig(base_url=llm.url + "/v1", model=model, cache_path=tmp_path / "llm.sqlite"))
            with GymThread(config, [backend]) as emu:
                episode = await new_episode(http, emu, "emu-weather_tools", failure_rate=0.0)
                out = []
                async with mcp_session(http, episode["mcp_url"]) as client:
                    for city in ("Oslo", "Lima", "Atlantis"):
                        out.append(await client.call_tool("create_alert", {"city": city}))
                ticket = await new_episode(http, emu, "emu-ticket_api", failure_rate=0.0)
                async with mcp_session(http, ticket["mcp_url"]) as client:
                    out.append(await client.call_tool("create_ticket", {"title": "x"}))
                return out

        first = await session("emulator")
        assert [r.structured_content["earlier_calls"] for r in first[:2]] == [0, 1]  # the history is the state
        assert first[2].is_error and "no such city" in first[2].content[0].text
        assert first[3].is_error and "output schema" in first[3].content[0].text  # fails closed
        requests = (await http.get(llm.url + "/stats")).json()["emulator"]
        second = await session("emulator")  # a rerun replays from the cache
        assert [r.structured_content for r in second[:2]] == [r.structured_content for r in first[:2]]
        assert (await http.get(llm.url + "/stats")).json()["emulator"] == requests
        bad = await session("emulator-bad")
        assert all(r.is_error and "model failed" in r.content[0].text for r in bad)
