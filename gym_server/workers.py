"""The gym processes of `astra-gym serve --processes N`: spawned, watched, and replaced when one dies.

Each process is a whole gym (REST, MCP, its own sandbox and episodes) on a port of its own, so an episode's
MCP traffic goes straight to the process that owns it. The front (gym_server.front) is the one REST address:
it creates episodes on a process and routes an episode's REST calls to its owner by the id, which starts with
the owner's name (`p1.` ...). A process that dies takes its episodes with it: their ids name a process that is
gone, so the front answers them with 410 (an infrastructure error for the client, never a score) while a
fresh process under a new name (`p1r1.` ...) takes its slot.

A process creates episodes only for its front: a creation must carry the front's secret (`x-astra-front`), so
quotas that the front keeps whole (an agent token's episodes all live on one process) cannot be multiplied by
creating on each process's port. Every other route keeps its own auth (bearer token, episode key).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import secrets
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any
from urllib.parse import urlsplit

import httpx2
from starlette.datastructures import Headers

from gym_server.auth import Forbidden
from gym_server.backends import ToolBackend
from gym_server.config import ServeConfig

logger = logging.getLogger(__name__)

FRONT_HEADER = "x-astra-front"
BackendsFactory = Callable[[Any], Sequence[ToolBackend]]
"""Builds a process's tool backends from its config, inside that process (a top-level function: it is pickled)."""

START_TIMEOUT_S = 120.0
RESPAWN_LIMIT = 5
"""A slot whose process died this many times within RESPAWN_WINDOW_S is left empty (a crash loop, not bad luck)."""
RESPAWN_WINDOW_S = 300.0


def usable_cpus() -> list[int]:
    """The CPUs this process may run on (empty where the platform does not say)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return []


def default_processes() -> int:
    """One gym process per core this process may run on."""
    return max(1, len(usable_cpus()) or os.cpu_count() or 1)


def process_cpus(pin: bool | None, n: int, cpus: Sequence[int]) -> list[int | None]:
    """The CPU each of `n` gym processes is pinned to (None: not pinned). A call hands over from a gym process to
    its sandbox and back; on one CPU each handover is a switch on a CPU that is awake, with the state image
    still in its caches, where on two it wakes the other (on a VM, an exit to the host). Pinned by default only
    with one process per CPU: fewer processes pinned would leave CPUs their sandboxes could use."""
    if not cpus or pin is False or (pin is None and not (n > 1 and n == len(cpus))):
        return [None] * n
    return [cpus[i % len(cpus)] for i in range(n)]


def pin_to_cpu(name: str, cpu: int | None) -> None:
    """Before the app starts, so its sandbox (and every process that forks) inherits the CPU."""
    if cpu is None:
        return
    try:
        os.sched_setaffinity(0, {cpu})
    except OSError as exc:  # the CPU left this process's set since the front read it: serve unpinned
        logger.warning("gym process %s could not be pinned to CPU %d (%s); it runs unpinned", name, cpu, exc)


@dataclass(frozen=True, slots=True)
class ProcessRole:
    """What makes a gym app one process of several: its name (its episode ids start with it) and the secret
    its front's creations carry."""

    name: str
    front_secret: str

    @property
    def id_prefix(self) -> str:
        return f"{self.name}."

    def check_front(self, headers: Headers) -> None:
        given = headers.get(FRONT_HEADER, "").encode("latin-1", "replace")
        if not secrets.compare_digest(given, self.front_secret.encode()):
            raise Forbidden("this port serves one process of a gym: create episodes through the gym's front address")


def owner_name(episode_id: str) -> str:
    """The name of the process an episode id says owns it ('' when the id names none)."""
    name, dot, _ = episode_id.partition(".")
    return name if dot else ""


def worker_config(config: ServeConfig, port: int) -> ServeConfig:
    """A process's config: its own port; the front's public host allowed (on any port: the process's), and no
    public_url (the front writes each episode's public MCP URL from the process's port)."""
    hosts, origins = list(config.allowed_hosts), list(config.allowed_origins)
    if config.public_url:
        parts = urlsplit(config.public_url)
        if parts.hostname:
            hosts.append(parts.hostname)
            origins.append(f"{parts.scheme}://{parts.netloc}")
    return config.model_copy(update={"port": port, "public_url": None, "allowed_hosts": hosts, "allowed_origins": origins, "processes": 1})


def _die_with_parent() -> None:
    """Linux: the kernel sends SIGTERM when the front exits, even by SIGKILL, so no process outlives its front."""
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _process_main(
    config: ServeConfig, role: ProcessRole, backends: BackendsFactory | None, conn: Connection, parent: int, cpu: int | None = None
) -> None:
    """A gym process: binds its port, builds its app, tells the front its port, serves until told to stop."""
    _die_with_parent()
    if os.getppid() != parent:  # the front died before the line above took effect
        return
    pin_to_cpu(role.name, cpu)
    from gym_server.gc_tuning import tune_for_serving
    from gym_server.serve import bind, uvicorn_server

    try:
        sock = bind(config.host, config.port)
        server = uvicorn_server(config, backends(config) if backends else (), process=role)
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("port", sock.getsockname()[1]))
    conn.close()
    tune_for_serving()
    server.run(sockets=[sock])


@dataclass(eq=False)
class GymProcess:
    slot: int
    role: ProcessRole
    process: BaseProcess
    port: int = 0
    host: str = "127.0.0.1"
    alive: bool = True
    ended: str | None = None
    """Why the process is gone (its exit code), once it is."""
    started_at: float = field(default_factory=time.monotonic)

    @property
    def name(self) -> str:
        return self.role.name

    @property
    def url(self) -> str:
        """Where the front reaches it."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(self.host, self.host)
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"


class GymProcesses:
    """N gym processes, each started, watched and replaced on its own. Use inside a running event loop."""

    def __init__(self, config: ServeConfig, n: int, backends: BackendsFactory | None, http: httpx2.AsyncClient) -> None:
        self.config = config
        self.n = n
        self.backends = backends
        self.http = http
        self.secret = secrets.token_urlsafe(32)
        self.slots: list[GymProcess | None] = [None] * n
        self.by_name: dict[str, GymProcess] = {}
        """Every process this front started, dead ones included: a lost episode's id still finds its owner."""
        self._deaths: list[list[float]] = [[] for _ in range(n)]
        self._generation = [0] * n
        self._tasks: set[asyncio.Task[None]] = set()
        self._closing = False
        self._ctx = multiprocessing.get_context("spawn")
        self.cpus = process_cpus(config.pin_cpus, n, usable_cpus())
        """The CPU each slot's process is pinned to (a replacement takes its slot's)."""

    def port_of(self, slot: int) -> int:
        if self.config.port == 0:
            return 0
        return self.config.port + 1 + slot

    async def start(self) -> None:
        await asyncio.gather(*(self._start(slot) for slot in range(self.n)))

    async def _start(self, slot: int) -> GymProcess:
        generation = self._generation[slot]
        role = ProcessRole(f"p{slot}" + (f"r{generation}" if generation else ""), self.secret)
        config = worker_config(self.config, self.port_of(slot))
        receive, send = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(
            target=_process_main, args=(config, role, self.backends, send, os.getpid(), self.cpus[slot]), name=f"astra-gym-{role.name}", daemon=True
        )
        process.start()
        send.close()
        gym = GymProcess(slot, role, process, host=config.host)
        self.by_name[role.name] = gym
        try:
            kind, value = await asyncio.to_thread(_receive, receive, START_TIMEOUT_S)
            if kind != "port":
                raise RuntimeError(f"gym process {role.name} did not start: {value}")
            gym.port = int(value)
            await self._wait_serving(gym)
        except BaseException:
            gym.alive = False
            process.kill()
            raise
        finally:
            receive.close()
        self.slots[slot] = gym
        asyncio.get_running_loop().add_reader(process.sentinel, self._ended, gym)
        return gym

    async def _wait_serving(self, gym: GymProcess) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if not gym.process.is_alive():
                raise RuntimeError(f"gym process {gym.name} exited while starting (exit code {gym.process.exitcode})")
            with contextlib.suppress(httpx2.HTTPError):
                if (await self.http.get(f"{gym.url}/healthz", timeout=5)).status_code == 200:
                    return
            await asyncio.sleep(0.05)
        raise RuntimeError(f"gym process {gym.name} did not serve within {START_TIMEOUT_S:.0f} s")

    def _ended(self, gym: GymProcess) -> None:
        loop = asyncio.get_running_loop()
        loop.remove_reader(gym.process.sentinel)
        gym.process.join(0)
        gym.alive = False
        gym.ended = f"exit code {gym.process.exitcode}"
        if self._closing:
            return
        logger.error("gym process %s (port %d) exited (%s); its episodes are lost", gym.name, gym.port, gym.ended)
        deaths = self._deaths[gym.slot]
        now = time.monotonic()
        deaths[:] = [t for t in deaths if now - t < RESPAWN_WINDOW_S] + [now]
        if len(deaths) >= RESPAWN_LIMIT:
            logger.error("gym process slot %d died %d times in %.0f s: not restarted", gym.slot, len(deaths), RESPAWN_WINDOW_S)
            return
        self._generation[gym.slot] += 1
        task = loop.create_task(self._respawn(gym.slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _respawn(self, slot: int) -> None:
        try:
            gym = await self._start(slot)
            logger.warning("gym process %s replaces the one that exited (port %d)", gym.name, gym.port)
        except Exception:
            logger.exception("restarting gym process slot %d failed", slot)

    def live(self) -> list[GymProcess]:
        return [g for g in self.slots if g is not None and g.alive]

    def owner(self, episode_id: str) -> GymProcess | None:
        return self.by_name.get(owner_name(episode_id))

    async def close(self) -> None:
        self._closing = True
        for task in list(self._tasks):
            task.cancel()
        loop = asyncio.get_running_loop()
        gyms = [g for g in self.by_name.values() if g.process.exitcode is None]
        for gym in gyms:
            with contextlib.suppress(ValueError, OSError):
                loop.remove_reader(gym.process.sentinel)
            gym.process.terminate()
        for gym in gyms:
            await asyncio.to_thread(gym.process.join, 10)
            if gym.process.exitcode is None:
                gym.process.kill()
                await asyncio.to_thread(gym.process.join, 5)


def _receive(conn: Connection, timeout_s: float) -> tuple[str, Any]:
    if not conn.poll(timeout_s):
        return "error", f"no word within {timeout_s:.0f} s"
    try:
        return conn.recv()
    except EOFError:
        return "error", "it exited before binding its port (see its log above)"
