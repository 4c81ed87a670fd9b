"""Agent limits of issue 16: hung tools, huge observations, odd paths from the model, empty and
quoted arguments, one turn per thread (also across processes), foreign memory files, bad devices."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from agent_support import answer, assert_consistent, last_observation, make_image, tool_step
from langchain_core.tools import tool

from ibllm_agent.agent import build_agent
from ibllm_agent.agent.limits import AgentLimits
from ibllm_agent.agent.memory import open_memory
from ibllm_agent.errors import ConfigError, MemoryURLError, ThreadBusyError, ToolArgumentError
from ibllm_agent.protocol import map_arguments, parse_step
from ibllm_agent.testing import ScriptedGenerator

RELEASE = threading.Event()


@tool
def hang(text: str) -> str:
    """Never returns until the test releases it."""
    RELEASE.wait(60)
    return "late"


@tool
def flood(text: str) -> str:
    """Returns a huge text."""
    return "x" * 200_000


@tool
def look(image_path: str) -> str:
    """Reads a workspace image."""
    return f"read {Path(image_path).name}"


def _agent(gen, tmp_path, tools, **kw):
    kw.setdefault("memory", f"sqlite:///{tmp_path / 'mem.sqlite'}")
    return build_agent(gen, tools=tools, workspace=tmp_path / "ws", **kw)


def test_hung_tool_times_out_and_the_turn_goes_on(tmp_path):
    RELEASE.clear()
    gen = ScriptedGenerator([tool_step("hang", "now"), lambda p, m, s: answer(f"saw: {last_observation(p)}")])
    agent = _agent(gen, tmp_path, [hang], limits=AgentLimits(tool_timeout_s=0.5))
    try:
        start = time.monotonic()
        r = agent.send("t", "go")
        elapsed = time.monotonic() - start
    finally:
        RELEASE.set()
    (call,) = r.tool_calls
    assert call.status == "error" and "did not finish within 0.5 s" in call.output
    assert r.answer.startswith("saw: Error: the tool hang did not finish") and r.stop_reason == "answer"
    assert elapsed < 10
    assert_consistent(agent.history("t"))


@pytest.mark.asyncio
async def test_hung_tool_times_out_in_async_turns(tmp_path):
    RELEASE.clear()
    gen = ScriptedGenerator([tool_step("hang", "now"), lambda p, m, s: answer(last_observation(p))])
    agent = _agent(gen, tmp_path, [hang], limits=AgentLimits(tool_timeout_s=0.5), memory="memory")
    try:
        r = await agent.graph.ainvoke({"messages": [("user", "go")]}, agent.config("a"))
    finally:
        RELEASE.set()
    tool_messages = [m for m in r["messages"] if m.type == "tool"]
    assert tool_messages[0].status == "error" and "did not finish within 0.5 s" in tool_messages[0].content


def test_huge_observation_is_cut_with_a_note(tmp_path):
    gen = ScriptedGenerator([tool_step("flood", "go"), answer("done")])
    agent = _agent(gen, tmp_path, [flood], limits=AgentLimits(max_observation_chars=1000))
    r = agent.send("t", "go")
    (call,) = r.tool_calls
    assert len(call.output) <= 1000 and call.output.startswith("x" * 900)
    assert "[observation cut: 200000 characters" in call.output
    assert "observation cut" in gen.calls[1][0]


def test_observation_is_cut_further_to_fit_the_context(tmp_path):
    # A 400-token context: even the capped observation does not fit; the chat model cuts it more
    # rather than failing the turn with a context error.
    @tool
    def words(text: str) -> str:
        """Many words."""
        return " ".join(["word"] * 3000)

    gen = ScriptedGenerator([tool_step("words", "go"), answer("done")], context_length=400)
    agent = _agent(gen, tmp_path, [words], limits=AgentLimits(max_observation_chars=20000))
    from ibllm_agent.chat import ChatImageBindLLM

    assert isinstance(agent.chat_model, ChatImageBindLLM)
    r = agent.send("t", "go")
    assert r.answer == "done"
    second_prompt = gen.calls[1][0]
    assert gen.count_tokens(second_prompt) <= 400 and "observation cut" in second_prompt


@pytest.mark.parametrize("name", [
    "a" * 5000,                      # longer than any file system allows
    "image/" + "b" * 300 + ".png",   # one component longer than NAME_MAX
    "image/\x00evil.png",            # NUL byte
    "image/\udcff\udcfe.png",        # undecodable bytes (surrogate escapes)
    "image/\x1b[2Jclear.png",        # terminal escape
    "\"image/x.png'",                # unmatched quotes
    "'''",
])
def test_odd_paths_from_the_model_end_as_error_observations(tmp_path, name):
    img = make_image(tmp_path / "p.png")
    gen = ScriptedGenerator([tool_step("look", name), lambda p, m, s: answer(last_observation(p))])
    agent = _agent(gen, tmp_path, [look])
    r = agent.send("t", "look", [img])  # never raises
    (call,) = r.tool_calls
    assert call.status in ("error", "invalid"), call
    assert call.output.startswith("Error:") and len(call.output) < 2000
    assert "\x00" not in call.output and "\x1b" not in call.output
    assert_consistent(agent.history("t"))


def test_quotes_are_removed_symmetrically(tmp_path):
    img = make_image(tmp_path / "p.png")
    seen = []
    gen = ScriptedGenerator([lambda p, m, s: tool_step("look", f"'{_announced_name(p, seen)}'"), answer("ok")])
    agent = _agent(gen, tmp_path, [look])
    r = agent.send("t", "look", [img])
    assert r.tool_calls[0].status == "success" and r.tool_calls[0].output == f"read {Path(seen[0]).name}"
    assert parse_step("Action: look\nAction Input: \"a.png\"").action_input == "a.png"
    assert parse_step("Action: look\nAction Input: \"a.png").action_input == "\"a.png"
    spec = {"name": "t", "description": "", "parameters": {
        "type": "object", "properties": {"image_path": {"type": "string"}, "text": {"type": "string"}},
        "required": ["image_path", "text"]}}
    assert map_arguments("`a.png`, 'a cat'", spec) == {"image_path": "a.png", "text": "a cat"}
    assert map_arguments("\"a.png, it's", spec) == {"image_path": "\"a.png", "text": "it's"}


def _announced_name(prompt: str, seen: list) -> str:
    import re

    name = re.search(r"named (image/[0-9a-f]{8}\.png)", prompt).group(1)
    seen.append(name)
    return name


@pytest.mark.parametrize("raw", ["", "  ", "\"\"", "a.png, ", ", a cat"])
def test_empty_required_argument_is_an_invalid_call(raw):
    spec = {"name": "t", "description": "", "parameters": {
        "type": "object", "properties": {"image_path": {"type": "string"}, "text": {"type": "string"}},
        "required": ["image_path", "text"]}}
    with pytest.raises(ToolArgumentError):
        map_arguments(raw, spec)


def test_empty_required_argument_reaches_the_model_as_an_error(tmp_path):
    gen = ScriptedGenerator([tool_step("look", "\"\""), lambda p, m, s: answer(last_observation(p))])
    agent = _agent(gen, tmp_path, [look])
    r = agent.send("t", "look")
    assert r.tool_calls[0].status == "invalid" and "empty" in r.tool_calls[0].output


def test_second_turn_on_a_busy_thread_is_refused_clearly(tmp_path):
    RELEASE.clear()
    gen = ScriptedGenerator([tool_step("hang", "x"), answer("first done"), answer("second done")])
    agent = _agent(gen, tmp_path, [hang], limits=AgentLimits(turn_wait_s=0))
    results: list = []
    worker = threading.Thread(target=lambda: results.append(agent.send("t", "first")))
    worker.start()
    deadline = time.monotonic() + 20
    while not gen.calls and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        with pytest.raises(ThreadBusyError, match="busy"):
            agent.send("t", "second")
        assert agent.send("other", "second").answer == "first done"  # other threads are not blocked
    finally:
        RELEASE.set()
        worker.join(30)
    assert results[0].answer == "second done"
    humans = [m.content for m in agent.history("t") if m.type == "human"]
    assert humans == ["first"]


_TURN_SCRIPT = textwrap.dedent('''
    import sys, time
    from langchain_core.tools import tool
    from ibllm_agent.agent import build_agent
    from ibllm_agent.testing import ScriptedGenerator

    @tool
    def slow(text: str) -> str:
        """Takes a while."""
        time.sleep(1.5)
        return "slow " + text

    label, db, ws = sys.argv[1:4]
    step = "Thought: Do I need to use a tool? Yes\\nAction: slow\\nAction Input: " + label + "\\nObservation:"
    gen = ScriptedGenerator([step, "Thought: Do I need to use a tool? No\\nAI: answer " + label])
    with build_agent(gen, tools=[slow], memory="sqlite:///" + db, workspace=ws) as agent:
        print(agent.send("shared", "question " + label).answer, flush=True)
''')


@pytest.mark.slow  # two fresh interpreters importing LangChain: ~20 s on a shared CPU
def test_concurrent_turns_from_two_processes_are_serialised(tmp_path):
    script = tmp_path / "turn.py"
    script.write_text(_TURN_SCRIPT)
    db, ws = tmp_path / "mem.sqlite", tmp_path / "ws"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, str(script), label, str(db), str(ws)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for label in ("A", "B")]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sorted(o[0].strip() for o in outs) == ["answer A", "answer B"]
    with build_agent(ScriptedGenerator([]), tools=[], memory=f"sqlite:///{db}", workspace=ws) as agent:
        messages = agent.history("shared")
    kinds = [m.type for m in messages]
    assert kinds == ["human", "ai", "tool", "ai"] * 2  # both turns, whole, one after the other
    first = messages[0].content[-1]
    assert [m.content for m in messages[1:4]][1] == f"slow {first}"
    assert_consistent(messages)


def _foreign_db(path: Path) -> None:
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
    conn.execute("INSERT INTO users (name) VALUES ('ada')")
    conn.commit()
    conn.close()


def _damaged_db(path: Path) -> None:
    # One of our own databases with its pages overwritten: the header still says SQLite.
    with open_memory(f"sqlite:///{path}"):
        pass
    data = bytearray(path.read_bytes())
    data[100:] = b"\xff" * (len(data) - 100)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("make", "match"), [
    (lambda p: p.write_bytes(os.urandom(5000)), "not an SQLite database"),
    (lambda p: p.write_text("name,age\nada,36\n"), "not an SQLite database"),
    (_foreign_db, "belongs to another program"),
    (_damaged_db, "damaged|another program"),
])
def test_foreign_or_damaged_memory_files_are_left_byte_identical(tmp_path, make, match):
    path = tmp_path / "memory.sqlite"
    make(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    listing = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(MemoryURLError, match=match):
        open_memory(f"sqlite:///{path}")
    with pytest.raises(MemoryURLError, match=match):
        build_agent(ScriptedGenerator([]), tools=[], memory=f"sqlite:///{path}", workspace=tmp_path / "ws")
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "ws") == listing  # no -wal/-journal


def test_our_own_memory_file_still_opens(tmp_path):
    path = tmp_path / "memory.sqlite"
    with build_agent(ScriptedGenerator([answer("hi")]), tools=[], memory=f"sqlite:///{path}",
                     workspace=tmp_path / "ws") as agent:
        agent.send("t", "hello")
    with open_memory(f"sqlite:///{path}") as mem:
        assert [t.thread_id for t in mem.threads()] == ["t"]


def test_a_device_that_does_not_exist_is_a_start_up_error(tmp_path):
    with pytest.raises(ConfigError, match="cuda:99"):
        build_agent(ScriptedGenerator([]), tools=[], memory="memory", workspace=tmp_path, device="cuda:99")


def test_limits_are_validated():
    with pytest.raises(ConfigError):
        AgentLimits(tool_timeout_s=-1)
    with pytest.raises(ConfigError):
        AgentLimits(max_observation_chars=10)
