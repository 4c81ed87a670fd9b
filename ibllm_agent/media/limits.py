"""Size limits applied while loading media (configurable per call).

The checks run *before* the expensive step where possible (file size from ``stat``, image size from
the header, audio/video duration from the container) so a hostile or accidental huge input fails fast
with ``MediaTooLargeError`` instead of exhausting memory.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class MediaLimits:
    """Upper bounds for one loaded item. ``None`` disables a bound.

    max_bytes: size of the encoded file or byte string.
    max_pixels: width × height of an image, depth/thermal map or video frame (PIL's own
        decompression-bomb threshold is ~89 M; we stop earlier by default).
    max_duration_s: length of an audio track or video stream in seconds.
    max_points: points in a raw point cloud before resampling to 8192.
    max_elements: elements of a raw numpy/torch array or .npy/.pt payload (IMU, depth, point arrays).
    max_text_chars: characters of a text input (text is truncated to 77 tokens anyway; this only
        bounds the tokeniser's work).
    """

    max_bytes: int | None = 512 * 1024 * 1024
    max_pixels: int | None = 64_000_000
    max_duration_s: float | None = 600.0
    max_points: int | None = 10_000_000
    max_elements: int | None = 100_000_000
    max_text_chars: int | None = 100_000


DEFAULT_LIMITS = MediaLimits()
