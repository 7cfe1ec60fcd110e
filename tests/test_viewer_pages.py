"""The viewer over real HTTP: untrusted text is escaped, requests cannot name files, bad queries are 400s, and a
10,000-episode run's table is paginated on the server (a page holds its 50 rows, never the run). How fast that
first page is lives in bench/viewer_first_page.py, not in a timed test."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from clients.viewer.app import create_viewer
from gym_server.serve import AppThread
from tests.viewer_fixtures import HOSTILE_TEXT, synthetic_run


@pytest.fixture(scope="module")
def big_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = synthetic_run(tmp_path_factory.mktemp("big") / "big", 10_000)
    (run / "reward.png").write_bytes(b"\x89PNG fake")
    (run / "secret.txt").write_text("not served")
    return run


@pytest.fixture(scope="module")
def viewer(big_run: Path) -> Iterator[str]:
    with AppThread(create_viewer([big_run, big_run])) as running:
        yield running.url


def test_a_10k_episode_runs_table_is_paginated_on_the_server(viewer):
    response = httpx2.get(f"{viewer}/runs/0")
    assert response.status_code == 200 and "of 10000 episodes" in response.text
    assert response.text.count('class="episode"') == 50 and len(response.content) < 200_000  # one page, not the run
    sorted_page = httpx2.get(f"{viewer}/runs/0", params={"sort": "reward", "order": "desc", "injected": "yes", "page": 3})
    assert sorted_page.status_code == 200 and sorted_page.text.count('class="episode"') == 50


def test_filters_and_sorting_select_the_right_rows(viewer):
    page = httpx2.get(f"{viewer}/runs/0", params={"domain": "retail", "min_calls": 3, "sort": "reward", "order": "desc", "per_page": 500}).text
    # domain retail is i % 3 == 1, three calls is i % 4 == 3: i % 12 == 7, of which rewards descend from 0.9
    assert "833 of 10000 episodes" in page
    rewards = [float(x.split("<")[0]) for x in page.split('class="reward">')[1:] if x[0] != "–"]
    assert rewards == sorted(rewards, reverse=True) and rewards[0] == 0.9
    errors = httpx2.get(f"{viewer}/runs/0", params={"error": "yes"}).text
    assert "200 of 10000 episodes" in errors


def test_untrusted_text_is_escaped_and_pages_allow_no_script(viewer):
    response = httpx2.get(f"{viewer}/runs/0", params={"q": "number 7<"})
    assert response.status_code == 200 and "1 of 10000 episodes" in response.text
    assert HOSTILE_TEXT not in response.text and "&lt;script&gt;" in response.text
    assert "script-src" not in response.headers["content-security-policy"]  # default-src 'none': no script runs
    episode = httpx2.get(f"{viewer}/runs/0/episodes/7")
    assert episode.status_code == 200 and "<script>" not in episode.text and "&lt;img src=x onerror" in episode.text


@pytest.mark.parametrize("path", [
    "/runs/2", "/runs/-1", "/runs/0/episodes/10000", "/runs/0/episodes/..%2F..%2Fetc%2Fpasswd",
    "/runs/0/charts/secret.txt", "/runs/0/charts/..%2Fsecret.txt", "/runs/0/charts/calls_tokens.png",
    "/runs/..%2F..%2Fetc/episodes/0", "/static/..%2F..%2Fapp.py", "/compare?a=0&b=9",
])  # fmt: skip
def test_requests_cannot_name_a_file(viewer, path):
    response = httpx2.get(viewer + path)
    assert response.status_code == 404, (path, response.status_code)
    assert "not served" not in response.text and "import" not in response.text


def test_the_known_chart_is_served(viewer):
    response = httpx2.get(f"{viewer}/runs/0/charts/reward.png")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"


@pytest.mark.parametrize("query", [{"sort": "question"}, {"per_page": 100000}, {"page": 0}, {"min_reward": "x"}, {"unknown": 1}, {"order": "sideways"}])
def test_a_bad_table_query_is_a_400(viewer, query):
    response = httpx2.get(f"{viewer}/runs/0", params=query)
    assert response.status_code == 400 and "bad table query" in response.text
    assert httpx2.get(f"{viewer}/runs/0").status_code == 200  # still serving


def test_view_binds_to_loopback_by_default():
    from gym_server.cli.view import ViewConfig

    assert ViewConfig(runs=[Path(".")]).host == "127.0.0.1"
