"""Helpers shared by several test modules (not tests themselves; fixtures live in conftest.py)."""

from __future__ import annotations

import wave

import numpy as np

# ImageBind's per-modality logit scales (reference ``postprocessors``): the norm of each embedding.
SCALES = {
    "vision": 1.0,
    "text": 1 / 0.07,
    "audio": 20.0,
    "depth": 5.0,
    "thermal": 10.0,
    "imu": 5.0,
    "point": 1.0,
}


def unit(a: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm."""
    return a / np.linalg.norm(a, axis=-1, keepdims=True)


def clustered(n: int, d: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    """[n, d] unit vectors around random centres, rounded to float16 values (what a cache stores)."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, d)))
    x = centres[rng.integers(0, clusters, n)] + 0.5 * rng.standard_normal((n, d)) / np.sqrt(d)
    return unit(x).astype(np.float16).astype(np.float32)


def write_video(path, frames: int, fps: int = 10, size=(64, 48), gop: int = 10, bframes: int = 0, crf: int = 0):
    """H.264 mp4 whose frame k carries k in binary: 16 black/white 4×4 blocks in rows 0..7
    (8 blocks per row, so width ≥ 32)."""
    import av

    w, h = size
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = w, h, "yuv420p"
        stream.options = {"crf": str(crf), "g": str(gop), "bf": str(bframes)}
        for k in range(frames):
            img = np.zeros((h, w, 3), np.uint8)
            for bit in range(16):
                if k >> bit & 1:
                    row, col = divmod(bit, 8)
                    img[4 * row : 4 * row + 4, 4 * col : 4 * col + 4] = 255
            img[8:, :, 1] = (k * 7) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return path


def write_wav(path: Path, samples: np.ndarray, rate: int = 16_000) -> Path:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(rate)
        w.writeframes(pcm.tobytes())
    return path


def tone(seconds: float, rate: int = 16_000, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t) + 0.05 * np.random.default_rng(0).standard_normal(t.size)).astype(np.float32)
