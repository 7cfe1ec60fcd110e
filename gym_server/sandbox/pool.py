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
import functools
import hashlib
import itertools
import logging
import secrets
import socket
from collections import OrderedDict, deque
from typing import Any

from gym_server.models import InitialState, StateDiff
from gym_server.sandbox import launch as launching
from gym_server.sandbox.config import SandboxConfig, SandboxOutcome, SandboxUnavailable
from gym_server.sandbox.inside.frames import MAX_CONTROL_BYTES
from gym_server.sandbox.diffs import OwedDiffs
from gym_server.sandbox.replies import checked_outcome
from gym_server.sandbox.isolation import NAMESPACES, own_namespaces
from gym_server.sandbox.processes import SandboxProcess, TemplateHandle
from gym_server.sandbox.starting import start_template
from gym_server.sandbox.protocol import (
    FrameError,
    decode_header,
    encode_frame,
)

__all__ = ["SandboxConfig", "SandboxOutcome", "SandboxPool", "SandboxUnavailable"]

logger = logging.getLogger(__name__)

MAX_CACHED_SOURCE_BYTES = MAX_CONTROL_BYTES - 4096


class SandboxPool:
    def __init__(self, config: SandboxConfig | None = None) -> None:
        self.config = config or SandboxConfig()
        self.backend: launching.Kind | None = None
        self._template: TemplateHandle | None = None
        self._spares: deque[SandboxProcess] = deque()
        self._owned: OrderedDict[str, SandboxProcess] = OrderedDict()
        """Idle processes bound to an episode's arena (`owner`), least recently used first."""
        self._opening: dict[str, asyncio.Task[None]] = {}
        """Owners whose process is to be forked and bound ahead of their first call (`open`)..."""
        self._binding: set[str] = set()
        """... and those of them whose binding has begun."""
        self._seqs = itertools.count(secrets.randbits(48))
        self.diffs = OwedDiffs(self._seqs, self.config.call_timeout_s, self._kill)
        """The state diffs processes owe (gym_server.sandbox.diffs)."""
        self._bind_slots: asyncio.Semaphore | None = None
        self._slots: asyncio.Semaphore | None = None
        self._restart_lock: asyncio.Lock | None = None
        self._closed = False
        self.replaced = 0
        """Calls whose process the gym had to kill (wall clock, cancellation)."""
        self.restarts = 0
        self.active = 0
        """Calls running in the sandbox now. A process compiles a repeated tool's statements ahead of its next call
        only when its call ran alone (`ahead`): with others running, the CPU is the bottleneck, and what it compiles
        for a call that never comes (an episode's last) is lost."""
        self.unsafe = False
        """True when arena code runs without the kernel boundary (only ever with `unsafe=True`)."""

    # -- lifecycle ----------------------------------------------------------------------------------------------
    async def start(self) -> None:
        self._slots = asyncio.Semaphore(self.config.max_active)
        self._bind_slots = asyncio.Semaphore(max(2, self.config.workers))
        self._restart_lock = asyncio.Lock()
        self._template = await self._start_template()
        self._refill()
        logger.info("sandbox: %s template ready, %d processes waiting", self.backend, self.config.workers)

    async def close(self) -> None:
        self._closed = True
        for task in self._opening.values():
            task.cancel()
        self.diffs.close()
        while self._spares:
            self._spares.popleft().close()
        while self._owned:
            self._owned.popitem()[1].close()
        if self._template is not None:
            await self._template.stop()

    async def __aenter__(self) -> SandboxPool:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _start_template(self) -> TemplateHandle:
        template, self.unsafe = await start_template(self.config, self._probe)
        self.backend = template.kind
        return template

    async def _probe(self, template: TemplateHandle) -> dict[str, Any]:
        prober = self._spawn(template)
        reply, _ = await self._exchange(prober, {"op": "probe"}, b"")  # answered: it exits
        prober.close()
        return reply.get("probe") or {}

    async def _live_template(self) -> TemplateHandle:
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
                    self._spares.popleft().close()
                while self._owned:
                    self._owned.popitem()[1].close()
                await template.stop()
            self._template = await self._start_template()
            self.restarts += 1
            return self._template

    # -- processes ----------------------------------------------------------------------------------------------
    def _spawn(self, template: TemplateHandle) -> SandboxProcess:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            ours.setblocking(False)
            process = SandboxProcess(template, next(template.ids), ours, 0)
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

    async def _checkout(self) -> SandboxProcess:
        template = await self._live_template()
        while self._spares and self._spares[0].template is not template:
            self._spares.popleft().close()
        process = self._spares.popleft() if self._spares else self._spawn(template)
        self._refill()
        return process

    def _kill(self, process: SandboxProcess) -> None:
        self.replaced += 1
        if process.template.dead is None:
            process.template.send({"op": "kill", "id": process.id})

    async def _exchange(self, process: SandboxProcess, header: dict[str, Any], blob: bytes) -> tuple[dict[str, Any], bytes]:
        """One request and its reply on a process's socket. Anything going wrong kills the process and closes
        its socket; after a good reply the caller decides whether the process serves again."""
        loop = asyncio.get_running_loop()
        seq = next(self._seqs)  # it pairs a reply with its request: nothing is kept secret by it
        exits = process.template.exits
        exits[process.id] = process.exit = loop.create_future()
        try:
            async with asyncio.timeout(self.config.call_timeout_s):
                head_len, body = await process.request(encode_frame({**header, "seq": seq}, blob))
            reply = decode_header(body[:head_len])
            if reply.get("seq") != seq:
                raise FrameError("the reply does not answer this request")
        except BaseException:
            self._kill(process)
            process.close()
            raise
        exits.pop(process.id, None)  # it answered: how it exits no longer matters
        return reply, body[head_len:]

    async def _run(
        self, header: dict[str, Any], state: bytes = b"", source: bytes = b"", owner: str | None = None
    ) -> tuple[dict[str, Any], bytes, bytes | None, asyncio.Future[StateDiff] | None]:
        """Run one request; every failure of the arena's process becomes a sandbox_error header, while a busy or
        dead sandbox raises `SandboxUnavailable`. With an `owner` (an episode's arena) the process that served
        the owner's last call serves this one too, and when it already holds `state` (the image its last call left,
        as the same object) the image is not sent again; any other request gets a process of its own. Returns the
        reply, its blob, when the call changed the state the new image (split off the blob), and when the process
        owes a diff of that change, the future that gets it (gym_server.sandbox.diffs)."""
        if self._closed or self._slots is None:
            raise SandboxUnavailable("the sandbox is closed")
        opening = self._opening.get(owner) if owner is not None else None
        if opening is not None:
            if owner in self._binding:
                await asyncio.wait([opening])  # its process, once bound, is the owner's (a cancelled call leaves it be)
            else:
                self._opening.pop(owner).cancel()  # still queued: the call takes a process as usual, sooner
        try:
            if self._slots.locked():  # a free slot is taken at once, without arming a timer
                async with asyncio.timeout(self.config.queue_timeout_s):
                    await self._slots.acquire()
            else:
                await self._slots.acquire()
        except asyncio.TimeoutError:
            raise SandboxUnavailable(f"the sandbox is busy: no process came free within {self.config.queue_timeout_s:g} s") from None
        process: SandboxProcess | None = None
        self.active += 1
        try:
            code_id = header.get("code_id")
            process = self._owned.pop(owner, None) if owner is not None else None
            for attempt in (1, 2):
                if process is not None and (process.template.dead is not None or process.code_id != code_id or process.broken):
                    self.diffs.retire(process)
                    process = None
                if process is None:
                    process = await self._checkout()
                process.busy = True
                send = bool(source) and code_id is not None and process.code_id is None and not process.has_code(code_id)
                same = process.held is not None and state is process.held
                request = {**header, "keep": owner is not None, "source_bytes": len(source) if send else 0, "same_state": same}
                if self.active == 1:  # nothing else runs: the process may spend idle CPU on the episode's next call
                    request["ahead"] = True
                try:
                    # A process whose batch of diffs is still coming takes the request at once (SandboxProcess.request)
                    reply, out = await self._exchange(process, request, (source if send else b"") + (b"" if same else state))
                    if reply.get("kind") == "need_state":
                        reply, out = await self._exchange(process, {**request, "same_state": False}, state)
                    if reply.get("kind") == "need_source" and source:
                        reply, out = await self._exchange(process, {**request, "source_bytes": len(source), "same_state": False}, source + state)
                        reply["compiled"] = True
                    if not process.broken:
                        break
                    if attempt == 2:
                        return {"ok": False, "kind": "sandbox_error", "error": "the sandbox process broke its protocol"}, b"", None, None
                    # Its batch of diffs was broken: whatever it answered since is dropped, and a fresh process runs
                    # the call again from the gym's own state.
                except asyncio.TimeoutError:
                    return {"ok": False, "kind": "sandbox_error", "error": f"wall-clock limit exceeded ({self.config.call_timeout_s:g} s); the call was killed"}, b"", None, None
                except (EOFError, ConnectionError, FrameError) as exc:
                    if process.broken and attempt == 1:
                        continue  # its batch of diffs was broken (or it retired after one) before it ran this call: take a fresh one
                    why = await process.death() if not isinstance(exc, FrameError) else f"it sent a malformed reply ({exc})"
                    if process.template.dead is not None:
                        raise SandboxUnavailable(f"the sandbox template died ({process.template.dead}); the call did not run to its end") from None
                    return {"ok": False, "kind": "sandbox_error", "error": f"the sandbox process died: {why}"}, b"", None, None
            new_state = diff = None
            n = reply.get("result_bytes")
            if reply.get("ok") and reply.get("changed") is True and type(n) is int and 0 <= n <= len(out):
                out, new_state = out[:n], out[n:]
            if new_state is not None and reply.get("diff_owed") is True and header.get("diff") is not False and self.config.state_diffs:
                diff = self.diffs.owe(process, reply["seq"], owner)
            if reply.get("diffs_follow") is True:  # it retires, and sends what it owes first
                self.diffs.read_batch(process, reply.get("seq"), ask=False)
            if owner is not None and reply.get("retire") is False:
                process.code_id = code_id
                process.held = new_state if new_state is not None else state  # what the process now holds loaded
                previous = self._owned.pop(owner, None)
                if previous is not None:  # a call beside this one took a process of its own: one is kept
                    self.diffs.retire(previous)
                self._owned[owner] = process
                while len(self._owned) > self.config.max_idle_processes:
                    self.diffs.retire(self._owned.popitem(last=False)[1])  # it reads end-of-file and exits
            else:
                process.close_when_settled()  # a retiring process goes once its batch is read
            return reply, out, new_state, diff
        finally:
            self._slots.release()
            self.active -= 1
            if process is not None:
                process.busy = False
                if process.ask_again:
                    self.diffs.ask(process)

    def settle(self, episode_id: str) -> None:
        """Ask every process that owes diffs of the episode's calls for them (its log is being read); each owed
        diff's future resolves once its batch is in. Never blocks."""
        self.diffs.settle(episode_id)

    def release(self, episode_id: str) -> None:
        """The episode ended: close the processes that served its arenas (or were being bound for them)."""
        prefix = f"{episode_id}/"
        for owner in [o for o in self._opening if o.startswith(prefix)]:
            self._opening.pop(owner).cancel()  # its exchange kills the process
        for owner in [o for o in self._owned if o.startswith(prefix)]:
            self.diffs.retire(self._owned.pop(owner))
        self.diffs.release(episode_id)

    def open(self, source: str, state: bytes, owner: str) -> None:
        """Fork and bind `owner`'s process before its first call: the call then finds the code compiled and
        `state` loaded, and neither the fork nor the bind is on its path. Best effort and never in a call's way:
        binds queue for slots of their own (`workers` of them, at least 2), not for the calls' slots; a call whose
        owner's bind has not begun cancels it; nothing is bound past `max_idle_processes`; a failure only means
        the first call forks as it would have."""
        if self._closed or self._bind_slots is None or owner in self._opening or owner in self._owned:
            return
        if len(self._owned) + len(self._opening) >= self.config.max_idle_processes:
            return
        task = asyncio.get_running_loop().create_task(self._open(source, state, owner))
        self._opening[owner] = task
        task.add_done_callback(lambda t: self._opening.pop(owner, None) if self._opening.get(owner) is t else None)

    async def _open(self, source: str, state: bytes, owner: str) -> None:
        assert self._bind_slots is not None
        await self._bind_slots.acquire()
        self._binding.add(owner)
        try:
            code_id = _code_id(source)
            process = await self._checkout()
            encoded = source.encode()
            header = {"op": "bind", "code_id": code_id}
            try:
                send = not process.has_code(code_id)
                reply, _ = await self._exchange(process, {**header, "source_bytes": len(encoded) if send else 0}, (encoded if send else b"") + state)
                if reply.get("kind") == "need_source":
                    reply, _ = await self._exchange(process, {**header, "source_bytes": len(encoded)}, encoded + state)
            except (asyncio.TimeoutError, EOFError, ConnectionError, FrameError):
                return  # killed and closed by the exchange; the first call takes a spare as usual
            if reply.get("ok") is True and reply.get("retire") is False and not self._closed and owner not in self._owned:
                process.code_id, process.held = code_id, state
                self._owned[owner] = process
            else:
                process.close()  # code that does not compile: the first call reports it as it always has
        except SandboxUnavailable:
            return
        finally:
            self._binding.discard(owner)
            self._bind_slots.release()

    # -- work ---------------------------------------------------------------------------------------------------
    async def call(
        self, source: str, function: str, arguments: dict[str, Any], state: bytes, owner: str | None = None, *, guard: bool = True,
        diff: bool = True,
    ) -> SandboxOutcome:  # fmt: skip
        """Run `function` of the arena `source` on `state`. `owner` names the episode and arena the call belongs
        to (`episode_id/arena_id`): that episode's later calls to that arena reuse the process, nothing else does.
        `guard=False` (the gym's own code only, never arena code: a suite's official checker, which compiles the
        call strings it built) runs without the audit-hook layer, in a process of its own that serves nothing
        else; the kernel boundary, the filter and the limits hold as for every call. `diff=False`: no state diff
        is wanted of this call (one that no log records, such as a validation's), even when the config asks for them."""
        if not guard and owner is not None:
            raise ValueError("an unguarded call runs in a single-use process: it takes no owner")
        code_id = _code_id(source)
        header: dict[str, Any] = {"op": "call", "code_id": code_id, "function": function, "arguments": arguments}
        if not guard:
            header["guard"] = False
        if not (diff and self.config.state_diffs):
            header["diff"] = False
        encoded = source.encode()
        reply, blob, new_state, diff = await self._run(header, state, encoded, owner)
        if not reply.get("ok"):
            return SandboxOutcome(ok=False, kind=reply.get("kind", "sandbox_error"), error=str(reply.get("error"))[:4000])
        template = self._template
        if reply.get("compiled") and template is not None and template.dead is None and code_id not in template.cached and len(encoded) <= MAX_CACHED_SOURCE_BYTES:
            template.send({"op": "cache", "code_id": code_id}, encoded)
            template.cached[code_id] = template.sent
        return checked_outcome(self.config, reply, blob, new_state, diff, expected=header.get("diff") is not False)

    async def build_state(self, initial: InitialState) -> bytes:
        """Build the SQLite image of an initial state (its DDL is untrusted too); raises ValueError if it fails."""
        reply, blob, _, _ = await self._run({"op": "build_state", **initial.model_dump()})
        if not reply.get("ok"):
            raise ValueError(str(reply.get("error")))
        return blob

    def health(self) -> dict[str, Any]:
        template = self._template
        facts = template.facts if template is not None else {}
        probe = template.probe if template is not None else {}
        ours = own_namespaces()
        namespaces = {n: facts.get("namespaces", {}).get(n) not in (None, ours[n]) for n in NAMESPACES}
        return {
            "backend": self.backend,
            "unsafe": self.unsafe,
            "alive": template is not None and template.dead is None,
            "waiting_processes": len(self._spares),
            "episode_processes": len(self._owned),
            "max_active": self.config.max_active,
            "cpus": facts.get("cpus"),
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
