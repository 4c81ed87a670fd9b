"""Detect Objects In Video: frames sampled by seeking from generated videos, the detector run on
batches, aggregation per label, key frames in the workspace, the video expert and the typed errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from ibllm_agent.tools.detection import Detection
from ibllm_agent.tools.video import (
    VideoObjectDetector,
    VideoSettings,
    default_vocabulary,
    parse_vocabulary,
    sample_frames,
    sample_times,
    video_tool,
)
from agent_support import tool_step

from ibllm_agent.media.errors import EmptyMediaError, MediaTooLargeError

av = pytest.importorskip("av")


def write_video(path: Path, frames: int = 50, fps: int = 10, size=(64, 48)) -> Path:
    """Frame i is gray level 4*i (so a decoded frame tells its index); frames >= 20 hold a white square."""
    w, h = size
    with av.open(str(path), "w") as out:
        s = out.add_stream("mpeg4", rate=fps)
        s.width, s.height, s.pix_fmt = w, h, "yuv420p"
        s.codec_context.gop_size = 8  # several key frames: sampling has to seek
        for i in range(frames):
            img = np.full((h, w, 3), 4 * i, np.uint8)
            if i >= 20:
                img[10:30, 10:30] = 255
            out.mux(s.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        out.mux(s.encode(None))
    return path


class SquareDetector:
    """Follows the detector interface: "square" where the white square is, "frame" always."""

    def __init__(self):
        self.batches: list[tuple[int, tuple[str, ...]]] = []

    def detect(self, images, phrases, box_threshold=0.3, text_threshold=0.25):
        self.batches.append((len(images), tuple(phrases)))
        out = []
        for im in images:
            a = np.asarray(im)
            dets = []
            if "frame" in phrases:
                dets.append(Detection("frame", 0.4, (0.0, 0.0, float(im.width), float(im.height))))
            if "square" in phrases and a[20, 20].mean() > 240 and a[40, 50].mean() < 200:
                dets.append(Detection("square", 0.9, (10.0, 10.0, 30.0, 30.0)))
            out.append(dets)
        return out


@pytest.fixture
def video(tmp_path) -> Path:
    return write_video(tmp_path / "clip.mp4")


def test_frames_are_sampled_by_seeking_at_the_right_times(video):
    frames, duration = sample_frames(video, VideoSettings(fps=1.0))
    assert duration == pytest.approx(5.0, abs=0.11)
    assert [t for t, _ in frames] == pytest.approx([0, 1, 2, 3, 4], abs=0.01)
    for t, im in frames:  # the gray level says which frame was decoded
        assert np.asarray(im)[40:, 40:].mean() == pytest.approx(4 * round(t * 10), abs=4)
    few, _ = sample_frames(video, VideoSettings(fps=10.0, max_frames=3))
    assert [t for t, _ in few] == pytest.approx([0.0, 1.7, 3.4], abs=0.11)  # spread over the video
    assert sample_times(0.0, 1.0, 5) == [0.0] and len(sample_times(100.0, 2.0, 7)) == 7


def test_detector_runs_on_batches_and_labels_are_aggregated(video):
    det = SquareDetector()
    report = VideoObjectDetector(det, VideoSettings(fps=2.0, batch_size=4)).detect_video(video, "square, frame, Square")
    assert report.vocabulary == ["square", "frame"]
    assert [n for n, _ in det.batches] == [4, 4, 2]  # 10 frames in batches of 4
    frame, square = report.objects[0], report.objects[1]
    assert (frame.label, frame.frames, frame.first_seen, frame.last_seen) == ("frame", 10, 0.0, 4.5)
    assert (square.label, square.frames, square.boxes, square.max_score) == ("square", 6, 6, 0.9)
    assert square.first_seen == pytest.approx(2.0) and square.last_seen == pytest.approx(4.5)
    assert "square (in 6 frames, max score 0.90, 2.0-4.5 s)" in report.summary()


def test_default_vocabulary_is_package_data_split_into_passes(video):
    vocab = default_vocabulary()
    assert len(vocab) == 80 and "person" in vocab and "teddy bear" in vocab
    assert parse_vocabulary("") == list(vocab) and parse_vocabulary(None) == list(vocab)
    with pytest.raises(Exception, match="holds no object names"):
        parse_vocabulary(" , .")
    det = SquareDetector()
    VideoObjectDetector(det, VideoSettings(fps=1.0, max_frames=2, batch_size=8)).detect_video(video)
    assert [len(p) for _, p in det.batches] == [20, 20, 20, 20]


@pytest.mark.slow  # building the tiny GroundingDINO (transformers) takes ~10 s on 2 cores
def test_tiny_grounding_dino_full_path(video):
    from ibllm_agent.tools.detection import GroundingDinoDetector

    det = GroundingDinoDetector.tiny(["square"])
    report = VideoObjectDetector(det, VideoSettings(fps=1.0, max_frames=3)).detect_video(video, "square, dog")
    assert len(report.times) == 3
    for o in report.objects:
        assert o.label in ("square", "dog") and 1 <= o.frames <= 3 and 0.3 < o.max_score <= 1
        assert 0 <= o.first_seen <= o.last_seen <= report.duration


def test_videos_without_frames_and_too_long(tmp_path, video):
    import wave

    with wave.open(str(tmp_path / "a.wav"), "wb") as w:  # audio only
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(16_000)
        w.writeframes(np.ones(16_000, "<i2").tobytes())
    with pytest.raises(EmptyMediaError, match="no video stream"):
        sample_frames(tmp_path / "a.wav")
    empty = tmp_path / "empty.mp4"
    with av.open(str(empty), "w") as out:
        s = out.add_stream("mpeg4", rate=10)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        out.start_encoding()  # a header, no frames
    with pytest.raises(EmptyMediaError):
        sample_frames(empty)
    with pytest.raises(MediaTooLargeError, match="max_duration_s=2"):
        sample_frames(video, VideoSettings(max_duration_s=2))


def test_video_tool_in_the_agent_with_key_frames_and_errors(tmp_path, video):
    import re

    from ibllm_agent.agent import build_agent
    from ibllm_agent.testing import ScriptedGenerator

    det = SquareDetector()
    tool = video_tool(VideoSettings(fps=1.0, key_frames=2), loader=lambda device: det)
    assert tool.name == "Detect Objects In Video"
    name: dict[str, str] = {}

    def call(arg):
        def f(prompt, media, sampling):
            found = re.search(r"video/[0-9a-f]{8}\.mp4", prompt)
            name.setdefault("v", found.group(0) if found else "")
            return tool_step("Detect Objects In Video", arg.format(v=name["v"]))
        return f

    gen = ScriptedGenerator([call("{v}, square"), "Thought: Do I need to use a tool? No\nAI: a square",
                             call("{v}, , ."), "Thought: Do I need to use a tool? No\nAI: bad"])
    with build_agent(gen, tools=[tool], memory="memory", workspace=tmp_path / "ws") as agent:
        r = agent.send("t1", "what is in the video?", [(video, "video")])
        (c,) = r.tool_calls
        assert c.status == "success" and c.args == {"video_path": name["v"], "vocabulary": "square"}
        assert c.output.startswith("Detected objects (5 frames sampled over 5.0 s): square (in 3 frames")
        assert len(r.files) == 2 and all(f.startswith("image/") and f in c.output for f in r.files)
        art = [m for m in agent.history("t1") if m.type == "tool"][-1].artifact
        assert art["objects"][0]["label"] == "square" and sorted(art["key_frames"]) == sorted(r.files)
        r2 = agent.send("t1", "again")
        assert r2.tool_calls[0].status == "error" and "holds no object names" in r2.tool_calls[0].output


def test_video_expert_line(tmp_path, video):
    from ibllm_agent.agent import build_agent
    from ibllm_agent.experts import VideoObjectsExpert
    from ibllm_agent.testing import ScriptedGenerator

    expert = VideoObjectsExpert(VideoObjectDetector(SquareDetector(), VideoSettings(fps=1.0)),
                                vocabulary=["frame", "square"])
    gen = ScriptedGenerator(["ok"])
    with build_agent(gen, tools=[], memory="memory", workspace=tmp_path / "ws", experts=[expert]) as agent:
        agent.send("t1", "what happens?", [(video, "video")])
    assert gen.calls[0][0].startswith("(detected object classes: frame, square)\nwhat happens?")
