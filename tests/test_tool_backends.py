"""The gym's one tool-backend protocol: whatever the assembling command passes to `create_app` serves its arena
kinds with the gym's own validation, failure injection, call log and lifecycle around it."""

from __future__ import annotations

from typing import Any

import pytest

from gym_server.backends import ToolAnswer, ToolBackend
from gym_server.config import ServeConfig
from gym_server.models import Arena, CallStatus, ToolSpec
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from tests.conftest import mcp_session, new_episode, result_json

ECHO = ToolSpec(name="echo", inputSchema={"type": "object", "properties": {"text": {"type": "string"}}, "required": ["text"]})


def fronted_arena() -> Arena:
    return Arena(id="mcp-fake", domain="fake", scenario_type="single_hop", tools=[ECHO], implementation="", kind="upstream")


class RecordingBackend:
    kinds = ("upstream",)

    def __init__(self) -> None:
        self.started = self.closed = False
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.begun: list[str] = []
        self.ended: list[str] = []

    async def start(self) -> list[Arena]:
        self.started = True
        return [fronted_arena()]

    async def call(self, episode: Any, arena: Arena, tool: ToolSpec, arguments: dict[str, Any]) -> ToolAnswer:
        self.calls.append((episode.id, arguments))
        if arguments["text"] == "fail":
            return ToolAnswer(CallStatus.tool_error, error="the server said no")
        return ToolAnswer.ok({"echo": arguments["text"]})

    def begin(self, episode: Any) -> None:
        self.begun.append(episode.id)

    def end(self, episode_id: str) -> None:
        self.ended.append(episode_id)

    async def close(self) -> None:
        self.closed = True


async def test_a_passed_backend_serves_its_kind_inside_the_gyms_rules(http):
    backend = RecordingBackend()
    assert isinstance(backend, ToolBackend)
    with GymThread(ServeConfig(port=0, arenas=[], sandbox=SandboxConfig(workers=1)), [backend]) as gym:
        assert backend.started
        assert [a["id"] for a in (await http.get(f"{gym.url}/api/arenas")).json()] == ["mcp-fake"]
        episode = await new_episode(http, gym, "mcp-fake", failure_rate=0.0)
        async with mcp_session(http, episode["mcp_url"]) as client:
            ok = await client.call_tool("echo", {"text": "hi"})
            refused = await client.call_tool("echo", {"text": "fail"})
            invalid = await client.call_tool("echo", {})  # the gym's schema check runs before any backend
        assert result_json(ok) == {"echo": "hi"} and refused.is_error and invalid.is_error
        failing = await new_episode(http, gym, "mcp-fake", failure_rate=1.0, failure_kinds=["unavailable"])
        async with mcp_session(http, failing["mcp_url"]) as client:
            injected = await client.call_tool("echo", {"text": "never sent"})
        assert injected.is_error
        assert backend.calls == [(episode["episode_id"], {"text": "hi"}), (episode["episode_id"], {"text": "fail"})]
        log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
        assert [c["status"] for c in log["calls"]] == ["ok", "tool_error", "invalid_arguments"]
        assert (await http.delete(f"{gym.url}/api/episodes/{episode['episode_id']}")).status_code == 204
        assert backend.begun == [episode["episode_id"], failing["episode_id"]]  # told of each episode it serves
        assert backend.ended == [episode["episode_id"]]
    assert backend.closed


async def test_an_arena_kind_without_a_backend_fails_closed(http, tmp_path):
    store = tmp_path / "fronted.jsonl"
    store.write_text(fronted_arena().model_dump_json(by_alias=True) + "\n")  # a store cannot start a server
    with GymThread(ServeConfig(port=0, arenas=[str(store)], sandbox=SandboxConfig(workers=1))) as gym:
        episode = await new_episode(http, gym, "mcp-fake", failure_rate=0.0)
        async with mcp_session(http, episode["mcp_url"]) as client:
            answer = await client.call_tool("echo", {"text": "hi"})
        assert answer.is_error and "no backend for upstream arenas" in answer.content[0].text
        log = (await http.get(f"{gym.url}/api/episodes/{episode['episode_id']}")).json()
        assert [c["status"] for c in log["calls"]] == ["upstream_error"]


def test_upstreams_in_the_config_need_an_upstream_backend():
    from gym_server.app import create_app
    from gym_server.config import UpstreamConfig

    config = ServeConfig(upstreams=[UpstreamConfig.parse("time=mcp-server-time")])
    with pytest.raises(ValueError, match="no upstream backend was passed"):
        create_app(config)
    create_app(config, [RecordingBackend()])  # one that serves the kind is enough


def test_the_serve_command_wires_the_backends_its_yaml_asks_for(tmp_path):
    from clients.upstreams import UpstreamBackend
    from emulators.llm_mode import LLMEmulatorBackend
    from gym_server.cli import ServeCommandConfig, serve_backends

    path = tmp_path / "gym.yaml"
    path.write_text("emulator_llm: {base_url: 'http://127.0.0.1:9/v1', model: m}\nupstreams: [{name: time, command: mcp-server-time}]\n")
    config = ServeCommandConfig.load(path, port=0)
    assert [type(b) for b in serve_backends(config)] == [UpstreamBackend, LLMEmulatorBackend]
    assert serve_backends(ServeCommandConfig.load(None, port=0)) == []
    with pytest.raises(ValueError, match="emulator_llm"):  # the gym's own config knows no LLM
        ServeConfig.load(path)
