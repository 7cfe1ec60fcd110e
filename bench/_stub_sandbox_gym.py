"""Attribution run for bench/gym_throughput.py: the gym server with its sandbox replaced by an in-process
stub that answers every call at once. Comparing it with the real gym separates what the sandbox hop costs
from what the rest of the gym costs. Never use this outside the benchmark: arena code does not run."""

from __future__ import annotations

import sys
from typing import Any

from gym_server.sandbox.pool import SandboxOutcome, SandboxPool


async def _answer_at_once(self: SandboxPool, source: str, function: str, arguments: dict[str, Any], state: bytes, owner: str | None = None) -> SandboxOutcome:
    return SandboxOutcome(ok=True, result={"key": arguments.get("key"), "n": 1})


if __name__ == "__main__":
    SandboxPool.call = _answer_at_once  # type: ignore[method-assign]
    SandboxPool.open = lambda *args, **kwargs: None  # type: ignore[method-assign]  # no process bound per episode
    from gym_server.cli import main

    sys.argv = ["astra-gym", "serve", *sys.argv[1:]]
    main()
