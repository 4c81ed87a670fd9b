"""Helpers shared by several test modules (not tests themselves; fixtures live in conftest.py)."""

from __future__ import annotations

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
