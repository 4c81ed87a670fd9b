"""Speech to text: a tiny random-init Whisper (real offline tokenizer) on the golden WAVs, long and
silent audio, audio inside video, and the typed errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from ibllm_agent.tools import speech
from ibllm_agent.tools.speech import SpeechRecognizer, SpeechSettings, Transcript

from ibllm_agent.errors import MissingWeightError, UnknownLanguageError
from ibllm_agent.media.errors import EmptyMediaError, MediaTooLargeError

pytest.importorskip("whisper")
from conftest import shared_path
from helpers import tone, write_wav


@pytest.fixture(scope="module")
def recognizer() -> SpeechRecognizer:
    return SpeechRecognizer.tiny_random(SpeechSettings(sample_len=8))


@pytest.fixture
def decode_calls(monkeypatch, recognizer):
    """Records the batch size of every whisper.decode call."""
    import whisper

    calls: list[int] = []
    real = whisper.decode

    def spy(model, mel, options):
        calls.append(mel.shape[0])
        return real(model, mel, options)

    monkeypatch.setattr(whisper, "decode", spy)
    return calls


def test_golden_wavs_transcribe_with_detected_language(recognizer):
    import soundfile as sf
    from whisper.tokenizer import LANGUAGES

    wavs = sorted(shared_path("golden", "media").glob("*.wav"))
    assert len(wavs) >= 4
    for path in wavs:
        tr = recognizer.transcribe(path)
        info = sf.info(str(path))
        assert tr.duration == pytest.approx(info.frames / info.samplerate, abs=1e-3)
        assert tr.windows == tr.decoded == 1
        assert tr.language in LANGUAGES  # detected on the (only) window
        assert tr.text == " ".join(s.text for s in tr.segments)
        for seg in tr.segments:
            assert 0 <= seg.start <= seg.end <= tr.duration + 0.01


def test_long_audio_every_window_is_transcribed(recognizer, decode_calls, tmp_path):
    path = write_wav(tmp_path / "long.wav", tone(75.0))
    seen: list[tuple[int, int]] = []
    tr = recognizer.transcribe(path, "en", progress=lambda d, n: seen.append((d, n)))
    assert tr.windows == tr.decoded == 3 and tr.language == "en"
    assert sum(decode_calls) == 3  # each 30 s window went through the decoder
    assert seen[-1] == (3, 3) and all(n == 3 for _, n in seen)
    # segments come from every window, with absolute times
    assert {math.floor(s.start / 30) for s in tr.segments} == {0, 1, 2}
    assert max(s.end for s in tr.segments) <= 75.0 + 0.01


def test_batching_splits_windows(decode_calls):
    rec = SpeechRecognizer.tiny_random(SpeechSettings(sample_len=4, batch_size=2))
    tr = rec.transcribe_array(tone(95.0), "en")  # 4 windows, the last one 5 s
    assert tr.windows == tr.decoded == 4
    assert decode_calls == [2, 2]


def test_silent_windows_are_skipped_and_silence_is_empty(recognizer, decode_calls, tmp_path):
    audio = np.concatenate([np.zeros(16_000 * 30, np.float32), tone(10.0)])
    tr = recognizer.transcribe_array(audio, "en")
    assert tr.windows == 2 and tr.decoded == 1 and decode_calls == [1]
    assert all(s.start >= 30 for s in tr.segments)

    decode_calls.clear()
    silent = recognizer.transcribe(write_wav(tmp_path / "silent.wav", np.zeros(16_000 * 3, np.float32)))
    assert silent == Transcript("", None, 3.0, [], 1, 0) and decode_calls == []
    assert speech.observation(silent) == "No speech was recognized in the audio."
    empty = recognizer.transcribe(write_wav(tmp_path / "empty.wav", np.zeros(0, np.float32)))
    assert empty.text == "" and empty.duration == 0 and empty.windows == 0


def test_segments_from_timestamp_tokens(recognizer):
    tok = recognizer._tokenizer()
    ts = lambda s: tok.timestamp_begin + round(s / 0.02)
    hello, world = tok.encode(" hello"), tok.encode(" world")
    tokens = [ts(0.0), *hello, ts(1.0), ts(1.0), *world, ts(2.5)]
    segs = recognizer._segments(tokens, 30.0, 30.0)
    assert [(s.start, s.end, s.text) for s in segs] == [(30.0, 31.0, "hello"), (31.0, 32.5, "world")]
    # text with no closing timestamp runs to the end of the window; none at all → whole window
    assert [(s.start, s.end) for s in recognizer._segments([ts(2.0), *hello], 0.0, 10.0)] == [(2.0, 10.0)]
    assert [(s.start, s.end) for s in recognizer._segments(hello, 60.0, 4.0)] == [(60.0, 64.0)]


def test_audio_track_of_a_video_is_transcribed(recognizer, tmp_path):
    av = pytest.importorskip("av")
    path = tmp_path / "clip.mp4"
    samples = tone(2.0, rate=16_000)
    with av.open(str(path), "w") as out:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        a = out.add_stream("aac", rate=16_000)
        a.layout = "mono"
        for i in range(20):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), i * 10, np.uint8), format="rgb24")
            out.mux(v.encode(frame))
        out.mux(v.encode(None))
        chunk = 1024
        for k in range(0, samples.size, chunk):
            af = av.AudioFrame.from_ndarray(samples[None, k : k + chunk], format="flt", layout="mono")
            af.sample_rate = 16_000
            out.mux(a.encode(af))
        out.mux(a.encode(None))
    tr = recognizer.transcribe(path, "en")
    assert tr.decoded == 1 and tr.duration == pytest.approx(2.0, abs=0.2)  # AAC priming pads a little

    silent_video = tmp_path / "noaudio.mp4"
    with av.open(str(silent_video), "w") as out:
        v = out.add_stream("mpeg4", rate=10)
        v.width, v.height, v.pix_fmt = 64, 48, "yuv420p"
        out.mux(v.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")))
        out.mux(v.encode(None))
    with pytest.raises(EmptyMediaError, match="no audio stream"):
        recognizer.transcribe(silent_video)


def test_typed_errors(recognizer, tmp_path, monkeypatch):
    path = write_wav(tmp_path / "a.wav", tone(1.0))
    assert speech.normalize_language(" English ") == "en" and speech.normalize_language("") is None
    with pytest.raises(UnknownLanguageError, match="klingon"):
        recognizer.transcribe(path, "klingon")
    short = SpeechRecognizer(recognizer.model, SpeechSettings(max_duration_s=0.5))
    with pytest.raises(MediaTooLargeError, match="max_duration_s=0.5"):
        short.transcribe(path)
    with pytest.raises(MediaTooLargeError):
        short.transcribe_array(tone(1.0))
    with pytest.raises(MissingWeightError, match="ibllm-agent download whisper_base"):
        SpeechRecognizer.from_weights(SpeechSettings(size="base"), device="cpu")


def test_from_weights_loads_an_openai_whisper_checkpoint(recognizer, tmp_path, monkeypatch):
    import torch

    from ibllm_agent.config import get_settings

    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(tmp_path))
    (tmp_path / "whisper").mkdir()
    dims = recognizer.model.dims.__dict__
    torch.save({"dims": dims, "model_state_dict": recognizer.model.state_dict()}, tmp_path / "whisper/tiny.pt")
    loaded = SpeechRecognizer.from_weights(app_settings=get_settings(), device="cpu", dtype="fp32")
    assert not loaded.fp16
    for k, v in recognizer.model.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_console_progress_draws_a_bar_for_long_audio(capsys):
    update = speech.console_progress("transcribing")
    update(0, 1)  # a single window: no bar
    assert capsys.readouterr().err == ""
    update = speech.console_progress("transcribing")
    for done in range(4):
        update(done, 3)
    err = capsys.readouterr().err
    assert "transcribing:" in err and "/3 [" in err  # a bar over the 3 windows (cleared when done)
