"""Audio/video expert benchmark on CPU: real-time factor of transcription and frames/s of the video
object detector, with random-init backends (no weights needed).

    python benchmarks/experts.py                       # 60 s of audio, a 20 s video
    python benchmarks/experts.py --audio-s 300 --sample-len 64 --threads 2

Printed side by side:

  speech   rows: ``micro`` (1 layer, 64 wide — the test model) and ``tiny-arch`` (the architecture of
           openai-whisper tiny: 4+4 layers, 384 wide, random weights). Columns: audio seconds, 30 s
           windows, wall seconds, real-time factor (wall / audio; < 1 is faster than real time).
           A random model never stops early, so every window generates ``--sample-len`` tokens:
           the RTF is an upper bound for that many tokens per window.
  video    rows: ``sampling only`` (decode by seeking, no detector), ``tiny GroundingDINO`` (the
           vision tools' random-init tiny detector, 128 px) with a short and with the default 80-class
           vocabulary. Columns: frames, wall seconds, frames/s.

The synthetic inputs (a tone + noise WAV; a 320x240 MPEG-4 video at 25 fps with a moving square)
are written to a temporary folder.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
import wave
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def write_audio(path: Path, seconds: float, rate: int = 16_000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes((np.clip(x, -1, 1) * 32767).astype("<i2").tobytes())
    return path


def write_video(path: Path, seconds: float, fps: int = 25, size: tuple[int, int] = (320, 240)) -> Path:
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = 2 * fps
        for i in range(int(seconds * fps)):
            img = np.full((h, w, 3), 40, np.uint8)
            x = (i * 3) % (w - 60)
            img[90:150, x : x + 60] = (230, 30, 30)
            out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode(None))
    return path


def bench_speech(audio: Path, seconds: float, sample_len: int) -> list[tuple]:
    import torch
    from ibllm_agent.tools.speech import SpeechRecognizer, SpeechSettings
    from whisper.model import ModelDimensions, Whisper

    settings = SpeechSettings(sample_len=sample_len)
    rows = []
    tiny_arch = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=384, n_audio_head=6, n_audio_layer=4,
                                n_vocab=51865, n_text_ctx=448, n_text_state=384, n_text_head=6, n_text_layer=4)
    torch.manual_seed(0)
    arch = Whisper(tiny_arch)
    with torch.no_grad():  # whisper leaves these uninitialised (torch.empty)
        arch.decoder.positional_embedding.normal_(0.0, 0.02)
    models = {
        "micro": SpeechRecognizer.tiny_random(settings),
        "tiny-arch": SpeechRecognizer(arch.eval(), settings),
    }
    for name, rec in models.items():
        rec.transcribe_array(np.zeros(16_000, np.float32) + 0.1, "en")  # warm-up (tokenizer, kernels)
        t0 = time.perf_counter()
        tr = rec.transcribe(audio, "en")
        wall = time.perf_counter() - t0
        rows.append((name, seconds, tr.windows, wall, wall / seconds))
    return rows


def bench_video(video: Path, fps: float, max_frames: int) -> list[tuple]:
    from ibllm_agent.tools.detection import GroundingDinoDetector
    from ibllm_agent.tools.video import VideoObjectDetector, VideoSettings, default_vocabulary, sample_frames

    settings = VideoSettings(fps=fps, max_frames=max_frames)
    rows = []
    t0 = time.perf_counter()
    frames, _ = sample_frames(video, settings)
    wall = time.perf_counter() - t0
    rows.append(("sampling only", len(frames), wall, len(frames) / wall))
    det = GroundingDinoDetector.tiny(["square"])
    for label, vocab in (("tiny GroundingDINO, 2 phrases", "red square, dog"),
                         (f"tiny GroundingDINO, {len(default_vocabulary())} phrases", None)):
        VideoObjectDetector(det, VideoSettings(fps=1, max_frames=1)).detect_video(video, vocab)  # warm-up
        t0 = time.perf_counter()
        report = VideoObjectDetector(det, settings).detect_video(video, vocab)
        wall = time.perf_counter() - t0
        rows.append((label, len(report.times), wall, len(report.times) / wall))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--audio-s", type=float, default=60.0, help="seconds of audio to transcribe")
    ap.add_argument("--sample-len", type=int, default=32, help="tokens generated per 30 s window")
    ap.add_argument("--video-s", type=float, default=20.0, help="seconds of video")
    ap.add_argument("--fps", type=float, default=1.0, help="frames sampled per second of video")
    ap.add_argument("--max-frames", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = ap.parse_args()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        audio = write_audio(Path(tmp) / "speech.wav", args.audio_s)
        video = write_video(Path(tmp) / "clip.mp4", args.video_s)
        print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads")
        print(f"\nspeech: {args.audio_s:.0f} s of audio, {math.ceil(args.audio_s / 30)} windows, "
              f"{args.sample_len} tokens per window")
        print(f"{'model':<12} {'audio s':>8} {'windows':>8} {'wall s':>8} {'RTF':>7}")
        for name, secs, windows, wall, rtf in bench_speech(audio, args.audio_s, args.sample_len):
            print(f"{name:<12} {secs:>8.0f} {windows:>8d} {wall:>8.2f} {rtf:>7.3f}")
        print(f"\nvideo: {args.video_s:.0f} s, 320x240 @ 25 fps, sampled at {args.fps} fps (max {args.max_frames})")
        print(f"{'detector':<34} {'frames':>7} {'wall s':>8} {'frames/s':>9}")
        for label, n, wall, fps in bench_video(video, args.fps, args.max_frames):
            print(f"{label:<34} {n:>7d} {wall:>8.2f} {fps:>9.2f}")


if __name__ == "__main__":
    main()
