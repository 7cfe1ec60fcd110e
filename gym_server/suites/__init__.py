"""Suites: external benchmarks served through the gym's tool-backend protocol. A suite is a named source of
episodes (its entries, contributed as arenas of kind `suite`) with its own backend and its own scorer."""

from __future__ import annotations

from typing import Any

from gym_server.backends import SuiteBackend
from gym_server.sandbox.pool import SandboxPool

SUITES = ("bfcl-mt",)


class SuiteUnavailable(RuntimeError):
    """The suite's optional dependency is missing; the message says how to install it."""


def load_suite(name: str, pool: SandboxPool, **options: Any) -> SuiteBackend:
    if name == "bfcl-mt":
        from gym_server.suites.bfcl.suite import BfclSuite

        return BfclSuite(pool, **options)
    raise ValueError(f"unknown suite {name!r}; known: {', '.join(SUITES)}")


def sandbox_packages(names: list[str]) -> list[str]:
    """The modules the sandbox must offer for these suites' backends (see `SandboxConfig.packages`)."""
    if "bfcl-mt" in names:
        from gym_server.suites.bfcl.data import SANDBOX_PACKAGES

        return list(SANDBOX_PACKAGES)
    return []
