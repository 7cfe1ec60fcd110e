"""bench/_mcp_load.take_turns: how bench/gym_throughput.py compares servers at one episode."""

from __future__ import annotations

import time
from contextlib import asynccontextmanager
from types import SimpleNamespace
from typing import Any

import pytest

from bench import _mcp_load


async def test_servers_take_turns_in_a_rotating_order_with_quiet_after_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[tuple[str, str, float]] = []
    opened: list[str] = []

    @asynccontextmanager
    async def connect(url: str, http: Any, era: str):
        opened.append(url)

        async def call_tool(tool: str, arguments: dict[str, Any]) -> Any:
            calls.append((url, tool, time.perf_counter()))
            if url.endswith("/broken/mcp") and len(calls) % 2:
                raise ConnectionError("gone")
            return SimpleNamespace(is_error=url.startswith("http://e/"))

        yield call_tool

    monkeypatch.setattr(_mcp_load, "connect", connect)
    urls = {"bare": "http://b/mcp", "gym": "http://g/episodes/x/mcp?key=k", "stub": "http://e/episodes/y/mcp?key=k"}
    latencies, errors = await _mcp_load.take_turns(None, urls, 4, "modern", 0.01)  # type: ignore[arg-type]
    assert opened == list(urls.values()) and {n: len(v) for n, v in latencies.items()} == {"bare": 4, "gym": 4, "stub": 4}
    by_url = {u: n for n, u in urls.items()}
    order = [by_url[u] for u, _, _ in calls]
    assert order == ["bare", "gym", "stub", "gym", "stub", "bare", "stub", "bare", "gym", "bare", "gym", "stub"]  # each leads a round in turn
    assert {tool for u, tool, _ in calls if by_url[u] == "bare"} == {"echo"} and {tool for u, tool, _ in calls if by_url[u] != "bare"} == {"bump"}
    gaps = [b[2] - a[2] for a, b in zip(calls, calls[1:])]
    assert min(gaps) >= 0.009  # the quiet after every call, before the next server's turn
    assert errors == 4  # every error result counted
    broken = {"x": "http://x/broken/mcp"}
    latencies, errors = await _mcp_load.take_turns(None, broken, 4, "modern", 0.0)  # type: ignore[arg-type]
    assert errors == 2 and len(latencies["x"]) == 4  # a call that raises is counted, and the turns go on
