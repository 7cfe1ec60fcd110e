"""The viewer's pages in a real headless browser (Debian's chromium driven by selenium through its
chromedriver; nothing is downloaded): open a run made by a real eval over the airline world, sort and filter
the table, open an episode and see a booking's state diff and the sub-tasks its calls solved, compare two runs;
see a real GRPO run's metric curves drawn by the vendored uPlot, under the page's CSP."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from clients.viewer.app import create_viewer
from gym_server.serve import AppThread
from tests.viewer_fixtures import eval_runs

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
pytestmark = pytest.mark.skipif(not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)), reason="chromium and chromium-driver are not installed (scripts/system-deps.sh)")


def chrome() -> object:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # console errors, CSP refusals among them
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return eval_runs(tmp_path_factory.mktemp("viewer-runs"))


@pytest.fixture(scope="module")
def grpo_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real `astra-gym train grpo` run of the tiny model (two steps on the clinic world, on CPU)."""
    pytest.importorskip("trl")
    out = tmp_path_factory.mktemp("grpo") / "grpo"
    done = subprocess.run(
        [sys.executable, "-m", "gym_server.cli", "train", "grpo", "--model", "tiny", "--arena-filter", "clinic-*", "--out", str(out),
         "--max-steps", "2", "--batch-size", "4", "--num-generations", "2", "--max-turns", "2", "--max-new-tokens", "16", "--save-steps", "100"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def site(runs, grpo_run) -> Iterator[str]:
    with AppThread(create_viewer([*runs, grpo_run])) as running:
        yield running.url


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    driver = chrome()
    try:
        yield driver
    finally:
        driver.quit()


def follow(browser, element) -> None:
    """Click what leads to another page and wait until the old one is gone and the new one loaded: reading before
    that could find the old page's elements (stale a moment later) on a loaded machine."""
    from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def gone(_: object) -> bool:
        """`staleness_of`, also for the way this Chrome reports an element of a replaced document (not as stale)."""
        try:
            old.is_enabled()
        except StaleElementReferenceException:
            return True
        except WebDriverException as exc:
            if "does not belong to the document" not in str(exc):
                raise
            return True
        return False

    WebDriverWait(browser, 20).until(gone)
    # and until the new one has loaded: an element found while it still loads could belong to a document Chrome
    # then replaces ("Node with given id does not belong to the document" on a loaded machine)
    WebDriverWait(browser, 20).until(lambda b: b.execute_script("return document.readyState") == "complete")


def cells(browser, css: str) -> list[str]:
    from selenium.webdriver.common.by import By

    return [e.text for e in browser.find_elements(By.CSS_SELECTOR, css)]


def test_open_a_run_sort_and_filter_the_table(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(site + "/")
    follow(browser, browser.find_element(By.LINK_TEXT, "random"))
    assert browser.find_element(By.ID, "summary").is_displayed()
    n = len(cells(browser, "tr.episode"))
    assert n == 5  # the airline world's five arenas
    follow(browser, browser.find_element(By.ID, "sort-reward"))
    follow(browser, browser.find_element(By.ID, "sort-reward"))  # second click: descending
    rewards = [float(r) for r in cells(browser, "td.reward") if r != "–"]
    assert rewards == sorted(rewards, reverse=True) and "▼" in browser.find_element(By.ID, "sort-reward").text
    Select(browser.find_element(By.NAME, "scenario_type")).select_by_visible_text("parallel_multi_hop")
    follow(browser, browser.find_element(By.ID, "apply"))
    assert cells(browser, "td.arena") == ["airline-rebook-p002"]
    assert "1 of 5 episodes" in browser.find_element(By.ID, "count").text
    browser.find_element(By.NAME, "q").send_keys("no such question text")
    follow(browser, browser.find_element(By.ID, "apply"))
    assert cells(browser, "tr.episode") == [] and "0 of 5" in browser.find_element(By.ID, "count").text


def test_open_an_episode_see_the_state_diff_and_solved_subtasks(site, browser):
    from selenium.webdriver.common.by import By

    browser.get(site + "/runs/0?q=cheapest")
    follow(browser, browser.find_element(By.CSS_SELECTOR, "tr.episode td a"))
    assert "airline-book-cheapest-sfo-jfk" in browser.find_element(By.TAG_NAME, "h1").text
    solved = cells(browser, "#solved a.solved")
    assert solved and all("call" in s for s in solved)
    assert browser.find_element(By.ID, "unsolved").text == "unsolved: none"
    booking = next(c for c in browser.find_elements(By.CSS_SELECTOR, "div.call") if "book_flight" in c.find_element(By.TAG_NAME, "h3").text)
    tables = {t.get_attribute("data-table"): t.text for t in booking.find_elements(By.CSS_SELECTOR, ".table-diff")}
    assert set(tables) == {"bookings", "flights"}
    assert "+1" in tables["bookings"] and "confirmed" in tables["bookings"]
    assert "seats_left 5 → 4" in tables["flights"]
    assert "solved" in booking.find_element(By.TAG_NAME, "h3").text
    assert cells(browser, ".turn.user .text")  # the conversation, turn by turn
    assert cells(browser, ".turn.assistant .toolcall")


def test_injected_failures_are_marked(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    browser.get(site + "/runs/1")
    Select(browser.find_element(By.NAME, "injected")).select_by_visible_text("yes")
    follow(browser, browser.find_element(By.ID, "apply"))
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.episode td a")
    if not rows:
        pytest.fail("the random run (failure rate 0.3) has no episode with an injected failure")
    follow(browser, rows[0])
    marks = cells(browser, ".call.injected .injected-mark")
    assert marks and all(m.startswith("injected ") for m in marks)


def test_compare_two_runs(site, browser):
    from selenium.webdriver.common.by import By

    browser.get(site + "/")
    follow(browser, browser.find_element(By.ID, "compare"))
    assert "oracle → random" in browser.find_element(By.TAG_NAME, "h1").text
    rows = browser.find_elements(By.CSS_SELECTOR, "#compare-table tr")[1:]
    assert len(rows) == 5
    flipped = [r.find_element(By.CSS_SELECTOR, "td.arena").text for r in browser.find_elements(By.CSS_SELECTOR, "#compare-table tr.flipped")]
    summary = browser.find_element(By.ID, "compare-summary").text
    assert f"flipped to unsolved: {len(flipped)}" in summary and "flipped to solved: 0" in summary
    assert flipped, "the random policy solved every arena the oracle solved"


@pytest.mark.timeout(600)  # the fixture trains first: 20 to 60 s on a loaded 2-core machine
def test_a_training_runs_curves_are_drawn(site, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get_log("browser")  # only this page's messages below
    browser.get(site + "/")
    follow(browser, browser.find_element(By.LINK_TEXT, "grpo"))
    figures = browser.find_elements(By.CSS_SELECTOR, "#main-charts figure.metric-chart")
    titles = [f.find_element(By.TAG_NAME, "figcaption").text for f in figures]
    assert titles[:3] == ["reward", "recall and precision", "tool calls and solved sub-tasks"] and "loss" in titles
    WebDriverWait(browser, 20).until(lambda b: all(f.get_attribute("data-rendered") for f in figures))
    for figure in figures:
        keys = figure.get_attribute("data-keys").split()
        assert figure.find_elements(By.CSS_SELECTOR, "canvas"), figure.text
        legend = [e.text for e in figure.find_elements(By.CSS_SELECTOR, ".u-legend .u-series .u-label")]
        assert legend == ["step", *keys]  # one series a key, after uPlot's x series
    abf = next(f for f in figures if f.find_element(By.TAG_NAME, "figcaption").text.startswith("adaptive batch filling"))
    assert "abf/groups_dropped" in abf.get_attribute("data-keys").split()
    problems = [m["message"] for m in browser.get_log("browser") if m["level"] in ("SEVERE", "WARNING")]
    assert not problems, problems  # nothing refused by the CSP, no script error
    rows = browser.find_elements(By.CSS_SELECTOR, "tr.episode td a")  # the episodes GRPO played
    assert rows
    follow(browser, rows[0])
    assert browser.find_element(By.ID, "conversation").is_displayed()
