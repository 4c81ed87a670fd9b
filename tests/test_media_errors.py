"""Each MediaError type on a crafted bad input; messages name the input and the reason."""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from ibllm_agent.errors import IbllmError
from ibllm_agent.media import (
    EmptyMediaError,
    InvalidValuesError,
    MediaError,
    MediaLimits,
    MediaNotFoundError,
    MediaTooLargeError,
    UnknownFormatError,
    UnreadableMediaError,
    load,
)


def _jpeg_bytes(size=(64, 48)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "JPEG")
    return buf.getvalue()


def test_hierarchy():
    for cls in (UnreadableMediaError, MediaNotFoundError, UnknownFormatError, EmptyMediaError, InvalidValuesError, MediaTooLargeError):
        assert issubclass(cls, MediaError) and issubclass(cls, IbllmError)
    assert issubclass(MediaNotFoundError, FileNotFoundError)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "cut.jpg"
    path.write_bytes(_jpeg_bytes()[:300])
    with pytest.raises(UnreadableMediaError) as info:
        load(path)
    assert "cut.jpg" in str(info.value) and "truncated" in str(info.value)


def test_random_bytes_named_jpg(tmp_path):
    path = tmp_path / "noise.jpg"
    path.write_bytes(os.urandom(2048))
    with pytest.raises(UnreadableMediaError, match="noise.jpg.*not a recognised image"):
        load(path, "image")


def test_random_bytes_mp4(tmp_path):
    path = tmp_path / "noise.mp4"
    path.write_bytes(b"\x00\x01" + os.urandom(4096))
    with pytest.raises(UnreadableMediaError, match="noise.mp4"):
        load(path)


def test_mp4_without_video_stream(tmp_path):
    import av

    path = tmp_path / "sound_only.mp4"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000)
        frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
        frame.rate = 16000
        for packet in stream.encode(frame):
            out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    with pytest.raises(EmptyMediaError, match="no video stream"):
        load(path, "video")


def test_zero_length_wav(tmp_path):
    path = tmp_path / "empty.wav"
    sf.write(path, np.zeros((0, 1), np.float32), 16000, subtype="PCM_16")
    with pytest.raises(EmptyMediaError, match="empty.wav.*zero length"):
        load(path)


def test_silence_is_valid_audio(tmp_path):
    path = tmp_path / "silence.wav"
    sf.write(path, np.zeros((16000, 1), np.float32), 16000, subtype="PCM_16")
    out = load(path)
    assert out.shape == (3, 1, 128, 204) and torch.isfinite(out).all()


def test_missing_file(tmp_path):
    with pytest.raises(MediaNotFoundError, match="nope.wav.*no such file"):
        load(tmp_path / "nope.wav")
    with pytest.raises(FileNotFoundError):
        load(str(tmp_path / "nope.png"))
    with pytest.raises(MediaNotFoundError, match="no such file"):
        load(tmp_path / "nope.unknownext")  # a Path is always a file, whatever its extension


def test_directory_is_not_media(tmp_path):
    (tmp_path / "dir.png").mkdir()
    with pytest.raises(MediaNotFoundError, match="not a regular file"):
        load(tmp_path / "dir.png")


def test_unknown_format(tmp_path):
    path = tmp_path / "thing.bin"
    path.write_bytes(b"hello world, not media")
    with pytest.raises(UnknownFormatError, match="thing.bin.*unrecognised"):
        load(path)
    with pytest.raises(UnknownFormatError, match="unknown modality 'smell'"):
        load(b"abc", "smell")
    with pytest.raises(UnknownFormatError):
        load(object())


def test_point_cloud_nan(tmp_path):
    pts = np.random.default_rng(0).normal(size=(100, 3))
    pts[5, 1] = np.nan
    path = tmp_path / "bad.npy"
    np.save(path, pts)
    with pytest.raises(InvalidValuesError, match="bad.npy.*NaN"):
        load(path, "point")
    with pytest.raises(InvalidValuesError, match="NaN or inf"):
        load(torch.tensor([[0.0, 1.0, float("inf")]]), "point")


def test_empty_xyz(tmp_path):
    path = tmp_path / "empty.xyz"
    path.write_text("# nothing here\n\n")
    with pytest.raises(EmptyMediaError, match="empty.xyz.*no points"):
        load(path)


def test_limits_bytes_pixels_duration_points(tmp_path):
    jpg = tmp_path / "a.jpg"
    jpg.write_bytes(_jpeg_bytes((64, 48)))
    with pytest.raises(MediaTooLargeError, match="max_bytes=100"):
        load(jpg, limits=MediaLimits(max_bytes=100))
    with pytest.raises(MediaTooLargeError, match="64x48 = 3072 pixels"):
        load(jpg, limits=MediaLimits(max_pixels=3000))
    assert load(jpg, limits=MediaLimits(max_pixels=3072)).shape == (3, 224, 224)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.zeros((16000 * 3, 1), np.float32), 16000)
    with pytest.raises(MediaTooLargeError, match="3.0 s, above max_duration_s=2"):
        load(wav, limits=MediaLimits(max_duration_s=2))
    with pytest.raises(MediaTooLargeError, match="100 points, above max_points=50"):
        load(np.zeros((100, 3)) + np.arange(100)[:, None], "point", limits=MediaLimits(max_points=50))
    with pytest.raises(MediaTooLargeError, match="max_text_chars"):
        load("a" * 20, "text", limits=MediaLimits(max_text_chars=10))
    with pytest.raises(MediaTooLargeError, match="max_bytes"):
        load(io.BytesIO(b"\xff" * 1000), "image", limits=MediaLimits(max_bytes=10))


def test_point_array_element_limit_is_checked_before_copying(monkeypatch):
    """max_elements must stop a huge point array before ``numeric_tensor`` copies it (it used to be
    checked on the copy)."""
    import ibllm_agent.media.point as point_mod

    def no_copy(*args, **kwargs):
        raise AssertionError("the array was copied before the limit check")

    monkeypatch.setattr(point_mod, "numeric_tensor", no_copy)
    with pytest.raises(MediaTooLargeError, match="3000 elements, above max_elements=100"):
        load(np.zeros((1000, 3), np.float32), "point", limits=MediaLimits(max_elements=100))


def test_video_limits(tmp_path):
    from helpers import write_video

    path = write_video(tmp_path / "v.mp4", frames=30, fps=10, size=(64, 48))
    with pytest.raises(MediaTooLargeError, match="above max_duration_s=2"):
        load(path, limits=MediaLimits(max_duration_s=2))
    with pytest.raises(MediaTooLargeError, match="64x48"):
        load(path, limits=MediaLimits(max_pixels=1000))


def test_bad_arrays():
    with pytest.raises(InvalidValuesError, match="image"):
        load(np.zeros((5, 5, 7), np.uint8), "image")
    with pytest.raises(InvalidValuesError, match=r"\[0, 1\]"):
        load(np.full((8, 8, 3), 3.0), "image")
    with pytest.raises(InvalidValuesError, match="NaN"):
        load(torch.full((3, 224, 224), float("nan")), "image")
    with pytest.raises(InvalidValuesError, match="token ids"):
        load(torch.full((77,), 60000), "text")
    with pytest.raises(InvalidValuesError, match=r"\[6, T\]"):
        load(np.zeros((5, 100), np.float32), "imu")
    with pytest.raises(InvalidValuesError, match="negative"):
        load(-np.ones((10, 10), np.float32), "depth")
    with pytest.raises(UnknownFormatError, match="no metric depth"):
        load(Image.new("L", (10, 10)), "depth")


def test_corrupt_point_files(tmp_path):
    ply = tmp_path / "cut.ply"
    ply.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\n"
                    b"property float y\nproperty float z\nend_header\n" + b"\x00" * 20)
    with pytest.raises(UnreadableMediaError, match="cut.ply.*truncated"):
        load(ply)
    pt = tmp_path / "junk.pt"
    pt.write_bytes(os.urandom(100))
    with pytest.raises(UnreadableMediaError, match="junk.pt"):
        load(pt)
    xyz = tmp_path / "bad.xyz"
    xyz.write_text("0 0 0\n1 2 three\n")
    with pytest.raises(UnreadableMediaError, match="line 2"):
        load(xyz)


def test_audio_garbage_bytes():
    with pytest.raises(UnreadableMediaError, match="<bytes: 3000>"):
        load(b"RIFF" + os.urandom(2996), "audio")


def test_messages_do_not_dump_payload():
    with pytest.raises(MediaError) as info:
        load(b"\x00" * 100_000, "image")
    assert len(str(info.value)) < 300 and "<bytes: 100000>" in str(info.value)
