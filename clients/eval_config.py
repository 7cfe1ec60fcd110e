"""`EvalConfig`: what `astra-gym eval` reads. Kept apart from `clients.evaluation` so the command line builds its
flags without importing the MCP client."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from clients.distractors import BandCounts
from clients.prompts import DEFAULT_SYSTEM_PROMPT

BFCL_STEP_LIMIT = 20
"""BFCL's MAXIMUM_STEP_LIMIT: a user turn whose 21st step still calls tools force-quits the entry."""


class EvalConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    policy: Literal["oracle", "random", "openai", "local"] = Field(default="oracle", description="Who plays.")
    model: str | None = Field(default=None, description="Model name sent to the endpoint (openai), or a name/folder for from_pretrained (local).")
    base_url: str | None = Field(default=None, description="OpenAI-compatible base URL, e.g. http://localhost:8001/v1.")
    api_key_env: str | None = Field(default=None, description="Environment variable holding the API key.")
    arenas: str = Field(default="*", description="Comma-separated glob patterns over arena ids.")
    concurrency: int = Field(default=8, ge=1, le=4096, description="Episodes in flight.")
    episodes_per_arena: int = Field(default=1, ge=1, description="K: attempts per arena (pass^k when K > 1).")
    gym: str | None = Field(default=None, description="Gym URLs, comma-separated (dns+http://NAME:PORT: every address of NAME); none starts a built-in gym in-process.")
    token: str | None = Field(default=None, description="The --gym's operator bearer token.")
    failure_rate: float | None = Field(default=None, ge=0, le=1, description="Injected failure rate per episode (default: the arena's).")
    max_turns: int = Field(default=16, ge=1, description="Assistant turns per episode; the last turn's calls still run.")
    max_tokens: int = Field(default=1024, ge=1, description="Tokens per assistant turn.")
    system_prompt: str | None = Field(default=DEFAULT_SYSTEM_PROMPT, description="System prompt of every episode (GRPO's default too).")
    seed: int = Field(default=0, description="Seeds each episode (with the arena id and attempt).")
    distractors: BandCounts = Field(
        default_factory=dict,
        description="Irrelevant tools of other arenas served in each episode, per similarity band (HIGH,MEDIUM,LOW counts, e.g. 1,1,1); drawn once per arena from --seed, so runs compare on the same tools.",
    )
    out: Path = Field(default=Path("runs/eval"), description="Output folder (re-run to resume).")
    suite: Literal["bfcl-mt"] | None = Field(default=None, description="Evaluate on an external benchmark suite instead of the gym's arenas.")
    category: str | None = Field(default=None, description="The suite's categories, comma-separated (bfcl-mt: base, miss_func, miss_param, long_context).")

    def model_post_init(self, context: Any) -> None:
        if self.suite == "bfcl-mt":  # BFCL's function-calling harness: no system prompt, 20 steps per user turn
            if "system_prompt" not in self.model_fields_set:
                self.system_prompt = None
            if "max_turns" not in self.model_fields_set:
                self.max_turns = BFCL_STEP_LIMIT + 1

    @property
    def categories(self) -> list[str]:
        return [c.strip() for c in (self.category or "").split(",") if c.strip()]
