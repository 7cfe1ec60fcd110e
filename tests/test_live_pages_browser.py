"""The live pages in a real headless browser (Debian's chromium through selenium): a gym with a token sends
the browser to its login form, the operator's token logs it in, the episode list grows when an episode is
created elsewhere, and an episode's page shows a call made over MCP, without a reload, under the pages' CSP."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import httpx2
import pytest

from gym_server.cli.serve import live_pages
from gym_server.config import ServeConfig
from gym_server.sandbox.pool import SandboxConfig
from gym_server.serve import GymThread
from tests.conftest import mcp_session
from tests.test_viewer_browser import browser, follow, pytestmark  # noqa: F401 (its browser fixture, and its skip: no chromium, no test)

TOKEN = "op-t0ken"
ARENA = "airline-book-cheapest-sfo-jfk"


@pytest.fixture(scope="module")
def gym() -> Iterator[GymThread]:
    config = ServeConfig(port=0, token=TOKEN, sandbox=SandboxConfig(workers=1, state_diffs=True))
    with GymThread(config, pages=live_pages) as running:
        yield running


def book(mcp_url: str) -> None:
    async def call() -> None:
        async with httpx2.AsyncClient(timeout=60) as http, mcp_session(http, mcp_url) as client:
            await client.call_tool("book_flight", {"flight_id": "B6400", "passenger_id": "P001"})

    asyncio.run(call())


def test_log_in_then_watch_an_episode_and_its_calls_arrive(gym, browser):
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(gym.url + "/view/")
    assert "401" in browser.title and not browser.find_elements(By.ID, "live-table")
    follow(browser, browser.find_element(By.LINK_TEXT, "log in"))
    browser.find_element(By.ID, "token").send_keys("not the token")
    follow(browser, browser.find_element(By.ID, "log-in"))
    assert browser.find_element(By.ID, "login-failed").is_displayed()
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    follow(browser, browser.find_element(By.ID, "log-in"))
    assert browser.find_element(By.TAG_NAME, "h1").text == "Live episodes" and TOKEN not in browser.current_url
    links = [a.get_attribute("href") or "" for a in browser.find_elements(By.TAG_NAME, "a")]
    assert links and all(TOKEN not in href for href in links)  # the page has links, and none carries the token
    cookies = browser.get_cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"], c["path"]) for c in cookies] == [("astra_gym_view", True, "Strict", "/view")]
    assert TOKEN not in cookies[0]["value"]
    browser.get_log("browser")  # the two 401s before the login were meant; from here on nothing may go wrong

    created = httpx2.post(f"{gym.url}/api/episodes", json={"arena_id": ARENA}, headers={"Authorization": f"Bearer {TOKEN}"}).json()
    eid = created["episode_id"]
    # the page swaps its fragments every 2 s: read each one in a single script run, so no element goes stale between
    # finding and reading it (a found element can be replaced by the next poll before WebDriver reads it)
    polled = WebDriverWait(browser, 20, ignored_exceptions=(WebDriverException,))
    href = polled.until(lambda b: b.execute_script(
        "const a = [...document.querySelectorAll('a')].find(a => a.textContent.trim() === arguments[0]); return a && a.href;", eid))  # polled in, no reload
    browser.get(href)
    assert browser.find_element(By.TAG_NAME, "h1").text.startswith(ARENA)
    assert not browser.find_elements(By.CSS_SELECTOR, "#live-calls div.call")

    book(created["mcp_url"])
    call = polled.until(lambda b: b.execute_script(
        "const c = document.querySelector('#live-calls div.call'); if (!c) return null;"
        "return {title: c.querySelector('h3').textContent, tables: [...c.querySelectorAll('.table-diff')].map(t => t.getAttribute('data-table'))};"))
    assert "call 0: book_flight" in call["title"]
    assert set(call["tables"]) == {"bookings", "flights"}
    assert polled.until(lambda b: b.find_element(By.ID, "live-status").text).startswith("updated")
    problems = [m["message"] for m in browser.get_log("browser") if m["level"] in ("SEVERE", "WARNING") and "favicon.ico" not in m["message"]]
    assert not problems, problems  # nothing refused by the CSP, no script error

    httpx2.delete(f"{gym.url}/api/episodes/{eid}", headers={"Authorization": f"Bearer {TOKEN}"})
    polled.until(lambda b: "stopped" in b.find_element(By.ID, "live-status").text)
