"""Video preprocessing, identical to the reference ``load_and_transform_video_data``.

Decode (PyAV) → 5 clips × 2 s (``clips.constant_clip_times`` on the stream duration, a Fraction) →
per clip keep the frames with start ≤ pts·time_base < end, pick the first and last
(``UniformTemporalSubsample(2)`` = linspace(0, n−1, 2)) → uint8 [5, 3, 2, H, W]
→ /255 → ShortSideScale(224) (bilinear, align_corners False, no antialias, long side floored)
→ CLIP normalise → 3 spatial crops of 224 along the long side at offsets 0, ceil((L−224)/2), L−224
⇒ float32 [15, 3, 2, 224, 224] (index = clip·3 + crop, layout [C, T, H, W]).

Each clip is decoded by *seeking* to the key frame before its start and decoding only up to its end,
so a long video costs about 5 × 2 s of decoding, not its whole length.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from .clips import constant_clip_times
from .errors import EmptyMediaError, MediaError, MediaTooLargeError, UnknownFormatError, UnreadableMediaError
from .image import CLIP_MEAN, CLIP_STD, IMAGE_SIZE
from .limits import MediaLimits
from .sources import describe, is_bytes, is_filelike, is_path, open_binary, short

CLIP_DURATION = 2
CLIPS_PER_VIDEO = 5
FRAMES_PER_CLIP = 2  # the reference reuses clip_duration as the sample count
NUM_CROPS = 3


@dataclass
class DecodedClips:
    """What ``decode_video_clips`` returns.

    frames: uint8 [clips, 3, FRAMES_PER_CLIP, H, W] (RGB).
    clip_times: exact (start, end) seconds per clip.
    frames_per_clip: decoded frames that fell inside each clip.
    decoded_frames: frames the decoder produced in total (including those before a clip start after
        a seek) — a measure of decoding work.
    duration: the stream duration passed to the clip sampler.
    """

    frames: Any
    clip_times: list[tuple[Fraction, Fraction]]
    frames_per_clip: list[int]
    decoded_frames: int
    duration: Fraction


def _stream_duration(container, stream, desc: str) -> Fraction:
    """Duration in seconds as pytorchvideo computes it (a Fraction).

    From the stream header: (duration − start_time)·time_base. (Subtracting the start pts from a
    *duration* is a pytorchvideo quirk kept for exactness; it only matters when start_time ≠ 0.)
    Without a header duration, pytorchvideo decodes everything and uses the largest frame pts; we
    take the largest packet pts instead (same number, no decoding).
    """
    tb = Fraction(stream.time_base)
    start = stream.start_time or 0
    if stream.duration is not None and stream.duration > 0:
        return int(stream.duration - start) * tb
    last = None
    for packet in container.demux(stream):
        if packet.pts is not None:
            last = packet.pts if last is None else max(last, packet.pts)
    container.seek(0)
    if last is None:
        raise EmptyMediaError(desc, "video stream has no timestamps", "video")
    return int(last - start) * tb


# pytorchvideo seeks this many pts before the clip start ("seeking is imprecise").
_SEEK_MARGIN = 1024


def _collect(container, stream, start_pts: int, end_pts: int) -> tuple[dict, int, int | None]:
    """Decode from the current position: ({pts: frame} with start_pts ≤ pts < end_pts, frames
    decoded, pts of the first decoded frame)."""
    kept, decoded, first = {}, 0, None
    for frame in container.decode(stream):
        decoded += 1
        pts = frame.pts
        if pts is None:
            continue
        if first is None:
            first = pts
        if pts >= end_pts:
            break
        if pts >= start_pts:
            kept[pts] = frame
    return kept, decoded, first


def _decode_clip(container, stream, start_pts: int, end_pts: int) -> tuple[list, int]:
    """Frames with start_pts ≤ pts < end_pts in pts order (one per pts), after seeking to the key
    frame before ``start_pts − margin``. Returns (frames, number of frames decoded).

    Some demuxers land *after* the target (MPEG-TS when it precedes the first key frame: the seek
    jumps to the end of the stream). When the first decoded frame is past ``start_pts`` the clip is
    decoded again from the stream start, which is slower but always sees every frame."""
    import av

    try:
        container.seek(max(start_pts - _SEEK_MARGIN, 0), backward=True, any_frame=False, stream=stream)
    except av.FFmpegError:
        container.seek(0)
    kept, decoded, first = _collect(container, stream, start_pts, end_pts)
    if first is None or first > start_pts:
        try:
            container.seek(0)
        except av.FFmpegError:
            pass  # nothing better to try: keep what the first pass found
        else:
            kept, again, _ = _collect(container, stream, start_pts, end_pts)
            decoded += again
    return [kept[p] for p in sorted(kept)], decoded


def decode_video_clips(
    source: Any, limits: MediaLimits, *, clip_duration: int = CLIP_DURATION, clips: int = CLIPS_PER_VIDEO
) -> DecodedClips:
    """Decode the clip frames the reference selects (see module docstring)."""
    import av
    import numpy as np
    import torch

    desc = describe(source)
    if not (is_path(source) or is_bytes(source) or is_filelike(source)):
        raise UnknownFormatError(desc, "unsupported video source (expected a path, bytes or file object)", "video")
    handle = open_binary(source, limits, "video")
    try:
        container = av.open(handle, mode="r")
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableMediaError(desc, f"not a decodable video file ({short(exc)})", "video") from exc
    try:
        if not container.streams.video:
            raise EmptyMediaError(desc, "no video stream", "video")
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        width, height = stream.codec_context.width, stream.codec_context.height
        if limits.max_pixels is not None and width * height > limits.max_pixels:
            raise MediaTooLargeError(
                desc, f"frames are {width}x{height}, above max_pixels={limits.max_pixels}", "video"
            )
        if stream.time_base is None:
            raise UnreadableMediaError(desc, "video stream has no time base", "video")
        duration = _stream_duration(container, stream, desc)
        if limits.max_duration_s is not None and duration > limits.max_duration_s:
            raise MediaTooLargeError(
                desc, f"video lasts {float(duration):.1f} s, above max_duration_s={limits.max_duration_s}", "video"
            )
        tb = Fraction(stream.time_base)
        start_pts = stream.start_time or 0
        times = constant_clip_times(duration, clip_duration, clips)
        selected, counts, decoded_total = [], [], 0
        for start, end in times:
            # pytorchvideo secs_to_pts(round_mode="ceil")
            lo = math.ceil(start / tb) + start_pts
            hi = math.ceil(end / tb) + start_pts
            kept, decoded = _decode_clip(container, stream, lo, hi)
            decoded_total += decoded
            if not kept:
                raise EmptyMediaError(
                    desc, f"no decodable frames between {float(start):.3f} s and {float(end):.3f} s", "video"
                )
            w, h = kept[0].width, kept[0].height  # headers can omit or misstate the size
            if limits.max_pixels is not None and w * h > limits.max_pixels:
                raise MediaTooLargeError(desc, f"frames are {w}x{h}, above max_pixels={limits.max_pixels}", "video")
            idx = torch.linspace(0, len(kept) - 1, FRAMES_PER_CLIP).long().tolist()
            rgb = np.stack([kept[i].to_rgb().to_ndarray() for i in idx])  # [T, H, W, 3]
            selected.append(rgb.transpose(3, 0, 1, 2))  # [3, T, H, W]
            counts.append(len(kept))
    except MediaError:  # (a ValueError: must not be re-wrapped below)
        raise
    except (av.FFmpegError, OSError, ValueError) as exc:
        raise UnreadableMediaError(desc, f"corrupt video ({short(exc)})", "video") from exc
    finally:
        container.close()
    frames = torch.from_numpy(np.ascontiguousarray(np.stack(selected)))
    return DecodedClips(frames, times, counts, decoded_total, duration)


def short_side_scale(x, size: int = IMAGE_SIZE):
    """pytorchvideo ShortSideScale on [C, T, H, W] float: bilinear, align_corners False, no antialias."""
    import torch

    _, _, h, w = x.shape
    if w < h:
        new_h, new_w = math.floor(h / w * size), size
    else:
        new_h, new_w = size, math.floor(w / h * size)
    return torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)


def spatial_crops(x, size: int = IMAGE_SIZE, num_crops: int = NUM_CROPS) -> list:
    """3 crops of [C, T, size, size] along the long side: offsets 0, ceil((L−size)/2), L−size."""
    h, w = x.shape[-2:]
    crops = []
    for idx in range(num_crops):
        y = math.ceil((h - size) / 2)
        xo = math.ceil((w - size) / 2)
        if h > w:
            y = 0 if idx == 0 else (h - size if idx == 2 else y)
        else:
            xo = 0 if idx == 0 else (w - size if idx == 2 else xo)
        crops.append(x[..., y : y + size, xo : xo + size])
    return crops


def frames_to_tensor(frames):
    """uint8 [clips, 3, T, H, W] → float32 [clips·3, 3, T, 224, 224]."""
    import torch

    mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)[:, None, None, None]
    std = torch.tensor(CLIP_STD, dtype=torch.float32)[:, None, None, None]
    out = []
    for clip in frames:
        x = short_side_scale(clip.to(torch.float32) / 255.0)
        x = (x - mean) / std
        out.extend(spatial_crops(x))
    return torch.stack(out, dim=0).contiguous()


def load_video(source: Any, limits: MediaLimits):
    """Any video source → float32 [15, 3, 2, 224, 224]."""
    return frames_to_tensor(decode_video_clips(source, limits).frames)
