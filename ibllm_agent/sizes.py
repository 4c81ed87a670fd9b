"""Byte sizes as people write them: ``parse_size("4GiB") == 4 * 2**30``.

The one rule for the whole package (memory budgets of the model pool, ``cache build
--memory-budget``, settings): ``KB``/``MB``/``GB``/``TB`` and the bare letters ``K``/``M``/``G``/``T``
are powers of 1000 (SI, as download and disk sizes are quoted: "4.8 GB"); ``KiB``/``MiB``/``GiB``/
``TiB`` are powers of 1024. Units are case-insensitive; ``B`` or no unit means bytes; fractions are
allowed (``"1.5GB"``). A number (not a string) is already bytes.
"""

from __future__ import annotations

import re

from ibllm_agent.errors import ConfigError

UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}  # fmt: skip


def parse_size(size: float | str | None, *, what: str = "size") -> int | None:
    """``"8GiB"`` / ``"512MB"`` / ``1024`` → bytes; ``None`` stays ``None`` (no limit).

    Raises ``ConfigError`` (naming ``what``) for negative numbers and unreadable text.
    """
    if size is None:
        return None
    if isinstance(size, (int, float)) and not isinstance(size, bool):
        if size < 0:
            raise ConfigError(f"{what} must be >= 0, got {size}")
        return int(size)
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", str(size))
    if not m or m.group(2).lower() not in UNITS:
        raise ConfigError(
            f"invalid {what} {size!r}: use bytes or a number with a unit: KB/MB/GB/TB (powers of 1000) "
            f"or KiB/MiB/GiB/TiB (powers of 1024)"
        )
    return int(float(m.group(1)) * UNITS[m.group(2).lower()])


def format_size(n: float | None, *, binary: bool = False, unknown: str = "?") -> str:
    """Bytes for people: ``"4.8 GB"`` (powers of 1000, as downloads are quoted) or, with
    ``binary=True``, ``"3.8 GiB"`` (powers of 1024, as RAM is). ``None`` gives ``unknown``."""
    if n is None:
        return unknown
    step, units = (1024, ("B", "KiB", "MiB", "GiB", "TiB")) if binary else (1000, ("B", "KB", "MB", "GB", "TB"))
    value = float(n)
    for unit in units:
        if value < step or unit == units[-1]:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= step
    raise AssertionError("unreachable")
