"""The one table of file extensions and mime types → modality, used by media loading
(``infer.py``, the readers), chat content blocks (``ibllm_agent.content``), the agent workspace and
the CLI. Every extension listed here has a reader in this package.

``array`` marks ``.npy``: it can hold a point cloud, IMU or depth; ``infer.py`` decides from the
array header and chat content must say which (``extras={"modality": …}``). ``.png``/``.tif`` are
refined to ``depth`` for 16-bit single-channel files (see ``infer.py``).
"""

from __future__ import annotations

import mimetypes
import os
import urllib.parse

EXTENSIONS: dict[str, str] = {
    **dict.fromkeys((".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".jfif"), "image"),
    **dict.fromkeys((".wav", ".flac", ".mp3", ".ogg", ".oga", ".opus", ".m4a", ".aac", ".aif", ".aiff"), "audio"),
    **dict.fromkeys((".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg"), "video"),
    **dict.fromkeys((".ply", ".pcd", ".pts", ".xyz", ".obj", ".pt", ".pth"), "point"),
    ".csv": "imu",
    ".txt": "text",
    ".npy": "array",
}

# mime type -> modality for the non-obvious cases (image/*, audio/*, video/* map by their prefix).
MIME_MODALITIES: dict[str, str] = {
    "model/ply": "point",
    "model/x-ply": "point",
    "application/ply": "point",
    "application/x-ply": "point",
    "model/x-pcd": "point",
    "application/x-pcd": "point",
    "application/x-point-cloud": "point",
    "model/x-xyz": "point",
    "model/obj": "point",
    "application/x-depth": "depth",
    "image/x-depth": "depth",
    "application/x-thermal": "thermal",
    "image/x-thermal": "thermal",
    "application/x-imu": "imu",
}
# extension -> mime type where ``mimetypes`` has none (or a wrong one: .obj is not a Windows object file)
EXTENSION_MIMES: dict[str, str] = {
    ".ply": "model/ply", ".pcd": "model/x-pcd", ".xyz": "model/x-xyz", ".pts": "application/x-point-cloud",
    ".obj": "model/obj",
}  # fmt: skip


def extension(location: str | os.PathLike) -> str:
    """Lower-case extension of a path or URL (``""`` when none)."""
    text = os.fspath(location)
    if "://" in text:
        text = urllib.parse.urlsplit(text).path
    return os.path.splitext(text)[1].lower()


def extension_modality(location: str | os.PathLike | None) -> str | None:
    """Modality named by a path's or URL's extension (``array`` for ``.npy``), else ``None``."""
    return EXTENSIONS.get(extension(location)) if location else None


def mime_modality(mime: str | None) -> str | None:
    """Modality of a mime type (parameters and ``+suffix`` ignored), else ``None``."""
    if not mime:
        return None
    mime = mime.split(";")[0].strip().lower()
    base = mime.split("+")[0]
    if mime in MIME_MODALITIES or base in MIME_MODALITIES:
        return MIME_MODALITIES.get(mime) or MIME_MODALITIES[base]
    major = mime.split("/")[0]
    return major if major in ("image", "audio", "video") else None


def guess_mime(location: str | os.PathLike) -> str | None:
    """Mime type of a path or URL by its extension (point clouds included)."""
    ext = extension(location)
    return EXTENSION_MIMES.get(ext) or mimetypes.guess_type(f"x{ext}")[0]
