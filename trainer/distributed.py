"""Training under `accelerate launch` (or torchrun) with several processes: what each rank needs to know
before TRL's trainer exists.

TRL's GRPOTrainer hands every rank its own slice of a step's prompts and calls the rollout on each rank; the
rollout plays that slice through the gym on the rank's own `GymSession`, so N ranks play N slices at once
against one gym (or fleet). Rewards are gathered across ranks before advantages are computed, and DDP (or
DeepSpeed) averages the gradients. The launchers set `RANK`, `LOCAL_RANK` and `WORLD_SIZE` in every process
before any of our code runs, so these are read from the environment.
"""

from __future__ import annotations

import os
from pathlib import Path


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def is_main_process() -> bool:
    """The rank that prints results and owns shared files (the others train the same model)."""
    return rank() == 0


def records_path(out: Path, rank: int, world: int) -> Path:
    """Each rank appends its own episodes to its own file: ranks never interleave lines in one file (appends
    from several processes are not atomic on network filesystems), and the file names the rank that played them."""
    return out / ("trajectories.jsonl" if world == 1 else f"trajectories.rank{rank}.jsonl")


def rank_attempt(attempt: int, rank: int, world: int) -> int:
    """A rank's `attempt`-th episode on an arena is the run's `attempt * world + rank`-th: every rank plays
    other seeds than the others (two ranks given the same arena must not replay one episode), and one process
    plays exactly the seeds it always did."""
    return attempt * world + rank
