"""The viewer over training and synthesis run folders, over real HTTP: a GRPO run's metric curves (the data the
vendored uPlot draws, every logged key charted, unreadable and non-finite values as gaps), its played episodes
from every rank's file, an SFT run with no episodes, a synthesis run's judged rollouts; and the script the
chart pages may run is the package's own, never inline."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Iterator
from pathlib import Path

import httpx2
import pytest

from clients.viewer.app import create_viewer
from clients.viewer.runs import is_run_folder
from gym_server.serve import AppThread
from tests.viewer_fixtures import GRPO_METRIC_KEYS, synthesis_run, synthetic_run, training_run

STATIC = Path(__file__).resolve().parent.parent / "clients" / "viewer" / "static"


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("training")
    played = synthetic_run(root / "played", 40)
    sft = root / "sft"
    sft.mkdir()
    (sft / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "loss": 2.0 / s, "mean_token_accuracy": 0.1 * s}) + "\n" for s in range(1, 6)))
    return {"grpo": training_run(root / "grpo", [played], steps=12, world=2), "sft": sft, "synth": synthesis_run(root / "synth", played)}


@pytest.fixture(scope="module")
def viewer(folders) -> Iterator[str]:
    with AppThread(create_viewer([folders["grpo"], folders["sft"], folders["synth"]])) as running:
        yield running.url


def chart_data(page: str) -> dict:
    block = re.search(r'<script type="application/json" id="metrics-data">(.*?)</script>', page, re.S)
    assert block, "the page carries no chart data"
    return json.loads(block.group(1))


def test_the_runs_page_says_what_each_run_is(viewer):
    page = httpx2.get(viewer + "/").text
    kinds = re.findall(r'<td class="kind">(\w+)</td>', page)
    assert kinds == ["training", "training", "synthesis"]
    assert re.findall(r'<td class="steps">(\d*)</td>', page)[:2] == ["12", "5"]


def test_a_grpo_runs_curves_cover_every_logged_key(viewer):
    response = httpx2.get(viewer + "/runs/0")
    assert response.status_code == 200
    data = chart_data(response.text)
    assert data["steps"] == list(range(1, 13))
    titles = {c["title"]: c["keys"] for c in data["charts"]}
    assert titles["reward"] == ["reward", "reward_std", "rewards/gym_reward/mean", "rewards/gym_reward/std"]
    assert titles["recall and precision"] == ["gym/recall", "gym/precision"]
    assert titles["tool calls and solved sub-tasks"] == ["gym/tool_calls", "gym/solved"]
    assert set(titles["completion lengths"]) == {"completions/mean_length", "completions/min_length", "completions/max_length", "completions/mean_terminated_length"}
    assert "abf/groups_dropped" in titles["adaptive batch filling (groups drawn, dropped, played)"]
    assert titles["loss"] == ["loss"]
    charted = [k for c in data["charts"] for k in c["keys"]]
    assert sorted(charted) == sorted(GRPO_METRIC_KEYS) and len(charted) == len(set(charted))  # every key once
    assert data["series"]["abf/groups_dropped"][:4] == [1.0, 2.0, 0.0, 1.0]
    # step 12 was logged again after a resume: its last row wins, and its NaN loss is a gap, not a number
    assert data["series"]["grad_norm"][-1] == 1.5 and data["series"]["loss"][-1] is None
    assert "1 unreadable lines skipped" in response.text
    page = response.text
    assert page.count('class="metric-chart"') == len(data["charts"])
    assert '<script src="/static/vendor/uPlot.iife.min.js" defer></script>' in page


def test_chart_pages_run_only_the_packages_own_scripts(viewer):
    csp = httpx2.get(viewer + "/runs/0").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe" not in csp and "default-src 'none'" in csp
    assert "script-src" not in httpx2.get(viewer + "/runs/2").headers["content-security-policy"]  # no chart: no script at all
    for path, kind in (("/static/vendor/uPlot.iife.min.js", "javascript"), ("/static/metrics.js", "javascript"), ("/static/vendor/uPlot.min.css", "css")):
        response = httpx2.get(viewer + path)
        assert response.status_code == 200 and kind in response.headers["content-type"], path


def test_the_vendored_chart_library_is_the_version_its_notice_names():
    notice = (STATIC / "vendor" / "NOTICE.md").read_text()
    version = re.search(r"\| (\d+\.\d+\.\d+) \| MIT", notice).group(1)
    assert (STATIC / "vendor" / "uPlot.iife.min.js").read_text()[:80].startswith(f"/*! https://github.com/leeoniya/uPlot (v{version}) */")
    assert "MIT License" in (STATIC / "vendor" / "uPlot.LICENSE").read_text()


def test_a_metric_name_cannot_break_out_of_the_data_block(tmp_path):
    run = tmp_path / "hostile"
    run.mkdir()
    key = '</script><script>alert(1)</script><!--'
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, key: 1.0, "loss": 1e400}) + "\n" + json.dumps({"step": True, "loss": 1}) + "\n[1]\n")
    with AppThread(create_viewer([run])) as site:
        page = httpx2.get(site.url + "/runs/0").text
    assert "<script>alert(1)" not in page and page.count("</script>") == 3  # the data block and the two script tags
    data = chart_data(page)
    assert list(data["series"]) == [key] and "loss" not in data["series"]  # an infinite value is no number: no chart
    assert "2 unreadable lines skipped" in page


def test_every_ranks_episodes_are_browsable(viewer, folders):
    page = httpx2.get(viewer + "/runs/0", params={"per_page": 100}).text
    assert "40 of 40 episodes" in page
    assert sorted(set(re.findall(r'<td class="source">(\w+)</td>', page))) == ["rank0", "rank1"]
    rank1 = httpx2.get(viewer + "/runs/0", params={"source": "rank1", "per_page": 100}).text
    assert "20 of 40 episodes" in rank1
    line = int(re.search(r'href="/runs/0/episodes/(\d+)"', rank1).group(1))
    assert line >= 20  # rank 0's file is indexed first
    episode = httpx2.get(f"{viewer}/runs/0/episodes/{line}")
    assert episode.status_code == 200 and "from file rank1" in episode.text
    first = json.loads((folders["grpo"] / "trajectories.rank1.jsonl").read_text().splitlines()[0])
    assert html.escape(first["arena_id"]) in episode.text


def test_a_run_with_curves_and_no_episodes(viewer, tmp_path):
    page = httpx2.get(viewer + "/runs/1").text
    assert "recorded no episodes" in page and 'id="filters"' not in page
    data = chart_data(page)
    assert [c["keys"] for c in data["charts"]] == [["loss"], ["mean_token_accuracy"]]
    assert is_run_folder(tmp_path / "sft-like") is False
    (tmp_path / "sft-like").mkdir()
    (tmp_path / "sft-like" / "metrics.jsonl").write_text("")
    assert is_run_folder(tmp_path / "sft-like")


def test_a_synthesis_runs_judged_rollouts(viewer):
    page = httpx2.get(viewer + "/runs/2", params={"sort": "judge", "order": "desc", "kept": "yes"}).text
    assert "20 of 40 episodes" in page and 'id="synthesis"' in page and "trajectories.rolled_out" in page
    judged = [float(x) for x in re.findall(r'<td class="judge">([\d.]+)</td>', page)]
    assert judged == sorted(judged, reverse=True) and len(judged) == 20
    assert set(re.findall(r'<td class="kept">(\w+)</td>', page)) == {"yes"}
    line = re.search(r'href="/runs/2/episodes/(\d+)"', page).group(1)
    episode = httpx2.get(f"{viewer}/runs/2/episodes/{line}").text
    assert 'id="judgement"' in episode and "kept for SFT" in episode
    assert "&lt;b&gt;plans&lt;/b&gt;" in episode  # the judge's text is escaped like everything else
