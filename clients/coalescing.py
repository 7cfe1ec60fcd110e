"""Request coalescing: the calls a step's concurrent episodes make in the same event-loop iteration (a GRPO
step creates its 8 episodes at once, and finishes them at once) go out as one batch request per gym.

An HTTP request costs the client about 0.7-0.9 ms of CPU whatever it carries (httpx2, h11, anyio; measured in
docs/benchmarks.md), and the gym a similar share; with client and gym on a few cores, the requests of a step's
episodes are a good part of the time before its first token. A call made alone goes out alone, as before.

Each item of a batch ends as its own call would: a value, an error, or `ALONE`, which sends it again by itself
(a batch route the gym does not have, a refused batch, a rate-limited item that must wait its turn): the
single path keeps every rule a single request has (retries, lost replicas, quotas' Retry-After).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")

ALONE: Any = object()
"""A batch's answer for an item that must be sent again by itself."""


class Coalescer(Generic[Item, Result]):
    """`await coalescer.submit(key, item)` from many tasks; items with the same key submitted within `window_s`
    of each other (up to `max_wait_s` after the first) go to `send_batch(key, items)` together (a list of results, exceptions or `ALONE`, in order),
    a lone item to `send_one(item)`. `abandoned(result)` runs for a result whose caller was cancelled meanwhile
    (an episode created for nobody is ended rather than left to expire)."""

    def __init__(
        self,
        send_batch: Callable[[Hashable, list[Item]], Awaitable[list[Any]]],
        send_one: Callable[[Item], Awaitable[Result]],
        abandoned: Callable[[Result], Awaitable[None]] | None = None,
        *,
        window_s: float = 0.001,
        max_wait_s: float = 0.01,
    ) -> None:
        self.send_batch = send_batch
        self.window_s = window_s
        self.max_wait_s = max_wait_s
        self.send_one = send_one
        self.abandoned = abandoned
        self._pending: dict[Hashable, list[tuple[Item, asyncio.Future[Result]]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.batches = 0
        """Batch requests sent (a lone item's single request is not one)."""

    async def submit(self, key: Hashable, item: Item) -> Result:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Result] = loop.create_future()
        waiting = self._pending.setdefault(key, [])
        waiting.append((item, future))
        if len(waiting) == 1:
            loop.call_later(self.window_s, self._flush, key, 1, loop.time())
        return await future

    def _flush(self, key: Hashable, seen: int, since: float) -> None:
        """Send once a window passed without a new item (episodes released by one event, such as a batch of
        turns, reach their next call over a few iterations), or `max_wait_s` after the first."""
        loop = asyncio.get_running_loop()
        waiting = len(self._pending[key])
        if waiting > seen and loop.time() - since < self.max_wait_s:
            loop.call_later(self.window_s, self._flush, key, waiting, since)
            return
        calls = self._pending.pop(key)
        task = asyncio.get_running_loop().create_task(self._send(key, calls))
        self._tasks.add(task)  # a reference until it ends: the loop holds tasks weakly
        task.add_done_callback(self._tasks.discard)

    async def _send(self, key: Hashable, calls: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        calls = [(item, future) for item, future in calls if not future.done()]  # a caller cancelled before it went out
        if len(calls) > 1:
            try:
                self.batches += 1
                outcomes = await self.send_batch(key, [item for item, _ in calls])
                if len(outcomes) != len(calls):
                    raise RuntimeError(f"a batch of {len(calls)} answered {len(outcomes)} items")
            except Exception:  # noqa: BLE001 - every item goes again by itself and meets the error there, if any
                outcomes = [ALONE] * len(calls)
        else:
            outcomes = [ALONE] * len(calls)
        await asyncio.gather(*(self._settle(item, future, outcome) for (item, future), outcome in zip(calls, outcomes)))

    async def _settle(self, item: Item, future: asyncio.Future[Result], outcome: Any) -> None:
        if outcome is ALONE:
            try:
                outcome = await self.send_one(item)
            except Exception as exc:  # noqa: BLE001 - the caller's own error
                outcome = exc
        if future.done():  # its caller was cancelled while the request was out
            if self.abandoned is not None and not isinstance(outcome, BaseException):
                with contextlib.suppress(Exception):
                    await self.abandoned(outcome)
            return
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)
