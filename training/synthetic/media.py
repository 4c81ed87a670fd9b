"""Synthetic media with known content: a scene is sampled from an RNG, then rendered to a file.

- image: 1–3 coloured shapes (circle, square, triangle, diamond) on a plain background, PNG;
- video: one shape moving in a direction over a background, MP4 (MPEG-4 part 2 via PyAV);
- audio: a steady tone, a rising/falling chirp, noise bursts or a "speech" stand-in (a pitch-varying
  harmonic voice with syllable envelopes), 16 kHz mono PCM-16 WAV (soundfile);
- point: points on the surface of a sphere, cube, cylinder, cone or torus, ``[N, 3]`` float32 NPY.

Every scene is a plain dict (JSON-able) so captions, questions and tool observations are derived from
the same facts the file shows. Rendering depends only on the scene, so bytes are reproducible.
"""

from __future__ import annotations

import io
import math
import random
from typing import Any

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 80, 220), "yellow": (235, 210, 40),
    "purple": (140, 60, 180), "orange": (240, 140, 30), "black": (20, 20, 20), "white": (245, 245, 245),
    "gray": (128, 128, 128), "pink": (240, 130, 180),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SOLIDS = ("sphere", "cube", "cylinder", "cone", "torus")
POSITIONS = ("top left", "top right", "bottom left", "bottom right", "center")
DIRECTIONS = ("left to right", "right to left", "top to bottom", "bottom to top")
SOUNDS = ("tone", "chirp", "noise", "speech")
IMAGE_SIZE = 128
VIDEO_SIZE, VIDEO_FRAMES, VIDEO_FPS = 64, 8, 8
SAMPLE_RATE, AUDIO_SECONDS = 16000, 1.0
POINTS = 2048
_POS_XY = {"top left": (0.27, 0.27), "top right": (0.73, 0.27), "bottom left": (0.27, 0.73),
           "bottom right": (0.73, 0.73), "center": (0.5, 0.5)}


def _colors(rng: random.Random, k: int, avoid: str | None = None) -> list[str]:
    return rng.sample([c for c in COLORS if c != avoid], k)


# -- scenes --------------------------------------------------------------------------------------------
def image_scene(rng: random.Random) -> dict[str, Any]:
    background = rng.choice(["white", "black", "gray", "yellow", "blue"])
    n = rng.randint(1, 3)
    shapes = rng.sample(SHAPES, n)
    colors = _colors(rng, n, avoid=background)
    places = rng.sample(POSITIONS, n)
    objects = [{"shape": s, "color": c, "position": p, "size": rng.choice(["small", "large"])}
               for s, c, p in zip(shapes, colors, places)]
    return {"modality": "image", "background": background, "objects": objects}


def video_scene(rng: random.Random) -> dict[str, Any]:
    background = rng.choice(["white", "black", "gray"])
    color = _colors(rng, 1, avoid=background)[0]
    return {"modality": "video", "background": background, "shape": rng.choice(SHAPES), "color": color,
            "direction": rng.choice(DIRECTIONS)}


def audio_scene(rng: random.Random) -> dict[str, Any]:
    kind = rng.choice(SOUNDS)
    scene: dict[str, Any] = {"modality": "audio", "sound": kind}
    if kind == "tone":
        scene["pitch"] = rng.choice(["low", "medium", "high"])
    elif kind == "chirp":
        scene["sweep"] = rng.choice(["rising", "falling"])
    elif kind == "noise":
        scene["bursts"] = rng.randint(1, 3)
    else:
        scene["voice"] = rng.choice(["low", "high"])
        scene["syllables"] = rng.randint(3, 6)
    return scene


def point_scene(rng: random.Random) -> dict[str, Any]:
    return {"modality": "point", "solid": rng.choice(SOLIDS), "size": rng.choice(["small", "large"])}


SCENES = {"image": image_scene, "video": video_scene, "audio": audio_scene, "point": point_scene}
EXTENSIONS = {"image": ".png", "video": ".mp4", "audio": ".wav", "point": ".npy"}


# -- rendering -----------------------------------------------------------------------------------------
def _draw_shape(draw: Any, shape: str, cx: float, cy: float, r: float, fill: tuple[int, int, int]) -> None:
    if shape == "circle":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "square":
        draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == "triangle":
        draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    else:  # diamond
        draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)


def object_box(obj: dict[str, Any], size: int = IMAGE_SIZE) -> tuple[int, int, int, int]:
    """Pixel box (x1, y1, x2, y2) of an image-scene object (what a detector should report)."""
    fx, fy = _POS_XY[obj["position"]]
    r = size * (0.2 if obj["size"] == "large" else 0.12)
    return (round(fx * size - r), round(fy * size - r), round(fx * size + r), round(fy * size + r))


def render_image(scene: dict[str, Any]) -> bytes:
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), COLORS[scene["background"]])
    draw = ImageDraw.Draw(img)
    for obj in scene["objects"]:
        x1, y1, x2, y2 = object_box(obj)
        _draw_shape(draw, obj["shape"], (x1 + x2) / 2, (y1 + y2) / 2, (x2 - x1) / 2, COLORS[obj["color"]])
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _video_frames(scene: dict[str, Any]) -> list[np.ndarray]:
    from PIL import Image, ImageDraw

    frames = []
    s, r = VIDEO_SIZE, VIDEO_SIZE * 0.14
    for t in range(VIDEO_FRAMES):
        a = 0.2 + 0.6 * t / (VIDEO_FRAMES - 1)  # progress along the path, 0.2 → 0.8 of the frame
        x, y = {"left to right": (a, 0.5), "right to left": (1 - a, 0.5), "top to bottom": (0.5, a),
                "bottom to top": (0.5, 1 - a)}[scene["direction"]]
        img = Image.new("RGB", (s, s), COLORS[scene["background"]])
        _draw_shape(ImageDraw.Draw(img), scene["shape"], x * s, y * s, r, COLORS[scene["color"]])
        frames.append(np.asarray(img))
    return frames


def render_video(scene: dict[str, Any]) -> bytes:
    import av

    buf = io.BytesIO()
    with av.open(buf, mode="w", format="mp4") as container:
        stream = container.add_stream("mpeg4", rate=VIDEO_FPS)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "yuv420p"
        stream.codec_context.thread_count = 1  # one thread: identical bytes on every machine load
        stream.codec_context.options = {"bitexact": "1"}
        container.metadata["encoder"] = "ibllm-agent synthetic"
        for arr in _video_frames(scene):
            for packet in stream.encode(av.VideoFrame.from_ndarray(arr, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return buf.getvalue()


def audio_signal(scene: dict[str, Any], seed: int) -> np.ndarray:
    """The waveform ``[T]`` float32 in [-1, 1] (``seed`` drives the noise)."""
    n = int(SAMPLE_RATE * AUDIO_SECONDS)
    t = np.arange(n, dtype=np.float64) / SAMPLE_RATE
    noise = np.random.default_rng(seed)
    kind = scene["sound"]
    if kind == "tone":
        f = {"low": 220.0, "medium": 440.0, "high": 880.0}[scene["pitch"]]
        x = np.sin(2 * math.pi * f * t)
    elif kind == "chirp":
        f0, f1 = (300.0, 1500.0) if scene["sweep"] == "rising" else (1500.0, 300.0)
        x = np.sin(2 * math.pi * (f0 * t + (f1 - f0) * t**2 / (2 * AUDIO_SECONDS)))
    elif kind == "noise":
        x = np.zeros(n)
        k = scene["bursts"]
        for i in range(k):
            start = int(n * (i + 0.25) / k)
            length = int(0.08 * n)
            x[start:start + length] = noise.uniform(-1, 1, length)
    else:  # speech stand-in: a gliding harmonic voice chopped into syllables
        f0 = {"low": 120.0, "high": 220.0}[scene["voice"]] * (1 + 0.1 * np.sin(2 * math.pi * 3 * t))
        phase = 2 * math.pi * np.cumsum(f0) / SAMPLE_RATE
        x = sum(np.sin(h * phase) / h for h in range(1, 6))
        env = np.clip(np.sin(math.pi * scene["syllables"] * t / AUDIO_SECONDS) ** 2, 0, 1)
        x = x * env + 0.02 * noise.standard_normal(n)
    x = 0.5 * x / max(float(np.max(np.abs(x))), 1e-6)
    return x.astype(np.float32)


def render_audio(scene: dict[str, Any], seed: int) -> bytes:
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, audio_signal(scene, seed), SAMPLE_RATE, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def point_cloud(scene: dict[str, Any], seed: int) -> np.ndarray:
    """``[POINTS, 3]`` float32 points on the solid's surface, centred at the origin."""
    g = np.random.default_rng(seed)
    u, v = g.uniform(0, 1, POINTS), g.uniform(0, 1, POINTS)
    solid = scene["solid"]
    if solid == "sphere":
        p = g.standard_normal((POINTS, 3))
        p /= np.linalg.norm(p, axis=1, keepdims=True)
    elif solid == "cube":
        p = g.uniform(-1, 1, (POINTS, 3))
        axis = g.integers(0, 3, POINTS)
        p[np.arange(POINTS), axis] = np.sign(g.uniform(-1, 1, POINTS))
    elif solid == "cylinder":
        a = 2 * math.pi * u
        p = np.stack([np.cos(a), np.sin(a), 2 * v - 1], axis=1)
    elif solid == "cone":
        a, h = 2 * math.pi * u, np.sqrt(v)  # sqrt: uniform over the lateral surface
        p = np.stack([h * np.cos(a), h * np.sin(a), 1 - 2 * h], axis=1)
    else:  # torus, tube radius 0.3
        a, b = 2 * math.pi * u, 2 * math.pi * v
        p = np.stack([(1 + 0.3 * np.cos(b)) * np.cos(a), (1 + 0.3 * np.cos(b)) * np.sin(a), 0.3 * np.sin(b)], axis=1)
    scale = 1.0 if scene["size"] == "large" else 0.5
    return (scale * p).astype(np.float32)


def render_point(scene: dict[str, Any], seed: int) -> bytes:
    buf = io.BytesIO()
    np.save(buf, point_cloud(scene, seed), allow_pickle=False)
    return buf.getvalue()


def render(scene: dict[str, Any], seed: int) -> bytes:
    """The file bytes of a scene (``seed`` drives noise in audio and point sampling)."""
    m = scene["modality"]
    if m == "image":
        return render_image(scene)
    if m == "video":
        return render_video(scene)
    if m == "audio":
        return render_audio(scene, seed)
    return render_point(scene, seed)
