"""Regenerate docs/viewer-*.png: the viewer's main pages over two real eval runs of the built-in airline world
(oracle and random), photographed by Debian's headless chromium (scripts/system-deps.sh installs it).
    python scripts/viewer_screenshots.py [--out docs]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from clients.viewer.app import create_viewer  # noqa: E402
from gym_server.serve import AppThread  # noqa: E402
from tests.test_viewer_browser import chrome  # noqa: E402
from tests.viewer_fixtures import eval_runs  # noqa: E402

PAGES = {
    "viewer-run.png": "/runs/1",
    "viewer-episode.png": "/runs/0/episodes/{booking}",
    "viewer-compare.png": "/compare?a=0&b=1",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = eval_runs(Path(tmp))
        viewer = create_viewer(list(runs))
        with AppThread(viewer) as site:
            from clients.viewer.runs import Run

            booking = next(r.line for r in Run(runs[0]).rows if r.arena_id == "airline-book-cheapest-sfo-jfk")
            driver = chrome()
            try:
                for name, path in PAGES.items():
                    driver.get(site.url + path.format(booking=booking))
                    height = driver.execute_script("return document.body.scrollHeight")
                    driver.set_window_size(1400, min(max(height, 600), 3000))
                    driver.save_screenshot(str(args.out / name))
                    print(args.out / name)
            finally:
                driver.quit()


if __name__ == "__main__":
    main()
