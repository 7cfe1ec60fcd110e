"""`SFTSynthConfig`: what `astra-gym synth sft` reads, apart from `synth.pipeline` so the command line builds its
flags without importing the MCP client."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from clients.llm import LLMConfig
from clients.prompts import DEFAULT_SYSTEM_PROMPT
from synth.tasks import TaskRules

Stage = Literal["chains", "tasks", "trajectories", "export"]
STAGES: tuple[Stage, ...] = ("chains", "tasks", "trajectories", "export")


class SFTSynthConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    tooldocs: list[str] = Field(default_factory=list, description="Tool doc sources (emulated in rollouts).")
    upstreams: list[str] = Field(default_factory=list, description="Real MCP servers NAME=COMMAND|URL (used as they are).")
    llm: LLMConfig = Field(description="The synthesis model (and, by default, the rollout model).")
    agent_model: str | None = Field(default=None, description="Model that plays the rollouts (default: the synthesis model).")
    agent_base_url: str | None = Field(default=None, description="OpenAI-compatible URL of the rollout model (default: the synthesis model's).")
    chains_per_server: int = Field(default=6, ge=1, description="Tool chains proposed per server.")
    max_chain_len: int = Field(default=4, ge=2, description="Longest tool chain.")
    task_rules: TaskRules = Field(default_factory=TaskRules, description="Scores a task needs, and its augmentations.")
    failure_rate: float = Field(default=0.2, ge=0, le=1, description="Injected failure rate of the emulated servers.")
    max_turns: int = Field(default=12, ge=1, description="Assistant turns per rollout.")
    system_prompt: str | None = Field(default=DEFAULT_SYSTEM_PROMPT, description="System prompt of every rollout (eval's and GRPO's default).")
    min_reward: float | None = Field(default=0.6, description="Judge reward a trajectory needs to be kept.")
    top_percent: float | None = Field(default=None, gt=0, le=100, description="Keep only this top share of trajectories by judge reward.")
    concurrency: int = Field(default=16, ge=1, description="LLM requests and rollouts in flight (the LLM's concurrency follows unless set).")
    seed: int = Field(default=0, description="Seeds chain sampling and rollouts.")
    out: Path = Field(default=Path("runs/sft"), description="Pipeline folder (re-run to resume).")
