"""`suites install`: external benchmark suites' optional dependencies, installed light."""

from __future__ import annotations

import subprocess
import sys

import typer
from pydantic import BaseModel, ConfigDict, Field

from gym_server.cli.options import Flag, command
from gym_server.cli.root import app, console

suites_app = typer.Typer(no_args_is_help=True, help="External benchmark suites (bfcl-mt).")
app.add_typer(suites_app, name="suites")


class SuitesInstallConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern="^bfcl-mt$", description="The suite whose dependency to install: bfcl-mt.")


@command(suites_app, "suites install", SuitesInstallConfig, {"name": Flag(argument=True)})
def suites_install(config: SuitesInstallConfig) -> None:
    """Install a suite's optional dependency light: bfcl-eval with `--no-deps` plus the two modules its
    multi-turn backends and checker import (its full dependency set pulls torch and CUDA wheels)."""
    from gym_server.suites.bfcl.data import PIN

    argv = [sys.executable, "-m", "pip", "install", "--no-deps", f"bfcl-eval=={PIN}", "mpmath==1.3.0", "filelock==3.20.0"]
    console.print(" ".join(argv))
    raise typer.Exit(subprocess.call(argv))
