"""Objects in a video: the ``Detect Objects In Video`` tool and the video expert.

Frames are sampled by *seeking* (PyAV: jump to the key frame before each sample time, decode up to the
first frame at or after it), ``fps`` per second up to ``max_frames`` spread over the whole video, so
a long video costs ``max_frames`` short decodes, not its full length. The open-vocabulary detector of
the vision tools (``tools/detection.py``: ``detect(images, phrases, box_threshold, text_threshold)``)
runs on batches of frames; a long vocabulary is split into groups of ``phrases_per_pass`` (the
detector reads at most 256 caption tokens). Detections are aggregated per label: frames it was seen
in, boxes, best score, first and last time seen. Optionally the frames with the most detections are
saved, annotated, into the workspace (``key_frames``).

The default vocabulary (the 80 COCO classes) ships as package data: ``data/video_vocabulary.txt``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from typing import Any

from ibllm_agent.errors import ConfigError, ToolInputError

__all__ = [
    "DETECTOR_KEY",
    "TOOL_NAME",
    "ObjectTrack",
    "VideoObjectDetector",
    "VideoReport",
    "VideoSettings",
    "default_vocabulary",
    "load_detector",
    "parse_vocabulary",
    "sample_frames",
    "video_tool",
]

TOOL_NAME = "Detect Objects In Video"
DETECTOR_KEY = "groundingdino"  # the pool key of the vision tools' detector (one model for both)


@dataclass(frozen=True)
class VideoSettings:
    """fps: frames sampled per second of video; max_frames: at most this many (spread evenly over the
    whole video when ``fps`` would give more). batch_size: frames per detector call.
    phrases_per_pass: vocabulary phrases per detector caption. box_threshold / text_threshold: the
    detector's (GPT4Tools' 0.3 / 0.25). key_frames: annotated frames saved to the workspace (0 = none).
    max_duration_s: longer videos are refused."""

    fps: float = 1.0
    max_frames: int = 32
    batch_size: int = 4
    phrases_per_pass: int = 20
    box_threshold: float = 0.3
    text_threshold: float = 0.25
    key_frames: int = 0
    max_duration_s: float | None = 4 * 3600.0

    def __post_init__(self) -> None:
        if self.fps <= 0 or self.max_frames < 1 or self.batch_size < 1 or self.phrases_per_pass < 1:
            raise ConfigError("VideoSettings: fps must be > 0, max_frames/batch_size/phrases_per_pass >= 1")
        if self.key_frames < 0:
            raise ConfigError("VideoSettings: key_frames must be >= 0")


@dataclass
class ObjectTrack:
    """One label over the video: ``frames`` it was seen in, ``boxes`` in total, best ``max_score``,
    ``first_seen`` / ``last_seen`` (seconds)."""

    label: str
    frames: int
    boxes: int
    max_score: float
    first_seen: float
    last_seen: float


@dataclass
class VideoReport:
    """What the detector found: ``objects`` (most frequently seen first), the sample ``times``,
    the video ``duration``, the ``vocabulary`` searched and the workspace names of ``key_frames``."""

    objects: list[ObjectTrack]
    times: list[float]
    duration: float
    vocabulary: list[str]
    key_frames: list[str] = field(default_factory=list)

    def to_artifact(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """The tool's observation text."""
        head = f"{len(self.times)} frames sampled over {self.duration:.1f} s"
        if not self.objects:
            text = f"No objects of the vocabulary were detected ({head})."
        else:
            parts = [f"{o.label} (in {o.frames} frames, max score {o.max_score:.2f}, "
                     f"{o.first_seen:.1f}-{o.last_seen:.1f} s)" for o in self.objects]
            text = f"Detected objects ({head}): " + ", ".join(parts) + "."
        if self.key_frames:
            text += " Annotated key frames: " + ", ".join(self.key_frames)
        return text


@lru_cache(maxsize=1)
def default_vocabulary() -> tuple[str, ...]:
    """The packaged default vocabulary (``data/video_vocabulary.txt``)."""
    from importlib.resources import files

    text = files("ibllm_agent.tools").joinpath("data/video_vocabulary.txt").read_text(encoding="utf-8")
    return tuple(line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#"))


def parse_vocabulary(vocabulary: str | Sequence[str] | None) -> list[str]:
    """``"dog, red car"`` / ``["dog", "red car"]`` → normalised phrases without duplicates; empty or
    ``None`` → the default vocabulary. A non-empty input without any name (``", ."``) is a
    ``ToolInputError``."""
    items = vocabulary.split(",") if isinstance(vocabulary, str) else list(vocabulary or [])
    out: list[str] = []
    for item in items:
        phrase = " ".join(str(item).strip().strip("\"'.").lower().split())
        if phrase and phrase not in out:
            out.append(phrase)
    if not out and any(str(i).strip() for i in items):
        raise ToolInputError(f"the vocabulary {vocabulary!r} holds no object names; give names separated by commas")
    return out or list(default_vocabulary())


def sample_times(duration: float, fps: float, max_frames: int) -> list[float]:
    """Sample times in seconds: every 1/fps from 0, or ``max_frames`` evenly spread over the video."""
    if duration <= 0:
        return [0.0]
    n = max(1, math.ceil(duration * fps))
    if n <= max_frames:
        return [i / fps for i in range(n)]
    return [duration * i / max_frames for i in range(max_frames)]


def _frame_at(container: Any, stream: Any, target_pts: int) -> Any:
    """The first frame with pts >= ``target_pts`` after seeking to the key frame before it; the last
    frame decoded when the stream ends first; ``None`` when nothing decodes."""
    import av

    try:
        container.seek(max(target_pts, 0), backward=True, any_frame=False, stream=stream)
    except av.FFmpegError:
        container.seek(0)
    last = None
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        last = frame
        if frame.pts >= target_pts:
            break
    return last


def sample_frames(source: Any, settings: VideoSettings | None = None) -> tuple[list[tuple[float, Any]], float]:
    """``([(time_s, PIL image), …], duration_s)`` sampled by seeking (see the module docstring).

    Raises ``EmptyMediaError`` (no video stream, no decodable frame), ``UnreadableMediaError`` or
    ``MediaTooLargeError`` (past ``max_duration_s``)."""
    from fractions import Fraction

    import av

    from ibllm_agent.media.errors import EmptyMediaError, MediaError, MediaTooLargeError, UnreadableMediaError
    from ibllm_agent.media.limits import MediaLimits
    from ibllm_agent.media.sources import describe, open_binary, short
    from ibllm_agent.media.video import _stream_duration

    settings = settings or VideoSettings()
    desc = describe(source)
    handle = open_binary(source, MediaLimits(max_bytes=None), "video")
    try:
        container = av.open(handle, mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableMediaError(desc, f"not a decodable video file ({short(exc)})", "video") from exc
    out: list[tuple[float, Any]] = []
    try:
        if not container.streams.video:
            raise EmptyMediaError(desc, "no video stream", "video")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        if stream.time_base is None:
            raise UnreadableMediaError(desc, "video stream has no time base", "video")
        tb = Fraction(stream.time_base)
        start = stream.start_time or 0
        duration = float(_stream_duration(container, stream, desc))
        if settings.max_duration_s is not None and duration > settings.max_duration_s:
            raise MediaTooLargeError(desc, f"video lasts {duration:.1f} s, above max_duration_s="
                                     f"{settings.max_duration_s}", "video")
        seen: set[int] = set()
        for t in sample_times(duration, settings.fps, settings.max_frames):
            frame = _frame_at(container, stream, start + math.ceil(Fraction(t) / tb))
            if frame is None or frame.pts in seen:  # a short video: two times, one frame
                continue
            seen.add(frame.pts)
            out.append((round(float((frame.pts - start) * tb), 3), frame.to_image()))
    except MediaError:
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableMediaError(desc, f"corrupt video ({short(exc)})", "video") from exc
    finally:
        container.close()
    if not out:
        raise EmptyMediaError(desc, "no decodable video frames", "video")
    return out, duration


class VideoObjectDetector:
    """An image detector (``detect(images, phrases, box_threshold, text_threshold)``) run over
    sampled frames (see the module docstring)."""

    def __init__(self, detector: Any, settings: VideoSettings | None = None):
        self.detector = detector
        self.settings = settings or VideoSettings()

    def detect_video(self, source: Any, vocabulary: str | Sequence[str] | None = None, *,
                     save_key_frame: Any = None) -> VideoReport:
        """Detect ``vocabulary`` (default: the packaged one) in the video at ``source``.

        ``save_key_frame(image) -> name`` stores an annotated key frame (the tool passes the
        workspace's); without it no key frames are saved."""
        phrases = parse_vocabulary(vocabulary)
        frames, duration = sample_frames(source, self.settings)
        s = self.settings
        per_frame: list[list[Any]] = [[] for _ in frames]
        groups = [phrases[i : i + s.phrases_per_pass] for i in range(0, len(phrases), s.phrases_per_pass)]
        for b in range(0, len(frames), s.batch_size):
            images = [im for _, im in frames[b : b + s.batch_size]]
            for group in groups:
                found = self.detector.detect(images, group, box_threshold=s.box_threshold,
                                             text_threshold=s.text_threshold)
                for k, dets in enumerate(found):
                    per_frame[b + k].extend(dets)
        objects = _aggregate([t for t, _ in frames], per_frame)
        keys: list[str] = []
        if save_key_frame is not None and s.key_frames:
            from ibllm_agent.tools.detection import draw_detections

            best = sorted((i for i, d in enumerate(per_frame) if d), key=lambda i: (-len(per_frame[i]), i))
            for i in sorted(best[: s.key_frames]):
                keys.append(save_key_frame(draw_detections(frames[i][1], per_frame[i])))
        return VideoReport(objects, [t for t, _ in frames], round(duration, 3), phrases, keys)


def _aggregate(times: list[float], per_frame: list[list[Any]]) -> list[ObjectTrack]:
    tracks: dict[str, ObjectTrack] = {}
    for t, dets in zip(times, per_frame, strict=True):
        for label in dict.fromkeys(d.label for d in dets):
            mine = [d for d in dets if d.label == label]
            best = max(d.score for d in mine)
            tr = tracks.get(label)
            if tr is None:
                tracks[label] = ObjectTrack(label, 1, len(mine), round(best, 4), t, t)
            else:
                tr.frames += 1
                tr.boxes += len(mine)
                tr.max_score = round(max(tr.max_score, best), 4)
                tr.first_seen, tr.last_seen = min(tr.first_seen, t), max(tr.last_seen, t)
    return sorted(tracks.values(), key=lambda o: (-o.frames, -o.max_score, o.label))


def load_detector(device: str = "cpu") -> Any:
    """Model-pool loader of the vision tools' detector (GroundingDINO from the weights dir)."""
    from ibllm_agent.tools.backends import ToolKit

    return ToolKit().loader(DETECTOR_KEY)(device)


def video_tool(settings: VideoSettings | None = None, *, loader: Any = None) -> Any:
    """The ``Detect Objects In Video`` tool (``video_path[, vocabulary]``).

    Observation: the labels with frame counts, best score and first/last time; artifact
    (``ToolMessage.artifact``): ``VideoReport.to_artifact()``. The detector loads lazily into the
    agent's model pool under the vision tools' key (one GroundingDINO for both); ``loader(device)``
    replaces the default ``load_detector``. With ``settings.key_frames`` the annotated key frames
    become new workspace images named in the observation.
    """
    from ibllm_agent.agent.registry import gpt4tools_tool
    from ibllm_agent.tools.backends import BACKENDS

    settings = settings or VideoSettings()

    def run(detector: Any, video_path: str, vocabulary: str = "") -> tuple[str, dict]:
        from ibllm_agent.tools.images import save_image

        report = VideoObjectDetector(detector, settings).detect_video(
            video_path, vocabulary, save_key_frame=save_image if settings.key_frames else None)
        return report.summary(), report.to_artifact()

    return gpt4tools_tool(TOOL_NAME, run, model_key=DETECTOR_KEY, loader=loader or load_detector,
                          size_bytes=None if loader else BACKENDS[DETECTOR_KEY].size_bytes,
                          response_format="content_and_artifact")
