"""The same boundary when the gym itself runs as an ordinary user (as a container image runs it): bubblewrap
then makes the user namespace itself. Needs root, to become that user (and, in a private mount namespace, to
make the interpreter reachable when it lives under a directory only root may enter, as pyenv's does in /root)."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOBODY = 65534
SCRIPT = r"""
import asyncio, json, os, sys
from pathlib import Path
from gym_server.models import InitialState
from gym_server.sandbox.pool import SandboxConfig, SandboxPool, SandboxUnavailable

SOURCE = Path(sys.argv[1]).read_text()
ATTACKS = {"host_file": {"path": "/tmp/astra-unpriv-pwned"}, "connect": {"port": 9}, "fork_bomb": {}, "run_shell": {},
           "frame_walk": {}, "chroot_breakout": {}, "outliving_thread": {}, "remove_authorizer": {}}

async def main():
    out = {"gym_uid": os.geteuid()}
    try:
        async with SandboxPool(SandboxConfig(workers=1, cpu_s=1.0, call_timeout_s=3.0, memory_mb=256, audit_hook=False)) as pool:
            out["health"] = pool.health()
            state = await pool.build_state(InitialState(ddl=["CREATE TABLE kv (k TEXT)"]))
            out["attacks"] = {a: (await pool.call(SOURCE, a, args, state)).ok for a, args in ATTACKS.items()}
            echo = await pool.call(SOURCE, "echo", {"text": "fine"}, state)
            out["echo"] = echo.result
    except SandboxUnavailable as exc:
        out["refused"] = str(exc)
    print(json.dumps(out))

asyncio.run(main())
"""


def _blocked_ancestor(path: str) -> str | None:
    """The topmost directory above `path` that the unprivileged user cannot enter."""
    for parent in reversed(Path(path).parents):
        if parent != Path("/") and not os.stat(parent).st_mode & 0o001:
            return str(parent)
    return None


def _reachable_as_nobody(needed: list[str], stage: str) -> str:
    """Shell lines that, in a private mount namespace, make each needed path reachable for any user."""
    lines = []
    os.chmod(stage, 0o755)
    blocked = sorted({b for b in map(_blocked_ancestor, needed) if b})
    for i, top in enumerate(blocked):
        lines += [f"mkdir -p {stage}/{i}", f"mount --bind {top} {stage}/{i}", f"mount -t tmpfs -o mode=0755 tmpfs {top}"]
        for path in needed:
            if path.startswith(top + "/"):
                rel = path[len(top) + 1 :]
                lines += [f"mkdir -p {top}/{rel}", f"mount --bind {stage}/{i}/{rel} {top}/{rel}"]
    return " && ".join(lines) or "true"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it runs the gym as uid 65534 (nobody) in a private mount namespace")
@pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("setpriv")), reason="needs util-linux's unshare and setpriv")
def test_the_boundary_holds_when_the_gym_is_an_ordinary_user():
    needed = [os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), str(REPO)]
    attacks = REPO / "tests" / "fixtures" / "kernel_attacks.py"
    stage = tempfile.mkdtemp(prefix="astra-unpriv-")
    command = (
        f"{_reachable_as_nobody(needed, stage)} && cd {REPO} && exec setpriv --reuid={NOBODY} --regid={NOBODY} --clear-groups "
        f"--inh-caps=-all --bounding-set=-all env HOME=/tmp PYTHONPATH={REPO} {sys.executable} -c {shlex.quote(SCRIPT)} {attacks}"
    )
    try:
        done = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", command], capture_output=True, text=True, timeout=120)
    finally:
        shutil.rmtree(stage, ignore_errors=True)  # the mounts lived in the private namespace only
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["gym_uid"] == NOBODY
    assert not os.path.exists("/tmp/astra-unpriv-pwned")
    if "refused" in out:  # no unprivileged user namespaces here: the gym must refuse, not run unsandboxed
        assert "--unsafe-sandbox" in out["refused"]
        pytest.skip(f"this kernel gives an ordinary user no namespaces; the gym refused as it must: {out['refused'][:200]}")
    isolation = out["health"]["isolation"]
    assert out["health"]["backend"] == "bwrap" and not out["health"]["unsafe"]
    assert isolation["uid"] == NOBODY and isolation["capabilities"] == "0000000000000000" and isolation["seccomp"]
    assert all(isolation["namespaces"].values()) and not isolation["allowed_in_call"]
    assert out["attacks"] == {a: False for a in out["attacks"]}, out["attacks"]
    assert out["echo"] == "fine"
