"""Batching scheduler: concurrent requests share forward passes, each keeps its own output.

Requests (a final prompt text + its media + sampling) queue up; one worker thread takes the oldest
request and every other waiting request with the same sampling and cache settings (up to
``max_batch_size``, waiting at most ``max_wait_s`` for more) and decodes them as ONE left-padded
batch (``Generator.stream_batch``): one prefill ``[B, T]`` and one ``[B, 1]`` step per token for all
of them. While a batch runs, new requests wait; the next batch takes them all. Rows are isolated:
each has its own detokenizer, stop strings and finish, and left padding + masked positions make a
row's tokens what it would get alone (no generation state is shared between requests).

Why group by sampling settings: the engine applies one ``Sampling`` to a batch (one sampler, one
token budget). Requests with other settings wait for the next batch.

Cancellation: ``Ticket.cancel()`` (a client went away) drops the row's output at once; a batch stops
decoding when every row in it is cancelled (a single request stops at the next token). A cancelled
row inside a batch with live rows is computed to the end of that batch, unseen.

A model without ``engine.stream_batch`` (e.g. ``ScriptedGenerator`` in tests) is served one request
at a time through its ``stream``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from ibllm_agent.errors import IbllmError
from ibllm_agent.types import CacheSettings, Generation, Media, Sampling

log = logging.getLogger(__name__)

__all__ = ["BatchScheduler", "Lane", "LanePool", "QueueFullError", "SchedulerStats", "ServiceUnavailableError",
           "Ticket"]


class QueueFullError(IbllmError, RuntimeError):
    """The scheduler's queue is full: the server answers 429 (retry later)."""


class ServiceUnavailableError(IbllmError, RuntimeError):
    """The scheduler is shutting down or stopped: the server answers 503."""


class GenerationCancelled(IbllmError, RuntimeError):
    """The request was cancelled (its client disconnected) before it finished."""


@dataclass
class SchedulerStats:
    """Counters over the scheduler's life: ``batches`` run, ``rows`` decoded (requests), the largest
    batch, and ``batch_sizes`` (size → count)."""

    batches: int = 0
    rows: int = 0
    max_batch: int = 0
    cancelled: int = 0
    batch_sizes: dict[int, int] = field(default_factory=dict)

    def record(self, size: int) -> None:
        self.batches += 1
        self.rows += size
        self.max_batch = max(self.max_batch, size)
        self.batch_sizes[size] = self.batch_sizes.get(size, 0) + 1


_END = object()


class Ticket(Iterator[str]):
    """One submitted request: iterate for text deltas (blocking); ``.result`` (a ``Generation``) is set
    once exhausted; ``cancel()`` abandons it. Errors of the request are raised from iteration."""

    def __init__(self, prompt: str, media: list[Media], sampling: Sampling, cache: CacheSettings | None):
        self.prompt, self.media, self.sampling, self.cache = prompt, media, sampling, cache
        self.result: Generation | None = None
        self._out: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._done = False

    @property
    def key(self) -> tuple:
        """Requests with equal keys can share a batch."""
        return (self.sampling, self.cache)

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def cancel(self) -> None:
        self._cancelled.set()

    # -- worker side --------------------------------------------------------------------------------
    def _put(self, delta: str) -> None:
        if not self.cancelled:
            self._out.put(delta)

    def _finish(self, result: Generation | BaseException) -> None:
        self._out.put(result)
        self._out.put(_END)

    # -- consumer side ------------------------------------------------------------------------------
    def __iter__(self) -> Ticket:
        return self

    def __next__(self) -> str:
        while not self._done:
            item = self._out.get()
            if item is _END:
                self._done = True
                break
            if isinstance(item, BaseException):
                self._done = True
                raise item
            if isinstance(item, Generation):
                self.result = item
                continue
            return item
        raise StopIteration

    def close(self) -> None:
        """Stop consuming: cancels the request if it has not finished."""
        if not self._done:
            self.cancel()

    def wait(self) -> Generation:
        """Drain the deltas and return the ``Generation``."""
        for _ in self:
            pass
        assert self.result is not None
        return self.result


class BatchScheduler:
    """One worker thread batching ``submit``-ted requests onto ``model`` (see module docstring).

    Args:
        model: a ``TextGenerator``; batched when it is a ``MultimodalLLM`` (``ibllm_agent.load_model``)
            whose LM engine has ``stream_batch``.
        max_batch_size: rows per batch.
        max_wait_s: how long the worker waits for more requests before starting a batch that is not
            full (only when the queue holds fewer than ``max_batch_size`` same-key requests).
        max_queue: requests waiting (not yet decoding) before ``submit`` raises ``QueueFullError``.
        batching: False = one request at a time (the benchmark's baseline).
    """

    def __init__(self, model: Any, *, max_batch_size: int = 16, max_wait_s: float = 0.005,
                 max_queue: int = 64, batching: bool = True):
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError("max_batch_size and max_queue must be >= 1, max_wait_s >= 0")
        self.model = model
        self.batched = batching and _batch_stream_of(model) is not None
        self.max_batch_size = max_batch_size if self.batched else 1
        self.max_wait_s = max_wait_s if self.batched else 0.0
        self.max_queue = max_queue
        self.stats = SchedulerStats()
        self._pending: list[Ticket] = []
        self._cond = threading.Condition()
        self._closing = False
        self._running = 0  # rows in the batch being decoded
        self._worker = threading.Thread(target=self._loop, name="ibllm-batcher", daemon=True)
        self._worker.start()

    # -- TextGenerator facts the chat model reads -----------------------------------------------------
    @property
    def prompt_template(self) -> str:
        return self.model.prompt_template

    @property
    def context_length(self) -> int:
        return self.model.context_length

    def count_tokens(self, text: str) -> int:
        return self.model.count_tokens(text)

    # -- client side ----------------------------------------------------------------------------------
    def submit(self, prompt: str, media: Sequence[Media] | None = None, *, sampling: Sampling | None = None,
               cache: CacheSettings | None = None) -> Ticket:
        """Queue one request; raises ``QueueFullError`` / ``ServiceUnavailableError`` at once."""
        ticket = Ticket(prompt, list(media or []), sampling or Sampling(), cache)
        with self._cond:
            if self._closing:
                raise ServiceUnavailableError("the server is shutting down; no new generations are accepted")
            if len(self._pending) >= self.max_queue:
                raise QueueFullError(
                    f"the generation queue is full ({self.max_queue} requests waiting); retry later"
                )
            self._pending.append(ticket)
            self._cond.notify_all()
        return ticket

    @property
    def queued(self) -> int:
        return len(self._pending)

    @property
    def busy(self) -> int:
        """Requests waiting or decoding."""
        return len(self._pending) + self._running

    def close(self, timeout: float | None = None) -> None:
        """Stop accepting requests, finish the queued and running ones, stop the worker."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._worker.join(timeout)

    # -- worker ---------------------------------------------------------------------------------------
    def _take_batch(self) -> list[Ticket] | None:
        with self._cond:
            while not self._pending and not self._closing:
                self._cond.wait()
            if not self._pending:
                return None  # closing and drained
            first = self._pending[0]
            deadline = time.monotonic() + self.max_wait_s
            while not self._closing:
                same = sum(1 for t in self._pending if t.key == first.key)
                left = deadline - time.monotonic()
                if same >= self.max_batch_size or left <= 0:
                    break
                self._cond.wait(left)
            batch = [t for t in self._pending if t.key == first.key][: self.max_batch_size]
            self._pending = [t for t in self._pending if t not in batch]
            live = [t for t in batch if not t.cancelled]
            for t in batch:
                if t.cancelled:
                    self.stats.cancelled += 1
                    t._finish(GenerationCancelled("cancelled before it started"))
            self._running = len(live)
            return live

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            if not batch:
                continue
            try:
                self._run(batch)
            except BaseException as exc:
                log.exception("batch failed")
                for t in batch:
                    t._finish(exc)
            finally:
                with self._cond:
                    self._running = 0

    def _run(self, batch: list[Ticket]) -> None:
        if self.batched:
            try:
                stream = _batch_stream_of(self.model)(batch)  # type: ignore[misc]
            except Exception:
                if len(batch) == 1:
                    raise
                # One request's media may be bad: run them one by one so only that request fails.
                for t in batch:
                    try:
                        self._run([t])
                    except BaseException as exc:  # noqa: BLE001
                        t._finish(exc)
                return
            self.stats.record(len(batch))
            self._decode(batch, stream)
            return
        t = batch[0]
        self.stats.record(1)
        stream = self.model.stream(t.prompt, t.media, sampling=t.sampling, cache=t.cache)
        pieces: list[str] = []
        try:
            for piece in stream:
                if t.cancelled:
                    self.stats.cancelled += 1
                    t._finish(GenerationCancelled("the client went away"))
                    return
                pieces.append(piece)
                t._put(piece)
        finally:
            getattr(stream, "close", lambda: None)()
        text = "".join(pieces)
        result = getattr(stream, "result", None)
        if result is not None:
            gen = result.to_generation()
        else:  # a stream without a final result (test doubles): count, and infer a cut at the budget
            used = self.model.count_tokens(text)
            gen = Generation(text=text, prompt_tokens=self.model.count_tokens(t.prompt), completion_tokens=used,
                             finish_reason="length" if used >= t.sampling.max_new_tokens else "eos")
        t._finish(gen)

    def _decode(self, batch: list[Ticket], stream: Any) -> None:
        try:
            for events in stream:
                for row, delta in events:
                    batch[row]._put(delta)
                if all(t.cancelled for t in batch):
                    self.stats.cancelled += len(batch)
                    for t in batch:
                        t._finish(GenerationCancelled("the client went away"))
                    return
        finally:
            stream.close()
        for t, res in zip(batch, stream.results):
            t._finish(GenerationCancelled("the client went away") if t.cancelled else res.to_generation())


def _batch_stream_of(model: Any):
    """``tickets -> BatchStream`` for a ``MultimodalLLM`` (``ibllm_agent.load_model``): its media stage
    encodes the batch's media, and the LM's engine ``stream_batch`` runs with the batch's visual
    injection bound; None when the model cannot batch.

    The ONE place that reaches into the model.
    """
    llm = getattr(model, "llm", None)  # the ImageBindLLM behind the media stage
    engine = getattr(llm, "engine", None)
    if engine is None or not hasattr(engine, "stream_batch") or not hasattr(llm, "_step_for"):
        return None

    def open_batch(tickets: list[Ticket]):
        import torch

        prompts = [t.prompt for t in tickets]
        media = [list(t.media or []) for t in tickets] if any(t.media for t in tickets) else None
        with torch.no_grad():
            feats = model.encode(media, tickets[0].cache, batch_size=len(prompts))  # VisualFeatures [B, D]
            _, ids, injection = llm._prepare(prompts, feats, None)
            return engine.stream_batch(ids, llm._sampling(tickets[0].sampling, {}), step=llm._step_for(injection))

    return open_batch


class Lane:
    """A ``TextGenerator`` view of the scheduler for ONE request at a time.

    The chat model serialises calls per generator object (a lock keyed by the object), so every
    concurrent request needs its own generator object to reach the scheduler in parallel; lanes are
    those objects, reused from a ``LanePool`` (a fixed number, so nothing grows per request).
    ``cancel()`` cancels the lane's current generation (the request's client went away).
    """

    def __init__(self, scheduler: BatchScheduler):
        self.scheduler = scheduler
        self._current: Ticket | None = None
        self._cancelled = threading.Event()

    prompt_template = property(lambda self: self.scheduler.prompt_template)
    context_length = property(lambda self: self.scheduler.context_length)

    def count_tokens(self, text: str) -> int:
        return self.scheduler.count_tokens(text)

    def _submit(self, prompt, media, sampling, cache) -> Ticket:
        if self._cancelled.is_set():
            raise GenerationCancelled("the request was cancelled")
        self._current = self.scheduler.submit(prompt, media, sampling=sampling, cache=cache)
        if self._cancelled.is_set():
            self._current.cancel()
        return self._current

    def generate(self, prompt: str, media: Sequence[Media] | None = None, *, sampling: Sampling | None = None,
                 cache: CacheSettings | None = None) -> Generation:
        return self._submit(prompt, media, sampling, cache).wait()

    def stream(self, prompt: str, media: Sequence[Media] | None = None, *, sampling: Sampling | None = None,
               cache: CacheSettings | None = None) -> Ticket:
        return self._submit(prompt, media, sampling, cache)

    def cancel(self) -> None:
        self._cancelled.set()
        if self._current is not None:
            self._current.cancel()

    def _reset(self) -> None:
        self._current = None
        self._cancelled.clear()


class LanePool:
    """``size`` lanes over one scheduler; ``acquire()`` raises ``QueueFullError`` when all are busy."""

    def __init__(self, scheduler: BatchScheduler, size: int):
        self.scheduler = scheduler
        self._free: queue.SimpleQueue[Lane] = queue.SimpleQueue()
        for _ in range(size):
            self._free.put(Lane(scheduler))

    def acquire(self) -> Lane:
        try:
            lane = self._free.get_nowait()
        except queue.Empty:
            raise QueueFullError("too many requests in progress; retry later") from None
        lane._reset()
        return lane

    def release(self, lane: Lane) -> None:
        lane.cancel()  # whatever is still running for it is no longer wanted
        lane._reset()
        self._free.put(lane)
