"""The command groups and the terminal every command prints to; `fail` is how a command stops with a message."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console

app = typer.Typer(no_args_is_help=True, add_completion=False, help="astra-gym: an MCP-native agent gym.")
arenas_app = typer.Typer(no_args_is_help=True, help="Inspect and validate arena stores.")
synth_app = typer.Typer(no_args_is_help=True, help="Synthesize tool docs, tasks, trajectories and arenas.")
train_app = typer.Typer(no_args_is_help=True, help="Train with TRL: SFT, then multi-turn GRPO against the gym.")
app.add_typer(arenas_app, name="arenas")
app.add_typer(synth_app, name="synth")
app.add_typer(train_app, name="train")
console = Console()
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> NoReturn:
    """Exit with `code` (2: the command line or config is wrong; 1: the run failed) after saying why."""
    from rich.markup import escape

    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)  # messages quote user input and brackets, not markup
    raise typer.Exit(code)
