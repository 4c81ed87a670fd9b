"""The `chat` prompt through a pseudo-terminal: escaping of model output, Ctrl-C at the prompt,
line history (Up arrow, kept across sessions), /history as streamed, /threads titles, /thread."""

from __future__ import annotations

import json
import os
import sys

import pexpect
import pytest
from agent_support import answer, install_fake_plugin, tool_step, use_plugin

from ibllm_agent.cli.terminal import printable

UP = "\x1b[A"


@pytest.fixture
def plugin_root(tmp_path, monkeypatch):
    root = install_fake_plugin(tmp_path / "plugins")
    use_plugin(monkeypatch, root)
    return root


def _chat(tmp_path, outputs, *extra):
    script = tmp_path / "outputs.json"
    script.write_text(json.dumps(outputs))
    return pexpect.spawn(
        sys.executable,
        ["-m", "ibllm_agent", "chat", "--model", f"scripted:{script}",
         "--memory", f"sqlite:///{tmp_path / 'mem.sqlite'}", "--workspace", str(tmp_path / "ws"), *extra],
        encoding="utf-8", timeout=60, dimensions=(40, 200), env={**os.environ, "TERM": "xterm"},
    )


def test_printable_escapes_controls_and_keeps_newlines():
    assert printable("a\rb\x1b[2Jc\td\ne\x00\x7f\u202e") == "a\\rb\\x1b[2Jc\td\ne\\x00\\x7f\\u202e"
    assert printable("plain text, ünïcode ✓") == "plain text, ünïcode ✓"


def test_model_output_cannot_rewrite_the_screen(tmp_path):
    child = _chat(tmp_path, ["Safe answer\rEVIL OVERWRITE\x1b[2J done"], "--no-tools", "--thread", "e1")
    try:
        child.expect_exact("you> ")
        child.sendline("hi")
        child.expect_exact("ai> Safe answer\\rEVIL OVERWRITE\\x1b[2J done")
        streamed = child.before + child.after
        child.expect_exact("you> ")
        child.sendline("/history")
        child.expect_exact("ai> Safe answer\\rEVIL OVERWRITE\\x1b[2J done")
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert "\x1b[2J" not in streamed and "answer\rEVIL" not in streamed
    assert child.exitstatus == 0


def test_ctrl_c_at_the_prompt_asks_then_leaves_cleanly(tmp_path):
    child = _chat(tmp_path, ["first answer"], "--no-tools", "--thread", "k1")
    try:
        child.expect_exact("you> ")
        child.sendintr()
        child.expect_exact("(Ctrl-C again, Ctrl-D or /quit leaves the chat)")
        child.expect_exact("you> ")
        child.sendline("still here?")  # the session goes on after one Ctrl-C
        child.expect_exact("ai> first answer")
        child.expect_exact("you> ")
        child.sendintr()
        child.expect_exact("Ctrl-C again")
        child.sendintr()
        child.expect_exact("bye")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0 and "Traceback" not in (child.before or "")


def test_up_arrow_recalls_the_last_line_and_history_survives_sessions(tmp_path):
    child = _chat(tmp_path, ["one", "two"], "--no-tools", "--thread", "h1")
    try:
        child.expect_exact("you> ")
        child.sendline("what is the weather")
        child.expect_exact("ai> one")
        child.expect_exact("you> ")
        child.send(UP + "\r")  # Up recalls "what is the weather", Enter sends it again
        child.expect_exact("ai> two")
        child.expect_exact("you> ")
        child.sendline("/history")
        child.expect_exact("ai> two")
        history = child.before
        child.expect_exact("you> ")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert history.count("you: what is the weather") == 2
    saved = (tmp_path / "ws" / ".chat_history").read_text()
    assert "what is the weather" in saved

    child = _chat(tmp_path, ["three"], "--no-tools", "--thread", "h2")
    try:
        child.expect_exact("you> ")
        # A new session recalls the saved lines, newest first: /quit, /history, the question.
        child.send(UP * 3 + "\r")
        child.expect_exact("ai> three")
        child.expect_exact("you> ")
        child.sendline("/thread")
        child.expect_exact("thread h2 (2 messages): what is the weather")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()


def test_history_shows_what_was_streamed_and_threads_have_titles(tmp_path, plugin_root):
    child = _chat(tmp_path, [tool_step("word_count", "one two three"), answer("Three words."),
                             answer("Hello again.")], "--tool", "word_count", "--thread", "a1")
    try:
        child.expect_exact("you> ")
        child.sendline("Count the words in one two three please")
        child.expect_exact("ai> Three words.")
        child.expect_exact("you> ")
        child.sendline("/history")
        child.expect_exact("ai> Three words.")
        history = child.before
        child.expect_exact("you> ")
        child.sendline("/thread b2")
        child.expect_exact("you> ")
        child.sendline("A second conversation about boats")
        child.expect_exact("ai> Hello again.")
        child.expect_exact("you> ")
        child.sendline("/threads")
        child.expect(r"\* b2 .*A second conversation about boats")
        child.expect(r"  a1 .*Count the words in one two three please")
        child.expect_exact("you> ")
        child.sendline("/thread")
        child.expect_exact("thread b2 (2 messages): A second conversation about boats")
        child.sendline("/quit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert "you: Count the words in one two three please" in history
    assert "[tool] word_count {'text': 'one two three'}" in history
    assert "[success] 3" in history
    assert "Thought:" not in history and "Action Input" not in history  # raw protocol text was not streamed
