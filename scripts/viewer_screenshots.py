"""Regenerate docs/viewer-*.png: the viewer's main pages over two real eval runs of the built-in airline world
(oracle and random) and a real GRPO run of the tiny model (a few steps on CPU), and the live pages of a real gym
with episodes being played, photographed by Debian's headless chromium (scripts/system-deps.sh installs it).
    python scripts/viewer_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients.viewer.app import create_viewer  # noqa: E402
from gym_server.serve import AppThread  # noqa: E402
from tests.test_viewer_browser import chrome  # noqa: E402
from tests.viewer_fixtures import eval_runs  # noqa: E402

PAGES = {
    "viewer-run.png": "/runs/1",
    "viewer-episode.png": "/runs/0/episodes/{booking}",
    "viewer-compare.png": "/compare?a=0&b=1",
    "viewer-training.png": "/runs/2",
}
TOKEN = "screenshot-token"


def shoot(driver: Any, url: str, path: Path) -> None:
    import time

    driver.get(url)
    time.sleep(0.5)  # the charts are drawn by the page's script once it loaded
    height, frame = driver.execute_script("return [document.documentElement.scrollHeight, window.outerHeight - window.innerHeight]")
    driver.set_window_size(1400, min(max(height, 600), 3000) + frame)
    time.sleep(0.3)
    driver.save_screenshot(str(path))
    driver.set_window_size(1400, 1000)
    print(path)


def grpo_run(root: Path) -> Path:
    out = root / "grpo"
    subprocess.run(
        [sys.executable, "-m", "gym_server.cli", "train", "grpo", "--model", "tiny", "--arena-filter", "clinic-*", "--out", str(out),
         "--max-steps", "8", "--batch-size", "4", "--num-generations", "2", "--max-turns", "2", "--max-new-tokens", "16", "--save-steps", "100"],
        check=True, capture_output=True,
    )  # fmt: skip
    return out


def live_gym(driver: Any, out: Path) -> None:
    """A gym with its live pages, four episodes, and some calls over MCP; the list and one episode."""
    import httpx2

    from gym_server.cli.serve import live_pages
    from gym_server.config import ServeConfig
    from gym_server.sandbox.pool import SandboxConfig
    from gym_server.serve import GymThread
    from tests.conftest import mcp_session

    config = ServeConfig(port=0, token=TOKEN, sandbox=SandboxConfig(workers=1, state_diffs=True))
    with GymThread(config, pages=live_pages) as gym:
        auth = {"Authorization": f"Bearer {TOKEN}"}
        arenas = ["airline-book-cheapest-sfo-jfk", "retail-return-headphones", "clinic-specialties-d01-d04", "airline-book-cheapest-sfo-jfk"]
        made = [httpx2.post(f"{gym.url}/api/episodes", json={"arena_id": a}, headers=auth).json() for a in arenas]

        async def play() -> None:
            async with httpx2.AsyncClient(timeout=60) as http, mcp_session(http, made[0]["mcp_url"]) as client:
                await client.call_tool("search_flights", {"origin": "SFO", "destination": "JFK", "date": "2026-12-01"})
                await client.call_tool("get_flight", {"flight_id": "B6400"})
                await client.call_tool("book_flight", {"flight_id": "B6400", "passenger_id": "P001"})
            async with httpx2.AsyncClient(timeout=60) as http, mcp_session(http, made[1]["mcp_url"]) as client:
                await client.call_tool("get_order", {"order_id": "O-1001"})

        asyncio.run(play())
        from selenium.webdriver.common.by import By

        driver.get(gym.url + "/view/login")
        driver.find_element(By.ID, "token").send_keys(TOKEN)
        driver.find_element(By.ID, "log-in").click()
        shoot(driver, gym.url + "/view/", out / "viewer-live.png")
        shoot(driver, f"{gym.url}/view/episodes/{made[0]['episode_id']}", out / "viewer-live-episode.png")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = eval_runs(Path(tmp))
        viewer = create_viewer([*runs, grpo_run(Path(tmp))])
        with AppThread(viewer) as site:
            from clients.viewer.runs import Run

            booking = next(r.line for r in Run(runs[0]).rows if r.arena_id == "airline-book-cheapest-sfo-jfk")
            driver = chrome()
            try:
                for name, path in PAGES.items():
                    shoot(driver, site.url + path.format(booking=booking), args.out / name)
                live_gym(driver, args.out)
            finally:
                driver.quit()


if __name__ == "__main__":
    main()
