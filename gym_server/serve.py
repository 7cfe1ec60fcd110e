"""Running the gym: in the foreground (`astra-gym serve`) or on a background thread (tests, demos, trainers).

Both bind the socket first, so port 0 gets a free port whose number is known before serving starts.
"""

from __future__ import annotations

import asyncio
import secrets
import socket
import threading
from collections.abc import Sequence
from typing import Any

import uvicorn
from uvicorn.config import STARTUP_FAILURE

from gym_server.app import create_app
from gym_server.backends import ToolBackend
from gym_server.config import ServeConfig
from gym_server.front import create_front
from gym_server.gc_tuning import tune_for_serving
from gym_server.live import PagesFactory
from gym_server.workers import BackendsFactory, ProcessRole, default_processes, pin_to_cpu, process_cpus, usable_cpus


KEEP_ALIVE_S = 30
"""How long the gym keeps an idle HTTP connection open. It must outlast the clients' own keep-alive (httpx
drops idle connections after 5 s): with equal timeouts a client can send a request on a connection the server
is closing that instant, and the request fails with "server disconnected" instead of being served."""


def bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must say TCP: asyncio only sets TCP_NODELAY on accepted sockets whose proto is IPPROTO_TCP, and
    # without it every response waits ~40 ms for the peer's delayed ACK (Nagle).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _server(app: Any, config: ServeConfig) -> uvicorn.Server:
    return uvicorn.Server(
        uvicorn.Config(
            app, log_level=config.log_level if config.log_level != "info" else "warning", access_log=False,
            timeout_keep_alive=KEEP_ALIVE_S, backlog=2048,
        )  # fmt: skip
    )


def uvicorn_server(config: ServeConfig, backends: Sequence[ToolBackend], process: ProcessRole | None = None) -> uvicorn.Server:
    return _server(create_app(config, backends, process), config)


def serve(config: ServeConfig, on_ready: Any = None, backends: Sequence[ToolBackend] | BackendsFactory = (), pages: PagesFactory | None = None) -> None:
    """Serve in the foreground; `on_ready(url, app)` runs once the socket is bound and the store loaded.

    With `config.processes` above 1 (by default, one per core) this process is the front of that many gym
    processes (gym_server.front); `backends` must then be a factory, since each process builds its own.
    `pages`: the live pages at /view (on the front, over every process's episodes)."""
    processes = config.processes or default_processes()
    if processes > 1 and not callable(backends) and backends:
        raise ValueError("serving several gym processes needs a backends factory (each process builds its own backends)")
    sock = bind(config.host, config.port)
    if processes > 1:
        server = _server(create_front(config, processes, backends if callable(backends) else None, pages), config)
    else:
        pin_to_cpu("gym", process_cpus(config.pin_cpus, 1, usable_cpus())[0])  # before the app starts its sandbox
        server = _server(create_app(config, backends(config) if callable(backends) else backends, pages=pages), config)
    if on_ready is not None:
        host, port = sock.getsockname()[:2]
        on_ready(f"http://{host if ':' not in host else f'[{host}]'}:{port}", server.config.app)
    tune_for_serving()
    try:
        server.run(sockets=[sock])
    except SystemExit as exc:  # uvicorn's way to say the lifespan failed (a gym process did not start)
        if exc.code != STARTUP_FAILURE:
            raise
        raise RuntimeError(getattr(server.config.app.state, "startup_error", "the gym did not start (see the log above)")) from None


class AppThread:
    """Any ASGI app on a loopback port, served from a background thread with its own event loop."""

    def __init__(self, app: Any, port: int = 0, log_level: str = "warning", host: str = "127.0.0.1") -> None:
        self._sock = bind(host, port)
        shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
        self.url = f"http://{f'[{shown}]' if ':' in shown else shown}:{self._sock.getsockname()[1]}"
        self._server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level, access_log=False, backlog=2048, timeout_keep_alive=KEEP_ALIVE_S)
        )
        self._thread = threading.Thread(target=self._run, name="astra-app", daemon=True)
        self._error: BaseException | None = None

    def _run(self) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[self._sock]))
        except BaseException as exc:  # surfaced by start()
            self._error = exc

    @property
    def app(self) -> Any:
        return self._server.config.app

    def start(self, timeout_s: float = 60.0) -> AppThread:
        self._thread.start()
        waited = 0.0
        while not self._server.started:
            if self._error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the server failed to start: {self._error!r}")
            threading.Event().wait(0.02)
            waited += 0.02
            if waited > timeout_s:
                raise TimeoutError("the server did not start in time")
        return self

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=30)

    def __enter__(self) -> AppThread:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


class GymThread(AppThread):
    """A real gym on a loopback port (tests, demos, in-process evaluation and training)."""

    def __init__(self, config: ServeConfig | None = None, backends: Sequence[ToolBackend] = (), pages: PagesFactory | None = None) -> None:
        self.config = config or ServeConfig()
        super().__init__(create_app(self.config, backends, pages=pages), self.config.port, host=self.config.host)

    @classmethod
    def private(cls, config: ServeConfig | None = None, backends: Sequence[ToolBackend] = ()) -> GymThread:
        """An in-process gym behind a fresh random operator token (`.config.token`): other users of the machine
        cannot drive it, and a token set in the environment for some other gym does not lock its own clients out."""
        return cls((config or ServeConfig()).model_copy(update={"token": secrets.token_urlsafe(24), "agent_tokens": []}), backends)

    def start(self, timeout_s: float = 60.0) -> GymThread:
        super().start(timeout_s)
        return self

    def __enter__(self) -> GymThread:
        return self.start()
