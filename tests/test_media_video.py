"""Video decoding on synthetic clips: seeking, the clip rule, frame selection and geometry."""

from __future__ import annotations

from fractions import Fraction

import pytest
import torch
from helpers import write_video

from ibllm_agent import media
from ibllm_agent.media.video import decode_video_clips, short_side_scale, spatial_crops


def _frame_index(frame_chw) -> int:
    """Read back the index written by ``write_video`` from a decoded uint8 [3, H, W] frame."""
    bits = [int(frame_chw[0, 4 * (b // 8) + 2, 4 * (b % 8) + 2]) > 128 for b in range(16)]
    return sum(1 << b for b, on in enumerate(bits) if on)


def test_clip_rule_and_frame_choice(tmp_path):
    path = write_video(tmp_path / "v.mp4", frames=40, fps=10)  # 4 s
    out = decode_video_clips(path, media.MediaLimits())
    assert out.duration == Fraction(4)
    step = Fraction(2, 4)  # (4 - 2) / (5 - 1)
    assert out.clip_times == [(step * i, step * i + 2) for i in range(5)]
    assert out.frames_per_clip == [20] * 5
    picked = [[_frame_index(out.frames[c, :, t]) for t in range(2)] for c in range(5)]
    assert picked == [[0, 19], [5, 24], [10, 29], [15, 34], [20, 39]]


def test_seeking_decodes_only_the_clips(tmp_path):
    # 60 s at 5 fps = 300 frames, key frame every 10; 5 clips of 2 s need ≈ 5 × (10 + 10) frames.
    path = write_video(tmp_path / "long.mp4", frames=300, fps=5, size=(32, 32), gop=10)
    out = decode_video_clips(path, media.MediaLimits())
    assert out.frames_per_clip == [10] * 5
    assert out.decoded_frames <= 5 * 25 < 300
    last_clip = [_frame_index(out.frames[4, :, t]) for t in range(2)]
    assert last_clip == [290, 299]


def test_short_video_gives_identical_clips(tmp_path):
    path = write_video(tmp_path / "short.mp4", frames=7, fps=10)
    out = media.load(path)
    assert out.shape == (15, 3, 2, 224, 224)
    for clip in range(1, 5):
        assert torch.equal(out[3 * clip : 3 * clip + 3], out[:3])


def test_bytes_and_file_object_sources(tmp_path):
    import io

    path = write_video(tmp_path / "v.mp4", frames=25, fps=10)
    data = path.read_bytes()
    from_path = media.load(path)
    assert media.infer_modality(data) == "video"
    assert torch.equal(media.load(data), from_path)
    assert torch.equal(media.load(io.BytesIO(data), "video"), from_path)


def test_geometry_short_side_and_crops():
    x = torch.rand(3, 2, 240, 320)
    y = short_side_scale(x)
    assert y.shape == (3, 2, 224, 298)  # floor(320/240·224)
    crops = spatial_crops(y)
    assert [c.shape[-1] for c in crops] == [224] * 3
    assert torch.equal(crops[0], y[..., :, 0:224])
    assert torch.equal(crops[1], y[..., :, 37:261])  # ceil(74/2)
    assert torch.equal(crops[2], y[..., :, 74:298])
    portrait = spatial_crops(short_side_scale(torch.rand(3, 2, 320, 240)))
    assert all(c.shape[-2:] == (224, 224) for c in portrait)


@pytest.mark.parametrize("size", [(64, 48), (48, 64), (50, 50)])
def test_output_shape_any_aspect(tmp_path, size):
    path = write_video(tmp_path / "v.mp4", frames=22, fps=10, size=size)
    out = media.load(path, "video")
    assert out.shape == (15, 3, 2, 224, 224) and out.dtype == torch.float32


def test_mpeg_ts_with_nonzero_start_time(tmp_path):
    """MPEG-TS (here: non-zero start pts, one key frame) — FFmpeg's seek can land at the end of the
    stream instead of the key frame before the target, so clips came back empty (EmptyMediaError:
    "no decodable frames between 0.450 s and 2.450 s"). A seek that lands past the clip start now
    re-decodes from the stream start."""
    import av

    # lossy + B-frames: pts start > 0; gop 250: the only key frame is frame 0
    path = write_video(tmp_path / "v.ts", frames=40, fps=10, bframes=3, crf=18, gop=250)
    with av.open(str(path)) as c:
        assert c.streams.video[0].start_time > 0  # the case under test
    out = decode_video_clips(path, media.MediaLimits())
    assert out.frames_per_clip == [20] * 5
    picked = [[_frame_index(out.frames[c, :, t]) for t in range(2)] for c in range(5)]
    assert picked[0] == [0, 19]
    assert all(b - a == 19 for a, b in picked) and picked == sorted(picked)
    assert media.load(path, "video").shape == (15, 3, 2, 224, 224)
