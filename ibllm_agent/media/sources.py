"""Input sources: describe them for error messages, open them for decoders, sniff their format.

A *source* is one of
- ``str`` / ``os.PathLike``: a file path (for ``text``, a ``str`` is the text itself unless it names
  an existing ``.txt`` file),
- ``bytes`` / ``bytearray`` / ``memoryview``: an encoded file in memory,
- a binary file object (anything with ``.read``),
- ``PIL.Image.Image``, ``numpy.ndarray``, ``torch.Tensor``: decoded data,
- for audio, a ``(waveform, sample_rate)`` tuple.

Nothing here imports torch, PIL or numpy at module import time.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

from .errors import MediaNotFoundError, MediaTooLargeError, UnknownFormatError, UnreadableMediaError
from .limits import MediaLimits


def is_path(source: Any) -> bool:
    return isinstance(source, (str, os.PathLike))


def is_bytes(source: Any) -> bool:
    return isinstance(source, (bytes, bytearray, memoryview))


def is_filelike(source: Any) -> bool:
    return hasattr(source, "read") and not is_path(source)


def describe(source: Any) -> str:
    """Short human description of a source for error messages (never the whole payload)."""
    if is_path(source):
        text = os.fspath(source)
        return repr(text if len(text) <= 200 else text[:197] + "...")
    if is_bytes(source):
        return f"<bytes: {len(source)}>"
    if is_filelike(source):
        name = getattr(source, "name", None)
        return f"<file object {name!r}>" if isinstance(name, str) else f"<{type(source).__name__} file object>"
    if isinstance(source, tuple) and len(source) == 2:
        return f"<(waveform, sample_rate={source[1]!r})>"
    shape = getattr(source, "shape", None)
    dtype = getattr(source, "dtype", None)
    if shape is not None:
        return f"<{type(source).__name__} shape={tuple(shape)} dtype={dtype}>"
    size = getattr(source, "size", None)
    mode = getattr(source, "mode", None)
    if mode is not None and size is not None:  # PIL image
        return f"<PIL image {mode} {size[0]}x{size[1]}>"
    return f"<{type(source).__name__}>"


def short(exc: BaseException, limit: int = 160) -> str:
    """First line of an exception message, capped — library messages can be paragraphs long."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[0] if lines else type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def native_order(arr: Any) -> Any:
    """``arr`` in the machine's byte order: numpy reads big-endian ``.npy`` files (``>f4``) as they
    are, but torch refuses non-native byte orders. Values are unchanged; native arrays pass as is."""
    import numpy as np

    if isinstance(arr, np.ndarray) and arr.dtype.byteorder not in ("=", "|") and not arr.dtype.isnative:
        return arr.astype(arr.dtype.newbyteorder("="))
    return arr


def numeric_tensor(array: Any, desc: str, modality: str):
    """numpy array / torch tensor → CPU torch tensor, rejecting non-numeric dtypes (str, object)."""
    import numpy as np
    import torch

    from .errors import InvalidValuesError

    if isinstance(array, torch.Tensor):
        if array.is_complex():
            raise InvalidValuesError(desc, f"values must be real numbers, not {array.dtype}", modality)
        return array.detach().cpu()
    arr = np.asarray(array)
    if arr.dtype.kind not in "biuf":
        raise InvalidValuesError(desc, f"values must be numeric, not dtype {arr.dtype}", modality)
    return torch.from_numpy(np.array(native_order(arr)))


def suffix(source: Any) -> str:
    """Lower-cased file extension of a path source ('' for other sources)."""
    if is_path(source):
        return Path(os.fspath(source)).suffix.lower()
    name = getattr(source, "name", None)
    return Path(name).suffix.lower() if isinstance(name, str) else ""


def check_path(source: Any, limits: MediaLimits, modality: str | None = None) -> Path:
    """Resolve a path source: it must exist, be a regular file and respect ``max_bytes``."""
    path = Path(os.fspath(source)).expanduser()
    desc = describe(source)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise MediaNotFoundError(desc, "no such file", modality) from None
    except OSError as exc:
        raise UnreadableMediaError(desc, f"cannot stat file ({exc.strerror or exc})", modality) from None
    if not path.is_file():
        raise MediaNotFoundError(desc, "not a regular file", modality)
    if limits.max_bytes is not None and st.st_size > limits.max_bytes:
        raise MediaTooLargeError(desc, f"file is {st.st_size} bytes, above the limit max_bytes={limits.max_bytes}", modality)
    return path


def read_bytes(source: Any, limits: MediaLimits, modality: str | None = None) -> bytes:
    """The whole encoded payload of a path / bytes / file-object source, after the byte limit."""
    desc = describe(source)
    if is_path(source):
        path = check_path(source, limits, modality)
        try:
            return path.read_bytes()
        except OSError as exc:
            raise UnreadableMediaError(desc, f"cannot read file ({exc.strerror or exc})", modality) from None
    if is_bytes(source):
        data = bytes(source)
    elif is_filelike(source):
        cap = None if limits.max_bytes is None else limits.max_bytes + 1
        try:
            data = source.read() if cap is None else source.read(cap)
        except (OSError, ValueError) as exc:
            raise UnreadableMediaError(desc, f"cannot read file object ({exc})", modality) from None
        if not isinstance(data, (bytes, bytearray)):
            raise UnknownFormatError(desc, "file object must be opened in binary mode", modality)
    else:
        raise UnknownFormatError(desc, "not an encoded file (expected a path, bytes or binary file object)", modality)
    if limits.max_bytes is not None and len(data) > limits.max_bytes:
        raise MediaTooLargeError(desc, f"payload is over the limit max_bytes={limits.max_bytes}", modality)
    return bytes(data)


def open_binary(source: Any, limits: MediaLimits, modality: str | None = None) -> str | io.BytesIO:
    """A decoder-ready handle: the path string for files (so decoders can seek lazily, e.g. video),
    or an in-memory ``BytesIO`` for bytes and file objects."""
    if is_path(source):
        return str(check_path(source, limits, modality))
    return io.BytesIO(read_bytes(source, limits, modality))


def head_bytes(source: Any, n: int = 64) -> bytes:
    """The first ``n`` bytes of an encoded source without consuming it ('' when unavailable)."""
    if is_bytes(source):
        return bytes(source[:n])
    if is_path(source):
        try:
            with open(os.fspath(source), "rb") as fh:
                return fh.read(n)
        except OSError:
            return b""
    if is_filelike(source) and hasattr(source, "seek") and hasattr(source, "tell"):
        try:
            pos = source.tell()
            data = source.read(n)
            source.seek(pos)
            return data if isinstance(data, (bytes, bytearray)) else b""
        except (OSError, ValueError):
            return b""
    return b""


def sniff(head: bytes) -> str | None:
    """Modality (or 'array') from magic bytes; None when unrecognised."""
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a")):
        return "image"
    if head.startswith(b"BM") or head[:4] in (b"II*\x00", b"MM\x00*"):
        return "image"
    if head[:4] == b"RIFF":
        kind = head[8:12]
        return {b"WAVE": "audio", b"WEBP": "image", b"AVI ": "video"}.get(kind)
    if head[:4] in (b"fLaC", b"OggS", b"FORM") or head[:3] == b"ID3" or head[:2] in (b"\xff\xfb", b"\xff\xf3", b"\xff\xf2"):
        return "audio"
    if head[4:8] == b"ftyp":
        return "audio" if head[8:12] in (b"M4A ", b"M4B ") else "video"
    if head.startswith(b"\x1a\x45\xdf\xa3"):  # Matroska / WebM
        return "video"
    if head.startswith((b"ply\n", b"ply\r\n")):
        return "point"
    if head.startswith(b"\x93NUMPY"):
        return "array"
    if head.startswith(b"PK\x03\x04"):  # torch.save zip archive
        return "point"
    return None
