"""`astra-gym`: the command line, and the composition root (the one place that may import every package).

Each command is a pydantic model plus a function that runs it; `options.command` generates the flags from
the model's fields (a field's description is its help) and loads `--config FILE.yaml` through one loader:
flags given override the file, the file overrides defaults, and a wrong key or type exits 2 naming it.
Modules by command group: `serve` (serve, emulate, episode), `arenas` (arenas list|show|validate), `synth`
(synth tools|chains|tasks|trajectories|sft|arenas), `evaluate` (eval, demo), `train` (train sft|grpo),
`suites` (suites install), `view` (view).

To add an option, add a described field to the command's model; its flag `--field-name` follows, and the
YAML key is the field's name. To add a command, in the module of its group:

    class ViewConfig(BaseModel):
        model_config = ConfigDict(extra="forbid")  # unknown YAML keys are errors
        runs: list[Path] = Field(min_length=1, description="Run folders to show.")
        port: int = Field(default=8100, description="Port of the viewer.")

    @command(app, "view", ViewConfig, {"runs": Flag(argument=True)})
    def view(config: ViewConfig) -> None:
        '''Browse trajectories.'''  # the command's help

`Flag` covers what differs from the generated flag: names (`Flag("--arenas", "-a")`), a positional
argument, a nested field (`"sandbox.workers": Flag("--workers")`), a parser, an environment fallback.
tests/test_cli_config.py then asks the new command for its `--config` and YAML/flag equality.
"""

from __future__ import annotations

from gym_server.cli import arenas, evaluate, serve, suites, synth, train, view  # noqa: F401  (each registers its commands)
from gym_server.cli.root import app


def main() -> None:
    app(prog_name="astra-gym")


__all__ = ["app", "main"]
