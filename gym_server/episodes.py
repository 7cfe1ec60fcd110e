"""Episodes: an arena's tools bound to a private copy of its state, a call log and a failure policy.

Creating an episode copies nothing but a reference: an arena's initial SQLite image is built once (in the
sandbox, since its DDL is untrusted too) and shared as immutable bytes; the first write of an episode
replaces its own reference with the image the sandbox returns. Calls within one episode run one at a time
in arrival order, so parallel tool calls see a consistent state and failure injection stays reproducible.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp_types as types
from mcp.server.subscriptions import InMemorySubscriptionBus, ListenHandler, ToolsListChanged

from gym_server.backends import SandboxBackend, ToolBackend
from gym_server.config import EpisodeLimits
from gym_server.failures import MESSAGES, injected_failure
from gym_server.models import (
    Arena,
    CallLogEntry,
    CallStatus,
    EpisodeCreate,
    EpisodeLog,
    FailureKind,
    FailurePolicy,
    RewardBreakdown,
    StateDiff,
    ToolSpec,
    TurnAdvanced,
)
from gym_server.sandbox.pool import SandboxPool
from gym_server.schemas import ArgumentValidator, compile_validator
from gym_server.store import ArenaStore

_measure_arguments = json.JSONEncoder(ensure_ascii=False, default=str).encode
"""The size check's serializer, built once: `json.dumps` with options builds a new encoder on every call."""

logger = logging.getLogger(__name__)

MAX_LISTEN_STREAMS = 4
"""`subscriptions/listen` streams one episode may hold open (each is a held HTTP response)."""

CANCELLED_MESSAGE = "the client cancelled the call (or its connection dropped) before it finished; it was stopped and changed nothing"


_MAX_ERROR_CHARS = 4000


def backend_key(arena: Arena) -> str:
    """Which backend serves an arena: its kind, or `suite:NAME` for a suite's arenas."""
    return f"suite:{arena.suite}" if arena.kind == "suite" else arena.kind


class EpisodeNotFound(KeyError):
    pass


class CallRefused(Exception):
    """The call was not run: the episode may make no more calls."""


class EpisodeScored(Exception):
    """The episode was scored: its tools answer no more."""


class NoMoreTurns(Exception):
    """The episode is at its last user turn."""


class EpisodeRejected(ValueError):
    """The request cannot make an episode (bad distractor, broken arena state, too many episodes)."""

    def __init__(self, message: str, status: int = 422) -> None:
        super().__init__(message)
        self.status = status


@dataclass(slots=True)
class ArenaRuntime:
    """What serving an arena needs, computed once per arena: validators, MCP tool definitions and the
    initial state image."""

    arena: Arena
    validators: dict[str, ArgumentValidator]
    template: bytes
    mcp_tools: dict[str, types.Tool]


@dataclass(slots=True)
class ServedTool:
    spec: ToolSpec
    runtime: ArenaRuntime
    distractor: bool

    def definition(self) -> dict[str, Any]:
        return self.spec.model_dump(by_alias=True, exclude_none=True)

    @property
    def mcp_tool(self) -> types.Tool:
        return self.runtime.mcp_tools[self.spec.name]


@dataclass(eq=False)
class Episode:
    id: str
    arena: Arena
    seed: int
    failure: FailurePolicy
    tools: dict[str, ServedTool]
    states: dict[str, bytes]
    created_at: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.monotonic)
    calls: list[CallLogEntry] = field(default_factory=list)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    """The secret in the episode's MCP URL: the capability for its tools (the id is not secret)."""
    scored: RewardBreakdown | None = None
    """The first score, which is final: later score requests return it, and the tools stop answering."""
    turn: int = 0
    """The user turn now open (0: the first prompt)."""
    hidden: dict[str, ServedTool] = field(default_factory=dict)
    """Tools that appear at a later turn (`Arena.turns[i].add_tools`), not yet listed or callable."""
    events: InMemorySubscriptionBus = field(default_factory=InMemorySubscriptionBus)
    """The episode's change events (its tool list grew); only its own `subscriptions/listen` streams hear them."""
    listener: ListenHandler = field(init=False)
    pending_diffs: set[asyncio.Future[StateDiff]] = field(default_factory=set)
    """Calls whose state diff is not in the log yet; `settled` asks for them and waits."""
    diff_sources: set[Callable[[str], None]] = field(default_factory=set)
    """How to ask for them (`SandboxPool.settle`, given the episode's id): the sandbox computes diffs only when
    asked, so that no call waits for or pays beside it for one."""

    def __post_init__(self) -> None:
        self.listener = ListenHandler(self.events, max_subscriptions=MAX_LISTEN_STREAMS, max_buffered_events=64)

    async def settled(self) -> None:
        """Once every diff of the calls made so far is in the log (each batch is bounded by the sandbox's call
        timeout)."""
        while self.pending_diffs:
            for ask in list(self.diff_sources):
                ask(self.id)
            await asyncio.wait(set(self.pending_diffs))

    def log(self, since: int = 0) -> EpisodeLog:
        """`since`: the calls from that index on (a reader that has the earlier ones)."""
        return EpisodeLog(
            episode_id=self.id, arena_id=self.arena.id, seed=self.seed, failure=self.failure,
            created_at=self.created_at, calls=self.calls[since:], scored=self.scored,
        )  # fmt: skip


class EpisodeManager:
    def __init__(
        self, store: ArenaStore, pool: SandboxPool, limits: EpisodeLimits | None = None, backends: Sequence[ToolBackend] = (),
        id_prefix: str = "",
    ) -> None:  # fmt: skip
        """`id_prefix` starts every episode id: a gym process of `serve --processes N` names itself there, so its
        front routes an episode's REST calls by the id alone."""
        self.store = store
        self.id_prefix = id_prefix
        self.pool = pool
        self.limits = limits or EpisodeLimits()
        self._episodes: dict[str, Episode] = {}
        self.backends: dict[str, ToolBackend] = {}
        """The backend of each arena kind: the sandbox's, then each passed one for the kinds it names."""
        for backend in [SandboxBackend(pool), *backends]:
            self.backends.update(dict.fromkeys(backend.kinds, backend))  # a suite's kind is `suite:NAME`
        self._runtimes: OrderedDict[str, ArenaRuntime] = OrderedDict()
        self._building: dict[str, asyncio.Future[ArenaRuntime]] = {}

    def __len__(self) -> int:
        return len(self._episodes)

    def __contains__(self, episode_id: str) -> bool:
        return episode_id in self._episodes

    def active(self) -> list[Episode]:
        return list(self._episodes.values())

    # -- arenas ------------------------------------------------------------------------------
    async def runtime(self, arena_id: str) -> ArenaRuntime:
        cached = self._runtimes.get(arena_id)
        if cached is not None:
            self._runtimes.move_to_end(arena_id)
            return cached
        pending = self._building.get(arena_id)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[ArenaRuntime] = asyncio.get_running_loop().create_future()
        self._building[arena_id] = future
        try:
            arena = await asyncio.to_thread(self.store.get, arena_id)
            try:
                template = b"" if arena.kind == "upstream" else await self.pool.build_state(arena.initial_state)
            except ValueError as exc:
                raise EpisodeRejected(f"arena {arena_id!r}: {exc}") from None
            runtime = ArenaRuntime(
                arena, {t.name: compile_validator(t.input_schema) for t in arena.tools}, template,
                {t.name: types.Tool.model_validate(t.model_dump(by_alias=True, exclude_none=True)) for t in arena.tools},
            )  # fmt: skip
            self._runtimes[arena_id] = runtime
            if len(self._runtimes) > 4096:
                self._runtimes.popitem(last=False)
            future.set_result(runtime)
            return runtime
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved here so a build nobody else awaited logs no warning
            raise
        finally:
            del self._building[arena_id]

    # -- episodes ----------------------------------------------------------------------------
    async def create(self, request: EpisodeCreate) -> Episode:
        if len(self._episodes) >= self.limits.max_episodes:
            raise EpisodeRejected(f"the gym already runs {len(self._episodes)} episodes (the limit); delete some", 503)
        runtime = await self.runtime(request.arena_id)
        later = runtime.arena.hidden_tools
        tools = {t.name: ServedTool(t, runtime, distractor=False) for t in runtime.arena.tools if t.name not in later}
        hidden = {t.name: ServedTool(t, runtime, distractor=False) for t in runtime.arena.tools if t.name in later}
        states = {runtime.arena.id: runtime.template}
        for ref in request.distractors:
            other = await self.runtime(ref.arena_id)
            spec = other.arena.tool_by_name.get(ref.tool)
            if spec is None:
                raise EpisodeRejected(f"distractor {ref.arena_id}/{ref.tool}: that arena has no such tool")
            if spec.name in tools or spec.name in hidden:
                if spec.name in tools and tools[spec.name].runtime is other:
                    continue
                raise EpisodeRejected(f"distractor {ref.arena_id}/{ref.tool}: a tool named {spec.name!r} is already served")
            tools[spec.name] = ServedTool(spec, other, distractor=True)
            states.setdefault(other.arena.id, other.template)
        default = self.limits.default_failure
        arena_rate = runtime.arena.failure_rate
        failure = FailurePolicy(
            rate=request.failure_rate if request.failure_rate is not None else arena_rate if arena_rate is not None else default.rate,
            kinds=request.failure_kinds or default.kinds,
            timeout_delay_s=default.timeout_delay_s,
        )
        seed = request.seed if request.seed is not None else secrets.randbelow(2**31)
        episode = Episode(self.id_prefix + secrets.token_urlsafe(18), runtime.arena, seed, failure, tools, states, hidden=hidden)
        self._episodes[episode.id] = episode
        backend = self.backend_for(runtime.arena)
        if backend is not None:
            backend.begin(episode)
        return episode

    def backend_for(self, arena: Arena) -> ToolBackend | None:
        return self.backends.get(backend_key(arena))

    async def advance(self, episode: Episode) -> TurnAdvanced:
        """Open the episode's next user turn; the tools that come with it are listed and callable from now on.
        Raises `NoMoreTurns` at the last turn and `EpisodeScored` once scored. Calls still running finish in the
        turn they were made in (the turn changes under the episode's lock)."""
        async with episode.lock:
            if episode.scored is not None:
                raise EpisodeScored(episode.id)
            arena = episode.arena
            if episode.turn + 1 >= arena.n_turns:
                raise NoMoreTurns(f"the episode is at its last user turn ({episode.turn + 1} of {arena.n_turns})")
            episode.turn += 1
            turn = arena.turns[episode.turn]
            added = [name for name in turn.add_tools if name in episode.hidden]
            for name in added:
                episode.tools[name] = episode.hidden.pop(name)
            episode.last_used = time.monotonic()
            tools = [t.definition() for t in episode.tools.values()] if added else None
            if added:
                await episode.events.publish(ToolsListChanged())
            return TurnAdvanced(turn=episode.turn, n_turns=arena.n_turns, message=turn.message, tools_changed=bool(added), tools=tools)

    def get(self, episode_id: str, touch: bool = True) -> Episode:
        """`touch=False` looks without keeping the episode alive (a request not yet authorized must not)."""
        episode = self._episodes.get(episode_id)
        if episode is None:
            raise EpisodeNotFound(episode_id)
        if touch:
            episode.last_used = time.monotonic()
        return episode

    def delete(self, episode_id: str) -> None:
        episode = self._episodes.pop(episode_id, None)
        if episode is None:
            raise EpisodeNotFound(episode_id)
        self._release(episode)

    def _release(self, episode: Episode) -> None:
        episode.listener.close()  # its listen streams end gracefully
        for backend in {id(b): b for b in self.backends.values()}.values():
            backend.end(episode.id)

    async def close(self) -> None:
        for episode in list(self._episodes.values()):
            self._release(episode)
        self._episodes.clear()

    def expire_idle(self) -> int:
        cutoff = time.monotonic() - self.limits.episode_ttl_s
        stale = [eid for eid, ep in self._episodes.items() if ep.last_used < cutoff]
        for eid in stale:
            self._release(self._episodes.pop(eid))
        return len(stale)

    async def run_expiry(self, every_s: float) -> None:
        while True:
            await asyncio.sleep(every_s)
            if n := self.expire_idle():
                logger.info("expired %d idle episodes", n)

    # -- calls -------------------------------------------------------------------------------
    async def call_tool(self, episode: Episode, name: str, arguments: Any) -> CallLogEntry:
        """Run and log one call. Raises `CallRefused` (the episode's log is full), `EpisodeScored` (the score is
        final) and `SandboxUnavailable` (the sandbox cannot run anything now): none is a call the tool answered,
        so none is logged or scored. A call cancelled while it runs (the client gave up) is logged as
        `cancelled`, changes no state (`_execute` stores state only once the sandbox has answered, and the
        sandbox pool stops the process running a cancelled call) and re-raises CancelledError; one cancelled
        while it still waits for its turn never ran and is not logged."""
        async with episode.lock:
            if episode.scored is not None:
                raise EpisodeScored(episode.id)
            started, t0 = time.time(), time.perf_counter()
            index = len(episode.calls)
            if index >= self.limits.max_calls_per_episode:
                raise CallRefused(f"this episode has made {index} calls, the most one episode may make")
            served = episode.tools.get(name)
            if served is None and episode.arena.hidden_tools_callable:
                served = episode.hidden.get(name)
            rendered: str | None = None
            diff: asyncio.Future[StateDiff] | None = None
            try:
                status, result, error, injected, rendered, diff = await self._execute(episode, served, name, arguments, index)
            except asyncio.CancelledError:
                status, result, error, injected = CallStatus.cancelled, None, CANCELLED_MESSAGE, None
            if status is CallStatus.ok and len(_measure_arguments(result)) > self.pool.config.max_result_bytes:
                status, result, error = CallStatus.tool_error, None, f"the tool's result is over {self.pool.config.max_result_bytes} bytes of JSON"
            entry = CallLogEntry.model_construct(  # every field is built here with its type: nothing to validate
                index=index, tool=name, arguments=arguments, status=status, result=result,
                error=error[:_MAX_ERROR_CHARS] if error else error, injected=injected,
                source_arena=served.runtime.arena.id if served and served.distractor else None,
                started_at=started, latency_ms=(time.perf_counter() - t0) * 1000, unsafe_sandbox=self.pool.unsafe or None,
                turn=episode.turn, rendered=rendered,
            )  # fmt: skip
            episode.calls.append(entry)
            episode.last_used = time.monotonic()
            if diff is not None and status is CallStatus.ok:
                _complete_later(episode, entry, diff)
        if status is CallStatus.cancelled:
            raise asyncio.CancelledError()
        return entry

    async def _execute(
        self, episode: Episode, served: ServedTool | None, name: str, arguments: Any, index: int
    ) -> tuple[CallStatus, Any, str | None, FailureKind | None, str | None, asyncio.Future[StateDiff] | None]:
        if served is None:
            available = ", ".join(sorted(episode.tools))
            return CallStatus.unknown_tool, None, f"unknown tool {name!r}; this episode's tools are: {available}", None, None, None
        if not isinstance(arguments, dict):
            return CallStatus.invalid_arguments, None, "arguments must be a JSON object", None, None, None
        size = len(_measure_arguments(arguments))
        if size > self.limits.max_argument_bytes:
            return (
                CallStatus.invalid_arguments, None,
                f"arguments are {size} bytes; the limit is {self.limits.max_argument_bytes}", None, None, None,
            )  # fmt: skip
        arena = served.runtime.arena
        problem = served.runtime.validators[served.spec.name].first_error(arguments) if arena.validate_arguments else None
        if problem:
            schema = json.dumps(served.spec.input_schema, separators=(",", ":"))
            return CallStatus.invalid_arguments, None, f"invalid arguments for {name}: {problem}. Expected: {schema}", None, None, None
        kind = injected_failure(episode.failure, episode.seed, index)
        if kind is not None:
            if kind is FailureKind.timeout and episode.failure.timeout_delay_s:
                await asyncio.sleep(episode.failure.timeout_delay_s)
            return CallStatus.injected_failure, None, MESSAGES[kind], kind, None, None
        backend = self.backends.get(backend_key(arena))
        if backend is None:
            return CallStatus.upstream_error, None, f"this gym has no backend for {backend_key(arena)} arenas such as {arena.id!r}", None, None, None
        answer = await backend.call(episode, arena, served.spec, arguments)
        return answer.status, answer.result, answer.error, None, answer.rendered, answer.diff


def _complete_later(episode: Episode, entry: CallLogEntry, diff: asyncio.Future[StateDiff]) -> None:
    """The entry's state diff, once it came (asked for when the log is read: it is off the call's path). A
    callback, not a task of its own: this runs for every writing call."""

    def complete(done: asyncio.Future[StateDiff]) -> None:
        episode.pending_diffs.discard(done)
        if done.cancelled():  # the gym is closing
            entry.diff = StateDiff(truncated=True, error="the gym stopped before the state diff came")
        elif done.exception() is not None:
            entry.diff = StateDiff(truncated=True, error="the state diff was lost with the sandbox process")
        else:
            entry.diff = done.result()

    episode.pending_diffs.add(diff)
    diff.add_done_callback(complete)
