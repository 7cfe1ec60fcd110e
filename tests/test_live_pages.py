"""The live pages `astra-gym serve` mounts at /view, over real HTTP on a real gym (and on a front over two gym
processes): nothing without the operator (401 with no data, 403 for an agent token, the login cookie opens
these pages and never the REST API), the episode list follows creations, an episode's log shows a call made
over MCP as it comes, and calls per second are counted from the call logs."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator

import httpx2
import pytest

from gym_server.auth import VIEW_COOKIE, VIEW_SESSION_S, Authenticator
from gym_server.cli.serve import live_pages
from gym_server.config import ServeConfig
from gym_server.front import create_front
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import AppThread, GymThread
from tests.conftest import mcp_session

TOKEN = "op-t0ken"
OP = {"Authorization": f"Bearer {TOKEN}"}
AGENT = {"Authorization": "Bearer agent-t0ken"}
ARENA = "airline-book-cheapest-sfo-jfk"


def config() -> ServeConfig:
    return ServeConfig(port=0, token=TOKEN, agent_tokens=["agent-t0ken"], sandbox=SandboxConfig(workers=1, state_diffs=True))


@pytest.fixture(scope="module")
def gym() -> Iterator[GymThread]:
    with GymThread(config(), pages=live_pages) as running:
        yield running


async def create(http: httpx2.AsyncClient, base: str) -> dict:
    response = await http.post(f"{base}/api/episodes", json={"arena_id": ARENA}, headers=OP)
    assert response.status_code == 201, response.text
    return response.json()


async def logged_in(http: httpx2.AsyncClient, base: str) -> dict[str, str]:
    response = await http.post(f"{base}/view/login", data={"token": TOKEN})
    assert response.status_code == 303, response.text
    return {VIEW_COOKIE: response.cookies[VIEW_COOKIE]}


def cookie_header(cookies: dict[str, str]) -> dict[str, str]:
    return {"Cookie": "; ".join(f"{k}={v}" for k, v in cookies.items())}


async def test_the_live_pages_show_nothing_without_the_operator(gym, http):
    episode = await create(http, gym.url)
    pages = ["/view/", "/view", "/view/fragments/episodes", f"/view/episodes/{episode['episode_id']}",
             f"/view/fragments/episodes/{episode['episode_id']}/calls?since=0", "/view/nothing-here"]  # fmt: skip
    forged = cookie_header({VIEW_COOKIE: f"{int(time.time()) + 3600}.{'0' * 64}"})
    for path in pages:
        for headers in ({}, forged, {"Authorization": "Bearer wrong"}):
            response = await http.get(gym.url + path, headers=headers)
            assert response.status_code == 401, (path, headers, response.status_code)
            assert episode["episode_id"] not in response.text and ARENA not in response.text and "/view/login" in response.text
        refused = await http.get(gym.url + path, headers=AGENT)  # an agent token is known, but these pages are not its
        assert refused.status_code == 403 and episode["episode_id"] not in refused.text
    assert (await http.get(f"{gym.url}/view/static/live.js")).status_code == 200  # the package's files hold no data
    assert (await http.get(f"{gym.url}/view/login")).status_code == 200


async def test_the_login_cookie_opens_these_pages_and_nothing_else(gym, http):
    for token in ("wrong", "agent-t0ken", ""):
        failed = await http.post(f"{gym.url}/view/login", data={"token": token})
        assert failed.status_code == 401 and "login-failed" in failed.text and "set-cookie" not in failed.headers
    response = await http.post(f"{gym.url}/view/login", data={"token": TOKEN})
    assert response.status_code == 303 and response.headers["location"] == "/view/"
    set_cookie = response.headers["set-cookie"]
    assert "HttpOnly" in set_cookie and "SameSite=strict" in set_cookie and "Path=/view" in set_cookie and TOKEN not in set_cookie
    cookies = {VIEW_COOKIE: response.cookies[VIEW_COOKIE]}
    page = await http.get(f"{gym.url}/view/", headers=cookie_header(cookies))
    assert page.status_code == 200 and TOKEN not in page.text and page.headers["cache-control"] == "no-store"
    assert "script-src 'self'; connect-src 'self'" in page.headers["content-security-policy"]
    for path in ("/api/episodes", f"/api/arenas/{ARENA}"):  # the cookie is no credential for the REST API
        assert (await http.get(gym.url + path, headers=cookie_header(cookies))).status_code == 401
    assert (await http.get(f"{gym.url}/api/episodes", headers=AGENT)).status_code == 403
    too_long = await http.post(f"{gym.url}/view/login", content=b"token=" + b"x" * 10_000, headers={"content-type": "application/x-www-form-urlencoded"})
    assert too_long.status_code == 413
    out = await http.post(f"{gym.url}/view/logout", headers=cookie_header(cookies))
    assert out.status_code == 303 and f'{VIEW_COOKIE}=""' in out.headers["set-cookie"] and "Max-Age=0" in out.headers["set-cookie"]


def test_a_cookie_is_good_only_where_and_while_it_was_made():
    gym, other = Authenticator(TOKEN), Authenticator(TOKEN)
    cookie = gym.view_cookie(TOKEN)
    assert gym.view_principal(cookie) is not None and other.view_principal(cookie) is None  # a restart ends every session
    old = gym.view_cookie(TOKEN, now=time.time() - VIEW_SESSION_S - 1)
    assert gym.view_principal(old) is None
    expires, _, signature = cookie.partition(".")
    assert gym.view_principal(f"{int(expires) + 10**6}.{signature}") is None  # a later expiry is not signed
    for bad in (None, "", ".", "x.y", "1" * 40 + ".ab", f"{expires}.{signature}\x00"):
        assert gym.view_principal(bad) is None
    assert gym.view_cookie("agent") is None and Authenticator(TOKEN, ["agent"]).view_cookie("agent") is None


async def test_the_episode_list_follows_creations(gym, http):
    cookies = cookie_header(await logged_in(http, gym.url))

    async def listed() -> tuple[int, str]:
        page = (await http.get(f"{gym.url}/view/fragments/episodes", headers=cookies)).text
        return int(re.search(r'<b id="n-episodes">(\d+)</b>', page).group(1)), page

    before, page = await listed()
    episode = await create(http, gym.url)
    assert episode["episode_id"] not in page
    after, page = await listed()
    assert after == before + 1 and f'href="/view/episodes/{episode["episode_id"]}"' in page
    assert (await http.delete(f"{gym.url}/api/episodes/{episode['episode_id']}", headers=OP)).status_code == 204
    gone, page = await listed()
    assert gone == before and episode["episode_id"] not in page


async def test_an_episodes_live_log_shows_a_call_made_over_mcp(gym, http):
    cookies = cookie_header(await logged_in(http, gym.url))
    episode = await create(http, gym.url)
    eid = episode["episode_id"]
    calls = f"{gym.url}/view/fragments/episodes/{eid}/calls"
    empty = await http.get(calls, params={"since": 0}, headers=cookies)
    assert empty.status_code == 200 and 'class="call' not in empty.text and empty.headers["x-next-since"] == "0"
    async with mcp_session(http, episode["mcp_url"]) as client:
        await client.call_tool("book_flight", {"flight_id": "B6400", "passenger_id": "P001"})
    grown = await http.get(calls, params={"since": 0}, headers=cookies)
    assert grown.headers["x-next-since"] == "1" and "call 0: book_flight" in grown.text and "B6400" in grown.text
    assert 'data-table="bookings"' in grown.text  # the booking's state diff, as on a run's episode page
    nothing_new = await http.get(calls, params={"since": 1}, headers=cookies)
    assert 'class="call' not in nothing_new.text and nothing_new.headers["x-next-since"] == "1"
    page = await http.get(f"{gym.url}/view/episodes/{eid}", headers=cookies)
    assert page.status_code == 200 and "book_flight" in page.text and 'data-since="1"' in page.text
    for bad in ({"since": "-1"}, {"since": "x"}, {"since": 1, "other": 2}):
        assert (await http.get(calls, params=bad, headers=cookies)).status_code == 400
    assert (await http.get(f"{gym.url}/view/fragments/episodes/no-such-episode/calls", headers=cookies)).status_code == 404
    assert (await http.get(f"{gym.url}/view/episodes/{'x' * 300}", headers=cookies)).status_code == 404


async def test_calls_per_second_count_the_calls_just_made(gym, http):
    cookies = cookie_header(await logged_in(http, gym.url))
    episode = await create(http, gym.url)
    async with mcp_session(http, episode["mcp_url"]) as client:
        for _ in range(12):
            await client.call_tool("get_flight", {"flight_id": "B6400"})
    listed = (await http.get(f"{gym.url}/api/episodes", headers=OP)).json()
    assert listed["recent_calls"] >= 12 and listed["calls_per_s"] == listed["recent_calls"] / listed["window_s"] > 0
    mine = next(e for e in listed["episodes"] if e["episode_id"] == episode["episode_id"])
    assert mine["calls"] == 12 and listed["episodes"][0] == mine  # the most recently active first
    page = (await http.get(f"{gym.url}/view/fragments/episodes", headers=cookies)).text
    assert float(re.search(r'<b id="calls-per-s">([\d.]+)</b>', page).group(1)) > 0


@pytest.fixture(scope="module")
def front() -> Iterator[AppThread]:
    with AppThread(create_front(config(), 2, pages=live_pages)) as running:
        yield running


async def test_under_several_processes_the_live_pages_cover_every_process(front, http):
    assert (await http.get(f"{front.url}/view/")).status_code == 401
    cookies = cookie_header(await logged_in(http, front.url))
    made = [await create(http, front.url) for _ in range(4)]
    assert {e["episode_id"].split(".")[0] for e in made} == {"p0", "p1"}
    page = (await http.get(f"{front.url}/view/fragments/episodes", headers=cookies)).text
    assert all(e["episode_id"] in page for e in made)
    assert re.findall(r'<tr class="process"><td>(\w+)</td><td>ok</td>', page) == ["p0", "p1"]
    assert "every gym process's episodes (2 processes)" in page
    on_p1 = next(e for e in made if e["episode_id"].startswith("p1."))
    async with mcp_session(http, on_p1["mcp_url"]) as client:  # straight to the owning process's port
        await client.call_tool("get_flight", {"flight_id": "B6400"})
    calls = await http.get(f"{front.url}/view/fragments/episodes/{on_p1['episode_id']}/calls", params={"since": 0}, headers=cookies)
    assert calls.status_code == 200 and "call 0: get_flight" in calls.text and calls.headers["x-next-since"] == "1"
    listed = (await http.get(f"{front.url}/api/episodes", headers=OP)).json()
    assert listed["total"] >= 4 and listed["recent_calls"] >= 1 and [p["name"] for p in listed["processes"]] == ["p0", "p1"]
    assert (await http.get(f"{front.url}/view/fragments/episodes/p7.nope/calls", headers=cookies)).status_code == 404
