"""Fixtures: real gyms on free loopback ports, and the real MCP SDK client over one shared HTTP pool."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx2
import pytest
import pytest_asyncio
from mcp.client import Client
from mcp.client.streamable_http import streamable_http_client

from gym_server.config import ServeConfig
from gym_server.models import Arena
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread

MCP_HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
"""What a raw legacy (2025-era) MCP POST carries."""

HOSTILE_SOURCE = (Path(__file__).parent / "fixtures" / "hostile_tools.py").read_text()


def hostile_arena() -> Arena:
    names = ["spin", "allocate", "fork", "shell", "connect", "write_file", "attach_file", "escape_shell", "tamper", "echo_state", "set_state", "slow_write"]
    tools = [{"name": n, "description": f"hostile: {n}", "inputSchema": {"type": "object", "properties": {}}} for n in names]
    for tool in tools[-2:]:  # set_state and slow_write take the value to write
        tool["inputSchema"] = {"type": "object", "properties": {"value": {"type": "string"}}, "required": ["value"]}
    return Arena.model_validate(
        {
            "id": "hostile", "domain": "test", "scenario_type": "single_hop", "question": "hostile code",
            "final_answer": "x", "tools": tools, "implementation": HOSTILE_SOURCE,
            "initial_state": {"ddl": ["CREATE TABLE kv (k TEXT PRIMARY KEY, v TEXT)"], "rows": {"kv": [{"k": "v", "v": "initial"}]}},
            "subtasks": [{"id": "s1", "question": "echo", "answer": "initial", "gold_call": {"tool": "echo_state", "arguments": {}}}],
        }
    )  # fmt: skip


@pytest.fixture(scope="session")
def hostile_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("stores") / "hostile.jsonl"
    path.write_text(hostile_arena().model_dump_json(by_alias=True) + "\n")
    return path


@pytest.fixture(scope="session")
def gym(hostile_bundle: Path) -> Iterator[GymThread]:
    config = ServeConfig(
        port=0, arenas=["builtin", str(hostile_bundle)], max_argument_bytes=4096,
        sandbox=SandboxConfig(workers=2, call_timeout_s=3.0, cpu_s=1.0, memory_mb=256),
    )  # fmt: skip
    with GymThread(config) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session", scope="session")
async def http() -> AsyncIterator[httpx2.AsyncClient]:
    limits = httpx2.Limits(max_connections=256, max_keepalive_connections=256)
    async with httpx2.AsyncClient(timeout=60, limits=limits) as client:
        yield client


async def new_episode(http: httpx2.AsyncClient, gym: GymThread, arena_id: str, **body: Any) -> dict[str, Any]:
    response = await http.post(f"{gym.url}/api/episodes", json={"arena_id": arena_id, **body})
    assert response.status_code == 201, response.text
    return response.json()


@asynccontextmanager
async def mcp_session(http: httpx2.AsyncClient, url: str, mode: str = "auto") -> AsyncIterator[Client]:
    async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:  # type: ignore[arg-type]
        yield client


def wait_serving(url: str, timeout_s: float = 60.0) -> httpx2.Response:
    """The first answer of `url`/healthz from a gym started in another process, once it serves."""
    deadline = time.time() + timeout_s
    while True:
        try:
            return httpx2.get(f"{url}/healthz", timeout=5)
        except httpx2.HTTPError:
            assert time.time() < deadline, f"{url} did not serve within {timeout_s:.0f} s"
            time.sleep(0.1)


def result_text(result: Any) -> str:
    return "".join(getattr(c, "text", "") for c in result.content)


def result_json(result: Any) -> Any:
    return json.loads(result_text(result))
