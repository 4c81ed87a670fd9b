"""Tiny synthetic training data shared by the training tests and ``benchmarks/train.py``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

COLORS = {"red": (220, 20, 20), "green": (20, 200, 20), "blue": (20, 20, 220), "yellow": (230, 230, 20),
          "white": (250, 250, 250), "black": (5, 5, 5), "purple": (150, 20, 160), "orange": (250, 140, 10)}


def make_images(root: Path) -> dict[str, Path]:
    from PIL import Image

    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, rgb in COLORS.items():
        p = root / f"{name}.png"
        Image.new("RGB", (48, 48), rgb).save(p)
        out[name] = p
    return out


def make_caption_tsv(root: Path) -> Path:
    """8 image-caption pairs (one per colour), the reference's TSV layout with local paths."""
    images = make_images(root / "images")
    tsv = root / "pairs.tsv"
    tsv.write_text("url\tcaption\n" + "".join(f"{p}\tA {c} square.\n" for c, p in images.items()), encoding="utf-8")
    return tsv


def make_alpaca(root: Path, n: int = 8) -> Path:
    recs = [{"instruction": f"Repeat the word {w}.", "input": "", "output": f"{w} {w}."}
            for w in ["cat", "dog", "sun", "car", "sea", "sky", "red", "day", "map", "box"][:n]]
    root.mkdir(parents=True, exist_ok=True)
    path = root / "alpaca.json"
    path.write_text(json.dumps(recs), encoding="utf-8")
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and far faster than two threads on shared cores (measured here:
    0.75 ms vs 12 ms per tiny matmul under load); imported by the training test modules."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
