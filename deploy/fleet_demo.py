"""Not CI: three gym containers, one eval spread over them, one container killed mid-run.

Needs the image (deploy/build-image.sh) and podman with runc. The eval must finish with every episode scored
exactly once: the episodes lost with the killed container are infrastructure errors in trajectories.jsonl,
played again on the two live gyms.

    python deploy/fleet_demo.py [--engine podman] [--out runs/fleet-demo]
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import httpx2

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from clients.evaluation import EvalConfig, load_records, run_eval  # noqa: E402
from clients.policies import EpisodeContext, OraclePolicy  # noqa: E402

PORTS = (8100, 8200, 8300)


def start(engine: str, token: str, port: int, name: str) -> None:
    subprocess.run([
        engine, "run", "-d", "--rm", "--name", name, "--runtime", "runc", "--network", "host",
        "--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096", "--security-opt", "seccomp=unconfined", "--security-opt", "systempaths=unconfined",
        "-e", f"ASTRA_GYM_TOKEN={token}", "-e", f"ASTRA_GYM_HEALTH_URL=http://127.0.0.1:{port}/healthz",
        "localhost/astra-gym:latest", "serve", "--host=127.0.0.1", f"--port={port}", "--processes=2",
        f"--public-url=http://127.0.0.1:{port}", "--arenas=builtin",
    ], check=True, stdout=subprocess.DEVNULL)  # fmt: skip


def wait_serving(url: str, timeout_s: float = 120.0) -> None:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        try:
            if httpx2.get(f"{url}/healthz", timeout=2).status_code == 200:
                return
        except httpx2.HTTPError:
            pass
        time.sleep(0.5)
    raise SystemExit(f"{url} did not serve within {timeout_s:.0f} s")


class KillsOneGym:
    name, model = "oracle", None

    def __init__(self, engine: str, victim: str, url: str) -> None:
        self.inner, self.engine, self.victim, self.url, self.seen = OraclePolicy(), engine, victim, url, 0

    async def play(self, ctx: EpisodeContext):
        if ctx.episode.mcp_url.startswith(self.url.rsplit(":", 1)[0] + ":82"):  # any port of the second gym
            self.seen += 1
            if self.seen == 3:
                print(f"killing {self.victim} mid-run", flush=True)
                subprocess.run([self.engine, "kill", self.victim], check=True, stdout=subprocess.DEVNULL)
        return await self.inner.play(ctx)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--engine", default="podman")
    ap.add_argument("--out", type=Path, default=Path("runs/fleet-demo"))
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    token = secrets.token_urlsafe(16)
    names = [f"astra-gym-demo-{i}" for i in range(len(PORTS))]
    urls = [f"http://127.0.0.1:{p}" for p in PORTS]
    try:
        for name, port in zip(names, PORTS):
            start(args.engine, token, port, name)
        for url in urls:
            wait_serving(url)
        print("3 gym containers serve:", ", ".join(urls), flush=True)
        config = EvalConfig(gym=",".join(urls), token=token, concurrency=12, episodes_per_arena=args.repeats, out=args.out)
        if (args.out / "trajectories.jsonl").exists():
            (args.out / "trajectories.jsonl").unlink()
        report = asyncio.run(run_eval(config, progress=False, policy=KillsOneGym(args.engine, names[1], urls[1])))
    finally:
        for name in names:  # one at a time: the killed one is gone already, and that must not spare the others
            subprocess.run([args.engine, "rm", "-f", name], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    records = load_records(args.out / "trajectories.jsonl")
    scored = Counter(r.key for r in records if r.reward is not None)
    lost = [r for r in records if r.replica_lost]
    print(f"episodes: {len(scored)} scored ({set(scored.values())} time(s) each), mean reward {report['overall']['reward']:.3f}")
    print(f"lost with the killed gym: {len(lost)} plays ({sorted({r.gym_url.split('/episodes')[0] for r in lost})}), replayed and scored: "
          f"{report['infrastructure_errors']['replayed']}; unresolved infrastructure errors: {report['infrastructure_errors']['episodes']}")  # fmt: skip
    ok = set(scored.values()) == {1} and len(scored) == report["overall"]["episodes"] and lost and not report["infrastructure_errors"]["episodes"]
    print("OK: every episode scored once, the lost ones replayed" if ok else "FAILED")
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
