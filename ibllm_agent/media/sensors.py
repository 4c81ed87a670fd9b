"""Depth, thermal and IMU loaders. The reference repository has no loaders for these (its trunks
exist but are never fed), so these are our documented choices, sized to what the encoders expect.

Depth → float32 [1, 224, 224], metric depth in **metres**:
  - 16-bit PNG/TIFF (PIL mode I;16 / I): millimetres (the Kinect / SUN RGB-D / NYU convention) → /1000;
  - float images (mode F), float ``.npy`` files and float arrays/tensors: already metres;
  - integer arrays/tensors/``.npy``: millimetres → /1000, like the PNGs;
  - 8-bit images are rejected (no metric scale);
  - shorter side resized to 224 (bilinear, antialiased, like the image path), centre crop 224;
    no normalisation. NaN/inf or negative values → InvalidValuesError; 0 (missing) is kept.
  ImageBind's depth encoder was trained on *disparity* maps; we hand over plain metres rather than
  guessing a camera baseline/focal length. Convert upstream if you have calibrated disparity.

Thermal → float32 [1, 224, 224] in [0, 1]:
  grayscale image (RGB is converted with PIL's "L"), 16-bit images divided by 65535; Resize(224,
  bicubic) + CenterCrop(224) on the PIL image + ToTensor, as the image path; no normalisation.

IMU → float32 [6, 2000]:
  ``.npy``/arrays [6, T] or [T, 6] (transposed when the first axis is not 6), ``.csv`` with 6
  numeric columns (a 7th leading column is taken as a timestamp and dropped; one header row is
  skipped). Channels are accelerometer xyz then gyroscope xyz as in Ego4D (ImageBind: 2000 samples
  = 10 s at 200 Hz). Time is cropped to the first 2000 samples or zero-padded at the end; values
  are not rescaled.
"""

from __future__ import annotations

import io
import re
from typing import Any

from .errors import (
    EmptyMediaError,
    InvalidValuesError,
    MediaTooLargeError,
    UnknownFormatError,
    UnreadableMediaError,
)
from .image import IMAGE_SIZE, open_pil
from .limits import MediaLimits
from .sources import (
    describe,
    is_bytes,
    is_filelike,
    is_path,
    native_order,
    numeric_tensor,
    read_bytes,
    short,
    suffix,
)

IMU_CHANNELS = 6
IMU_LENGTH = 2000


def _check_elements(numel: int, desc: str, limits: MediaLimits, modality: str) -> None:
    if limits.max_elements is not None and numel > limits.max_elements:
        raise MediaTooLargeError(desc, f"array has {numel} elements, above max_elements={limits.max_elements}", modality)


def _load_npy(source: Any, limits: MediaLimits, modality: str):
    import numpy as np

    data = read_bytes(source, limits, modality)
    try:
        return native_order(np.load(io.BytesIO(data), allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise UnreadableMediaError(describe(source), f"not a readable .npy array ({short(exc)})", modality) from exc




def _resize_crop(x, desc: str, modality: str):
    """float [1, H, W] → [1, 224, 224]: shorter side to 224 (bilinear, antialias), centre crop."""
    from torchvision.transforms import functional as TF

    if x.shape[-1] == 0 or x.shape[-2] == 0:
        raise EmptyMediaError(desc, "map has no pixels", modality)
    x = TF.resize(x, IMAGE_SIZE, interpolation=TF.InterpolationMode.BILINEAR, antialias=True)
    return TF.center_crop(x, [IMAGE_SIZE, IMAGE_SIZE]).contiguous()


def _map_2d(t, desc: str, modality: str):
    """[H, W] / [1, H, W] / [H, W, 1] → float32 [1, H, W]."""
    import torch

    if t.ndim == 3 and t.shape[0] == 1:
        t = t[0]
    elif t.ndim == 3 and t.shape[-1] == 1:
        t = t[..., 0]
    if t.ndim != 2:
        raise InvalidValuesError(desc, f"expected a single-channel map [H, W], got shape {tuple(t.shape)}", modality)
    return t.to(torch.float32)[None]


def load_depth(source: Any, limits: MediaLimits):
    """Any depth source → float32 [1, 224, 224] in metres (see module docstring)."""
    import numpy as np
    import torch
    from PIL import Image

    desc = describe(source)
    if isinstance(source, (torch.Tensor, np.ndarray)):
        _check_elements(int(np.prod(source.shape)), desc, limits, "depth")
        raw = numeric_tensor(source, desc, "depth")
        depth = _map_2d(raw, desc, "depth")
        if not raw.is_floating_point():
            depth = depth / 1000.0  # integer maps are millimetres, like 16-bit PNGs
    elif (is_path(source) or is_bytes(source) or is_filelike(source)) and (
        suffix(source) == ".npy" or (is_bytes(source) and bytes(source[:6]) == b"\x93NUMPY")
    ):
        arr = _load_npy(source, limits, "depth")
        _check_elements(arr.size, desc, limits, "depth")
        numeric_tensor(arr[:0], desc, "depth")  # dtype check only
        depth = _map_2d(torch.from_numpy(np.array(arr, dtype=np.float32)), desc, "depth")
        if arr.dtype.kind in "iu":
            depth = depth / 1000.0
    else:
        img = open_pil(source, limits, "depth")
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            depth = torch.from_numpy(np.array(img, dtype=np.float32))[None] / 1000.0  # mm → m
        elif img.mode == "F":
            depth = torch.from_numpy(np.array(img, dtype=np.float32))[None]
        elif isinstance(source, Image.Image) or img.mode in ("L", "P", "RGB", "RGBA", "LA", "1"):
            raise UnknownFormatError(
                desc, f"8-bit image (mode {img.mode}) has no metric depth; use a 16-bit PNG in millimetres or .npy in metres", "depth"
            )
        else:
            raise UnknownFormatError(desc, f"unsupported depth image mode {img.mode}", "depth")
    if not torch.isfinite(depth).all():
        raise InvalidValuesError(desc, "depth contains NaN or inf", "depth")
    if (depth < 0).any():
        raise InvalidValuesError(desc, "depth contains negative values", "depth")
    return _resize_crop(depth, desc, "depth")


def load_thermal(source: Any, limits: MediaLimits):
    """Any thermal source → float32 [1, 224, 224] in [0, 1] (see module docstring)."""
    import numpy as np
    import torch
    from torchvision import transforms as T

    desc = describe(source)
    img = open_pil(source, limits, "thermal")
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        x = torch.from_numpy(np.array(img, dtype=np.float32))[None] / 65535.0
        if not torch.isfinite(x).all():
            raise InvalidValuesError(desc, "thermal image contains NaN or inf", "thermal")
        from torchvision.transforms import functional as TF

        x = TF.resize(x, IMAGE_SIZE, interpolation=TF.InterpolationMode.BICUBIC, antialias=True)
        return TF.center_crop(x, [IMAGE_SIZE, IMAGE_SIZE]).clamp(0.0, 1.0).contiguous()
    try:
        gray = img.convert("L")
    except (OSError, ValueError) as exc:
        raise UnreadableMediaError(desc, f"cannot convert to grayscale ({exc})", "thermal") from exc
    tf = T.Compose([T.Resize(IMAGE_SIZE, interpolation=T.InterpolationMode.BICUBIC), T.CenterCrop(IMAGE_SIZE), T.ToTensor()])
    return tf(gray)


_CSV_SPLIT = re.compile(r"[,;\t ]+")


def _parse_csv(data: bytes, desc: str):
    import numpy as np

    rows = []
    for number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = [f for f in _CSV_SPLIT.split(line) if f]
        try:
            values = [float(f) for f in fields]
        except ValueError:
            if not rows:
                continue  # header row
            raise UnreadableMediaError(desc, f"line {number} is not numeric: {line[:60]!r}", "imu") from None
        if rows and len(values) != len(rows[0]):
            raise UnreadableMediaError(desc, f"line {number} has {len(values)} columns, expected {len(rows[0])}", "imu")
        rows.append(values)
    if not rows:
        raise EmptyMediaError(desc, "CSV has no numeric rows", "imu")
    arr = np.array(rows, dtype=np.float64)
    if arr.shape[1] == IMU_CHANNELS + 1:
        arr = arr[:, 1:]  # leading timestamp column
    if arr.shape[1] != IMU_CHANNELS:
        raise InvalidValuesError(desc, f"IMU CSV needs 6 value columns (optionally after a timestamp), got {arr.shape[1]}", "imu")
    return arr.T  # [6, T]


def load_imu(source: Any, limits: MediaLimits):
    """Any IMU source → float32 [6, 2000] (see module docstring)."""
    import numpy as np
    import torch

    desc = describe(source)
    if isinstance(source, (torch.Tensor, np.ndarray)):
        _check_elements(int(np.prod(source.shape)), desc, limits, "imu")
        x = numeric_tensor(source, desc, "imu")
    elif is_path(source) or is_bytes(source) or is_filelike(source):
        if suffix(source) == ".npy" or (is_bytes(source) and bytes(source[:6]) == b"\x93NUMPY"):
            arr = _load_npy(source, limits, "imu")
            _check_elements(arr.size, desc, limits, "imu")
            x = numeric_tensor(arr, desc, "imu")
        elif suffix(source) in (".csv", ".txt", ""):
            x = torch.from_numpy(_parse_csv(read_bytes(source, limits, "imu"), desc))
        else:
            raise UnknownFormatError(desc, f"unsupported IMU file extension {suffix(source)!r} (use .npy or .csv)", "imu")
    else:
        raise UnknownFormatError(desc, f"unsupported IMU source type {type(source).__name__}", "imu")
    if x.ndim == 3 and x.shape[0] == 1:
        x = x[0]
    if x.ndim != 2 or IMU_CHANNELS not in x.shape:
        raise InvalidValuesError(desc, f"IMU data must be [6, T] or [T, 6], got {tuple(x.shape)}", "imu")
    if x.shape[0] != IMU_CHANNELS:
        x = x.T
    if x.shape[1] == 0:
        raise EmptyMediaError(desc, "IMU recording has no samples", "imu")
    if not (x.is_floating_point() or x.dtype in (torch.int16, torch.int32, torch.int64, torch.int8, torch.uint8)):
        raise InvalidValuesError(desc, f"IMU values must be numeric, not {x.dtype}", "imu")
    x = x.to(torch.float32)
    if not torch.isfinite(x).all():
        raise InvalidValuesError(desc, "IMU data contains NaN or inf", "imu")
    if x.shape[1] >= IMU_LENGTH:
        return x[:, :IMU_LENGTH].contiguous()
    return torch.nn.functional.pad(x, (0, IMU_LENGTH - x.shape[1]))
