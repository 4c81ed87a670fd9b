"""The sync → async bridge: early stop reaches the producer, contextvars cross, errors propagate."""

from __future__ import annotations

import asyncio
import contextvars
import threading

import pytest

from ibllm_agent.sync_bridge import iterate_in_thread, run_in_thread

_REQUEST = contextvars.ContextVar("_REQUEST", default="unset")


class Producer:
    """A blocking generator that counts what it produced and records that its ``finally`` ran."""

    def __init__(self, n: int = 1000):
        self.n = n
        self.produced = 0
        self.closed = threading.Event()
        self.thread: str | None = None

    def __call__(self):
        self.thread = threading.current_thread().name
        try:
            for i in range(self.n):
                self.produced += 1
                yield i
        finally:
            self.closed.set()


def test_break_after_first_item_stops_and_closes_the_producer():
    prod = Producer()

    async def main():
        async for item in iterate_in_thread(prod, buffer=1):
            assert item == 0
            break
        # ``break`` leaves closing the async generator to the loop; the producer's finally must run.
        assert await asyncio.to_thread(prod.closed.wait, 5)

    asyncio.run(main())
    # buffer=1: the item handed out plus at most the one the producer computed ahead.
    assert prod.produced <= 2
    assert prod.thread != threading.current_thread().name


def test_aclose_returns_only_after_the_producer_stopped():
    prod = Producer()

    async def main():
        items = iterate_in_thread(prod, buffer=2)
        assert await anext(items) == 0
        await items.aclose()
        assert prod.closed.is_set()  # the bridge awaited the worker
        produced = prod.produced
        await asyncio.sleep(0.05)
        assert prod.produced == produced  # nothing more after the stop

    asyncio.run(main())
    assert prod.produced <= 3


def test_cancelling_the_consumer_stops_a_waiting_producer():
    started, release, closed = threading.Event(), threading.Event(), threading.Event()
    produced = []

    def slow():
        try:
            started.set()
            while True:
                release.wait(5)  # a slow model step
                produced.append(1)
                yield len(produced)
        finally:
            closed.set()

    async def consume():
        async for _ in iterate_in_thread(slow):
            pass

    async def main():
        task = asyncio.create_task(consume())
        await asyncio.to_thread(started.wait, 5)
        task.cancel()
        await asyncio.sleep(0.05)  # the cancellation reaches the consumer, which stops the bridge
        release.set()  # the step in progress finishes; the producer must stop at its item
        with pytest.raises(asyncio.CancelledError):
            await task
        assert closed.is_set()

    asyncio.run(main())
    assert len(produced) == 1


def test_contextvars_reach_the_producer():
    seen = []

    def gen():
        seen.append(_REQUEST.get())
        yield _REQUEST.get()

    async def main():
        _REQUEST.set("request-42")
        items = [x async for x in iterate_in_thread(gen)]
        one = await run_in_thread(_REQUEST.get)
        return items, one

    items, one = asyncio.run(main())
    assert seen == ["request-42"] and items == ["request-42"] and one == "request-42"


def test_producer_exceptions_propagate_after_the_items_before_them():
    def gen():
        yield 1
        raise KeyError("boom")

    async def main():
        got = []
        with pytest.raises(KeyError, match="boom"):
            async for x in iterate_in_thread(gen):
                got.append(x)
        return got

    assert asyncio.run(main()) == [1]

    def fail():
        raise ValueError("bad call")

    with pytest.raises(ValueError, match="bad call"):
        asyncio.run(run_in_thread(fail))


def test_opening_the_iterator_runs_in_the_worker_and_its_errors_propagate():
    def open_iter():
        raise RuntimeError("cannot open")

    async def main():
        return [x async for x in iterate_in_thread(open_iter)]

    with pytest.raises(RuntimeError, match="cannot open"):
        asyncio.run(main())


def test_the_loop_keeps_running_while_the_producer_blocks():
    gate = threading.Event()

    def gen():
        gate.wait(5)
        yield "late"

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while not gate.is_set():
                ticks += 1
                await asyncio.sleep(0.01)
                if ticks == 5:
                    gate.set()

        t = asyncio.create_task(ticker())
        items = [x async for x in iterate_in_thread(gen)]
        await t
        return items, ticks

    items, ticks = asyncio.run(main())
    assert items == ["late"] and ticks >= 5


def test_buffer_must_be_positive():
    async def main():
        return [x async for x in iterate_in_thread(lambda: iter([1]), buffer=0)]

    with pytest.raises(ValueError, match="buffer"):
        asyncio.run(main())
