"""A pool of pre-started sandbox workers that the server hands untrusted arena code to.

The server process never executes arena code. Each call checks out an idle worker, sends it the code (only
the first time that worker sees it), the function, the arguments and the episode's SQLite image, and waits
with a wall-clock deadline. A worker that misses the deadline, dies or speaks garbage is killed and
replaced in the background; the caller gets a `sandbox_error` outcome and the pool keeps serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from gym_server.models import InitialState
from gym_server.sandbox.protocol import PREFIX, FrameError, check_prefix, decode_header, encode_frame

logger = logging.getLogger(__name__)

_PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class SandboxConfig(BaseModel):
    backend: Literal["auto", "process", "docker"] = Field(
        default="auto", description="'auto' uses docker when an engine answers, else local processes."
    )
    workers: int = Field(default_factory=lambda: max(2, os.cpu_count() or 2), ge=1, le=256)
    call_timeout_s: float = Field(default=10.0, gt=0, description="Wall-clock limit of one call.")
    cpu_s: float = Field(default=5.0, gt=0, description="CPU-time limit of one call.")
    memory_mb: int = Field(default=1024, ge=64, description="Address-space limit of a worker.")
    docker_image: str = Field(default="python:3.11-slim")
    start_timeout_s: float = Field(default=30.0, gt=0)


class SandboxUnavailable(RuntimeError):
    """The sandbox cannot run code at all (no backend, workers fail to start)."""


@dataclass(slots=True)
class SandboxOutcome:
    ok: bool
    result: Any = None
    kind: str | None = None
    """'tool_error' (the code raised) or 'sandbox_error' (the sandbox stopped it)."""
    error: str | None = None
    state: bytes | None = None
    """The new SQLite image when the call changed the state, else None."""


def docker_engine_reachable(timeout_s: float = 3.0) -> bool:
    if shutil.which("docker") is None:
        return False
    try:
        done = subprocess.run(["docker", "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def resolve_backend(config: SandboxConfig) -> Literal["process", "docker"]:
    if config.backend == "process":
        return "process"
    reachable = docker_engine_reachable()
    if config.backend == "docker" and not reachable:
        raise SandboxUnavailable("sandbox backend 'docker' was asked for, but no Docker engine answers `docker info`")
    return "docker" if reachable else "process"


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    jail: str | None
    known_code: set[str] = field(default_factory=set)
    info: dict[str, Any] = field(default_factory=dict)

    async def exchange(self, header: dict[str, Any], blob: bytes, timeout: float) -> tuple[dict[str, Any], bytes]:
        """One request and its reply. The reply must echo the request's random `seq`: arena code that garbled
        the worker's framing cannot pass off bytes it left in the stream as the answer to a later call."""
        seq = secrets.randbits(63)
        self.writer.write(encode_frame({**header, "seq": seq}, blob))
        async with asyncio.timeout(timeout):  # no extra task per call, unlike wait_for
            await self.writer.drain()
            reply, out = await _read_frame(self.reader)
        if reply.get("seq") != seq:
            raise FrameError("the reply does not answer this request")
        return reply, out

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None and not self.reader.at_eof()

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)

    async def reap(self) -> None:
        self.kill()
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 5)
        if self.jail:
            shutil.rmtree(self.jail, ignore_errors=True)


async def _read_frame(stream: asyncio.StreamReader) -> tuple[dict[str, Any], bytes]:
    head_len, blob_len = check_prefix(await stream.readexactly(PREFIX.size))
    body = await stream.readexactly(head_len + blob_len)
    return decode_header(body[:head_len]), body[head_len:]


class SandboxPool:
    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.backend: Literal["process", "docker"] | None = None
        self._idle: asyncio.LifoQueue[_Worker] = asyncio.LifoQueue()
        """Last in, first out: light load keeps landing on the same cache-warm worker."""
        self._all: set[_Worker] = set()
        self._retiring: set[_Worker] = set()
        """Replaced workers whose process is still being reaped: closing the pool reaps them too."""
        self._respawns: set[asyncio.Task[None]] = set()
        self._closed = False
        self.replaced = 0
        """How many workers were killed and replaced (a health figure for /healthz and tests)."""

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        self.backend = await asyncio.to_thread(resolve_backend, self.config)
        workers = await asyncio.gather(*(self._spawn() for _ in range(self.config.workers)), return_exceptions=True)
        failures = [w for w in workers if isinstance(w, BaseException)]
        for w in workers:
            if isinstance(w, _Worker):
                self._idle.put_nowait(w)
        if failures:
            await self.close()
            raise SandboxUnavailable(f"sandbox workers failed to start: {failures[0]}")
        logger.info("sandbox: %d %s workers ready", self.config.workers, self.backend)

    async def close(self) -> None:
        self._closed = True
        for task in list(self._respawns):
            task.cancel()
        await asyncio.gather(*(w.reap() for w in [*self._all, *self._retiring]), return_exceptions=True)
        self._all.clear()
        self._retiring.clear()

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _argv(self) -> list[str]:
        if self.backend == "docker":
            c = self.config
            return [
                "docker", "run", "-i", "--rm", "--network=none", f"--memory={c.memory_mb}m", "--pids-limit=8",
                "--read-only", "--cap-drop=ALL", "--security-opt=no-new-privileges", "-e", "PYTHONPATH=/app",
                "-e", f"ASTRA_SANDBOX_MEMORY_MB={c.memory_mb}", "-v", f"{_PACKAGE_ROOT}:/app:ro", c.docker_image,
                "python", "-m", "gym_server.sandbox.worker",
            ]  # fmt: skip
        return [sys.executable, "-m", "gym_server.sandbox.worker"]

    async def _spawn(self) -> _Worker:
        jail = tempfile.mkdtemp(prefix="astra-jail-") if self.backend == "process" else None
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONPATH": os.pathsep.join([str(_PACKAGE_ROOT), *[p for p in sys.path if p]]),
            "PYTHONDONTWRITEBYTECODE": "1",
            "PYTHONHASHSEED": "0",
            "ASTRA_SANDBOX_MEMORY_MB": str(self.config.memory_mb),
        }
        if jail:
            env["ASTRA_SANDBOX_JAIL"] = jail
        # One socketpair carries both directions: on Linux a unix-socket round trip costs about half a pipe
        # pair's (measured 58 vs 134 us here), and it is on the path of every tool call.
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv(), stdin=theirs, stdout=theirs, stderr=asyncio.subprocess.DEVNULL, env=env, start_new_session=True,
            )  # fmt: skip
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        try:
            reader, writer = await asyncio.open_unix_connection(sock=ours, limit=2**20)
        except BaseException:
            ours.close()
            proc.kill()
            if jail:
                shutil.rmtree(jail, ignore_errors=True)
            raise
        worker = _Worker(proc, reader, writer, jail)
        self._all.add(worker)
        try:
            worker.info, _ = await asyncio.wait_for(_read_frame(reader), self.config.start_timeout_s)
        except BaseException as exc:  # cancelled (the pool is closing) included: never leave a process behind
            self._all.discard(worker)
            await asyncio.shield(worker.reap())
            if isinstance(exc, (asyncio.TimeoutError, asyncio.IncompleteReadError, FrameError)):
                raise SandboxUnavailable(f"a sandbox worker did not start ({type(exc).__name__})") from None
            raise
        return worker

    def _replace(self, worker: _Worker) -> None:
        self._all.discard(worker)
        self._retiring.add(worker)
        self.replaced += 1

        async def respawn() -> None:
            await worker.reap()
            self._retiring.discard(worker)
            delay = 0.05
            while not self._closed:
                try:
                    self._idle.put_nowait(await self._spawn())
                    return
                except SandboxUnavailable:
                    logger.exception("sandbox: replacing a worker failed; retrying in %.1fs", delay)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)

        task = asyncio.get_running_loop().create_task(respawn())
        self._respawns.add(task)
        task.add_done_callback(self._respawns.discard)

    # -- work --------------------------------------------------------------------------------
    async def _run(self, header: dict[str, Any], blob: bytes, source: str | None = None) -> tuple[dict[str, Any], bytes]:
        """Send one request to an idle worker; every failure of the worker becomes a sandbox_error header."""
        if self._closed:
            raise SandboxUnavailable("the sandbox is closed")
        worker = await self._idle.get()
        while not worker.alive:  # it quit while idle (a worker does when arena code wrecks its housekeeping)
            self._replace(worker)
            worker = await self._idle.get()
        try:
            code_id = header.get("code_id")
            if source is not None and code_id not in worker.known_code:
                header = {**header, "source": source}
            reply, out = await worker.exchange(header, blob, self.config.call_timeout_s)
            if reply.get("kind") == "need_source" and source is not None:
                reply, out = await worker.exchange({**header, "source": source}, blob, self.config.call_timeout_s)
            if code_id and source is not None:
                if len(worker.known_code) > 200:
                    worker.known_code.clear()
                worker.known_code.add(code_id)
        except asyncio.TimeoutError:
            self._replace(worker)
            return {"ok": False, "kind": "sandbox_error", "error": f"wall-clock limit exceeded ({self.config.call_timeout_s:g} s); the call was killed"}, b""
        except (asyncio.IncompleteReadError, ConnectionError, BrokenPipeError, FrameError) as exc:
            code = worker.proc.returncode
            self._replace(worker)
            why = _death_reason(code) if not isinstance(exc, FrameError) else f"it sent a malformed reply ({exc})"
            return {"ok": False, "kind": "sandbox_error", "error": f"the sandbox worker died: {why}"}, b""
        except BaseException:
            self._replace(worker)  # cancelled mid-exchange: the worker's stream position is unknown
            raise
        if reply.get("recycle"):
            logger.warning("sandbox: recycling a worker: %s", reply["recycle"])
            self._replace(worker)
        else:
            self._idle.put_nowait(worker)
        return reply, out

    async def call(self, source: str, function: str, arguments: dict[str, Any], state: bytes) -> SandboxOutcome:
        code_id = _code_id(source)
        header = {"op": "call", "code_id": code_id, "function": function, "arguments": arguments, "cpu_s": self.config.cpu_s}
        reply, blob = await self._run(header, state, source)
        if not reply.get("ok"):
            return SandboxOutcome(ok=False, kind=reply.get("kind", "sandbox_error"), error=str(reply.get("error")))
        try:
            n = int(reply["result_bytes"])
            result = json.loads(blob[:n])
        except (KeyError, TypeError, ValueError):
            return SandboxOutcome(ok=False, kind="sandbox_error", error="the sandbox worker sent a malformed result")
        return SandboxOutcome(ok=True, result=result, state=blob[n:] if reply.get("changed") else None)

    async def build_state(self, initial: InitialState) -> bytes:
        """Build the SQLite image of an initial state (its DDL is untrusted too); raises ValueError if it fails."""
        reply, blob = await self._run({"op": "build_state", **initial.model_dump(), "cpu_s": self.config.cpu_s}, b"")
        if not reply.get("ok"):
            raise ValueError(str(reply.get("error")))
        return blob

    def health(self) -> dict[str, Any]:
        return {
            "backend": self.backend,
            "workers": len(self._all),
            "idle": self._idle.qsize(),
            "replaced": self.replaced,
            "network_isolated": all(w.info.get("network_isolated") for w in self._all) if self._all else None,
            "filesystem_hidden": all(w.info.get("filesystem_hidden") for w in self._all) if self._all else None,
        }


@functools.lru_cache(maxsize=4096)
def _code_id(source: str) -> str:
    """Arena sources are long-lived strings (a str caches its hash), so the digest is computed once per arena."""
    return hashlib.sha256(source.encode()).hexdigest()


def _death_reason(returncode: int | None) -> str:
    if returncode is None:
        return "its output ended unexpectedly"
    if returncode < 0:
        sig = -returncode
        names = {signal.SIGKILL: "killed (SIGKILL)", signal.SIGXCPU: "CPU time limit (SIGXCPU)", signal.SIGSEGV: "crashed (SIGSEGV)"}
        return names.get(sig, f"signal {sig}")
    return f"exit code {returncode}"
