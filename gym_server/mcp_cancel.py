"""Stopping a tool call its client gave up on: `notifications/cancelled`, a timeout, a dropped connection.

The endpoint runs statelessly, so the SDK never connects a 2025-era `notifications/cancelled` (its own
POST) to the request it names, and in JSON-response mode nothing watches the connection of a 2026-era
request, whose cancellation *is* closing it. Both end here: every POST that carries a request is
tracked per episode as an `InFlight` while it is served, its connection is watched once it has run
`WATCH_AFTER_S`, and a disconnect or a matching `notifications/cancelled` from the same episode URL sets
its `cancelled` event.
`run_cancellable` then cancels the tool call: the episode manager logs it as `cancelled` and releases
the episode's lock, and the sandbox pool kills the worker that was running it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, TypeVar

from starlette.types import ASGIApp, Message, Receive, Scope, Send

T = TypeVar("T")


@dataclass(eq=False)
class InFlight:
    """One POST being served; `cancelled` is set when its client cancels or goes away, and the calls it runs
    are cancelled with it."""

    cancelled: asyncio.Event = field(default_factory=asyncio.Event)
    calls: list[asyncio.Future[Any]] = field(default_factory=list)

    def cancel(self) -> None:
        self.cancelled.set()
        for call in self.calls:
            call.cancel()


current_request: ContextVar[InFlight | None] = ContextVar("astra_current_request", default=None)
"""The POST the running handler serves; SDK tasks inherit it from the endpoint's task."""


def _key(request_id: Any) -> tuple[str, Any]:
    return (type(request_id).__name__, request_id)  # 1 and "1" are different JSON-RPC ids


class InFlightCalls:
    """The POSTs in flight, by episode and JSON-RPC id, so a cancellation can find the one it names."""

    def __init__(self) -> None:
        self._open: dict[tuple[str, tuple[str, Any]], list[InFlight]] = {}

    @contextlib.contextmanager
    def track(self, episode_id: str, request_id: Any) -> Iterator[InFlight]:
        key = (episode_id, _key(request_id))
        inflight = InFlight()
        self._open.setdefault(key, []).append(inflight)
        try:
            yield inflight
        finally:
            waiting = self._open[key]
            waiting.remove(inflight)
            if not waiting:
                del self._open[key]

    def cancel(self, episode_id: str, request_id: Any) -> int:
        """Cancel the named request of this episode (only this episode's URL can name it); how many were found."""
        if not isinstance(request_id, (str, int)) or isinstance(request_id, bool):
            return 0  # not a JSON-RPC id: it names nothing
        found = self._open.get((episode_id, _key(request_id)), [])
        for inflight in found:
            inflight.cancel()
        return len(found)


WATCH_AFTER_S = 0.05
"""How long a request runs before its connection is watched: most tool calls are answered sooner, and a watcher
is a task of its own (created, stepped, cancelled) on every one of them. A disconnect is noticed at the latest
this long after the request came; a call answered before then was answered, whoever was still listening."""


async def serve_until_disconnect(app: ASGIApp, scope: Scope, body: bytes, receive: Receive, send: Send, inflight: InFlight) -> None:
    """Run `app` on an already read body while watching the connection (from `WATCH_AFTER_S` on): a disconnect
    cancels `inflight`."""
    disconnected = asyncio.Event()
    delivered = False
    loop = asyncio.get_running_loop()
    watcher: asyncio.Task[None] | None = None

    async def replay() -> Message:
        nonlocal delivered
        if not delivered:
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def watch() -> None:
        while (await receive())["type"] != "http.disconnect":
            pass
        disconnected.set()
        inflight.cancel()

    def start_watching() -> None:
        nonlocal watcher
        watcher = loop.create_task(watch())

    later = loop.call_later(WATCH_AFTER_S, start_watching)
    try:
        await app(scope, replay, send)
    finally:
        later.cancel()
        if watcher is not None:
            watcher.cancel()


_running: set[asyncio.Task[Any]] = set()
"""Cancelled calls still unwinding (logging, releasing the lock), referenced so they are not collected."""


class CallCancelled(Exception):
    """The client cancelled the call; it was stopped."""


async def run_cancellable(call: Callable[[], Awaitable[T]]) -> T:
    """Await `call()`, stopping it as soon as the current request is cancelled (then CallCancelled).

    The call runs as its own task, which `InFlight.cancel` cancels directly: no watcher task per call."""
    inflight = current_request.get()
    if inflight is None:
        return await call()
    if inflight.cancelled.is_set():
        raise CallCancelled()
    task = asyncio.ensure_future(call())
    _running.add(task)
    task.add_done_callback(_running.discard)
    inflight.calls.append(task)
    try:
        return await task  # cancelling the handler cancels the call too, and waits for it to unwind
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if inflight.cancelled.is_set() and (current is None or not current.cancelling()):
            raise CallCancelled() from None  # the client's cancellation: the call logged it and let go of the lock
        raise
    finally:
        inflight.calls.remove(task)
