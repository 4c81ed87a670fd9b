"""Threads survive processes: continue from a new process, and recover from a SIGKILL mid-tool."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest
from agent_support import (
    announced,
    answer,
    assert_consistent,
    install_fake_plugin,
    last_observation,
    make_image,
    tool_step,
    use_plugin,
)

from ibllm_agent.agent import build_agent
from ibllm_agent.agent.middleware import INTERRUPTED_ANSWER, INTERRUPTED_OBSERVATION
from ibllm_agent.testing import ScriptedGenerator


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    root = install_fake_plugin(tmp_path / "plugins")
    use_plugin(monkeypatch, root)
    return root


CONTINUE_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from ibllm_agent.agent import build_agent
    from ibllm_agent.testing import ScriptedGenerator

    memory, workspace, name = sys.argv[1:4]
    gen = ScriptedGenerator([
        "Thought: Do I need to use a tool? Yes\\nAction: Get Photo Description\\nAction Input: " + name
        + "\\nObservation:",
        lambda p, m, s: "Thought: Do I need to use a tool? No\\nAI: still " + p.rsplit("Observation: ", 1)[1].strip(),
    ])
    with build_agent(gen, memory=memory, workspace=workspace) as agent:
        r = agent.send("t1", "Describe " + name + " once more")
        print(json.dumps({
            "answer": r.answer,
            "prompt": gen.calls[0][0],
            "types": [m.type for m in agent.history("t1")],
            "threads": [t.thread_id for t in agent.threads()],
        }))
    """
)


def test_thread_continues_in_a_new_process(tmp_path, plugin_root):
    memory = f"sqlite:///{tmp_path / 'mem.sqlite'}"
    workspace = tmp_path / "ws"
    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Get Photo Description", announced(p)),
        lambda p, m, s: answer(f"It is {last_observation(p)}."),
        answer("Sure."),
    ])
    with build_agent(gen, memory=memory, workspace=workspace) as agent:
        name = agent.send("t1", "What is it?", [make_image(tmp_path / "a.png", color=(0, 200, 0))]).attachments[0]
        agent.send("t1", "Remember it.")

    proc = subprocess.run(
        [sys.executable, "-c", CONTINUE_SCRIPT, memory, str(workspace), name],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    # The new process read the old turns from SQLite (the last exchange is in its prompt) and the
    # image stored by the first process is still in the thread's workspace.
    assert "Previous conversation:\n\nHuman: Remember it.\nAI: Sure.\n" in out["prompt"]
    assert out["answer"] == "still a green picture of 512x384 pixels"
    assert out["types"] == ["human", "ai", "tool", "ai", "human", "ai", "human", "ai", "tool", "ai"]
    assert out["threads"] == ["t1"]


def _copy_db(src_dir, dst_dir):
    dst_dir.mkdir()
    for f in src_dir.glob("mem.sqlite*"):
        shutil.copy(f, dst_dir / f.name)
    return f"sqlite:///{dst_dir / 'mem.sqlite'}"


def test_sigkill_during_a_tool_call_leaves_a_resumable_thread(tmp_path, plugin_root):
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    memory = f"sqlite:///{db_dir / 'mem.sqlite'}"
    workspace = tmp_path / "ws"
    outputs = tmp_path / "outputs.json"
    outputs.write_text(json.dumps([tool_step("Generate Image From User Input Text", "a castle at night")]))
    ready = tmp_path / "ready"
    env = {**os.environ, "FAKE_TOOL_READY": str(ready)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ibllm_agent", "run", "Draw a castle at night", "--model", f"scripted:{outputs}",
         "--thread", "k", "--memory", memory, "--workspace", str(workspace), "--json"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 90
        while not ready.exists():
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "the tool never started"
            time.sleep(0.05)
        assert ready.read_text() == "a castle at night"
        os.kill(proc.pid, signal.SIGKILL)  # in the middle of the tool call
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL

    # 1) Agent.send on the crashed thread: repaired first, then the new turn runs normally.
    gen = ScriptedGenerator([answer("Yes, I am back.")])
    with build_agent(gen, memory=memory, workspace=workspace) as agent:
        crashed = agent.history("k")
        assert [m.type for m in crashed] == ["human", "ai"] and crashed[1].tool_calls  # dangling call
        r = agent.send("k", "Are you there?")
        assert r.answer == "Yes, I am back." and r.stop_reason == "answer"
        history = agent.history("k")
        assert [m.type for m in history] == ["human", "ai", "tool", "ai", "human", "ai"]
        assert_consistent(history)
        assert history[2].content == INTERRUPTED_OBSERVATION and history[2].status == "error"
        assert history[2].tool_call_id == crashed[1].tool_calls[0]["id"]
        assert history[3].content == INTERRUPTED_ANSWER
        assert f"Human: Draw a castle at night\nAI: {INTERRUPTED_ANSWER}" in gen.calls[0][0]


def test_sigkill_recovery_paths_resume_and_raw_invoke(tmp_path, plugin_root):
    # Build the crashed state once (a checkpoint with a dangling call), as the SIGKILL test leaves it.
    db_dir = tmp_path / "db"
    db_dir.mkdir()
    memory = f"sqlite:///{db_dir / 'mem.sqlite'}"
    gen = ScriptedGenerator([tool_step("Generate Image From User Input Text", "x")])
    with build_agent(gen, memory=memory, workspace=tmp_path / "ws") as agent:
        ai = _crash_after_model_step(agent, "k")
    assert ai.tool_calls

    # resume(): patches the thread without running the model.
    memory_a = _copy_db(db_dir, tmp_path / "a")
    with build_agent(ScriptedGenerator([]), memory=memory_a, workspace=tmp_path / "ws") as agent:
        msgs = agent.resume("k")
        assert [m.type for m in msgs] == ["human", "ai", "tool", "ai"]
        assert_consistent(msgs)
        assert agent.repair("k") == 0  # idempotent

    # The plain graph API (no Agent.send): the repair middleware patches before the turn.
    memory_b = _copy_db(db_dir, tmp_path / "b")
    gen = ScriptedGenerator([answer("fine")])
    with build_agent(gen, memory=memory_b, workspace=tmp_path / "ws") as agent:
        out = agent.invoke({"messages": [("user", "hello?")]}, agent.config("k"))
        assert [m.type for m in out["messages"]] == ["human", "ai", "tool", "ai", "human", "ai"]
        assert_consistent(out["messages"])
        assert out["messages"][-1].content == "fine"


def _crash_after_model_step(agent, thread_id):
    """Run the graph until just before the tools node, as a process killed mid-tool leaves it."""
    from langchain_core.messages import HumanMessage

    config = agent.config(thread_id)
    agent.graph.invoke({"messages": [HumanMessage("draw x")]}, config, interrupt_before=["tools"])
    state = agent.graph.get_state(config)
    assert state.next == ("tools",)
    return state.values["messages"][-1]


def test_repair_patches_calls_dangling_in_the_middle(tmp_path):
    from langchain_core.messages import AIMessage, HumanMessage, ToolMessage

    calls = [{"name": "a", "args": {}, "id": "c1", "type": "tool_call"},
             {"name": "b", "args": {}, "id": "c2", "type": "tool_call"}]
    old = [HumanMessage("q1", id="h1"), AIMessage("", tool_calls=calls, id="a1"),
           ToolMessage("ok", tool_call_id="c1", id="t1"), HumanMessage("q2", id="h2"), AIMessage("done", id="a2")]
    with build_agent(ScriptedGenerator([]), tools=[], memory="memory", workspace=tmp_path / "ws") as agent:
        agent.graph.update_state(agent.config("m"), {"messages": old}, as_node="model")
        assert agent.repair("m") == 1
        msgs = agent.history("m")
        assert [m.id for m in msgs][:3] == ["h1", "a1", "t1"]
        assert msgs[3].type == "tool" and msgs[3].tool_call_id == "c2" and msgs[3].status == "error"
        assert msgs[4].content == INTERRUPTED_ANSWER  # the cut turn is closed before the next human turn
        assert [m.id for m in msgs][5:] == ["h2", "a2"]
        assert_consistent(msgs)
        assert agent.repair("m") == 0


@pytest.mark.parametrize("how", ["close", "keyboard_interrupt"])
def test_turn_stopped_while_streaming_keeps_its_answer(tmp_path, how):
    # Ctrl-C in `chat` (or a consumer closing stream_turn) after the model step but before LangGraph
    # checkpointed it leaves the answer as pending writes; the next turn must not discard it.
    gen = ScriptedGenerator(["the first answer, streamed", "the second answer"], chunk_size=3)
    with build_agent(gen, tools=[], memory=f"sqlite:///{tmp_path / 'm.sqlite'}", workspace=tmp_path / "ws") as agent:
        it = agent.stream_turn("t", "q1")
        for ev in it:
            if ev.kind == "token":
                if how == "keyboard_interrupt":
                    with pytest.raises(KeyboardInterrupt):
                        it.throw(KeyboardInterrupt)
                break
        it.close()
        assert agent.send("t", "q2").answer == "the second answer"
        assert [(m.type, m.content) for m in agent.history("t")] == [
            ("human", "q1"), ("ai", "the first answer, streamed"), ("human", "q2"), ("ai", "the second answer"),
        ]
        # The model of turn 2 saw turn 1's exchange.
        assert "the first answer, streamed" in gen.calls[1][0]
