"""Modality inference from a source: file extension, magic bytes, decoded type or tensor shape."""

from __future__ import annotations

import numbers
import os
from typing import Any

from .errors import UnknownFormatError
from .formats import EXTENSIONS
from .limits import DEFAULT_LIMITS
from .sources import (
    check_path,
    describe,
    head_bytes,
    is_bytes,
    is_filelike,
    is_path,
    sniff,
    suffix,
)

# Shapes of already-preprocessed items (no batch dimension). [1, 224, 224] is depth *or* thermal.
PREPARED_SHAPES: dict[str, tuple[int, ...]] = {
    "image": (3, 224, 224),
    "audio": (3, 1, 128, 204),
    "video": (15, 3, 2, 224, 224),
    "text": (77,),
    "point": (8192, 3),
    "depth": (1, 224, 224),
    "thermal": (1, 224, 224),
    "imu": (6, 2000),
}


def _from_shape(shape: tuple[int, ...], dtype_kind: str, desc: str) -> str:
    for modality, want in PREPARED_SHAPES.items():
        if shape == want and modality not in ("depth", "thermal"):
            return modality
    if shape == (1, 224, 224):
        raise UnknownFormatError(desc, "a [1, 224, 224] map is depth or thermal: pass modality=", None)
    if len(shape) == 2 and shape[1] == 3 and shape[0] != 3:
        return "point"
    if len(shape) == 2 and 6 in shape and dtype_kind == "f" and max(shape) > 6:
        return "imu"
    if len(shape) == 3 and shape[-1] in (3, 4) and dtype_kind in "ub":
        return "image"
    raise UnknownFormatError(desc, f"cannot infer the modality of an array of shape {shape}: pass modality=", None)


def _array_modality(source: Any, desc: str) -> str:
    import numpy as np
    import torch

    if isinstance(source, torch.Tensor):
        kind = "f" if source.is_floating_point() else ("b" if source.dtype == torch.bool else ("u" if source.dtype == torch.uint8 else "i"))
        if tuple(source.shape) == (77,) and kind != "i":
            raise UnknownFormatError(desc, "text token ids must be an integer tensor", None)
        return _from_shape(tuple(source.shape), kind, desc)
    arr = np.asarray(source)
    return _from_shape(tuple(arr.shape), arr.dtype.kind, desc)


def _npy_modality(head: bytes, desc: str) -> str:
    """Decide point / imu / depth from a .npy header's shape (without reading the payload)."""
    import ast

    try:
        end = head.index(b"}")
        header = ast.literal_eval(head[head.index(b"{") : end + 1].decode("latin-1"))
        shape = tuple(header["shape"])
    except (ValueError, SyntaxError, KeyError):
        raise UnknownFormatError(desc, "cannot read the .npy header: pass modality=", None) from None
    if len(shape) == 3 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) == 2 and shape[1] == 3 and shape[0] != 3:
        return "point"
    if len(shape) == 2 and 6 in shape and max(shape) > 6:
        return "imu"
    if len(shape) == 2:
        return "depth"
    raise UnknownFormatError(desc, f"cannot infer the modality of a .npy array of shape {shape}: pass modality=", None)


def _looks_like_path(text: str) -> bool:
    if "\n" in text or len(text) > 4096:
        return False
    if os.path.isfile(text):
        return True
    # "photo.jpg" or "my photo.jpg": a path (a missing file then fails loudly instead of being
    # silently tokenised as a caption)
    return os.path.splitext(text)[1].lower() in EXTENSIONS


def infer_modality(source: Any) -> str:
    """The modality a source most likely holds.

    Order: ``Media`` objects carry their own; tensors/arrays by their (preprocessed) shape; PIL
    images are ``image``; strings that look like file paths (an existing file, or ending in a known
    media extension) by extension, else ``text``; other encoded data by magic bytes.
    16-bit PNG/TIFF files are ``depth``; thermal is never inferred (pass ``modality="thermal"``).
    Raises UnknownFormatError when nothing fits.
    """
    from ibllm_agent.types import Media

    if isinstance(source, Media):
        return source.modality
    desc = describe(source)
    if type(source).__module__.startswith("PIL."):
        return "image"
    if hasattr(source, "shape") and hasattr(source, "dtype"):
        return _array_modality(source, desc)
    if isinstance(source, tuple) and len(source) == 2 and isinstance(source[1], numbers.Integral):
        return "audio"  # (waveform, sample_rate); the rate may be a numpy integer (e.g. from soundfile)
    if isinstance(source, str) and not _looks_like_path(source):
        return "text"
    if not (is_path(source) or is_bytes(source) or is_filelike(source)):
        raise UnknownFormatError(desc, f"unsupported source type {type(source).__name__}", None)
    ext = suffix(source)
    if is_path(source) and EXTENSIONS.get(ext, "array") == "array" and not os.path.isfile(os.fspath(source)):
        check_path(source, DEFAULT_LIMITS)  # content needed but no file: MediaNotFoundError
    head = head_bytes(source, 256)
    guess = EXTENSIONS.get(ext) or sniff(head)
    if ext == ".txt":
        return "text"
    if guess == "array" or (guess is None and head.startswith(b"\x93NUMPY")):
        return _npy_modality(head, desc)
    if guess == "image" and (head.startswith(b"\x89PNG") or head[:4] in (b"II*\x00", b"MM\x00*")):
        # 16-bit single-channel PNG / TIFF → depth (PIL reads only the header here).
        import io

        from PIL import Image, UnidentifiedImageError

        try:
            data = head_bytes(source, 1 << 16) if head[:4] in (b"II*\x00", b"MM\x00*") else head
            with Image.open(io.BytesIO(data)) as img:
                if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
                    return "depth"
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
            pass
    if guess is None:
        raise UnknownFormatError(desc, f"unrecognised file format (extension {ext!r}): pass modality=", None)
    return guess
