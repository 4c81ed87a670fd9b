"""The fast image path equals torchvision's reference transform bit for bit; batches load in parallel."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

Image = pytest.importorskip("PIL.Image")

from ibllm_agent import media
from ibllm_agent.media.image import fast_transform, image_transform

SIZES = [(224, 224), (224, 300), (300, 224), (225, 224), (223, 224), (1, 1), (3, 500), (500, 3), (640, 360),
         (640, 848), (374, 249), (100, 50), (448, 224), (1920, 1080), (1080, 1920), (97, 1301)]  # fmt: skip


@pytest.mark.parametrize("size", SIZES)
def test_fast_transform_is_bit_identical_to_torchvision(size):
    rng = np.random.default_rng(size[0] * 7919 + size[1])
    w, h = size
    # noise plus a gradient: both high-frequency and smooth content through the bicubic filter
    grad = np.linspace(0, 255, w)[None, :, None] * np.ones((h, 1, 3))
    pixels = np.clip(0.5 * grad + 0.5 * rng.integers(0, 256, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(pixels)
    got, want = fast_transform(img), image_transform()(img)
    assert got.dtype == torch.float32 and got.shape == (3, 224, 224)
    assert torch.equal(got, want)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "I;16"])
def test_other_modes_go_through_rgb_like_the_reference(mode):
    rng = np.random.default_rng(1)
    img = Image.fromarray(rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (300, 260), dtype=np.uint16))
    buf = io.BytesIO()
    img.save(buf, "TIFF" if mode in ("CMYK", "I;16") else "PNG")
    got = media.load(buf.getvalue(), "image")
    want = image_transform()(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))
    assert torch.equal(got, want)


def test_load_batch_in_parallel_equals_one_by_one_and_keeps_order(tmp_path, golden_dir):
    paths = sorted((golden_dir / "media").glob("*.jpg")) * 3
    batch = media.load_batch(paths, "image")
    assert batch.shape == (len(paths), 3, 224, 224)
    for i, p in enumerate(paths):
        assert torch.equal(batch[i], media.load(p, "image"))
    # The first bad item's error surfaces, as with a sequential loop.
    (tmp_path / "bad.jpg").write_bytes(b"not an image")
    with pytest.raises(media.UnreadableMediaError, match="bad.jpg"):
        media.load_batch([paths[0], tmp_path / "bad.jpg", paths[1]], "image")
