"""Condition extractors that need no weights, run for real everywhere.

Of GPT4Tools' condition extractors only ``Edge Detection On Image`` (OpenCV Canny, thresholds
100/200) needs no download: line (M-LSD), HED, sketch (HED scribble), pose (OpenPose), depth (DPT)
and normal maps all need model weights, so they are not offered.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["CANNY_HIGH", "CANNY_LOW", "canny"]

CANNY_LOW, CANNY_HIGH = 100, 200  # GPT4Tools Image2Canny


def canny(image: Image.Image, low: int = CANNY_LOW, high: int = CANNY_HIGH) -> Image.Image:
    """Canny edges of ``image`` as a 3-channel image (edges white on black), same size."""
    import cv2
    import numpy as np
    from PIL import Image

    edges = cv2.Canny(np.asarray(image.convert("RGB")), low, high)  # [H, W] uint8 in {0, 255}
    return Image.fromarray(np.repeat(edges[:, :, None], 3, axis=2))
