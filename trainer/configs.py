"""The run configs of `train sft` and `train grpo`, apart from `trainer.train` so the command line builds its flags
without importing TRL, torch or the MCP client."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clients.distractors import BandCounts
from clients.prompts import DEFAULT_SYSTEM_PROMPT


class Checkpointing(BaseModel):
    """What SFT and GRPO runs share: activation checkpointing, and the checkpoints a run saves and resumes from."""

    model_config = ConfigDict(extra="forbid")

    gradient_checkpointing: bool = Field(default=True, description="Recompute activations in backward: less memory, ~30% more compute.")
    save_steps: int = Field(default=50, ge=1, description="Steps between checkpoints.")
    keep_resume_state: int = Field(default=2, ge=0, description="Newest checkpoints that keep optimizer/scheduler state.")
    resume: bool = Field(default=False, description="Resume from the newest checkpoint in out.")


class SFTRunConfig(Checkpointing):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub name or folder for from_pretrained, or 'tiny'.")
    data: Path = Field(description="JSONL with messages + tools (synth's sft/train.jsonl).")
    out: Path = Field(default=Path("runs/train-sft"), description="Checkpoints, metrics and the final model.")
    max_steps: int = Field(default=100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(default=4, ge=1, description="Conversations per device and step.")
    learning_rate: float = Field(default=2e-5, gt=0, description="Peak learning rate.")
    max_length: int = Field(default=4096, ge=16, description="Longest tokenized conversation (longer ones are cut).")
    lora_rank: int | None = Field(default=None, description="LoRA rank (needs peft); None trains all weights.")


class GRPORunConfig(Checkpointing):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(description="Hub name or folder for from_pretrained, or 'tiny'.")
    arenas: list[str] = Field(default_factory=lambda: ["builtin"], description="Arena sources of the in-process gym (unused with `gym`).")
    arena_filter: str = Field(default="*", description="Glob over arena ids used as training prompts.")
    gym: str | None = Field(default=None, description="Gym URLs; none starts one in-process.")
    token: str | None = Field(default=None, description="The gym's operator token (an in-process gym makes its own).")
    system_prompt: str | None = Field(default=DEFAULT_SYSTEM_PROMPT, description="System prompt of every episode (eval's default).")
    failure_rate: float | None = Field(default=None, ge=0, le=1, description="Injected failure rate per episode (default: the arena's).")
    out: Path = Field(default=Path("runs/train-grpo"), description="Checkpoints, metrics, trajectories and the final model.")
    max_steps: int = Field(default=100, ge=1, description="Optimizer steps.")
    batch_size: int = Field(default=8, ge=1, description="Episodes per device and step.")
    num_generations: int = Field(default=4, ge=2, description="Episodes per prompt (the group GRPO compares).")
    learning_rate: float = Field(default=1e-6, gt=0, description="Peak learning rate.")
    warmup_ratio: float = Field(default=0.0, ge=0, lt=1, description="Share of the steps over which the learning rate rises to its peak.")
    max_turns: int = Field(default=6, ge=1, description="Assistant turns per episode.")
    max_new_tokens: int = Field(default=256, ge=1, description="Tokens per assistant turn.")
    max_completion_length: int = Field(default=2048, ge=1, description="Tokens of a whole episode's completion.")
    temperature: float = Field(default=1.0, ge=0, description="Sampling temperature.")
    reward: Literal["f1", "recall", "precision"] = Field(
        default="f1", description="What GRPO maximizes: ASTRA's F1 of the gym's score, or (the paper's ablations) its recall or precision alone."
    )
    mask_truncated: bool = Field(
        default=False, description="Leave episodes cut off by a token budget out of the loss (DAPO's overlong masking); off: they are failures the policy learns to avoid."
    )
    abf: bool = Field(default=True, description="Adaptive Batch Filling: refill groups whose rewards are all equal.")
    distractors: BandCounts = Field(
        default_factory=lambda: {"high": 1, "medium": 1, "low": 1},
        description="Distractor tools per similarity band; the flag takes HIGH,MEDIUM,LOW counts, e.g. 1,1,1.",
    )
    embedding_model: str | None = Field(default=None, description="sentence-transformers model that embeds tools for the distractor bands (default: TF-IDF, no download).")
    vllm_server: str | None = Field(default=None, description="URL of a `trl vllm-serve` server that samples the turns.")
    vllm_colocate: bool = Field(default=False, description="Sample the turns with TRL's vLLM engine in this process, on the training GPUs.")
    seed: int = Field(default=0, description="Seeds sampling and episodes.")
