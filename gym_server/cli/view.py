"""`view`: browse run folders (eval, training, synthesis: trajectories, reports, metric curves, state diffs) in a
local web page."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gym_server.cli.options import Flag, command
from gym_server.cli.root import app, console, fail


class ViewConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    runs: list[Path] = Field(min_length=1, description="Run folders (the --out of eval, train sft|grpo, synth sft) to show, in this order.")
    host: str = Field(default="127.0.0.1", description="Address to bind; loopback by default (the pages show gold answers and model output).")
    port: int = Field(default=8100, ge=0, le=65535, description="Port of the viewer.")


@command(app, "view", ViewConfig, {"runs": Flag(argument=True)})
def view(config: ViewConfig) -> None:
    """Browse runs in the browser: summaries, training curves, the episode table, each episode's calls and state diffs, two runs side by side."""
    import uvicorn

    from clients.viewer.app import create_viewer
    from clients.viewer.runs import is_run_folder

    for run in config.runs:
        if not is_run_folder(run):
            fail(f"{run} is not a run folder (no trajectories*.jsonl, report.json, metrics.jsonl or summary.json)")
    console.print(f"viewing {len(config.runs)} run(s) at http://{config.host}:{config.port}/")
    uvicorn.run(create_viewer(config.runs), host=config.host, port=config.port, log_level="warning")
