"""Typed errors of the media loaders.

Every failure a user can provoke with a bad attachment is a ``MediaError`` (an ``IbllmError`` and a
``ValueError``) whose message names the input (a path or a short description such as
``<bytes: 1234>``) and the reason. Library exceptions (PIL, PyAV, soundfile, numpy, torch) are caught
at the decode boundary and re-raised as one of these, chained with ``from`` so the original is
still visible to a debugger.
"""

from __future__ import annotations

from ibllm_agent.errors import IbllmError


class MediaError(IbllmError, ValueError):
    """Base of every media-loading error.

    ``source`` is the description of the input, ``reason`` the human-readable cause and
    ``modality`` the modality being loaded (None when unknown yet).
    """

    def __init__(self, source: str, reason: str, modality: str | None = None):
        self.source = source
        self.reason = reason
        self.modality = modality
        what = f"{modality} " if modality else ""
        super().__init__(f"cannot load {what}input {source}: {reason}")


class UnreadableMediaError(MediaError):
    """The input exists but cannot be decoded (corrupt, truncated, wrong content for its format)."""


class MediaNotFoundError(UnreadableMediaError, FileNotFoundError):
    """The input names a file that does not exist (or is not a regular file)."""


class UnknownFormatError(MediaError):
    """The format or the modality cannot be determined, or is not supported."""


class EmptyMediaError(MediaError):
    """Decodes, but holds nothing usable: zero-length audio, no video frames, no points, no text."""


class InvalidValuesError(MediaError):
    """Decoded values are unusable: NaN/inf, negative depth, wrong shape for the modality."""


class MediaTooLargeError(MediaError):
    """The input exceeds a ``MediaLimits`` bound (bytes, pixels, duration, points, elements)."""
