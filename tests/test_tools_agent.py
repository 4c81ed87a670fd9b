"""Vision tools inside the agent and from the CLI: results and typed errors become observations the model
reads; the agent offers by default the tools that can run; ``ibllm-agent tool`` and ``info``."""

from __future__ import annotations

import json

import pytest
from agent_support import answer, tool_step
from ibllm_agent.tools import ToolOptions, default_tools
from ibllm_agent.tools.tiny import tiny_detector
from PIL import Image, ImageDraw

from ibllm_agent.agent import build_agent
from ibllm_agent.testing import ScriptedGenerator

OPTIONS = ToolOptions(box_threshold=0.0, text_threshold=0.0, progress=False)


@pytest.fixture(scope="module")
def detector():
    return tiny_detector()


def _photo(path):
    img = Image.new("RGB", (320, 240), (30, 30, 30))
    ImageDraw.Draw(img).rectangle((80, 60, 240, 180), fill=(230, 230, 230))
    img.save(path)
    return path


def _last_obs(prompt: str) -> str:
    return prompt.rsplit("Observation:", 1)[-1].split("\n")[0].strip()


def test_tool_results_and_errors_are_observations(tmp_path, detector):
    tools = default_tools(options=OPTIONS, loaders={"groundingdino": lambda device: detector})
    steps = [
        lambda p, m, s: tool_step("Detect the Give Object", f"{_name(p)}, "),  # empty object text
        lambda p, m, s: tool_step("Detect the Give Object", "image/00000000.png, cat"),  # missing file
        lambda p, m, s: tool_step("Segment the Image", _name(p)),  # SAM weights missing
        lambda p, m, s: tool_step("Detect the Give Object", f"{_name(p)}, a square"),
        lambda p, m, s: answer("done"),
    ]
    gen = ScriptedGenerator(steps)
    with build_agent(gen, tools=tools, memory="memory", workspace=tmp_path / "ws") as agent:
        r = agent.send("t1", "find the square", attachments=[_photo(tmp_path / "p.png")])
    assert r.answer == "done"
    calls = r.tool_calls
    # The empty object is an invalid call (the model reads why), the others reach their tools.
    assert [c.status for c in calls] == ["invalid", "error", "error", "success"]
    assert "required argument 'object' is empty" in calls[0].output
    assert "file not found: image/00000000.png" in calls[1].output
    assert "MissingWeightError" in calls[2].output and "ibllm-agent download sam_vit_h" in calls[2].output
    first, *boxes = calls[3].output.splitlines()
    assert r.files == [first] and boxes
    # The model read each error as its observation.
    assert "required argument 'object' is empty" in gen.calls[1][0].rsplit("Observation:", 1)[-1]


def _name(prompt: str) -> str:
    import re

    return re.findall(r"image/[0-9a-f]{8}\.png", prompt)[0]


def test_agent_offers_the_runnable_tools_by_default(tmp_path):
    gen = ScriptedGenerator([answer("hi")])
    with build_agent(gen, memory="memory", workspace=tmp_path / "ws") as agent:
        names = [t.name for t in agent.tools]
        agent.send("t", "hello")
    # No weights in the test weights dir: the weightless Canny tool and the two tools our own model
    # answers; nothing that would fail on a missing checkpoint.
    assert names == ["Get Photo Description", "Answer Question About The Image", "Edge Detection On Image"]
    assert "Edge Detection On Image" in gen.calls[0][0]


def test_tool_command_json(tmp_path, monkeypatch, detector):
    from typer.testing import CliRunner

    from ibllm_agent.cli import _register_all, app
    from ibllm_agent.cli import tool as tool_cli

    if not app.registered_commands:
        _register_all()
    monkeypatch.setattr(tool_cli, "TOOL_LOADERS", {"groundingdino": lambda device: detector})
    _photo(tmp_path / "photo.png")
    runner = CliRunner()
    res = runner.invoke(app, ["tool", "Edge Detection On Image", "photo.png", "--workspace", str(tmp_path), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["files"] == [data["observation"]] and data["observation"].startswith("image/")
    assert Image.open(tmp_path / data["observation"]).size == (320, 240)
    res = runner.invoke(app, ["tool", "Detect the Give Object", "photo.png, a big, white square",
                              "--workspace", str(tmp_path)])
    assert res.exit_code == 0, res.output
    first, *lines = res.stdout.strip().splitlines()
    assert (tmp_path / first).is_file() and all(line.startswith("a big, white square ") for line in lines)


def test_tool_command_errors_are_one_line(tmp_path, monkeypatch, capsys):
    import sys

    from ibllm_agent.cli import main

    _photo(tmp_path / "photo.png")
    monkeypatch.setattr(sys, "argv", ["ibllm-agent", "tool", "Detect the Give Object", "photo.png, cat",
                                      "--workspace", str(tmp_path)])
    with pytest.raises(SystemExit) as exit_:
        main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: missing weight 'groundingdino_swint_ogc'") and err.count("\n") == 1
    assert "ibllm-agent download groundingdino_swint_ogc" in err


def test_info_lists_tools_and_what_they_miss(tmp_path):
    from ibllm_agent.cli.info import collect
    from ibllm_agent.config import get_settings

    data = collect(get_settings(weights_dir=tmp_path))
    tools = {t["name"]: t for t in data["tools"]}
    assert tools["Edge Detection On Image"]["available"] is True
    assert tools["Detect the Give Object"]["missing"] == ["weights groundingdino_swint_ogc"]
    assert tools["Get Photo Description"]["available"] is True  # answered by the chat model itself


def test_tool_command_unknown_name_lists_the_tools(tmp_path):
    from typer.testing import CliRunner

    from ibllm_agent.cli import _register_all, app
    from ibllm_agent.errors import ToolRegistryError

    if not app.registered_commands:
        _register_all()
    res = CliRunner().invoke(app, ["tool", "Frobnicate", "x.png", "--workspace", str(tmp_path)])
    assert isinstance(res.exception, ToolRegistryError)
    assert "Edge Detection On Image" in str(res.exception) and "'Frobnicate'" in str(res.exception)
