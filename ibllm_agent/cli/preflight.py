"""Checks ``run`` and ``chat`` make before any model loads, so a typo costs a second, not a minute.

Everything here is cheap: file headers (no decoding), settings, URL syntax. What only a decoder can
tell (a truncated JPEG body) is still reported later, by the workspace, as a typed error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ibllm_agent.errors import ConfigError

__all__ = ["Attachment", "check_attachment", "check_settings", "parse_weights"]

# What each CLI flag accepts, as kinds read from the file (extension + magic bytes; .npy by shape).
_ACCEPTS: dict[str, set[str]] = {
    "image": {"image"},
    "audio": {"audio", "video"},  # an audio track inside a video container decodes fine
    "video": {"video"},
    "point": {"point"},
    "depth": {"depth"},
    "thermal": {"image", "depth", "thermal"},  # thermal is never inferred: any grayscale map
    "imu": {"imu"},
}
_NOUN = {"image": "an image", "audio": "audio", "video": "a video", "point": "a point cloud",
         "depth": "a depth map (16-bit PNG/TIFF in mm, or float .npy in m)", "thermal": "a thermal image",
         "imu": "an IMU recording (.npy [6,T] or .csv)", "text": "text", "array": "an array",
         "unreadable": "data in no format we can read"}


@dataclass(frozen=True)
class Attachment:
    """One checked attachment: a local file or a URL, the flag's modality and its fusion weight."""

    source: str
    modality: str
    weight: float = 1.0

    @property
    def is_url(self) -> bool:
        return self.source.startswith(("http://", "https://"))


def _kind(path: Path) -> str | None:
    """The kind of data in ``path`` from its header (None when the header says nothing)."""
    from ibllm_agent.media.formats import EXTENSIONS
    from ibllm_agent.media.infer import infer_modality
    from ibllm_agent.media.sources import sniff

    with open(path, "rb") as f:
        head = f.read(256)
    by_content = sniff(head)
    by_ext = EXTENSIONS.get(path.suffix.lower())
    if by_content is None and by_ext in ("image", "audio", "video"):
        # A binary format by name whose header no sniffer knows: plain text is a wrong file, an
        # image is asked of PIL (header only); other containers are left to their decoder.
        if head and b"\0" not in head and _is_text(head):
            return "text"
        if by_ext == "image" and not _pil_reads(path):
            return "unreadable"
    if by_content in ("array", "image") or (by_content is None and by_ext in ("array", "image", "imu")):
        try:  # .npy by shape, 16-bit PNG/TIFF → depth, .csv → imu: the media package decides
            return infer_modality(path)
        except Exception:  # noqa: BLE001 - an unreadable header: the flag's loader reports it later
            return by_content or by_ext
    return by_content or by_ext


def _is_text(head: bytes) -> bool:
    try:
        head.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.start >= len(head) - 3  # cut inside a multi-byte character at the end
    return True


def _pil_reads(path: Path) -> bool:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path):  # reads the header only
            return True
    except (UnidentifiedImageError, OSError, ValueError):
        return False


def check_attachment(value: str, modality: str, weight: float = 1.0) -> Attachment:
    """A ``--image``/``--audio``/… value checked against its flag, without decoding it.

    Raises:
        MediaError: no such file, a folder, or a file whose contents are another kind (one line,
            naming the file and the flag).
    """
    from ibllm_agent.media import MediaLimits
    from ibllm_agent.media.errors import UnknownFormatError
    from ibllm_agent.media.sources import check_path

    text = str(value)
    if text.startswith(("http://", "https://")):
        from urllib.parse import urlsplit

        parts = urlsplit(text)
        if not parts.hostname:
            raise UnknownFormatError(text, "not a valid URL (no host)", modality)
        return Attachment(text, modality, weight)
    path = check_path(os.path.expanduser(text), MediaLimits(), modality)
    kind = _kind(path)
    if kind is None:
        return Attachment(str(path), modality, weight)  # unknown header: the loader decides
    if kind not in _ACCEPTS[modality]:
        raise UnknownFormatError(
            str(path), f"holds {_NOUN.get(kind, kind)}, not {_NOUN[modality]} (given with --{modality})", modality
        )
    return Attachment(str(path), modality, weight)


def parse_weights(text: str | None, count: int) -> list[float]:
    """``--weights 0.7,0.3`` → one fusion weight per attachment, in command-line order."""
    if text is None:
        return [1.0] * count
    try:
        weights = [float(w) for w in text.split(",")]
    except ValueError:
        raise ConfigError(f"--weights {text!r}: give comma-separated numbers, e.g. 0.7,0.3") from None
    if len(weights) != count:
        raise ConfigError(f"--weights has {len(weights)} value(s) but there are {count} attachment(s)")
    if any(not w >= 0 for w in weights) or not sum(weights) > 0:
        raise ConfigError(f"--weights {text!r}: weights must be >= 0 and not all 0")
    return weights


def check_settings(settings: Any, model: str) -> None:
    """Settings and the model spec, checked before anything heavy is imported.

    Memory URL (and an existing SQLite file's ownership), visual-cache folder, device (torch is
    only imported for an explicit non-CPU device), a scripted model file or model folder.
    """
    from ibllm_agent.agent.memory import check_sqlite_file, parse_memory_url

    kind, target = parse_memory_url(settings.memory_url)
    if kind == "sqlite" and target != ":memory:":
        path = Path(target).expanduser()
        if path.is_dir():
            from ibllm_agent.errors import MemoryURLError

            raise MemoryURLError(f"memory URL {settings.memory_url!r} points to a folder, not a database file")
        if path.is_file():
            check_sqlite_file(path)
    cache = settings.visual_cache
    if cache is not None and not Path(cache).is_dir():
        from ibllm_agent.errors import CacheError

        raise CacheError(f"visual cache folder {cache} does not exist (build one with `ibllm-agent cache build`)")
    if settings.device not in ("auto", "cpu"):
        from ibllm_agent.config import resolve_device

        resolve_device(settings.device)
    if model.startswith("scripted:"):
        if not Path(model[len("scripted:"):]).expanduser().is_file():
            raise ConfigError(f"scripted model file not found: {model[len('scripted:'):]}")
    else:
        from ibllm_agent.loading import check_model_name

        check_model_name(model)
