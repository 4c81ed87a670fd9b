"""Image preprocessing, identical to the reference ``load_and_transform_vision_data``.

PIL → RGB → Resize(224, bicubic; shorter side to 224, on the PIL image) → CenterCrop(224) →
ToTensor → Normalize(CLIP mean/std)  ⇒  float32 [3, 224, 224].

``load_image`` computes the same numbers with less overhead (``fast_transform``; equality tested bit
for bit against ``image_transform`` in tests/test_media_image_fast.py): Pillow's resize and crop as
torchvision calls them, then ToTensor + Normalize as one table lookup (the float32 value of each byte
per channel, computed once with the very same torch ops: ÷255, −mean, ÷std). ``load_batch`` decodes
images on a thread pool (Pillow releases the GIL while decoding and resampling).

Not used, because they change the output: JPEG draft mode (DCT-domain downscaling), Pillow's
``reducing_gap``, and ``resize(box=...)`` to skip the pixels the crop discards (Pillow passes the box
as float32, which moves the filter centres by ~1e-5 px and flips ~0.1 % of the pixels by one level).
"""

from __future__ import annotations

import warnings
from typing import Any

from .errors import (
    EmptyMediaError,
    InvalidValuesError,
    MediaError,
    MediaTooLargeError,
    UnknownFormatError,
    UnreadableMediaError,
)
from .limits import MediaLimits
from .sources import describe, is_bytes, is_filelike, is_path, open_binary, short

IMAGE_SIZE = 224
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def image_transform():
    """The inference transform (PIL image → normalised [3,224,224])."""
    from torchvision import transforms as T

    return T.Compose(
        [
            T.Resize(IMAGE_SIZE, interpolation=T.InterpolationMode.BICUBIC),
            T.CenterCrop(IMAGE_SIZE),
            T.ToTensor(),
            T.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
        ]
    )


def _output_size(width: int, height: int) -> tuple[int, int]:
    """torchvision ``Resize(224)`` on a PIL image: shorter side → 224, longer = int(224·long/short)."""
    if width <= height:
        return IMAGE_SIZE, int(IMAGE_SIZE * height / width)
    return int(IMAGE_SIZE * width / height), IMAGE_SIZE


_LUT = None
_CHANNEL_OFFSETS = None


def _normalize_table():
    """[3*256] float32 numpy: ToTensor + Normalize of each byte value per channel (same torch ops)."""
    global _LUT, _CHANNEL_OFFSETS
    if _LUT is None:
        import numpy as np
        import torch

        v = torch.arange(256, dtype=torch.uint8).to(torch.float32).div(255)  # ToTensor
        mean = torch.as_tensor(CLIP_MEAN, dtype=torch.float32).view(-1, 1)
        std = torch.as_tensor(CLIP_STD, dtype=torch.float32).view(-1, 1)
        _CHANNEL_OFFSETS = np.arange(0, 3 * 256, 256, dtype=np.intp).reshape(3, 1, 1)
        _LUT = v.expand(3, 256).clone().sub_(mean).div_(std).reshape(-1).numpy()  # Normalize
    return _LUT


def fast_transform(rgb):
    """``image_transform()(rgb)`` for an RGB PIL image, bit-identical (see module doc)."""
    import numpy as np
    import torch
    from PIL import Image

    width, height = rgb.size
    new_w, new_h = _output_size(width, height)
    if (new_w, new_h) != (width, height):  # torchvision skips the resize when the size is already right
        rgb = rgb.resize((new_w, new_h), Image.Resampling.BICUBIC)
    # CenterCrop (torchvision rounds the offsets like this)
    left = int(round((new_w - IMAGE_SIZE) / 2.0))
    top = int(round((new_h - IMAGE_SIZE) / 2.0))
    out = rgb.crop((left, top, left + IMAGE_SIZE, top + IMAGE_SIZE))
    table = _normalize_table()
    index = np.asarray(out, dtype=np.uint8).transpose(2, 0, 1).astype(np.intp)  # [3,224,224]
    index += _CHANNEL_OFFSETS  # channel c reads table row c
    return torch.from_numpy(table[index])


def image_train_transform():
    """The training transform of the reference dataset (PIL image → normalised [3,224,224]).

    RandomResizedCrop(224, scale (0.9, 1.0), ratio (0.75, 1.3333), bicubic) → ToTensor → CLIP
    normalise. Random: seed torch's global RNG for reproducibility.
    """
    from torchvision import transforms as T

    return T.Compose(
        [
            T.RandomResizedCrop(
                IMAGE_SIZE, scale=(0.9, 1.0), ratio=(0.75, 1.3333), interpolation=T.InterpolationMode.BICUBIC
            ),
            T.ToTensor(),
            T.Normalize(mean=CLIP_MEAN, std=CLIP_STD),
        ]
    )


def _check_pixels(width: int, height: int, desc: str, limits: MediaLimits, modality: str) -> None:
    if width <= 0 or height <= 0:
        raise EmptyMediaError(desc, f"image has no pixels ({width}x{height})", modality)
    if limits.max_pixels is not None and width * height > limits.max_pixels:
        raise MediaTooLargeError(
            desc, f"image is {width}x{height} = {width * height} pixels, above max_pixels={limits.max_pixels}", modality
        )


def array_to_pil(array: Any, desc: str, modality: str = "image"):
    """A decoded image array → PIL. Accepts uint8 (or float in [0,1]) HxW, HxWxC or CxHxW (C in 1,3,4)."""
    import numpy as np
    from PIL import Image

    arr = array.detach().cpu().numpy() if hasattr(array, "detach") else np.asarray(array)
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 3, 4):
        arr = np.moveaxis(arr, 0, -1)  # CHW → HWC
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] not in (3, 4)):
        raise InvalidValuesError(desc, f"array of shape {arr.shape} is not an image (expected HxW, HxWx3/4 or 3xHxW)", modality)
    if arr.size == 0:
        raise EmptyMediaError(desc, "image array is empty", modality)
    if arr.dtype.kind == "f":
        if not np.isfinite(arr).all():
            raise InvalidValuesError(desc, "image array contains NaN or inf", modality)
        if arr.min() < 0.0 or arr.max() > 1.0:
            raise InvalidValuesError(desc, "float image values must lie in [0, 1]", modality)
        arr = np.round(arr * 255.0).astype(np.uint8)
    elif arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    elif arr.dtype != np.uint8:
        raise InvalidValuesError(desc, f"image arrays must be uint8 or float in [0,1], not {arr.dtype}", modality)
    return Image.fromarray(np.ascontiguousarray(arr))


def open_pil(source: Any, limits: MediaLimits, modality: str = "image"):
    """Open any image source as a *loaded* PIL image (mode unchanged), enforcing limits.

    Raises UnreadableMediaError for corrupt/truncated files, MediaTooLargeError above max_pixels.
    """
    from PIL import Image, UnidentifiedImageError

    desc = describe(source)
    if isinstance(source, Image.Image):
        _check_pixels(*source.size, desc, limits, modality)
        return source
    if hasattr(source, "shape"):
        shape = tuple(source.shape)
        hw = shape[:2] if len(shape) == 2 or shape[-1] in (1, 3, 4) else shape[-2:]
        _check_pixels(int(hw[1]), int(hw[0]), desc, limits, modality)
        return array_to_pil(source, desc, modality)
    if not (is_path(source) or is_bytes(source) or is_filelike(source)):
        raise UnknownFormatError(desc, f"unsupported image source type {type(source).__name__}", modality)
    handle = open_binary(source, limits, modality)
    try:
        with warnings.catch_warnings():
            # We enforce our own pixel limit; PIL's warning would only be noise.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(handle)
            _check_pixels(*img.size, desc, limits, modality)
            img.load()
    except MediaError:  # (a ValueError: must not be re-wrapped below)
        raise
    except Image.DecompressionBombError as exc:
        raise MediaTooLargeError(desc, f"decompression bomb ({short(exc)})", modality) from exc
    except UnidentifiedImageError as exc:
        raise UnreadableMediaError(desc, "not a recognised image format", modality) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise UnreadableMediaError(desc, f"corrupt or truncated image ({short(exc)})", modality) from exc
    return img


def load_image(source: Any, limits: MediaLimits):
    """Any image source → float32 [3,224,224], reference-exact for files."""
    img = open_pil(source, limits, "image")
    try:
        rgb = img.convert("RGB")
    except (OSError, ValueError) as exc:
        raise UnreadableMediaError(describe(source), f"cannot convert to RGB ({short(exc)})", "image") from exc
    return fast_transform(rgb)
