"""A real MCP server from PyPI (mcp-server-time over stdio), fronted by the gym under episode URLs."""

from __future__ import annotations

import sys

import pytest

from clients.upstreams import upstream_backends
from gym_server.config import ServeConfig, UpstreamConfig
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from tests.conftest import mcp_session, new_episode

TIME = f"{sys.executable} -m mcp_server_time --local-timezone UTC"


@pytest.fixture(scope="module")
def fronting():
    config = ServeConfig(port=0, arenas=["builtin"], upstreams=[UpstreamConfig.parse(f"time={TIME}")], sandbox=SandboxConfig(workers=1))
    with GymThread(config, upstream_backends(config)) as gym:
        yield gym


async def test_real_stdio_server_is_fronted_and_logged(fronting, http):
    listed = (await http.get(f"{fronting.url}/api/arenas", params={"prefix": "mcp-"})).json()
    assert [a["id"] for a in listed] == ["mcp-time"] and listed[0]["n_tools"] >= 2
    episode = await new_episode(http, fronting, "mcp-time", failure_rate=0.0)
    async with mcp_session(http, episode["mcp_url"]) as client:
        assert {"get_current_time", "convert_time"} <= {t.name for t in (await client.list_tools()).tools}
        now = await client.call_tool("get_current_time", {"timezone": "Asia/Tokyo"})
        assert not now.is_error and "Asia/Tokyo" in now.content[0].text
        bad = await client.call_tool("get_current_time", {"timezone": "Mars/Olympus"})
        assert bad.is_error
        invalid = await client.call_tool("get_current_time", {})
        assert invalid.is_error and "required" in invalid.content[0].text
    log = (await http.get(f"{fronting.url}/api/episodes/{episode['episode_id']}")).json()
    assert [c["status"] for c in log["calls"]] == ["ok", "tool_error", "invalid_arguments"]
    assert log["calls"][0]["result"]["timezone"] == "Asia/Tokyo"
    assert (await http.delete(f"{fronting.url}/api/episodes/{episode['episode_id']}")).status_code == 204


async def test_fronted_server_gets_failure_injection(fronting, http):
    episode = await new_episode(http, fronting, "mcp-time", failure_rate=1.0, failure_kinds=["timeout"])
    async with mcp_session(http, episode["mcp_url"]) as client:
        result = await client.call_tool("get_current_time", {"timezone": "UTC"})
    assert result.is_error and "timed out" in result.content[0].text


def test_dead_upstream_fails_startup_clearly():
    config = ServeConfig(port=0, upstreams=[UpstreamConfig.parse("ghost=/nonexistent/mcp-server")], sandbox=SandboxConfig(workers=1))
    with pytest.raises(RuntimeError, match="failed to start"):
        GymThread(config, upstream_backends(config)).start(timeout_s=60)
    with pytest.raises(ValueError, match="NAME=COMMAND"):
        UpstreamConfig.parse("no-equals-sign")
