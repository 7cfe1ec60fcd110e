"""Batched generation across concurrent episodes: the pending turns of every live episode become one batch.

A step's episodes run concurrently on one event loop; each turn asks the sampler for tokens. Sampling them one
at a time at batch size 1 leaves a GPU mostly idle, so `BatchedSampler` gathers the pending turns and hands
them to a `BatchGenerate` backend in one call (one left-padded `generate` in transformers, or a vLLM engine).
A batch starts as soon as every live episode is waiting for a turn (episodes announce themselves with
`episode()`), or when the oldest pending turn has waited `window_s` (an episode busy in a slow tool call does
not hold the others back for longer than that), or when `max_batch` turns are pending.

Batches run on one worker thread per sampler, never on the event loop and never on its default executor
(which has fewer threads than a step has episodes on a small machine). Within a batch the turns are ordered
by their token ids, so which turn gets which random numbers does not depend on thread timing.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from dataclasses import dataclass, field

Turn = tuple[list[int], list[float]]
"""A sampled turn: the new token ids (ending with EOS unless the budget cut it) and their log-probabilities
under the sampling distribution (empty when the backend was asked for none)."""

BatchGenerate = Callable[[list[list[int]], list[int]], list[Turn]]
"""(contexts, token budgets) -> one `Turn` per context, in order; each stops at its own EOS or budget."""


@dataclass
class BatchStats:
    batches: int = 0
    turns: int = 0
    largest: int = 0

    @property
    def mean_batch(self) -> float:
        return self.turns / self.batches if self.batches else 0.0


@dataclass
class _Pending:
    ids: list[int]
    budget: int
    future: Future[Turn]
    since: float = field(default_factory=time.monotonic)


class BatchedSampler:
    """A `Sampler` (call it with `(ids, budget)` from any thread) whose concurrent calls share batches; async
    callers `await sampler.asample(ids, budget)` without holding a thread."""

    def __init__(self, generate: BatchGenerate, *, window_s: float = 0.05, max_batch: int = 64, idle_s: float = 2.0) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError("max_batch must be >= 1 and window_s >= 0")
        self.generate = generate
        self.window_s = window_s
        self.max_batch = max_batch
        self.idle_s = idle_s
        self.stats = BatchStats()
        self._cond = threading.Condition()
        self._pending: list[_Pending] = []
        self._live = 0
        self._worker: threading.Thread | None = None

    @contextmanager
    def episode(self) -> Iterator[None]:
        """Count an episode as live while it plays: a batch waits (up to the window) for every live episode."""
        with self._cond:
            self._live += 1
        try:
            yield
        finally:
            with self._cond:
                self._live -= 1
                self._cond.notify_all()

    def submit(self, ids: list[int], max_tokens: int) -> Future[Turn]:
        if max_tokens < 1:
            raise ValueError(f"a turn needs a token budget of at least 1, not {max_tokens}")
        future: Future[Turn] = Future()
        with self._cond:
            self._pending.append(_Pending(list(ids), int(max_tokens), future))
            if self._worker is None:
                self._worker = threading.Thread(target=self._serve, name="batched-sampler", daemon=True)
                self._worker.start()
            self._cond.notify_all()
        return future

    def __call__(self, ids: list[int], max_tokens: int) -> Turn:
        return self.submit(ids, max_tokens).result()

    async def asample(self, ids: list[int], max_tokens: int) -> Turn:
        return await asyncio.wrap_future(self.submit(ids, max_tokens))

    def _ready(self) -> bool:
        """Every live episode is waiting (at least one turn when none announced itself), or the batch is full."""
        return len(self._pending) >= min(max(self._live, 1), self.max_batch)

    def _serve(self) -> None:
        while True:
            with self._cond:
                while not self._pending:
                    if not self._cond.wait(self.idle_s) and not self._pending:
                        self._worker = None  # idle: the thread ends, the next turn starts another
                        return
                deadline = self._pending[0].since + self.window_s
                while not self._ready() and (left := deadline - time.monotonic()) > 0:
                    self._cond.wait(left)
                batch = sorted(self._pending[: self.max_batch], key=lambda p: p.ids)
                del self._pending[: self.max_batch]
            self._run(batch)

    def _run(self, batch: list[_Pending]) -> None:
        try:
            turns = self.generate([p.ids for p in batch], [p.budget for p in batch])
            if len(turns) != len(batch):
                raise RuntimeError(f"the generation backend returned {len(turns)} turns for {len(batch)} contexts")
        except BaseException as exc:  # every waiting episode learns why; the worker keeps serving
            for p in batch:
                p.future.set_exception(exc)
            return
        self.stats.batches += 1
        self.stats.turns += len(batch)
        self.stats.largest = max(self.stats.largest, len(batch))
        for p, turn in zip(batch, turns):
            p.future.set_result(turn)
