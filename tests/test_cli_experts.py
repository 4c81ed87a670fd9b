"""`ibllm-agent run --experts`: Whisper from the weights dir puts (recognized text: …) into the turn."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

pytest.importorskip("whisper")


def _cli():
    from ibllm_agent.cli import _register_all, app

    _register_all()
    return app


def test_run_with_and_without_experts(tmp_path, monkeypatch):
    import torch
    from ibllm_agent.tools.speech import SpeechRecognizer
    from helpers import tone, write_wav

    from ibllm_agent.agent import build_agent
    from ibllm_agent.testing import ScriptedGenerator

    weights = tmp_path / "weights"
    (weights / "whisper").mkdir(parents=True)
    # an openai-whisper checkpoint of a tiny random model (8 tokens per window: half its text context)
    model = SpeechRecognizer.tiny_random(n_text_ctx=16).model
    torch.save({"dims": model.dims.__dict__, "model_state_dict": model.state_dict()}, weights / "whisper/tiny.pt")
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(weights))
    wav = write_wav(tmp_path / "speech.wav", tone(1.0))
    script = tmp_path / "out.json"
    script.write_text(json.dumps(["first", "second"]))
    memory = f"sqlite:///{tmp_path / 'mem.sqlite'}"
    common = ["--model", f"scripted:{script}", "--memory", memory, "--workspace", str(tmp_path / "ws"),
              "--no-tools", "--thread", "t1", "--json"]
    app = _cli()
    for flag in ("--experts", "--no-experts"):
        result = CliRunner().invoke(app, ["run", "what is said?", "--audio", str(wav), *common, flag])
        assert result.exit_code == 0, result.output
    with build_agent(ScriptedGenerator([]), tools=[], memory=memory, workspace=tmp_path / "ws") as agent:
        humans = [m for m in agent.history("t1") if m.type == "human"]
    contexts = [next(b for b in h.content if b.get("type") == "audio")["extras"].get("context") for h in humans]
    assert len(contexts[0]) == 1 and contexts[0][0].startswith("(recognized text: ")
    assert contexts[1] is None  # --no-experts (the default): nothing run, nothing stored

    help_text = CliRunner().invoke(app, ["run", "--help"]).output
    assert "--experts" in help_text and "--no-experts" in help_text


def test_tool_command_runs_the_speech_and_video_tools(tmp_path, monkeypatch):
    import torch
    from ibllm_agent.tools.speech import SpeechRecognizer
    from helpers import tone, write_wav
    from test_video_tool import SquareDetector, write_video

    from ibllm_agent.cli import tool as tool_cli

    weights = tmp_path / "weights"
    (weights / "whisper").mkdir(parents=True)
    model = SpeechRecognizer.tiny_random(n_text_ctx=16).model
    torch.save({"dims": model.dims.__dict__, "model_state_dict": model.state_dict()}, weights / "whisper/tiny.pt")
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(weights))
    ws = tmp_path / "ws"
    write_wav((ws / "audio").mkdir(parents=True) or ws / "audio/x.wav", tone(40.0))
    (ws / "video").mkdir()
    write_video(ws / "video/v.mp4")
    app = _cli()
    runner = CliRunner()
    # the real loader: size auto -> whisper/tiny.pt from the weights dir
    res = runner.invoke(app, ["tool", "Transcribe Speech From Audio", "audio/x.wav", "--workspace", str(ws)])
    assert res.exit_code == 0, res.output
    assert res.stdout.strip() and "Error" not in res.stdout
    res = runner.invoke(app, ["tool", "Transcribe Speech From Audio", "audio/x.wav, klingon", "--workspace", str(ws)])
    from ibllm_agent.errors import UnknownLanguageError  # (main() prints it as one line, exit 2)

    assert isinstance(res.exception, UnknownLanguageError) and "'klingon'" in str(res.exception)

    monkeypatch.setattr(tool_cli, "TOOL_LOADERS", {"groundingdino": lambda device: SquareDetector()})
    res = runner.invoke(app, ["tool", "Detect Objects In Video", "video/v.mp4, square, frame", "--workspace",
                              str(ws), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert data["observation"].startswith("Detected objects (5 frames sampled over 5.0 s): frame (in 5 frames")
    assert "square (in 3 frames" in data["observation"] and data["files"] == []
