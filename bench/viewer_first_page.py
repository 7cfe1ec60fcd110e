"""How long `astra-gym view` takes to show the first page of a 10,000-episode run (the issue's goal: under a
second), against a baseline measured in the same run: reading and JSON-parsing the run's trajectories.jsonl once,
which any viewer that is not paginated on the server would have to do per page.

    python bench/viewer_first_page.py [--episodes 10000] [--repeats 5] [--write docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.gym_throughput import update_section  # noqa: E402
from clients.viewer.app import create_viewer  # noqa: E402
from gym_server.serve import AppThread  # noqa: E402
from tests.viewer_fixtures import synthetic_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--episodes", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=5, help="fresh viewers, each timed on its first request")
    ap.add_argument("--write", type=Path, default=None)
    args = ap.parse_args()
    run = synthetic_run(Path(tempfile.mkdtemp()) / "run", args.episodes)
    first, later, parse = [], [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        rows = [json.loads(line) for line in (run / "trajectories.jsonl").open()]
        parse.append(time.perf_counter() - t0)
        assert len(rows) == args.episodes
        with AppThread(create_viewer([run])) as viewer:  # a fresh viewer: its first request may index the run
            t0 = time.perf_counter()
            response = httpx2.get(f"{viewer.url}/runs/0", timeout=60)
            first.append(time.perf_counter() - t0)
            assert response.status_code == 200 and f"of {args.episodes} episodes" in response.text
            t0 = time.perf_counter()
            httpx2.get(f"{viewer.url}/runs/0", params={"sort": "reward", "order": "desc", "page": 3}, timeout=60)
            later.append(time.perf_counter() - t0)
    f, lt, b = statistics.median(first), statistics.median(later), statistics.median(parse)
    print(f"{args.episodes} episodes: first page {f * 1000:.0f} ms (goal < 1000), a sorted later page {lt * 1000:.0f} ms; "
          f"baseline (parse the run's JSONL once) {b * 1000:.0f} ms; first page / baseline = {f / b:.2f}")  # fmt: skip
    if args.write:
        update_section(args.write, "## Viewer first page", "\n".join([
            "## Viewer first page (bench/viewer_first_page.py)", "",
            f"`python bench/viewer_first_page.py --episodes {args.episodes} --repeats {args.repeats}` on 2 cores, {time.strftime('%Y-%m-%d')}.", "",
            "| episodes | first page (fresh viewer) | sorted page 3 | baseline: parse the JSONL once | first page / baseline |",
            "| --- | --- | --- | --- | --- |",
            f"| {args.episodes} | {f * 1000:.0f} ms | {lt * 1000:.0f} ms | {b * 1000:.0f} ms | {f / b:.2f} |", "",
        ]))  # fmt: skip


if __name__ == "__main__":
    main()
