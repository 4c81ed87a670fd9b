"""``ibllm-agent demo``: the scripted session's plumbing, driven by a scripted generator that acts on
what the prompt shows (the trained demo model itself is exercised in tests/test_demo_model.py)."""

from __future__ import annotations

import re

import pytest

from ibllm_agent import protocol as P
from ibllm_agent.cli.demo import TURNS, run_demo
from ibllm_agent.testing import ScriptedGenerator

pytest.importorskip("cv2")


def _step(prompt: str, media, sampling) -> str:
    """Call the tool the request names the file for; after an observation, answer with it; a
    follow-up repeats the last AI line of the history."""
    body = prompt.split("New input: ")[-1]
    request, _, pad = body.partition("Let's think step by step.\n")
    if "Observation: " in pad:
        return f"{P.THOUGHT_NO}\nAI: Got: {pad.split('Observation: ')[-1].splitlines()[0]}"
    if "edges" in request:
        name = re.search(r"image/\S+\.png", request).group(0)
        return f"{P.THOUGHT_YES}\nAction: Edge Detection On Image\nAction Input: {name}"
    if "speaker" in request:
        name = re.search(r"audio/\S+\.wav", request).group(0)
        return f"{P.THOUGHT_YES}\nAction: Transcribe Speech From Audio\nAction Input: {name}"
    history = prompt.split("Previous conversation:")[1].split("New input:")[0]
    return f"{P.THOUGHT_NO}\nAI: {[ln for ln in history.splitlines() if ln.startswith('AI: ')][-1][4:]}"


def test_demo_session_runs_tools_reports_missing_weights_and_uses_memory(tmp_path, capsys):
    gen = ScriptedGenerator([_step], prompt_template="alpaca", repeat_last=True)
    first, second, third = run_demo(gen, tmp_path)
    out = capsys.readouterr().out
    # Turn 1: no Whisper weights here: the observation names the missing file and the command.
    (call,) = first.tool_calls
    assert call.name == "Transcribe Speech From Audio" and call.status == "error"
    assert "MissingWeightError" in call.output and "ibllm-agent download whisper" in first.answer
    # Turn 2: the weightless edge detector really ran and wrote an image into the thread workspace.
    (call,) = second.tool_calls
    assert call.name == "Edge Detection On Image" and call.status == "success"
    saved = call.output.strip()
    assert second.files == [saved] and list((tmp_path / "threads").rglob(saved.split("/")[-1]))
    assert second.answer == f"Got: {saved}"
    # Turn 3: answered from memory (the history the model saw holds turn 2's answer).
    assert third.tool_calls == [] and third.answer == second.answer
    assert f"AI: Got: {saved}" in gen.calls[-1][0]
    # Printed as a transcript: each request, the step, the observation, the answer.
    for text in ("Human: What does the speaker say in audio/", "Human: Detect the edges of image/",
                 "Action: Transcribe Speech From Audio", "Action: Edge Detection On Image",
                 f"Observation: {saved}", "AI: Got:", "Human: Remind me what you found."):
        assert text in out
    assert len(TURNS) == 3
