"""Sources (path, bytes, file object, PIL, numpy, torch, Media), inference, pass-through, batching."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from ibllm_agent import media
from ibllm_agent.types import Media


@pytest.fixture
def jpg(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "photo.jpg"
    Image.fromarray(rng.integers(0, 255, (90, 160, 3), dtype=np.uint8)).save(path, quality=95)
    return path


def test_image_sources_agree(jpg):
    ref = media.load(jpg)
    assert ref.shape == (3, 224, 224)
    data = jpg.read_bytes()
    assert torch.equal(media.load(data), ref)
    assert torch.equal(media.load(io.BytesIO(data), "image"), ref)
    assert torch.equal(media.load(str(jpg)), ref)
    pil = Image.open(jpg)
    assert torch.equal(media.load(pil), ref)
    arr = np.array(pil.convert("RGB"))
    assert torch.equal(media.load(arr, "image"), ref)
    assert torch.equal(media.load(torch.from_numpy(arr).permute(2, 0, 1), "image"), ref)
    assert torch.equal(media.load(Media("image", jpg)), ref)


def test_image_is_clip_normalised():
    white = media.load(Image.new("RGB", (300, 250), (255, 255, 255)))
    expected = (1 - torch.tensor(media.image.CLIP_MEAN)) / torch.tensor(media.image.CLIP_STD)
    assert torch.allclose(white[:, 100, 100], expected, atol=1e-6)


def test_rgba_and_grayscale_images():
    rgba = Image.new("RGBA", (64, 64), (10, 20, 30, 0))
    assert torch.equal(media.load(rgba), media.load(rgba.convert("RGB")))
    gray = media.load(Image.new("L", (64, 64), 128))
    assert gray.shape == (3, 224, 224)


def test_audio_sources_agree(tmp_path):
    rng = np.random.default_rng(0)
    wave = (rng.uniform(-0.5, 0.5, (2, 44100 * 3))).astype(np.float32)
    path = tmp_path / "a.flac"
    sf.write(path, wave.T, 44100, subtype="PCM_16")
    ref = media.load(path)
    assert ref.shape == (3, 1, 128, 204)
    assert torch.equal(media.load(path.read_bytes(), "audio"), ref)
    decoded, rate = sf.read(path, dtype="float32", always_2d=True)
    assert torch.equal(media.load((decoded.T, rate)), ref)
    pcm, _ = sf.read(path, dtype="int16", always_2d=True)
    assert torch.equal(media.load((pcm.T, rate), "audio"), ref)  # int16 PCM scaled by 1/32768
    # the caller's waveform is not modified by the in-place mean subtraction
    copy = decoded.T.copy()
    media.load((copy, rate), "audio")
    assert np.array_equal(copy, decoded.T)


def test_audio_via_pyav_fallback(tmp_path):
    """m4a/aac is outside libsndfile: decoded through PyAV; result close to the WAV original."""
    import av

    t = np.arange(16000 * 3) / 16000
    wave = (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    sf.write(tmp_path / "a.wav", wave, 16000)
    path = tmp_path / "a.m4a"
    with av.open(str(path), "w") as out:
        stream = out.add_stream("aac", rate=16000, layout="mono")
        for i in range(0, len(wave), 1024):
            frame = av.AudioFrame.from_ndarray(wave[None, i : i + 1024], format="fltp", layout="mono")
            frame.rate = 16000
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    assert media.infer_modality(path) == "audio"
    got = media.load(path)
    ref = media.load(tmp_path / "a.wav")
    assert got.shape == (3, 1, 128, 204)
    # the 440 Hz mel band dominates in both
    assert int(got[0, 0, :, 100].argmax()) == int(ref[0, 0, :, 100].argmax())


def test_short_audio_pads(tmp_path):
    sf.write(tmp_path / "blip.wav", np.full(100, 0.1, np.float32), 16000)
    out = media.load(tmp_path / "blip.wav")
    assert out.shape == (3, 1, 128, 204) and torch.isfinite(out).all()


@pytest.mark.parametrize(
    "source,expected",
    [
        ("A photo of a dog.", "text"),
        ("photo.jpg", "image"),
        ("clip.MP4", "video"),
        ("sound.wav", "audio"),
        ("cloud.ply", "point"),
        ("imu.csv", "imu"),
        (b"\xff\xd8\xff\xe0rest", "image"),
        (b"RIFF\x00\x00\x00\x00WAVEfmt ", "audio"),
        (b"\x00\x00\x00\x18ftypisom", "video"),
        (torch.zeros(3, 224, 224), "image"),
        (torch.zeros(15, 3, 2, 224, 224), "video"),
        (torch.zeros(3, 1, 128, 204), "audio"),
        (torch.zeros(77, dtype=torch.long), "text"),
        (torch.zeros(6, 2000), "imu"),
        (np.zeros((1000, 3)), "point"),
        (np.zeros((10, 10, 3), np.uint8), "image"),
        ((np.zeros(16000, np.float32), 16000), "audio"),
        ((np.zeros(16000, np.float32), np.int64(16000)), "audio"),  # soundfile-style numpy rate
    ],
)
def test_infer_modality(source, expected):
    assert media.infer_modality(source) == expected


def test_infer_ambiguous_raises():
    with pytest.raises(media.UnknownFormatError, match="depth or thermal"):
        media.infer_modality(torch.zeros(1, 224, 224))
    with pytest.raises(media.UnknownFormatError, match="pass modality"):
        media.infer_modality(np.zeros((5, 7, 9)))


@pytest.mark.parametrize("modality", ["image", "audio", "video", "depth", "thermal", "imu"])
def test_prepared_tensors_pass_through(modality):
    x = torch.randn(media.PREPARED_SHAPES[modality])
    assert media.load(x, modality) is x


@pytest.mark.parametrize("dtype", [np.float64, np.float16])
def test_prepared_arrays_of_other_float_dtypes_come_back_float32(dtype):
    """A prepared float64 array used to pass through as float64 (the contract is float32)."""
    x = np.random.default_rng(0).standard_normal(media.PREPARED_SHAPES["image"]).astype(dtype)
    out = media.load(x, "image")
    assert out.dtype == torch.float32 and torch.equal(out, torch.from_numpy(x).float())
    t = torch.from_numpy(x).to(torch.bfloat16)
    assert media.load(t, "image").dtype == torch.float32


def test_integer_arrays_of_item_shape_are_raw_data():
    img = np.random.default_rng(0).integers(0, 255, (3, 224, 224), dtype=np.uint8)
    out = media.load(img, "image")
    assert out.dtype == torch.float32 and torch.equal(out, media.load(Image.fromarray(img.transpose(1, 2, 0))))
    depth_mm = torch.full((1, 224, 224), 2500, dtype=torch.int32)
    assert torch.allclose(media.load(depth_mm, "depth"), torch.full((1, 224, 224), 2.5))


def test_load_batch(jpg):
    batch = media.load_batch([jpg, jpg.read_bytes()], "image")
    assert batch.shape == (2, 3, 224, 224) and torch.equal(batch[0], batch[1])
    assert media.load_batch([jpg, jpg]).shape == (2, 3, 224, 224)
    with pytest.raises(media.UnknownFormatError, match="mixed modalities"):
        media.load_batch([jpg, "a caption"])
    with pytest.raises(media.EmptyMediaError):
        media.load_batch([], "image")


def test_train_transform_shape_and_randomness():
    img = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 400, 3), dtype=np.uint8))
    tf = media.image_train_transform()
    torch.manual_seed(0)
    a = tf(img)
    torch.manual_seed(0)
    b = tf(img)
    c = tf(img)
    assert a.shape == (3, 224, 224) and torch.equal(a, b) and not torch.equal(a, c)


def test_import_is_light():
    import subprocess
    import sys

    code = "import sys, ibllm_agent.media; print(any(m in sys.modules for m in ('torch', 'PIL', 'av')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
