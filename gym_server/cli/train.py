"""`train sft|grpo`: the trainer's run configs (`trainer.train`) as commands."""

from __future__ import annotations

import json

from gym_server.cli.options import Flag, command
from gym_server.cli.root import console, fail, train_app
from clients.distractors import parse_band_counts
from trainer.configs import GRPORunConfig, SFTRunConfig
from trainer.distributed import is_main_process


@command(train_app, "train sft", SFTRunConfig)
def train_sft(config: SFTRunConfig) -> None:
    """Supervised fine-tuning on tool-use conversations, assistant tokens only."""
    from trainer.train import run_sft

    try:
        result = run_sft(config)
    except (ValueError, OSError) as exc:
        fail(str(exc), code=1)
    if is_main_process():
        console.print_json(json.dumps(result))


GRPO_FLAGS = {"arenas": Flag("--arenas", "-a"), "token": Flag(envvar="ASTRA_GYM_TOKEN"), "distractors": Flag(parse=parse_band_counts)}


@command(train_app, "train grpo", GRPORunConfig, GRPO_FLAGS)
def train_grpo(config: GRPORunConfig) -> None:
    """Online multi-turn GRPO (beta 0, no entropy term) with rollouts over MCP and the gym's F1 reward."""
    from clients.agent import ModelEndpointError
    from clients.gym_client import GymError
    from clients.runner import EpisodeNotPlayed
    from trainer.train import run_grpo

    try:
        result = run_grpo(config)
    except (ValueError, OSError, GymError, EpisodeNotPlayed, ModelEndpointError) as exc:
        fail(str(exc), code=1)
    if is_main_process():  # under `accelerate launch`, one summary for all ranks
        console.print_json(json.dumps(result))
