"""A gym connection for synchronous callers (TRL's `rollout_func`, a training loop): one event loop on a
background thread and one HTTP pool, opened once for a whole run. Every step submits its coroutines here
instead of starting an event loop and a connection pool of its own."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

import httpx2

from clients.gym_client import GymClient
from clients.toolbox import shared_http_client

T = TypeVar("T")


class GymSession:
    """`with GymSession(url, token) as session: session.run(coroutine_using(session.gym))`."""

    def __init__(self, urls: str | list[str], token: str | None = None, *, max_connections: int = 512) -> None:
        self.urls = urls
        self.token = token
        self.max_connections = max_connections
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._http: httpx2.AsyncClient | None = None
        self._gym: GymClient | None = None

    @property
    def gym(self) -> GymClient:
        if self._gym is None:
            raise RuntimeError("the gym session is not open; use `with GymSession(...)`")
        return self._gym

    def __enter__(self) -> GymSession:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="gym-session", daemon=True)
        self._thread.start()
        try:
            self.run(self._open())
        except BaseException:
            self.__exit__()
            raise
        return self

    async def _open(self) -> None:
        self._http = shared_http_client(max_connections=self.max_connections)
        self._gym = GymClient(self.urls, self._http, self.token)

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run `coroutine` on the session's loop and wait for its result (its exception is raised here)."""
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the gym session is not open; use `with GymSession(...)`")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __exit__(self, *exc: object) -> None:
        loop, self._loop = self._loop, None
        if loop is None:
            return
        if self._http is not None:
            asyncio.run_coroutine_threadsafe(self._http.aclose(), loop).result()
        self._http = self._gym = None
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join()
        loop.close()
