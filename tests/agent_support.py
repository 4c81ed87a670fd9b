"""Shared helpers for the agent tests (no tests here): a fake installed distribution whose entry
points provide tools, scripted model outputs, and small media files."""

from __future__ import annotations

import os
import re
import sys
import textwrap
from pathlib import Path

from PIL import Image

PLUGIN_MODULE = "fake_ibllm_tools"

# A module that an installed package could ship: GPT4Tools-named tools (exact names) backed by
# light stand-ins, one tool that blocks (for the SIGKILL test), one plain @tool, one that fails.
PLUGIN_SOURCE = textwrap.dedent(
    '''
    import os
    import pathlib
    import time

    from langchain_core.tools import tool
    from PIL import Image, ImageOps

    from ibllm_agent.agent import current_context, gpt4tools_tool

    CALLS = []


    def _caption(image_path):
        CALLS.append(("caption", image_path))
        with Image.open(image_path) as im:
            w, h = im.size
            r, g, b = im.convert("RGB").getpixel((0, 0))
        color = "red" if r > max(g, b) else "green" if g > max(r, b) else "blue"
        return f"a {color} picture of {w}x{h} pixels"


    def _edges(image_path):
        CALLS.append(("edges", image_path))
        name, path = current_context().workspace.new_file("image")
        ImageOps.invert(Image.open(image_path).convert("L")).convert("RGB").save(path, "PNG")
        return name


    def _block(text):
        pathlib.Path(os.environ["FAKE_TOOL_READY"]).write_text(text)
        time.sleep(120)
        return "never reached"


    def _broken(image_path, question):
        raise RuntimeError(f"detector exploded on {question!r}")


    def tools():
        return [
            gpt4tools_tool("Get Photo Description", _caption),
            gpt4tools_tool("Edge Detection On Image", _edges),
            gpt4tools_tool("Generate Image From User Input Text", _block),
            gpt4tools_tool("Answer Question About The Image", _broken),
        ]


    @tool
    def word_count(text: str) -> int:
        """Count the words in a text."""
        return len(text.split())
    '''
)


def install_fake_plugin(root: Path, extra_entry_points: str = "") -> Path:
    """Write a fake distribution (module + ``*.dist-info`` with entry points) under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    (root / f"{PLUGIN_MODULE}.py").write_text(PLUGIN_SOURCE, encoding="utf-8")
    info = root / "fake_ibllm_tools-0.1.dist-info"
    info.mkdir(exist_ok=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: fake-ibllm-tools\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[ibllm_agent.tools]\n"
        f"gpt4tools_fakes = {PLUGIN_MODULE}:tools\n"
        f"words = {PLUGIN_MODULE}:word_count\n" + extra_entry_points
    )
    return root


def use_plugin(monkeypatch, root: Path) -> None:
    """Put the fake distribution on sys.path (this process) and PYTHONPATH (subprocesses)."""
    from ibllm_agent.agent.registry import _reset_default_registry

    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
    sys.modules.pop(PLUGIN_MODULE, None)
    _reset_default_registry()
    monkeypatch.setattr("ibllm_agent.agent.registry._DEFAULT", None)


def make_image(path: Path, size=(320, 240), color=(220, 20, 20)) -> Path:
    Image.new("RGB", size, color).save(path)
    return path


NAME_RE = re.compile(r"image/[0-9a-f]{8}\.png")


def tool_step(name: str, arg: str) -> str:
    return f"Thought: Do I need to use a tool? Yes\nAction: {name}\nAction Input: {arg}\nObservation:"


def answer(text: str) -> str:
    return f"Thought: Do I need to use a tool? No\nAI: {text}"


def last_observation(prompt: str) -> str:
    return re.findall(r"Observation: (.*)", prompt)[-1].strip()


def announced(prompt: str) -> str:
    """The workspace name announced ("Provide an image named …") or mentioned in the new input."""
    m = re.search(r"Provide an image named (image/[0-9a-f]{8}\.png)", prompt)
    if m:
        return m.group(1)
    new_input = prompt.split("New input:")[-1]
    return NAME_RE.findall(new_input)[-1]


def assert_consistent(messages) -> None:
    """Every AIMessage tool call is answered by a ToolMessage right after it (before any human turn)."""
    pending: set[str] = set()
    for m in messages:
        if m.type == "human":
            assert not pending, f"tool calls {pending} unanswered before a new human message"
        elif m.type == "ai":
            assert not pending, f"tool calls {pending} unanswered before the next model step"
            # Invalid calls are answered too (with the error observation the model reads).
            pending = {c["id"] for c in [*m.tool_calls, *m.invalid_tool_calls]}
        elif m.type == "tool":
            assert m.tool_call_id in pending, f"ToolMessage for unknown call {m.tool_call_id}"
            pending.discard(m.tool_call_id)
    assert not pending, f"tool calls {pending} unanswered at the end"
