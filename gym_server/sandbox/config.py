"""The sandbox's settings, its outcome type and its one error: what the rest of the gym imports."""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from gym_server.models import StateDiff

IMAGE_NAME = r"^[A-Za-z0-9][A-Za-z0-9._/:@-]{0,254}$"
"""Names handed to a container engine's command line: never one it could read as a flag."""


class SandboxConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    backend: Literal["auto", "process", "docker"] = Field(
        default="auto", description="'auto' and 'process': bubblewrap namespaces + seccomp; 'docker': a container engine (docker or podman)."
    )
    unsafe: bool = Field(
        default_factory=lambda: os.environ.get("ASTRA_GYM_UNSAFE_SANDBOX", "") == "1",
        description="Run arena code without kernel isolation when bubblewrap, namespaces or seccomp are missing. "
        "Never for untrusted arenas; every call's log then says so. Also: ASTRA_GYM_UNSAFE_SANDBOX=1.",
    )
    workers: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1, le=256, description="Call processes kept forked and waiting.")
    max_active: int = Field(default=32, ge=1, le=4096, description="Calls running at once; more wait their turn, first come first served.")
    call_timeout_s: float = Field(default=10.0, gt=0, description="Wall-clock limit of one call.")
    queue_timeout_s: float = Field(default=30.0, gt=0, description="How long a call may wait for a free slot.")
    cpu_s: float = Field(default=5.0, gt=0, description="CPU-time limit of one call.")
    memory_mb: int = Field(default=512, ge=64, description="Address-space limit of each sandbox process.")
    max_state_bytes: int = Field(default=32 * 1024 * 1024, ge=64 * 1024, le=256 * 1024 * 1024, description="Largest SQLite state image a call may leave.")
    keep_rss_mb: int = Field(default=64, ge=16, description="A process whose resident memory peaked above this retires after its call instead of waiting for the episode's next one.")
    max_result_bytes: int = Field(default=256 * 1024, ge=1024, le=64 * 1024 * 1024, description="Largest tool result (JSON bytes); larger is a tool error.")
    max_result_depth: int = Field(default=64, ge=2, le=512, description="Deepest nesting of a tool result.")
    max_idle_processes: int = Field(
        default=128, ge=0, le=65536,
        description="Processes kept between an episode's calls (one per episode and arena); the least recently used close first.",
    )
    state_diffs: bool = Field(
        default=True,
        description="Record in the call log what each writing call changed in the state (rows added, changed, removed; "
        "for `astra-gym view`). The sandbox process keeps each writing call's images and computes the diffs when the "
        "episode's log is read or the episode ends, in one batch, so no call waits for or pays beside it for one "
        "(about 0.1-1 ms of sandbox CPU per writing call). Diffs still owed by a process that dies are lost with it.",
    )
    max_owed_diff_bytes: int = Field(
        default=8 * 1024 * 1024, ge=0, le=1024 * 1024 * 1024,
        description="State images one sandbox process keeps for diffs not asked for yet; past this it computes the "
        "oldest between calls and keeps their results (each at most 16 KiB) instead.",
    )
    audit_hook: bool = Field(
        default=True,
        description="The second layer (audit hook) inside each call's process. Off only in tests that show the kernel boundary holds alone.",
    )
    packages: list[str] = Field(
        default_factory=list,
        description="Modules beyond the standard library that arena code may import (a suite's backend classes): their "
        "top-level packages are bound read-only into the sandbox and imported once in the template, before anything is armed.",
    )
    sandbox_uid: int = Field(default=65534, ge=1, description="Host uid (and gid) of arena code when the gym runs as root.")
    docker_image: str = Field(default="astra-gym-sandbox:latest", pattern=IMAGE_NAME, description="Image with python3 for the docker backend.")
    docker_engine: str = Field(default="docker", description="The docker-compatible CLI (docker or podman).")
    docker_runtime: str | None = Field(default=None, pattern=IMAGE_NAME, description="The engine's OCI runtime (podman: runc or crun); default: the engine's own.")
    start_timeout_s: float = Field(default=30.0, gt=0)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run code at all (no isolation available, the template does not start)."""


@dataclass(slots=True)
class SandboxOutcome:
    ok: bool
    result: Any = None
    kind: str | None = None
    """'tool_error' (the code raised) or 'sandbox_error' (the sandbox stopped it)."""
    error: str | None = None
    state: bytes | None = None
    """The new SQLite image when the call changed the state, else None."""
    diff: asyncio.Future[StateDiff] | None = None
    """What the call changed in the state, when it changed it: the process owes it until the gym asks
    (`SandboxPool.settle`, gym_server.sandbox.diffs)."""
