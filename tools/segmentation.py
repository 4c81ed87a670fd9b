"""Segment Anything: masks from detection boxes, automatic masks, and mask overlays.

Official SAM ``.pth`` files are loaded into ``segment_anything``'s own architecture
(``sam_model_registry`` builders, strict ``load_state_dict``, ``torch.load(weights_only=True)``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ibllm_agent.errors import CheckpointError

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["automatic_masks", "box_masks", "load_sam", "overlay_masks"]


def load_sam(path: str | os.PathLike[str], variant: str = "vit_h", *, device: Any = "cpu") -> Any:
    """The official SAM checkpoint ``path`` (``vit_h``/``vit_l``/``vit_b``) in ``segment_anything.Sam``."""
    import torch
    from segment_anything import sam_model_registry

    if variant not in ("vit_h", "vit_l", "vit_b"):
        raise CheckpointError(f"unknown SAM variant {variant!r}; expected vit_h, vit_l or vit_b")
    with torch.device("meta"):
        sam = sam_model_registry[variant]()
    state = torch.load(path, map_location="cpu", weights_only=True)
    try:
        sam.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} is not a SAM {variant} checkpoint: {str(exc)[:300]}") from None
    return sam.eval().to(device)


def box_masks(sam: Any, image: Image.Image, boxes: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """One boolean mask [H, W] per box ``(x1, y1, x2, y2)`` (SAM with a box prompt, single output)."""
    import numpy as np
    import torch
    from segment_anything import SamPredictor

    if not boxes:
        return []
    predictor = SamPredictor(sam)
    arr = np.asarray(image.convert("RGB"))
    predictor.set_image(arr)
    device = next(sam.parameters()).device
    b = torch.tensor([list(map(float, box)) for box in boxes], device=device)
    b = predictor.transform.apply_boxes_torch(b, arr.shape[:2])
    with torch.inference_mode():
        masks, _, _ = predictor.predict_torch(point_coords=None, point_labels=None, boxes=b, multimask_output=False)
    return [m[0].cpu().numpy().astype(bool) for m in masks]  # masks [N, 1, H, W]


def automatic_masks(sam: Any, image: Image.Image, points_per_side: int = 32) -> list[np.ndarray]:
    """SAM's automatic masks (GPT4Tools "Segment the Image"), largest first."""
    import numpy as np
    from segment_anything import SamAutomaticMaskGenerator

    gen = SamAutomaticMaskGenerator(sam, points_per_side=points_per_side)
    found = gen.generate(np.asarray(image.convert("RGB")))
    found.sort(key=lambda m: m["area"], reverse=True)
    return [m["segmentation"].astype(bool) for m in found]


def mask_colour(i: int) -> tuple[int, int, int]:
    """A distinct, deterministic colour for mask ``i`` (golden-ratio hue steps)."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.85, 0.95)
    return round(r * 255), round(g * 255), round(b * 255)


def overlay_masks(image: Image.Image, masks: Sequence[np.ndarray], alpha: float = 0.5) -> Image.Image:
    """``image`` with each mask blended in its colour (``alpha`` of the colour over the pixel)."""
    import numpy as np
    from PIL import Image

    out = np.asarray(image.convert("RGB"), dtype=np.float32).copy()
    for i, mask in enumerate(masks):
        colour = np.array(mask_colour(i), dtype=np.float32)
        out[mask] = (1 - alpha) * out[mask] + alpha * colour
    return Image.fromarray(out.round().clip(0, 255).astype(np.uint8))
