"""What every vision tool shares: reading a workspace image safely, checking text arguments, saving a
result as a new workspace file, and the knobs tools take (``ToolOptions``).

Images are opened header-first: the pixel count is checked before decoding, so an oversized file is a
``ToolInputError`` (an error observation in the agent), never a decompression bomb or an OOM.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ibllm_agent.errors import ToolInputError

if TYPE_CHECKING:
    from PIL import Image

__all__ = ["MAX_IMAGE_PIXELS", "ToolOptions", "open_image", "require_text", "save_image", "workspace_name"]

# 4096 x 4096: far above the 512-px GPT4Tools workspace images, small enough that every tool
# (SAM at 1024 px, diffusion at 512 px) works on a bounded copy without running out of memory.
MAX_IMAGE_PIXELS = 4096 * 4096


@dataclass(frozen=True)
class ToolOptions:
    """Knobs of the vision tools (defaults = GPT4Tools').

    ``steps``: diffusion steps for every diffusion tool (``None`` = each tool's GPT4Tools default:
    inpainting/text-to-image 50, InstructPix2Pix 40, unCLIP 20). ``diffusion_size``: side of the square
    SD canvas (inpainting 512 as in GPT4Tools; text-to-image output). ``unclip_size``: side of
    the unCLIP output (768 for SD 2.1 unCLIP). ``seed``: fixed seed for diffusion (``None`` = random).
    ``mask_dilation``: pixels the SAM mask grows before inpainting (GPT4Tools pads by 20).
    ``progress``: show diffusers' progress bar (on stderr) during diffusion.
    ``sam_points_per_side``: the point grid of SAM's automatic mask generator ("Segment the Image").
    """

    box_threshold: float = 0.3
    text_threshold: float = 0.25
    max_image_pixels: int = MAX_IMAGE_PIXELS
    steps: int | None = None
    diffusion_size: int = 512
    unclip_size: int = 768
    seed: int | None = None
    mask_dilation: int = 20
    progress: bool = True
    sam_points_per_side: int = 32


def require_text(value: Any, what: str) -> str:
    """``value`` stripped; a ``ToolInputError`` naming ``what`` when it is empty."""
    text = str(value or "").strip().strip("\"'").strip()
    if not text:
        raise ToolInputError(f"the {what} is empty; write it after the image path, separated by a comma")
    return text


def open_image(path: str | os.PathLike[str], options: ToolOptions | None = None) -> Image.Image:
    """The RGB image at ``path`` (already resolved inside the workspace).

    Raises:
        ToolInputError: not an image, or more than ``options.max_image_pixels`` pixels (checked from
            the header, before the pixels are decoded).
    """
    from PIL import Image, UnidentifiedImageError

    limit = (options or ToolOptions()).max_image_pixels
    p = Path(path)
    try:
        with Image.open(p) as img:
            w, h = img.size
            if w * h > limit:
                raise ToolInputError(
                    f"image {p.name} is {w}x{h} ({w * h / 1e6:.1f} MP); the tools accept at most "
                    f"{limit / 1e6:.1f} MP — use a smaller image"
                )
            img.load()
            return img.convert("RGB")
    except UnidentifiedImageError:
        raise ToolInputError(f"{p.name} is not an image file this tool can read") from None
    except Image.DecompressionBombError as exc:
        raise ToolInputError(f"image {p.name} is too large to open: {exc}") from None
    except OSError as exc:
        raise ToolInputError(f"cannot read image {p.name}: {exc}") from None


def workspace_name(path: str | os.PathLike[str]) -> str:
    """The workspace name of ``path`` when a tool context is active, else its file name."""
    from ibllm_agent.agent.registry import _CONTEXT

    ctx = _CONTEXT.get()
    if ctx is None:
        return Path(path).name
    return ctx.workspace.name_of(path)


def save_image(image: Image.Image, modality: str = "image") -> str:
    """Save ``image`` as a new PNG in the thread workspace; returns its workspace name."""
    from ibllm_agent.agent.registry import current_context

    name, path = current_context().workspace.new_file(modality)
    try:
        image.save(path, "PNG")
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return name
