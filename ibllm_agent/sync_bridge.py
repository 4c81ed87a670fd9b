"""The one sync → async bridge: blocking iterators (torch decoding, the synchronous agent graph) on
an asyncio event loop.

``iterate_in_thread(open_iter)`` runs ``open_iter()`` and its iteration in a worker thread of the
loop's default executor, inside a copy of the caller's ``contextvars`` context (LangChain callbacks
and tracing, request-scoped settings keep working in the worker). Items reach the consumer through an
asyncio queue; the producer runs at most ``buffer`` items ahead of the consumer.

When the consumer stops early — ``aclose()``, ``break`` (the async generator is then closed by the
loop), an exception or task cancellation — the producer is told to stop: it stops at its next item,
closes the underlying iterator in its own thread (a generator's ``finally`` runs there, so a model's
decoding loop or an agent turn ends) and the bridge awaits the worker before it returns, so no work
is left running behind the consumer's back. An exception raised by the producer is re-raised in the
consumer. ``run_in_thread(fn, ...)`` is the same bridge for one blocking call (a call in progress
cannot be interrupted; a cancelled caller waits for it to end).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import aclosing
from typing import Any, TypeVar

__all__ = ["iterate_in_thread", "run_in_thread"]

T = TypeVar("T")

_ITEM, _ERROR, _DONE = "item", "error", "done"


async def iterate_in_thread(open_iter: Callable[[], Iterable[T]], *, buffer: int = 16) -> AsyncIterator[T]:
    """Iterate ``open_iter()`` in a worker thread; yield its items on the event loop (see module doc)."""
    if buffer < 1:
        raise ValueError(f"buffer must be >= 1, got {buffer}")
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
    stop = threading.Event()  # set by the consumer: produce nothing more, close the iterator
    room = threading.Semaphore(buffer)  # items handed over that the consumer has not finished with

    def post(kind: str, value: Any = None) -> None:
        loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

    def produce() -> None:
        iterator = None
        try:
            iterator = iter(open_iter())
            while not stop.is_set():
                try:
                    item = next(iterator)
                except StopIteration:
                    break
                room.acquire()  # the consumer releases one slot per item taken, and one on stopping
                if stop.is_set():
                    break
                post(_ITEM, item)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
            post(_ERROR, exc)
        finally:
            try:
                close = getattr(iterator, "close", None)
                if close is not None:
                    close()  # runs the generator's finally here, in the thread that ran it
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                post(_ERROR, exc)
            post(_DONE)

    context = contextvars.copy_context()
    worker = loop.run_in_executor(None, context.run, produce)
    try:
        while True:
            kind, value = await queue.get()
            if kind == _DONE:
                break
            if kind == _ERROR:
                raise value
            yield value
            room.release()  # the consumer is done with it and asks for the next
    finally:
        stop.set()
        room.release()  # wake a producer waiting for room, so it sees ``stop``
        await worker


async def run_in_thread(fn: Callable[..., T], /, *args: Any, **kwargs: Any) -> T:
    """``fn(*args, **kwargs)`` in a worker thread with the caller's contextvars (see module doc)."""

    def one() -> Iterable[T]:
        yield fn(*args, **kwargs)

    async with aclosing(iterate_in_thread(one, buffer=1)) as results:
        async for result in results:
            return result
    raise AssertionError("unreachable: the worker yields one result or raises")  # pragma: no cover
