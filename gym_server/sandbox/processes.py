"""The gym's handles on the sandbox's processes: the template (its control socket, the processes it forked,
how they ended) and each forked process (its socket, the arena code and state it holds)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import signal
import socket
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from gym_server.models import StateDiff
from gym_server.sandbox import launch as launching
from gym_server.sandbox.inside.frames import MAX_CONTROL_BYTES
from gym_server.sandbox.protocol import (
    PREFIX,
    FrameError,
    check_prefix,
    decode_control,
    encode_frame,
)

logger = logging.getLogger(__name__)


@dataclass(eq=False)
class TemplateHandle:
    """The running template and its control socket."""

    kind: launching.Kind
    proc: asyncio.subprocess.Process
    ctl: socket.socket
    cleanup: list[str]
    teardown: list[str]
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
        await launching.remove(self.teardown, self.cleanup)


@dataclass(eq=False, slots=True)
class SandboxProcess:
    """A sandbox process as the gym sees it: its id at the template, our end of its socket and, once it served
    an episode's call, the arena code it is bound to."""

    template: TemplateHandle
    id: int
    sock: socket.socket
    spawned_after: int
    code_id: str | None = None
    channel: ProcessChannel | None = None
    exit: asyncio.Future[dict[str, Any]] | None = None
    """How the process ended, as the template reports it (set while a request is in flight)."""
    held: bytes | None = None
    """The state image the process holds loaded for its episode's next call (as the gym's own object), if any."""
    follows: asyncio.Task[Any] | None = None
    """Reading a batch of the state diffs it owes (`diffs.resolve_batch`): its next request waits for it."""
    broken: bool = False
    """It serves no further request: a batch of diffs never came whole, or it retired after one."""
    owed: dict[int, asyncio.Future[StateDiff]] = field(default_factory=dict)
    """The diffs of its writing calls (by their seqs) that the gym has not asked for yet."""
    busy: bool = False
    """A call is under way on it: a batch is asked for after that call (`ask_again`), never beside it."""
    ask_again: bool = False

    def close_when_settled(self) -> None:
        """Close once the batch of diffs being read is in, so that closing an idle process (its episode ended, or
        it was the least recently used) loses no call's diff; the caller asked for what it owes first."""
        follows = self.follows
        if follows is not None and not follows.done():
            follows.add_done_callback(lambda _: self.close())
        else:
            self.close()

    def close(self) -> None:
        """Close our end: a waiting process reads end-of-file and exits. Diffs it still owes are lost with it."""
        owed, self.owed = self.owed, {}
        for future in owed.values():
            if not future.done():
                future.set_result(StateDiff(truncated=True, error="the state diff was lost with the sandbox process"))
        if self.channel is not None and self.channel.transport is not None:
            self.channel.transport.close()
        else:
            self.sock.close()

    async def request(self, frame: bytes) -> tuple[int, bytes]:
        if self.channel is None:
            loop = asyncio.get_running_loop()
            _, self.channel = await loop.create_unix_connection(ProcessChannel, sock=self.sock)
        follows = self.follows
        if follows is not None and not follows.done():
            # The process reads its next request only after it sent what follows its last reply, so the request
            # goes now (the process need not wait out its grace for a request we held back) and frames are still
            # read in order: what followed the last reply first, then this reply. If what followed was broken,
            # `follows` closed the process and this raises EOFError.
            self.channel.send(frame)
            await asyncio.wait([follows])
            return await self.channel.receive()
        return await self.channel.request(frame)

    async def receive(self) -> tuple[int, bytes]:
        """The next frame the process sends unasked (after a reply it announced it)."""
        assert self.channel is not None
        return await self.channel.receive()

    def has_code(self, code_id: str) -> bool:
        sent = self.template.cached.get(code_id)
        return sent is not None and sent < self.spawned_after

    async def death(self, wait_s: float = 2.0) -> str:
        """Why the process ended without answering, as the template saw it."""
        future = self.exit  # held here: the template's word may arrive (and leave `exits`) before our end-of-file
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


class ProcessChannel(asyncio.Protocol):
    """A process's socket, registered with the event loop once for all its calls: a request is one write, and
    its reply arrives through `data_received` (a read per readiness, no per-call registration)."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        self._deliver()

    def _deliver(self) -> None:
        """Hand the waiter a whole frame, if the buffer holds one (a frame may arrive before anyone waits)."""
        waiter = self.waiter
        if waiter is None or waiter.done() or len(self.buffer) < PREFIX.size:
            return
        try:
            head_len, blob_len = check_prefix(bytes(self.buffer[: PREFIX.size]))
        except FrameError as exc:
            waiter.set_exception(exc)
            return
        end = PREFIX.size + head_len + blob_len
        if len(self.buffer) >= end:
            frame = bytes(self.buffer[PREFIX.size : end])
            del self.buffer[:end]
            waiter.set_result((head_len, frame))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(EOFError())

    async def request(self, frame: bytes) -> tuple[int, bytes]:
        self.send(frame)
        self.waiter = asyncio.get_running_loop().create_future()
        return await self.waiter

    def send(self, frame: bytes) -> None:
        assert self.transport is not None
        if self.transport.is_closing():
            raise EOFError
        self.transport.write(frame)

    async def receive(self) -> tuple[int, bytes]:
        waiter = self.waiter = asyncio.get_running_loop().create_future()
        self._deliver()  # a frame that came before anyone asked
        if not waiter.done() and (self.lost or (self.transport is not None and self.transport.is_closing())):
            self.waiter = None  # nobody will await it: the end of the connection must not leave an error on it
            raise EOFError
        return await waiter
