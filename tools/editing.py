"""Image editing: remove / replace an object (GroundingDINO → SAM mask → SD inpainting) and
InstructPix2Pix.

As in GPT4Tools' ``ImageEditing``: the object's SAM masks are merged and grown by 20 px, image and
mask are resized to the 512² canvas SD-inpainting was trained on, and the result is resized back to
the input size. "Remove" inpaints with the prompt "background".
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ibllm_agent.tools.generation import run_pipeline
from ibllm_agent.tools.images import ToolOptions

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image

__all__ = ["REMOVE_PROMPT", "dilate", "inpaint", "instruct"]

REMOVE_PROMPT = "background"


def dilate(masks: Sequence[np.ndarray], pixels: int) -> np.ndarray:
    """Union of ``masks`` grown by ``pixels`` (square kernel), as a bool [H, W] array."""
    import cv2
    import numpy as np

    union = np.zeros_like(masks[0], dtype=np.uint8)
    for m in masks:
        union |= m.astype(np.uint8)
    if pixels > 0:
        union = cv2.dilate(union, np.ones((2 * pixels + 1, 2 * pixels + 1), np.uint8))
    return union.astype(bool)


def inpaint(pipe: Any, image: Image.Image, mask: np.ndarray, prompt: str, options: ToolOptions) -> Image.Image:
    """SD-inpainting of ``mask`` (True = repaint) on the square canvas, back at the input size."""
    import numpy as np
    from PIL import Image

    size = options.diffusion_size
    canvas = image.convert("RGB").resize((size, size))
    mask_img = Image.fromarray(mask.astype(np.uint8) * 255).resize((size, size), resample=0)  # nearest
    out = run_pipeline(pipe, "inpainting", options, 50, prompt=prompt, image=canvas, mask_image=mask_img,
                       height=size, width=size)
    return out.resize(image.size)


def instruct(pipe: Any, image: Image.Image, text: str, options: ToolOptions) -> Image.Image:
    """InstructPix2Pix with GPT4Tools' settings (40 steps, image guidance 1.2), at the input size."""
    out = run_pipeline(pipe, "instruct pix2pix", options, 40, prompt=text, image=image.convert("RGB"),
                       image_guidance_scale=1.2)
    return out if out.size == image.size else out.resize(image.size)
