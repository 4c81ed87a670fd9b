"""Agent.astream_turn / asend over the shared sync → async bridge: a consumer that stops stops the
turn, the caller's contextvars reach the tools."""

from __future__ import annotations

import asyncio
import contextvars
import threading

from agent_support import answer, last_observation, tool_step

from ibllm_agent.agent import build_agent
from ibllm_agent.testing import ScriptedGenerator

_USER = contextvars.ContextVar("_USER", default="nobody")


def _blocking_tool(release: threading.Event, calls: list[str]):
    def slow(text: str) -> str:
        """Take a while, then echo the text."""
        calls.append(_USER.get())
        release.wait(10)
        return text

    return slow


async def _stop_while_the_tool_runs(stop, release: threading.Event, calls: list[str]) -> None:
    """Run ``stop()`` (a coroutine that ends the consumer) while the tool is running, let the tool
    finish once the stop has reached the bridge, and wait for the stop to complete."""
    while not calls:
        await asyncio.sleep(0.01)
    task = asyncio.create_task(stop())
    await asyncio.sleep(0.1)  # the consumer side has told the producer to stop
    release.set()
    await task


def test_astream_turn_stopped_early_stops_the_turn(tmp_path):
    release, calls = threading.Event(), []
    gen = ScriptedGenerator([tool_step("slow", "ping"), answer("fresh start")])
    agent = build_agent(gen, workspace=tmp_path / "ws", memory=f"sqlite:///{tmp_path / 'm.sqlite'}",
                        tools=[_blocking_tool(release, calls)])

    async def main():
        _USER.set("alice")
        events = agent.astream_turn("t", "ping it", stream_tokens=False)
        first = await anext(events)
        assert (first.kind, first.name) == ("tool_call", "slow")
        await _stop_while_the_tool_runs(events.aclose, release, calls)

    asyncio.run(main())
    assert calls == ["alice"]  # the caller's contextvars reached the tool in the worker thread
    assert len(gen.calls) == 1  # the model was not called again after the consumer stopped
    # The interrupted turn is repaired; the next turn runs normally.
    assert agent.send("t", "again").answer == "fresh start"
    agent.close()


def test_cancelling_asend_stops_the_turn(tmp_path):
    release, calls = threading.Event(), []
    gen = ScriptedGenerator([tool_step("slow", "ping"), answer("never")])
    agent = build_agent(gen, workspace=tmp_path / "ws", memory="memory", tools=[_blocking_tool(release, calls)])

    async def main():
        task = asyncio.create_task(agent.asend("t", "ping it"))

        async def cancel():
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                return "cancelled"
            return "finished"

        await _stop_while_the_tool_runs(cancel, release, calls)
        return task

    task = asyncio.run(main())
    assert task.cancelled()
    assert len(gen.calls) == 1 and gen.remaining == 1
    agent.close()


def test_astream_turn_streams_a_whole_turn(tmp_path):
    gen = ScriptedGenerator([tool_step("echo", "hi"), lambda p, m, s: answer(last_observation(p))])

    def echo(text: str) -> str:
        """Echo the text."""
        return text

    agent = build_agent(gen, workspace=tmp_path / "ws", memory="memory", tools=[echo])

    async def main():
        return [e async for e in agent.astream_turn("t", "say hi", stream_tokens=False)]

    events = asyncio.run(main())
    assert [e.kind for e in events] == ["tool_call", "tool_result", "done"]
    assert events[-1].result.answer == "hi"
    agent.close()
