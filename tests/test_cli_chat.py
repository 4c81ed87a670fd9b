"""`ibllm-agent chat` through a pseudo-terminal, and `ibllm-agent run --json`."""

from __future__ import annotations

import json
import subprocess
import sys

import pexpect
import pytest
from agent_support import answer, install_fake_plugin, make_image, tool_step, use_plugin

from ibllm_agent.agent import build_agent
from ibllm_agent.testing import ScriptedGenerator


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    root = install_fake_plugin(tmp_path / "plugins")
    use_plugin(monkeypatch, root)
    return root


def _script(tmp_path, outputs):
    path = tmp_path / "outputs.json"
    path.write_text(json.dumps(outputs))
    return f"scripted:{path}"


def test_chat_repl_attach_ask_stream(tmp_path, plugin_root):
    img = make_image(tmp_path / "cat.png")
    model = _script(tmp_path, [
        tool_step("word_count", "one two three"),
        answer("There are 3 words, and I got your image."),
        answer("Second thread here."),
    ])
    memory = f"sqlite:///{tmp_path / 'mem.sqlite'}"
    child = pexpect.spawn(
        sys.executable,
        ["-m", "ibllm_agent", "chat", "--model", model, "--memory", memory, "--workspace", str(tmp_path / "ws"),
         "--thread", "c1", "--tool", "word_count"],
        encoding="utf-8", timeout=60, dimensions=(40, 200),
    )
    try:
        child.expect("thread c1")
        child.expect_exact("you> ")
        child.sendline("/tools")
        child.expect_exact("- word_count: Count the words in a text.")
        child.expect_exact("you> ")
        child.sendline(f"/attach {img}")
        child.expect(r"attached (image/[0-9a-f]{8}\.png) \(image\)")
        name = child.match.group(1)
        child.expect_exact("you> ")
        child.sendline("How many words in 'one two three'?")
        child.expect_exact("[tool] word_count {'text': 'one two three'}")
        child.expect_exact("[success] 3")
        child.expect_exact("ai> There are 3 words, and I got your image.")
        child.expect_exact("you> ")
        child.sendline("/history")
        child.expect_exact(f"you: How many words in 'one two three'? [{name}]")
        child.expect_exact("ai> There are 3 words, and I got your image.")
        child.expect_exact("you> ")
        child.sendline("/thread c2")
        child.expect_exact("thread c2 (0 messages)")
        child.sendline("hello")
        child.expect_exact("ai> Second thread here.")
        child.sendline("/threads")
        child.expect(r"\* c2 ")
        child.sendline("/reset")
        child.expect_exact("thread c2 reset")
        child.sendline("/bogus")
        child.expect_exact("unknown command /bogus")
        child.sendline("/attach /no/such/file.png")
        child.expect_exact("error: attachment not found: /no/such/file.png")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0

    # The conversation is in the SQLite memory and the image in c1's workspace.
    with build_agent(ScriptedGenerator([]), tools=[], memory=memory, workspace=tmp_path / "ws") as agent:
        assert [m.type for m in agent.history("c1")] == ["human", "ai", "tool", "ai"]
        assert agent.history("c2") == []
        assert agent.workspace.thread("c1").files() == [name]


def test_run_json_one_shot(tmp_path, plugin_root):
    img = make_image(tmp_path / "x.png", color=(0, 0, 230))
    model = _script(tmp_path, [
        tool_step("Get Photo Description", "x.png-unknown"),
        answer("I could not find that file."),
    ])
    proc = subprocess.run(
        [sys.executable, "-m", "ibllm_agent", "run", "Describe it", "--image", str(img), "--model", model,
         "--thread", "r1", "--memory", f"sqlite:///{tmp_path / 'm.sqlite'}", "--workspace", str(tmp_path / "ws"),
         "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["thread_id"] == "r1" and data["answer"] == "I could not find that file."
    (name,) = data["attachments"]
    (call,) = data["tool_calls"]
    assert call["name"] == "Get Photo Description" and call["status"] == "error"
    assert call["output"] == f"Error: file not found: x.png-unknown; known files: {name}"
    assert data["files"] == [] and data["stop_reason"] == "answer"
    assert (tmp_path / "ws" / "threads" / "r1" / name).is_file()
    assert data["workspace"] == str(tmp_path / "ws" / "threads" / "r1")


def test_run_json_unknown_tool_gets_an_error_observation_not_an_empty_answer(tmp_path, plugin_root):
    model = _script(tmp_path, [
        tool_step("Frobnicate The Image", "x.png"),
        answer("That tool does not exist; I can count words."),
    ])
    proc = subprocess.run(
        [sys.executable, "-m", "ibllm_agent", "run", "Frobnicate it", "--model", model, "--tool", "word_count",
         "--memory", "memory", "--workspace", str(tmp_path / "ws"), "--json"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    assert data["answer"] == "That tool does not exist; I can count words."
    (call,) = data["tool_calls"]
    assert call["name"] == "Frobnicate The Image" and call["status"] == "invalid"
    assert call["output"] == "Error: unknown tool 'Frobnicate The Image'; the bound tools are ['word_count']"


@pytest.mark.parametrize(
    "args,message",
    [
        (["--model", "scripted:/no/such.json"], "error: scripted model file not found: /no/such.json"),
        (["--model", "official"], "error: the official model is not installed"),
        (["--model", "tiny", "--memory", "redis://x"], "error: unsupported memory URL 'redis://x'"),
    ],
)
def test_run_bad_input_is_one_line_error(args, message):
    proc = subprocess.run([sys.executable, "-m", "ibllm_agent", "run", "hi", *args],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith(message) and "Traceback" not in proc.stderr
