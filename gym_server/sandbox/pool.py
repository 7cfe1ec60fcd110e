"""The gym's side of the sandbox: one template process inside the kernel boundary, and the processes forked
from it that run arena code.

An episode's calls to one arena run in one process forked for that episode and arena alone (`owner`), reused
only for that pair and closed when the episode ends; any other request (initial states, validation,
synthesis) gets a fresh process of its own. No call runs in a process that ran arena code for another episode
or another arena, so the state image a call returns is the only thing that flows between them. Forks stay off
the critical path: `workers` processes are kept forked, warmed up and waiting, each new owner takes one and
asks for a replacement, and a request is written into its socket even before the template has forked the
process behind it.

Calls are bounded everywhere the gym waits: a free slot (`max_active` calls at once, first come first served,
within `queue_timeout_s`), the call itself (`call_timeout_s` wall clock, then the process is killed), and the
reply (result size and depth). A cancelled call kills its process.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, Field

from gym_server.models import InitialState
from gym_server.sandbox import launch as launching
from gym_server.sandbox import policy
from gym_server.sandbox.protocol import PREFIX, FrameError, check_prefix, decode_header, decode_control, encode_frame
from gym_server.sandbox.inside.frames import MAX_CONTROL_BYTES

logger = logging.getLogger(__name__)

NAMESPACES = ("user", "pid", "net", "mnt", "ipc", "uts")
MAX_CACHED_SOURCE_BYTES = MAX_CONTROL_BYTES - 4096


class SandboxConfig(BaseModel):
    backend: Literal["auto", "process", "docker"] = Field(
        default="auto", description="'auto' and 'process': bubblewrap namespaces + seccomp; 'docker': a container engine (docker or podman)."
    )
    unsafe: bool = Field(
        default_factory=lambda: os.environ.get("ASTRA_GYM_UNSAFE_SANDBOX", "") == "1",
        description="Run arena code without kernel isolation when bubblewrap, namespaces or seccomp are missing. "
        "Never for untrusted arenas; every call's log then says so.",
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
    audit_hook: bool = Field(
        default=True,
        description="The second layer (audit hook) inside each call's process. Off only in tests that show the kernel boundary holds alone.",
    )
    sandbox_uid: int = Field(default=65534, ge=1, description="Host uid (and gid) of arena code when the gym runs as root.")
    docker_image: str = Field(default="astra-gym-sandbox:latest", description="Image with python3 for the docker backend.")
    docker_engine: str = Field(default="docker", description="The docker-compatible CLI (docker or podman).")
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


def docker_engine_reachable(engine: str = "docker", timeout_s: float = 3.0) -> bool:
    if shutil.which(engine) is None:
        return False
    try:
        done = subprocess.run([engine, "info", "--format", "{{.ServerVersion}}"], capture_output=True, timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


def _own_namespaces() -> dict[str, int]:
    return {n: os.stat(f"/proc/self/ns/{n}").st_ino for n in NAMESPACES}


def isolation_problems(facts: dict[str, Any], probe: dict[str, Any]) -> list[str]:
    """What the template and a call's process report that falls short of the boundary; [] when it all holds."""
    problems = []
    if "proc_error" in facts:
        problems.append(f"the sandbox cannot read its own status ({facts['proc_error']})")
    if facts.get("uid") == 0 or facts.get("euid") == 0 or probe.get("uid") == 0:
        problems.append("arena code would run as root")
    if facts.get("cap_eff", "").strip("0") or facts.get("cap_prm", "").strip("0"):
        problems.append(f"the sandbox holds capabilities (CapEff {facts.get('cap_eff')})")
    if not facts.get("no_new_privs"):
        problems.append("no_new_privs is not set")
    if facts.get("seccomp_mode") != 2:
        problems.append("no seccomp filter is in force")
    ours = _own_namespaces()
    shared = [n for n in NAMESPACES if facts.get("namespaces", {}).get(n) in (None, ours[n])]
    if shared:
        problems.append(f"the sandbox shares the gym's {', '.join(shared)} namespace(s)")
    allowed = [name for name, result in probe.get("attempts", {}).items() if result == "allowed"]
    if allowed or not probe.get("attempts"):
        problems.append(f"a call's process was allowed: {', '.join(allowed) or 'nothing was probed'}")
    return problems


@dataclass(eq=False)
class _Template:
    """The running template and its control socket."""

    kind: launching.Kind
    proc: asyncio.subprocess.Process
    ctl: socket.socket
    cleanup: list[str]
    facts: dict[str, Any] = field(default_factory=dict)
    probe: dict[str, Any] = field(default_factory=dict)
    ids: itertools.count = field(default_factory=lambda: itertools.count(1))
    sent: int = 0
    """Control messages sent so far: the template handles them in order, so a process spawned after a `cache`
    message inherits that code compiled."""
    cached: dict[str, int] = field(default_factory=dict)
    exits: dict[int, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    outbox: deque[tuple[bytes, list[int]]] = field(default_factory=deque)
    dead: str | None = None
    reader: asyncio.Task[None] | None = None
    stderr: bytes = b""

    def send(self, header: dict[str, Any], payload: bytes = b"", fds: tuple[int, ...] = ()) -> None:
        message = encode_frame(header, payload)
        self.sent += 1
        if not self.outbox:
            try:
                socket.send_fds(self.ctl, [message], list(fds)) if fds else self.ctl.send(message)
                return
            except BlockingIOError:
                pass
            except OSError as exc:
                self.dead = self.dead or f"the control socket failed ({exc})"
                return
        self.outbox.append((message, [os.dup(fd) for fd in fds]))
        if len(self.outbox) == 1:
            asyncio.get_running_loop().add_writer(self.ctl, self._flush)

    def _flush(self) -> None:
        while self.outbox:
            message, fds = self.outbox[0]
            try:
                socket.send_fds(self.ctl, [message], fds) if fds else self.ctl.send(message)
            except BlockingIOError:
                return
            except OSError as exc:
                self.dead = self.dead or f"the control socket failed ({exc})"
            self.outbox.popleft()
            for fd in fds:
                os.close(fd)
        asyncio.get_running_loop().remove_writer(self.ctl)

    async def read_control(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await loop.sock_recv(self.ctl, MAX_CONTROL_BYTES)
                if not message:
                    break
                header, _ = decode_control(message)
                if header.get("op") == "exited":
                    future = self.exits.pop(int(header.get("id", -1)), None)
                    if future is not None and not future.done():
                        future.set_result(header)
        except (OSError, FrameError, ValueError) as exc:
            logger.warning("sandbox: control channel failed: %s", exc)
        finally:
            self.dead = self.dead or "the sandbox template exited"
            for future in self.exits.values():
                if not future.done():
                    future.set_result({"error": self.dead})
            self.exits.clear()

    async def stop(self) -> None:
        self.dead = self.dead or "the sandbox is closed"
        if self.reader is not None:
            self.reader.cancel()
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.proc.wait(), 5)
        with contextlib.suppress(Exception):
            asyncio.get_running_loop().remove_writer(self.ctl)
        self.ctl.close()
        for _, fds in self.outbox:
            for fd in fds:
                os.close(fd)
        self.outbox.clear()
        for path in self.cleanup:
            shutil.rmtree(path, ignore_errors=True)


@dataclass(eq=False, slots=True)
class _Process:
    """A sandbox process as the gym sees it: its id at the template, our end of its socket and, once it served
    an episode's call, the arena code it is bound to."""

    template: _Template
    id: int
    sock: socket.socket
    spawned_after: int
    code_id: str | None = None

    def has_code(self, code_id: str) -> bool:
        sent = self.template.cached.get(code_id)
        return sent is not None and sent < self.spawned_after

    async def death(self, wait_s: float = 0.5) -> str:
        """Why the process ended without answering, as the template saw it."""
        future = self.template.exits.get(self.id)
        if future is None:
            return "its output ended unexpectedly"
        try:
            info = await asyncio.wait_for(asyncio.shield(future), wait_s)
        except asyncio.TimeoutError:
            return "its output ended unexpectedly"
        if info.get("error"):
            return str(info["error"])
        sig = info.get("signal")
        if sig is not None:
            names = {signal.SIGKILL: "killed (SIGKILL: CPU time or memory limit)", signal.SIGXCPU: "CPU time limit (SIGXCPU)",
                     signal.SIGSEGV: "crashed (SIGSEGV)", signal.SIGSYS: "a forbidden system call (SIGSYS)"}  # fmt: skip
            return names.get(sig, f"signal {sig}")
        return f"exit code {info.get('code')}"


async def _recv_exactly(loop: asyncio.AbstractEventLoop, sock: socket.socket, n: int) -> bytes:
    buffer = bytearray(n)
    view = memoryview(buffer)
    got = 0
    while got < n:
        k = await loop.sock_recv_into(sock, view[got:])
        if not k:
            raise EOFError
        got += k
    return bytes(buffer)


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, (dict, list)):
            if depth > limit:
                return True
            stack.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return False


class SandboxPool:
    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.backend: launching.Kind | None = None
        self._template: _Template | None = None
        self._spares: deque[_Process] = deque()
        self._owned: OrderedDict[str, _Process] = OrderedDict()
        """Idle processes bound to an episode's arena (`owner`), least recently used first."""
        self._slots: asyncio.Semaphore | None = None
        self._restart_lock: asyncio.Lock | None = None
        self._closed = False
        self.replaced = 0
        """Calls whose process the gym had to kill (wall clock, cancellation)."""
        self.restarts = 0
        self.unsafe = False
        """True when arena code runs without the kernel boundary (only ever with `unsafe=True`)."""

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.config.max_active)
        self._restart_lock = asyncio.Lock()
        self._template = await self._start_template()
        self._refill()
        logger.info("sandbox: %s template ready, %d processes waiting", self.backend, self.config.workers)

    async def close(self) -> None:
        self._closed = True
        while self._spares:
            self._spares.popleft().sock.close()
        while self._owned:
            self._owned.popitem()[1].sock.close()
        if self._template is not None:
            await self._template.stop()

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start_template(self) -> _Template:
        c = self.config
        if c.backend == "docker":
            if not docker_engine_reachable(c.docker_engine):
                raise SandboxUnavailable(f"sandbox backend 'docker' was asked for, but `{c.docker_engine} info` does not answer")
            launch = launching.container(c.docker_engine, c.docker_image, c.memory_mb, c.max_active + c.workers, c.sandbox_uid,
                                         c.sandbox_uid, tempfile.mkdtemp(prefix="astra-sandbox-"))  # fmt: skip
            return await self._launch(launch, filters=policy.available() is None)
        why = launching.bwrap_available() or policy.available()
        if why is None:
            try:
                return await self._launch(launching.bwrap(c.sandbox_uid, c.sandbox_uid), filters=True)
            except SandboxUnavailable as exc:
                why = str(exc)
        if not c.unsafe:
            raise SandboxUnavailable(
                f"no kernel sandbox: {why}. Arena code is untrusted and runs only inside one; "
                "to run it without (trusted arenas only), pass --unsafe-sandbox"
            )
        logger.warning("sandbox: running arena code WITHOUT kernel isolation (--unsafe-sandbox): %s", why)
        return await self._launch(launching.unsafe(), filters=policy.available() is None)

    async def _launch(self, launch: launching.Launch, filters: bool) -> _Template:
        env = {"PATH": "/usr/bin:/bin", "PYTHONHASHSEED": "0"}
        try:
            proc = await asyncio.create_subprocess_exec(
                *launch.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE, pass_fds=launch.pass_fds, env=env, start_new_session=True,
            )  # fmt: skip
        except OSError as exc:
            launch.gym_end.close()
            raise SandboxUnavailable(f"the sandbox did not start: {exc}") from None
        finally:
            for end in launch.close_after_start:
                end.close()
        loop = asyncio.get_running_loop()
        ctl = launch.gym_end
        template: _Template | None = None
        try:
            async with asyncio.timeout(self.config.start_timeout_s):
                if launch.listener is not None:
                    launch.listener.setblocking(False)
                    ctl, _ = await loop.sock_accept(launch.listener)
                    launch.listener.close()
                ctl.setblocking(False)
                template = _Template(launch.kind, proc, ctl, launch.cleanup)
                base, call = (policy.base_filter(), policy.call_filter()) if filters else (b"", b"")
                c = self.config
                settings = {"cpu_s": c.cpu_s, "memory_mb": c.memory_mb, "max_result_bytes": c.max_result_bytes,
                            "max_state_bytes": c.max_state_bytes, "keep_rss_mb": c.keep_rss_mb,
                            "max_result_depth": c.max_result_depth, "audit_hook": c.audit_hook}  # fmt: skip
                template.send({"op": "init", "settings": settings, "base_bpf_bytes": len(base)}, base + call)
                message = await loop.sock_recv(ctl, MAX_CONTROL_BYTES)
                if not message:
                    raise EOFError
                ready, _ = decode_control(message)
                if ready.get("op") != "ready":
                    raise FrameError(f"the template answered {ready.get('op')!r} instead of ready")
                template.facts = ready.get("facts") or {}
                template.reader = loop.create_task(template.read_control())
                prober = self._spawn(template)
                reply, _ = await self._exchange(prober, {"op": "probe"}, b"")
                prober.sock.close()
                template.probe = reply.get("probe") or {}
        except (asyncio.TimeoutError, EOFError, OSError, FrameError, ValueError) as exc:
            stderr = b""
            with contextlib.suppress(Exception):
                proc.kill()
                stderr = await asyncio.wait_for(proc.stderr.read(4096), 2) if proc.stderr else b""
            if template is not None:
                await template.stop()
            else:
                ctl.close()
            detail = stderr.decode(errors="replace").strip() or f"{type(exc).__name__}: {exc}"
            raise SandboxUnavailable(f"the {launch.kind} sandbox did not start: {detail}") from None
        loop.create_task(self._drain(proc))
        problems = isolation_problems(template.facts, template.probe)
        self.backend = launch.kind
        self.unsafe = launch.kind == "unsafe" or bool(problems)
        if problems and not self.config.unsafe:
            await template.stop()
            raise SandboxUnavailable(f"the {launch.kind} sandbox came up without its boundary: {'; '.join(problems)}")
        if problems:
            logger.warning("sandbox: isolation incomplete (--unsafe-sandbox): %s", "; ".join(problems))
        return template

    @staticmethod
    async def _drain(proc: asyncio.subprocess.Process) -> None:
        """Keep reading what bubblewrap or the engine prints, so it never blocks on a full pipe."""
        if proc.stderr is None:
            return
        with contextlib.suppress(Exception):
            while line := await proc.stderr.readline():
                logger.warning("sandbox: %s", line.decode(errors="replace").rstrip())

    async def _live_template(self) -> _Template:
        template = self._template
        if template is not None and template.dead is None:
            return template
        assert self._restart_lock is not None
        async with self._restart_lock:
            template = self._template
            if template is not None and template.dead is None:
                return template
            if self._closed:
                raise SandboxUnavailable("the sandbox is closed")
            if template is not None:
                logger.error("sandbox: the template died (%s); starting a new one", template.dead)
                while self._spares:
                    self._spares.popleft().sock.close()
                while self._owned:
                    self._owned.popitem()[1].sock.close()
                await template.stop()
            self._template = await self._start_template()
            self.restarts += 1
            return self._template

    # -- processes ----------------------------------------------------------------------------------------------
    def _spawn(self, template: _Template) -> _Process:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ours.setblocking(False)
            process = _Process(template, next(template.ids), ours, 0)
            template.send({"op": "spawn", "id": process.id}, fds=(theirs.fileno(),))
            process.spawned_after = template.sent
        finally:
            theirs.close()
        return process

    def _refill(self) -> None:
        template = self._template
        if template is None or template.dead is not None:
            return
        while len(self._spares) < self.config.workers:
            self._spares.append(self._spawn(template))

    async def _checkout(self) -> _Process:
        template = await self._live_template()
        while self._spares and self._spares[0].template is not template:
            self._spares.popleft().sock.close()
        process = self._spares.popleft() if self._spares else self._spawn(template)
        self._refill()
        return process

    def _kill(self, process: _Process) -> None:
        self.replaced += 1
        if process.template.dead is None:
            process.template.send({"op": "kill", "id": process.id})

    async def _exchange(self, process: _Process, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        """One request and its reply on a process's socket. Anything going wrong kills the process and closes
        its socket; after a good reply the caller decides whether the process serves again."""
        loop = asyncio.get_running_loop()
        seq = secrets.randbits(63)
        exits = process.template.exits
        exits[process.id] = loop.create_future()
        try:
            async with asyncio.timeout(self.config.call_timeout_s):
                await loop.sock_sendall(process.sock, encode_frame({**header, "seq": seq}, blob))
                head_len, blob_len = check_prefix(await _recv_exactly(loop, process.sock, PREFIX.size))
                body = await _recv_exactly(loop, process.sock, head_len + blob_len)
            reply = decode_header(body[:head_len])
            if reply.get("seq") != seq:
                raise FrameError("the reply does not answer this request")
        except BaseException:
            self._kill(process)
            process.sock.close()
            raise
        exits.pop(process.id, None)  # it answered: how it exits no longer matters
        return reply, body[head_len:]

    async def _run(self, header: dict[str, Any], blob: bytes, source: bytes = b"", owner: str | None = None) -> tuple[dict[str, Any], bytes]:
        """Run one request; every failure of the arena's process becomes a sandbox_error header, while a busy or
        dead sandbox raises `SandboxUnavailable`. With an `owner` (an episode's arena) the process that served
        the owner's last call serves this one too; any other request gets a process of its own."""
        if self._closed or self._slots is None:
            raise SandboxUnavailable("the sandbox is closed")
        try:
            async with asyncio.timeout(self.config.queue_timeout_s):
                await self._slots.acquire()
        except asyncio.TimeoutError:
            raise SandboxUnavailable(f"the sandbox is busy: no process came free within {self.config.queue_timeout_s:g} s") from None
        try:
            code_id = header.get("code_id")
            process = self._owned.pop(owner, None) if owner is not None else None
            if process is not None and (process.template.dead is not None or process.code_id != code_id):
                process.sock.close()
                process = None
            if process is None:
                process = await self._checkout()
            send = bool(source) and code_id is not None and process.code_id is None and not process.has_code(code_id)
            request = {**header, "keep": owner is not None, "source_bytes": len(source) if send else 0}
            try:
                reply, out = await self._exchange(process, request, source + blob if send else blob)
                if reply.get("kind") == "need_source" and source:
                    reply, out = await self._exchange(process, {**request, "source_bytes": len(source)}, source + blob)
                    reply["compiled"] = True
            except asyncio.TimeoutError:
                return {"ok": False, "kind": "sandbox_error", "error": f"wall-clock limit exceeded ({self.config.call_timeout_s:g} s); the call was killed"}, b""
            except (EOFError, ConnectionError, FrameError) as exc:
                why = await process.death() if not isinstance(exc, FrameError) else f"it sent a malformed reply ({exc})"
                if process.template.dead is not None:
                    raise SandboxUnavailable(f"the sandbox template died ({process.template.dead}); the call did not run to its end") from None
                return {"ok": False, "kind": "sandbox_error", "error": f"the sandbox process died: {why}"}, b""
            if owner is not None and reply.get("retire") is False:
                process.code_id = code_id
                self._owned[owner] = process
                while len(self._owned) > self.config.max_idle_processes:
                    self._owned.popitem(last=False)[1].sock.close()  # it reads end-of-file and exits
            else:
                process.sock.close()
            return reply, out
        finally:
            self._slots.release()

    def release(self, episode_id: str) -> None:
        """The episode ended: close the processes that served its arenas."""
        prefix = f"{episode_id}/"
        for owner in [o for o in self._owned if o.startswith(prefix)]:
            self._owned.pop(owner).sock.close()

    # -- work ---------------------------------------------------------------------------------------------------
    async def call(self, source: str, function: str, arguments: dict[str, Any], state: bytes, owner: str | None = None) -> SandboxOutcome:
        """Run `function` of the arena `source` on `state`. `owner` names the episode and arena the call belongs
        to (`episode_id/arena_id`): that episode's later calls to that arena reuse the process, nothing else does."""
        code_id = _code_id(source)
        header: dict[str, Any] = {"op": "call", "code_id": code_id, "function": function, "arguments": arguments}
        encoded = source.encode()
        reply, blob = await self._run(header, state, encoded, owner)
        if not reply.get("ok"):
            return SandboxOutcome(ok=False, kind=reply.get("kind", "sandbox_error"), error=str(reply.get("error"))[:4000])
        template = self._template
        if reply.get("compiled") and template is not None and template.dead is None and code_id not in template.cached and len(encoded) <= MAX_CACHED_SOURCE_BYTES:
            template.send({"op": "cache", "code_id": code_id}, encoded)
            template.cached[code_id] = template.sent
        return self._outcome(reply, blob)

    def _outcome(self, reply: dict[str, Any], blob: bytes) -> SandboxOutcome:
        """Check a reply as the untrusted bytes it is: sizes, JSON, depth."""
        limit = self.config.max_result_bytes
        n = reply.get("result_bytes")
        if type(n) is not int or not 0 <= n <= len(blob):
            return SandboxOutcome(ok=False, kind="sandbox_error", error="the sandbox process sent a malformed result")
        if n > limit:
            return SandboxOutcome(ok=False, kind="tool_error", error=f"tool returned {n} bytes of JSON; the limit is {limit}")
        try:
            result = json.loads(blob[:n])
        except (ValueError, RecursionError):
            return SandboxOutcome(ok=False, kind="sandbox_error", error="the sandbox process sent a malformed result")
        if _too_deep(result, self.config.max_result_depth):
            return SandboxOutcome(ok=False, kind="tool_error", error=f"tool returned a result nested deeper than {self.config.max_result_depth} levels")
        state = blob[n:] if reply.get("changed") is True else None
        if state is not None and len(state) > self.config.max_state_bytes:
            return SandboxOutcome(ok=False, kind="tool_error", error=f"the call grew the state to {len(state)} bytes; the limit is {self.config.max_state_bytes}")
        return SandboxOutcome(ok=True, result=result, state=state)

    async def build_state(self, initial: InitialState) -> bytes:
        """Build the SQLite image of an initial state (its DDL is untrusted too); raises ValueError if it fails."""
        reply, blob = await self._run({"op": "build_state", **initial.model_dump()}, b"")
        if not reply.get("ok"):
            raise ValueError(str(reply.get("error")))
        return blob

    def health(self) -> dict[str, Any]:
        template = self._template
        facts = template.facts if template is not None else {}
        probe = template.probe if template is not None else {}
        ours = _own_namespaces()
        namespaces = {n: facts.get("namespaces", {}).get(n) not in (None, ours[n]) for n in NAMESPACES}
        return {
            "backend": self.backend,
            "unsafe": self.unsafe,
            "alive": template is not None and template.dead is None,
            "waiting_processes": len(self._spares),
            "episode_processes": len(self._owned),
            "max_active": self.config.max_active,
            "killed": self.replaced,
            "restarts": self.restarts,
            "isolation": {
                "uid": facts.get("uid"),
                "capabilities": facts.get("cap_eff"),
                "no_new_privs": facts.get("no_new_privs"),
                "seccomp": facts.get("seccomp_mode") == 2,
                "namespaces": namespaces,
                "refused_in_call": sorted(k for k, v in probe.get("attempts", {}).items() if v != "allowed"),
                "allowed_in_call": sorted(k for k, v in probe.get("attempts", {}).items() if v == "allowed"),
            },
            "network_isolated": namespaces["net"],
            "filesystem_hidden": namespaces["mnt"],
        }


@functools.lru_cache(maxsize=4096)
def _code_id(source: str) -> str:
    """Arena sources are long-lived strings (a str caches its hash), so the digest is computed once per arena."""
    return hashlib.sha256(source.encode()).hexdigest()
