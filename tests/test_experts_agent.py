"""Expert context in the agent: lines before the instruction, once per file, cached by content hash
across turns and across processes (stored with the thread); per-call / per-agent switches; the
speech tool inside the agent (artifact, error observations)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from agent_support import answer, tool_step
from helpers import tone, write_wav

from ibllm_agent.agent import build_agent
from ibllm_agent.agent.experts import FINDINGS_FILE, AgentExperts
from ibllm_agent.errors import ConfigError
from ibllm_agent.experts import FindingsStore, FunctionExpert, content_hash
from ibllm_agent.testing import ScriptedGenerator

LINE = "(recognized text: turn left at the corner)"


class Counting:
    """A speech expert that counts its runs."""

    name, modalities, key = "recognized text", ("audio",), "test_asr"

    def __init__(self):
        self.runs = 0

    def __call__(self, media):
        self.runs += 1
        return "turn left at the corner"


def _agent(gen, tmp_path, **kw):
    kw.setdefault("memory", f"sqlite:///{tmp_path / 'mem.sqlite'}")
    kw.setdefault("tools", [])
    return build_agent(gen, workspace=tmp_path / "ws", **kw)


@pytest.fixture
def wav(tmp_path) -> Path:
    return write_wav(tmp_path / "speech.wav", tone(1.0))


def test_line_before_the_instruction_once_per_file_across_steps_and_turns(tmp_path, wav):
    from langchain_core.tools import tool

    @tool("Get Photo Description")
    def caption(image_path: str) -> str:
        """caption"""
        return "a photo"

    expert = Counting()
    gen = ScriptedGenerator([tool_step("Get Photo Description", "image/x.png"), answer("ok"), answer("again")])
    with _agent(gen, tmp_path, tools=[caption], experts=[expert]) as agent:
        r = agent.send("t1", "what is said?", [(wav, "audio")])
        assert r.answer == "ok" and expert.runs == 1
        for prompt, _, _ in gen.calls[:2]:  # both model steps of the turn
            assert prompt.count(LINE) == 1
            assert f"New input: {LINE}\nwhat is said?\n" in prompt  # before the instruction
        agent.send("t1", "and then?")
        assert gen.calls[2][0].count(LINE) <= 1 and expert.runs == 1
        # the finding is stored with the thread: in the message and in the thread's findings file
        human = next(m for m in agent.history("t1") if m.type == "human")
        block = next(b for b in human.content if b.get("type") == "audio")
        assert block["extras"]["context"] == [LINE]
        store = FindingsStore(agent.workspace.thread("t1").root / FINDINGS_FILE)
        assert store.get(f"test_asr|audio|{content_hash(wav)}") == (True, "turn left at the corner")
        assert FINDINGS_FILE not in agent.workspace.thread("t1").files()  # not a file the model sees


def test_same_content_is_not_recomputed_and_per_call_switch(tmp_path, wav):
    expert = Counting()
    gen = ScriptedGenerator(["a", "b", "c"])  # no tools: the plain template
    copy = tmp_path / "copy.wav"
    copy.write_bytes(wav.read_bytes())
    with _agent(gen, tmp_path, experts=[expert]) as agent:
        agent.send("t1", "first", [(wav, "audio")])
        agent.send("t1", "same sound, other name", [(copy, "audio")])
        assert expert.runs == 1 and LINE in gen.calls[1][0]
        agent.send("t1", "no experts now", [(wav, "audio")], experts=False)
        assert expert.runs == 1
        instruction = gen.calls[2][0].split("\n\n")[0]
        assert instruction == "no experts now"


def test_agent_without_experts_and_bad_setting(tmp_path, wav):
    gen = ScriptedGenerator([answer("a")])
    with _agent(gen, tmp_path) as agent:
        assert not agent.experts.enabled
        agent.send("t1", "hi", [(wav, "audio")])
        assert "recognized text" not in gen.calls[0][0]
        human = agent.history("t1")[0]
        assert all("context" not in (b.get("extras") or {}) for b in human.content if isinstance(b, dict))
    with pytest.raises(ConfigError, match="experts must be"):
        _agent(ScriptedGenerator([]), tmp_path, experts="yes")
    with pytest.raises(ConfigError, match="is not an expert"):
        AgentExperts([object()], pool=None)


def test_a_failing_expert_adds_no_line_and_does_not_fail_the_turn(tmp_path, wav):
    def boom(media):
        raise RuntimeError("asr down")

    gen = ScriptedGenerator(["fine"])
    with _agent(gen, tmp_path, experts=[FunctionExpert("recognized text", ("audio",), boom)]) as agent:
        assert agent.send("t1", "hi", [(wav, "audio")]).answer == "fine"
        assert "recognized text" not in gen.calls[0][0]


_SCRIPT = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from ibllm_agent.agent import build_agent
    from ibllm_agent.testing import ScriptedGenerator

    root, wav, text = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    counter = root / "runs.txt"

    class Counting:
        name, modalities, key = "recognized text", ("audio",), "test_asr"
        def __call__(self, media):
            counter.write_text(str(int(counter.read_text() or 0) + 1) if counter.exists() else "1")
            return "turn left at the corner"

    gen = ScriptedGenerator(["Thought: Do I need to use a tool? No\\nAI: ok"])
    with build_agent(gen, tools=[], memory=f"sqlite:///{root / 'mem.sqlite'}", workspace=root / "ws",
                     experts=[Counting()]) as agent:
        agent.send("t1", text, [(wav, "audio")] if wav != "-" else [])
    print(json.dumps({"prompt": gen.calls[0][0]}))
''')


def test_a_fresh_agent_on_the_same_workspace_reuses_the_findings(tmp_path, wav):
    first = Counting()
    with _agent(ScriptedGenerator(["a"]), tmp_path, experts=[first]) as agent:
        agent.send("t1", "what is said?", [(wav, "audio")])
    assert first.runs == 1
    again, gen = Counting(), ScriptedGenerator(["b", "c"])
    copy = tmp_path / "again.wav"
    copy.write_bytes(wav.read_bytes())
    with _agent(gen, tmp_path, experts=[again]) as agent:  # new chat model, new agent, same thread
        agent.send("t1", "once more", [(copy, "audio")])
        assert again.runs == 0 and gen.calls[0][0].startswith(f"{LINE}\nonce more")
        agent.send("t2", "another thread", [(copy, "audio")])  # findings are kept per thread
        assert again.runs == 1


@pytest.mark.slow
def test_cache_survives_a_process_restart(tmp_path, wav):
    script = tmp_path / "turn.py"
    script.write_text(_SCRIPT)

    def turn(audio: str, text: str) -> str:
        out = subprocess.run([sys.executable, str(script), str(tmp_path), audio, text],
                             capture_output=True, text=True, timeout=120, check=False)
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout.strip().splitlines()[-1])["prompt"]

    first = turn(str(wav), "what is said?")
    assert first.count(LINE) == 1 and (tmp_path / "runs.txt").read_text() == "1"
    copy = tmp_path / "again.wav"
    copy.write_bytes(wav.read_bytes())
    second = turn(str(copy), "say it again")  # a new process, the same content
    assert LINE in second and (tmp_path / "runs.txt").read_text() == "1"


def test_speech_tool_in_the_agent_artifact_and_error_observations(tmp_path, wav):
    from ibllm_agent.tools.speech import SpeechRecognizer, SpeechSettings, speech_tool

    rec = SpeechRecognizer.tiny_random(SpeechSettings(sample_len=4))
    tool = speech_tool(loader=lambda device: rec, progress=False)
    assert tool.name == "Transcribe Speech From Audio"
    assert tool.response_format == "content_and_artifact"

    seen: dict[str, str] = {}

    def step_with_name(template):
        def f(prompt, media, sampling):
            import re

            found = re.search(r"(audio/[0-9a-f]{8}\.wav)", prompt)
            name = seen.setdefault("name", found.group(1) if found else "")
            return tool_step("Transcribe Speech From Audio", template.format(name=name))
        return f

    gen = ScriptedGenerator([step_with_name("{name}"), answer("done"), step_with_name("{name}, klingon"),
                             answer("bad language"), step_with_name("audio/nothere.wav"), answer("gone")])
    with _agent(gen, tmp_path, tools=[tool]) as agent:
        r = agent.send("t1", "transcribe it", [(wav, "audio")])
        (call,) = r.tool_calls
        assert call.status == "success" and call.args == {"audio_path": r.attachments[0]}
        tool_msg = [m for m in agent.history("t1") if m.type == "tool"][-1]
        art = tool_msg.artifact
        assert art["language"] in ("en",) or len(art["language"]) == 2
        assert art["windows"] == 1 and art["duration"] == pytest.approx(1.0)
        assert all({"start", "end", "text"} <= set(seg) for seg in art["segments"])
        r2 = agent.send("t1", "again in klingon")
        assert r2.tool_calls[0].status == "error" and "UnknownLanguageError" in r2.tool_calls[0].output
        r3 = agent.send("t1", "a missing file")
        assert r3.tool_calls[0].status == "error" and "not found" in r3.tool_calls[0].output


def test_missing_whisper_weights_are_an_error_observation(tmp_path, wav):
    from ibllm_agent.tools.speech import speech_tool

    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Transcribe Speech From Audio", __import__("re").search(r"audio/\w+\.wav", p).group(0)),
        answer("no weights"),
    ])
    with _agent(gen, tmp_path, tools=[speech_tool(progress=False)]) as agent:
        r = agent.send("t1", "transcribe", [(wav, "audio")])
        (call,) = r.tool_calls
        assert call.status == "error"
        assert "MissingWeightError" in call.output and "ibllm-agent download whisper_tiny" in call.output


def test_empty_audio_gives_an_empty_transcript_observation(tmp_path):
    from ibllm_agent.tools.speech import SpeechRecognizer, SpeechSettings, speech_tool

    rec = SpeechRecognizer.tiny_random(SpeechSettings(sample_len=4))
    silent = write_wav(tmp_path / "silent.wav", np.zeros(16_000, np.float32))
    gen = ScriptedGenerator([
        lambda p, m, s: tool_step("Transcribe Speech From Audio", __import__("re").search(r"audio/\w+\.wav", p).group(0)),
        answer("quiet"),
    ])
    with _agent(gen, tmp_path, tools=[speech_tool(loader=lambda d: rec, progress=False)]) as agent:
        r = agent.send("t1", "transcribe", [(silent, "audio")])
        assert r.tool_calls[0].status == "success"
        assert r.tool_calls[0].output == "No speech was recognized in the audio."


def test_default_experts_use_the_model_pool(tmp_path, wav):
    from ibllm_agent.tools.speech import SpeechRecognizer, SpeechSettings
    from ibllm_agent.tools.video import DETECTOR_KEY
    from test_video_tool import SquareDetector, write_video

    from ibllm_agent.agent.models import ModelPool

    pool = ModelPool(device="cpu")
    loads: list[str] = []
    pool.register("whisper", lambda d: loads.append("asr") or SpeechRecognizer.tiny_random(SpeechSettings(sample_len=4)))
    pool.register(DETECTOR_KEY, lambda d: loads.append("det") or SquareDetector())
    video = write_video(tmp_path / "v.mp4")
    gen = ScriptedGenerator(["ok"])
    with _agent(gen, tmp_path, pool=pool, experts=True) as agent:
        assert [e.name for e in agent.experts.experts] == ["recognized text", "detected object classes"]
        agent.send("t1", "what happens?", [(wav, "audio"), (video, "video")])
    prompt = gen.calls[0][0]
    # the random Whisper says something; the detector finds nothing of the default vocabulary
    assert prompt.startswith("(recognized text: ") and prompt.count("(recognized text: ") == 1
    assert "detected object classes" not in prompt and sorted(loads) == ["asr", "det"]


def test_async_send_takes_the_per_turn_switch(tmp_path, wav):
    import asyncio

    expert = Counting()
    gen = ScriptedGenerator(["a", "b"])
    with _agent(gen, tmp_path, experts=[expert]) as agent:
        asyncio.run(agent.asend("t1", "off", [(wav, "audio")], experts=False))
        assert expert.runs == 0 and gen.calls[0][0].startswith("off")
        asyncio.run(agent.asend("t1", "on", [(wav, "audio")]))
        assert expert.runs == 1 and gen.calls[1][0].startswith(f"{LINE}\non")


def test_findings_store_in_memory_is_bounded_and_files_are_shared(tmp_path):
    small = FindingsStore(max_entries=2)
    for k in "abc":
        small.put(k, k.upper())
    assert len(small) == 2 and small.get("a") == (False, None) and small.get("c") == (True, "C")
    one, two = FindingsStore(tmp_path / "f.json"), FindingsStore(tmp_path / "f.json")
    one.put("x", "seen")
    two.put("y", None)  # re-reads the file before writing: both findings are kept
    assert FindingsStore(tmp_path / "f.json").get("x") == (True, "seen")
    assert one.get("y") == (True, None)
