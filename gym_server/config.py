"""`ServeConfig`: everything `astra-gym serve` reads (the CLI generates its flags from the fields and loads
the same fields from YAML), and `EpisodeLimits`, the part of it the episode manager enforces."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gym_server.models import FailureKind, FailurePolicy
from gym_server.quotas import TokenLimits
from gym_server.sandbox.pool import SandboxConfig


class UpstreamConfig(BaseModel):
    """A real MCP server the gym fronts (`--upstream NAME=COMMAND` or `NAME=URL`). Only the operator's config
    names one, never an arena store: starting a command is the operator's decision. The backend that talks to
    it is `clients.upstreams.UpstreamBackend`, wired in by the command that assembles the app."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}$", description="The server's name; its arena is mcp-NAME.")
    command: str | None = Field(default=None, description="stdio server command line")
    url: str | None = Field(default=None, description="Streamable HTTP endpoint")
    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Share of calls that fail on purpose.")

    @model_validator(mode="after")
    def _one_target(self) -> UpstreamConfig:
        if (self.command is None) == (self.url is None):
            raise ValueError("an upstream needs exactly one of command or url")
        return self

    @classmethod
    def parse(cls, spec: str) -> UpstreamConfig:
        """`NAME=COMMAND ...` or `NAME=http(s)://...`."""
        name, sep, target = spec.partition("=")
        if not sep or not target.strip():
            raise ValueError(f"upstream {spec!r}: expected NAME=COMMAND or NAME=URL")
        target = target.strip()
        if target.startswith(("http://", "https://")):
            return cls(name=name.strip(), url=target)
        return cls(name=name.strip(), command=target)

    @property
    def arena_id(self) -> str:
        return f"mcp-{self.name}"


class EpisodeLimits(BaseModel):
    """What every episode is held to, and the failures injected by default. `ServeConfig` is one, so the gym
    hands its config to the episode manager as it is: each limit is declared here once."""

    model_config = ConfigDict(extra="forbid")

    failure_rate: float = Field(default=0.0, ge=0.0, le=1.0, description="Default share of calls that fail on purpose (arenas: 0).")
    failure_kinds: list[FailureKind] = Field(default_factory=lambda: list(FailureKind), min_length=1, description="Kinds of injected failure.")
    timeout_delay_s: float = Field(default=0.0, ge=0.0, le=60.0, description="How long an injected timeout stalls.")
    episode_ttl_s: float = Field(default=1800.0, gt=0, description="Idle episodes are deleted after this long.")
    max_episodes: int = Field(default=10_000, ge=1, description="Episodes alive at once, over all tokens.")
    max_argument_bytes: int = Field(default=64 * 1024, ge=64, description="Largest tool-call arguments (JSON bytes).")
    max_calls_per_episode: int = Field(default=500, ge=1, description="Calls one episode may make; later ones are refused unrun.")

    @property
    def default_failure(self) -> FailurePolicy:
        return FailurePolicy(rate=self.failure_rate, kinds=self.failure_kinds, timeout_delay_s=self.timeout_delay_s)


class ServeConfig(EpisodeLimits):
    """The gym: where it listens, what it serves, who may do what, and (inherited) what each episode may do."""

    host: str = Field(default="127.0.0.1", description="Interface to bind.")
    port: int = Field(default=8000, ge=0, le=65535, description="Port to bind (0 picks a free one).")
    arenas: list[str] = Field(default_factory=lambda: ["builtin"], description="Arena sources: 'builtin', JSON/JSONL files, directories.")
    token: str | None = Field(
        default_factory=lambda: os.environ.get("ASTRA_GYM_TOKEN") or None, min_length=1,
        description="The operator's bearer token: every REST path (create, score, delete, logs, arenas with gold). Agents get only their episode's MCP URL.",
    )  # fmt: skip
    agent_tokens: list[str] = Field(
        default_factory=list,
        description="Scoped bearer tokens for remote agents: list arenas, create episodes on `agent_arenas`, score once and delete their own; no gold, no logs.",
    )
    agent_arenas: list[str] = Field(default_factory=lambda: ["*"], description="Glob patterns over arena ids that agent tokens may open episodes on.")
    operator_limits: TokenLimits = Field(
        default_factory=lambda: TokenLimits(live_episodes=10_000, creations_per_minute=60_000, burst=2_000),
        description="Quota of the operator's token (and of everyone on a gym without a token).",
    )
    agent_limits: TokenLimits = Field(
        default_factory=lambda: TokenLimits(live_episodes=16, creations_per_minute=120, burst=16),
        description="Quota of each agent token, counted apart from every other token.",
    )
    public_url: str | None = Field(default=None, description="Base URL put into episode MCP URLs (default: the URL the request came to).")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host header values served besides loopback names, IP addresses and public_url's host (DNS-rebinding protection: "
        "a foreign Host gets 421). 'name' allows any port, 'name:port' one; '*' allows any Host.",
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description="Browser Origin values accepted besides loopback origins, public_url's and same-origin ones (a foreign Origin "
        "gets 403, as the MCP spec requires). '*' allows any Origin.",
    )
    max_request_bytes: int = Field(default=4 * 1024 * 1024, ge=1024, description="Largest HTTP request body.")
    sandbox: SandboxConfig = Field(default_factory=SandboxConfig, description="The sandbox that runs arena code.")
    upstreams: list[UpstreamConfig] = Field(default_factory=list, description="Real MCP servers to front, one session per episode.")
    suites: list[Literal["bfcl-mt"]] = Field(default_factory=list, description="External benchmark suites to serve (their entries become arenas).")
    suite_categories: list[str] = Field(default_factory=list, description="A suite's categories to load (bfcl-mt: base, miss_func, miss_param, long_context); none: all.")
    otel_spans: bool = Field(default=False, description="Emit the MCP SDK's OpenTelemetry span per message (needs an OTel SDK to go anywhere).")
    processes: int | None = Field(
        default=None, ge=1, le=256,
        description="Gym processes on this machine (`serve` only; default: one per core). With more than one, the REST API stays on "
        "`port` and process i serves its episodes' MCP on port+1+i (any free port when port is 0).",
    )  # fmt: skip
    pin_cpus: bool | None = Field(
        default=None,
        description="Pin gym process i, with its sandbox, to the i-th CPU this gym may run on (`serve` only). Default: pinned when "
        "there is one process per CPU (the default with several CPUs); a process and its sandbox then share a CPU and its caches, "
        "and a call hands over between them without waking another CPU.",
    )  # fmt: skip
    log_level: str = Field(default="info", description="uvicorn's log level.")

    @model_validator(mode="after")
    def _tokens(self) -> ServeConfig:
        if self.agent_tokens and not self.token:
            raise ValueError("agent_tokens need an operator token (--token): a gym without one is open to everyone")
        if any(not t for t in self.agent_tokens) or len(set(self.agent_tokens)) != len(self.agent_tokens):
            raise ValueError("agent_tokens must be distinct and non-empty")
        if self.token in self.agent_tokens:
            raise ValueError("an agent token must not be the operator's token")
        return self
