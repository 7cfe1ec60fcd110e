"""The layer order is a contract CI checks (import-linter), not a review habit: gym_server <- clients <-
emulators <- synth <- trainer, with only the CLI composition root (gym_server.cli) importing upward."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LINT = str(Path(sys.executable).with_name("lint-imports"))
PACKAGES = ("gym_server", "clients", "emulators", "synth", "trainer")


def lint(cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([LINT, "--no-cache"], cwd=cwd, capture_output=True, text=True, timeout=120)


def test_the_tree_keeps_the_layers():
    run = lint(ROOT)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "1 kept, 0 broken" in run.stdout


def test_a_planted_upward_import_breaks_the_contract(tmp_path):
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.json", "*.sql"))
    (tmp_path / "gym_server" / "planted.py").write_text("from synth.models import stable_id  # the gym reaching up\n")
    run = lint(tmp_path)
    assert run.returncode == 1, run.stdout + run.stderr
    assert "0 kept, 1 broken" in run.stdout
    assert "gym_server.planted -> synth.models" in run.stdout
