"""DNS-rebinding protection: a foreign Host gets 421, a foreign Origin 403 (MCP spec), on REST and MCP alike."""

from __future__ import annotations

import httpx2

from gym_server.config import ServeConfig
from gym_server.origin_guard import HostOriginGuard
from gym_server.serve import GymThread
from tests.conftest import MCP_HEADERS, mcp_session, new_episode

INIT = {"jsonrpc": "2.0", "id": 1, "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}  # fmt: skip


async def test_foreign_host_and_origin_are_refused(gym, http):
    episode = await new_episode(http, gym, "airline-seats-aa100")
    url, port = episode["mcp_url"], gym.url.rsplit(":", 1)[1]
    rebound = await http.post(url, json=INIT, headers={**MCP_HEADERS, "Host": f"evil.example.com:{port}", "Origin": f"http://evil.example.com:{port}"})
    assert rebound.status_code == 421 and rebound.json()["error"]["code"] == -32600 and rebound.json()["id"] is None
    foreign = await http.post(url, json=INIT, headers={**MCP_HEADERS, "Origin": "https://evil.example.com"})
    assert foreign.status_code == 403 and "evil.example.com" in foreign.json()["error"]["message"]
    for origin in ("null", "file://", "chrome-extension://abc"):
        assert (await http.post(url, json=INIT, headers={**MCP_HEADERS, "Origin": origin})).status_code == 403, origin
    gold = await http.get(f"{gym.url}/api/arenas/airline-seats-aa100", headers={"Host": "evil.example.com"})
    assert gold.status_code == 421 and "DNS-rebinding" in gold.json()["error"]
    create = await http.post(f"{gym.url}/api/episodes", json={"arena_id": "airline-seats-aa100"}, headers={"Origin": "http://evil.example.com"})
    assert create.status_code == 403
    assert (await http.get(f"{gym.url}/healthz", headers={"Host": "evil.example.com"})).status_code == 200


async def test_loopback_ip_and_same_origin_requests_are_served(gym, http):
    episode = await new_episode(http, gym, "airline-seats-aa100")
    url, port = episode["mcp_url"], gym.url.rsplit(":", 1)[1]
    for host, origin in [(f"localhost:{port}", f"http://localhost:{port}"), (f"127.0.0.1:{port}", "http://localhost:6274"),
                         (f"[::1]:{port}", f"http://[::1]:{port}"), ("10.1.2.3:8000", "http://10.1.2.3:8000"), ("LOCALHOST", None)]:  # fmt: skip
        headers = {**MCP_HEADERS, "Host": host, **({"Origin": origin} if origin else {})}
        response = await http.post(url, json=INIT, headers=headers)
        assert response.status_code == 200, (host, origin, response.text)
    async with mcp_session(http, url) as client:  # the SDK client sends no Origin
        assert not (await client.call_tool("get_flight", {"flight_id": "AA100"})).is_error


async def test_allow_lists_and_public_url_extend_the_defaults():
    config = ServeConfig(port=0, allowed_hosts=["gym1", "gym2:9000"], allowed_origins=["https://inspector.example"],
                         public_url="https://gym.example.org/")  # fmt: skip
    with GymThread(config) as gym:
        async with httpx2.AsyncClient(timeout=30) as http:
            async def status(host: str, origin: str | None = None) -> int:
                headers = {"Host": host, **({"Origin": origin} if origin else {})}
                return (await http.get(f"{gym.url}/api/arenas", headers=headers)).status_code

            assert await status("gym1:8000") == 200 and await status("GYM1") == 200
            assert await status("gym2:9000") == 200 and await status("gym2:9001") == 421
            assert await status("gym.example.org") == 200 and await status("gym3") == 421
            assert await status("gym1", "https://inspector.example") == 200
            assert await status("gym1", "https://gym.example.org") == 200
            assert await status("gym1", "https://inspector.example.evil") == 403
            assert await status("gym1:8000", "http://gym1:8000") == 200  # same-origin
    with GymThread(ServeConfig(port=0, allowed_hosts=["*"])) as gym:
        async with httpx2.AsyncClient(timeout=30) as http:
            async def status_any(origin: str | None) -> int:
                headers = {"Host": "anything.example:80", **({"Origin": origin} if origin else {})}
                return (await http.get(f"{gym.url}/api/arenas", headers=headers)).status_code

            assert await status_any(None) == 200
            assert await status_any("http://localhost:6274") == 200
            assert await status_any("http://anything.example:80") == 403  # any Host: "same origin" proves nothing
    assert HostOriginGuard(None, [], ["*"]).origin_allowed("http://else.example", "x")  # type: ignore[arg-type]


def test_malformed_hosts_and_origins_are_refused_not_crashed():
    guard = HostOriginGuard(None, [], [])  # type: ignore[arg-type]
    for origin in ("http://[::1", "http://[zz]:80", "http://%zz", "http://:80", "javascript:alert(1)", ""):
        assert not guard.origin_allowed(origin, "localhost"), origin
    for host in ("[::1", "a:b", "[zz]", ":80", "x y", "a@b", "localhost:99999", "localhost/x"):
        assert not guard.host_allowed(host), host
    assert guard.host_allowed("[::1]:8000") and guard.origin_allowed("http://[::1]:8000", None)
