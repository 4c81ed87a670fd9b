"""Media loading: any attachment → the tensor ImageBind's encoders eat, reference-exact.

    >>> from ibllm_agent import media
    >>> media.load("dog.jpg").shape                      # modality inferred from the file
    torch.Size([3, 224, 224])
    >>> media.load_batch(["A dog.", "A car"], "text").shape
    torch.Size([2, 77])

Per-item shapes (no batch dim): image [3,224,224] · audio [3,1,128,204] · video [15,3,2,224,224] ·
text [77] int64 · point [8192,3] · depth [1,224,224] · thermal [1,224,224] · imu [6,2000].
All loaders return CPU float32 tensors (text: int64). Errors are ``MediaError`` subclasses.

This module imports nothing heavy; torch/PIL/av are imported by the loader that needs them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .errors import (
    EmptyMediaError,
    InvalidValuesError,
    MediaError,
    MediaNotFoundError,
    MediaTooLargeError,
    UnknownFormatError,
    UnreadableMediaError,
)
from .infer import PREPARED_SHAPES, infer_modality
from .limits import DEFAULT_LIMITS, MediaLimits
from .sources import describe, native_order

__all__ = [
    "PREPARED_SHAPES",
    "EmptyMediaError",
    "InvalidValuesError",
    "MediaError",
    "MediaLimits",
    "MediaNotFoundError",
    "MediaTooLargeError",
    "UnknownFormatError",
    "UnreadableMediaError",
    "image_train_transform",
    "infer_modality",
    "load",
    "load_batch",
]  # fmt: skip

def image_train_transform():
    """Training-time image transform (RandomResizedCrop 224, scale (0.9,1), bicubic, CLIP norm)."""
    from .image import image_train_transform as make

    return make()


def _passthrough(source: Any, modality: str):
    """An already-preprocessed tensor/array of the exact item shape, else None."""
    import numpy as np
    import torch

    if not isinstance(source, (torch.Tensor, np.ndarray)):
        return None
    if tuple(source.shape) != PREPARED_SHAPES[modality] or modality == "point":
        return None  # point clouds always go through prepare_points (identity when prepared)
    desc = describe(source)
    t = source if isinstance(source, torch.Tensor) else torch.from_numpy(native_order(source))
    if modality == "text":
        if t.is_floating_point() or t.dtype == torch.bool:
            raise InvalidValuesError(desc, f"text token ids must be integers, not {t.dtype}", modality)
        if t.numel() and (int(t.min()) < 0 or int(t.max()) >= 49408):
            raise InvalidValuesError(desc, "text token ids must lie in [0, 49408)", modality)
        return t if t.dtype == torch.long else t.to(torch.long)
    if not t.is_floating_point():
        return None  # integer data of that shape is raw (a uint8 image, a mm depth map): load it
    if not bool(torch.isfinite(t).all()):
        raise InvalidValuesError(desc, "tensor contains NaN or inf", modality)
    # float32 passes through as the very same object; float64/float16/bfloat16 are cast so every
    # loader keeps the module's float32 contract.
    return t if t.dtype == torch.float32 else t.to(torch.float32)


def _load_text(source: Any, limits: MediaLimits):
    from .sources import is_bytes, is_filelike, is_path, read_bytes
    from .text import tokenize

    desc = describe(source)
    if isinstance(source, str) and not (source.lower().endswith(".txt") and is_path(source) and _is_file(source)):
        text = source
    elif is_path(source) or is_bytes(source) or is_filelike(source):
        try:
            text = read_bytes(source, limits, "text").decode("utf-8")
        except UnicodeDecodeError as exc:
            raise UnreadableMediaError(desc, f"text is not valid UTF-8 ({exc.reason})", "text") from exc
    else:
        raise UnknownFormatError(desc, f"unsupported text source type {type(source).__name__}", "text")
    if limits.max_text_chars is not None and len(text) > limits.max_text_chars:
        raise MediaTooLargeError(desc, f"text has {len(text)} characters, above max_text_chars={limits.max_text_chars}", "text")
    return tokenize(text)


def _is_file(path: str) -> bool:
    import os

    return os.path.isfile(path)


def _dispatch(source: Any, modality: str, limits: MediaLimits):
    if modality == "text":
        return _load_text(source, limits)
    if modality == "image":
        from .image import load_image

        return load_image(source, limits)
    if modality == "audio":
        from .audio import load_audio

        return load_audio(source, limits)
    if modality == "video":
        from .video import load_video

        return load_video(source, limits)
    if modality == "point":
        from .point import load_point

        return load_point(source, limits)
    from . import sensors

    return {"depth": sensors.load_depth, "thermal": sensors.load_thermal, "imu": sensors.load_imu}[modality](source, limits)


def load(source: Any, modality: str | None = None, *, limits: MediaLimits | None = None):
    """Load and preprocess one item → tensor without a batch dim (shapes in the module docstring).

    source: path, bytes, binary file object, PIL image, numpy array, torch tensor, a ``str`` of text
        (for ``text``), an ``(waveform, sample_rate)`` tuple (for ``audio``) or an
        ``ibllm_agent.types.Media``. Tensors/arrays that already have the item shape pass through.
    modality: one of ``ibllm_agent.types.MODALITIES``; None infers it (``infer_modality``).
    limits: size bounds (``MediaLimits()`` defaults when None).

    Raises a ``MediaError`` subclass naming the input and the reason; never a bare library error.
    """
    from ibllm_agent.types import MODALITIES, Media

    if isinstance(source, Media):
        modality = modality or source.modality
        source = source.source
    limits = limits or DEFAULT_LIMITS
    if modality is None:
        modality = infer_modality(source)
    if modality not in MODALITIES:
        raise UnknownFormatError(describe(source), f"unknown modality {modality!r}; expected one of {', '.join(MODALITIES)}")
    try:
        prepared = _passthrough(source, modality)
        if prepared is not None:
            return prepared
        return _dispatch(source, modality, limits)
    except MediaError:
        raise
    except MemoryError as exc:
        raise MediaTooLargeError(describe(source), "ran out of memory while decoding; lower the limits", modality) from exc
    except Exception as exc:  # safety net: a decoder failed in a way the loader did not anticipate
        from ibllm_agent.errors import IbllmError

        if isinstance(exc, IbllmError):
            raise
        from .sources import short

        raise UnreadableMediaError(describe(source), f"{type(exc).__name__}: {short(exc)}", modality) from exc


def load_batch(sources: Sequence[Any], modality: str | None = None, *, limits: MediaLimits | None = None):
    """Load several items of one modality and stack them → [B, ...]. Text strings may be a list."""
    import torch

    items = list(sources)
    if not items:
        raise EmptyMediaError("<empty batch>", "no sources given", modality)
    modalities: list[str] = []
    for src in items:
        m = modality or infer_modality(src)
        if modalities and m != modalities[0]:
            raise UnknownFormatError(describe(src), f"mixed modalities in one batch: {sorted({modalities[0], m})}", m)
        modalities.append(m)
    if modalities[0] == "image" and len(items) > 1:
        # Pillow releases the GIL while decoding and resampling: images load in parallel (same
        # tensors, same order; the first failing item's error is raised, as in the loop below).
        tensors = list(_image_pool().map(lambda src: load(src, "image", limits=limits), items))
    else:
        tensors = [load(src, m, limits=limits) for src, m in zip(items, modalities)]
    return torch.stack(tensors, dim=0)


_POOL = None


def _image_pool():
    """One shared thread pool (a worker per core) for batch image decoding."""
    global _POOL
    if _POOL is None:
        import os
        from concurrent.futures import ThreadPoolExecutor

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _POOL = ThreadPoolExecutor(max_workers=max(1, cores), thread_name_prefix="ibllm-image")
    return _POOL
