"""Clip timing shared by audio and video: pytorchvideo ``ConstantClipsPerVideoSampler`` at the commit
the reference pins (28fe037), in exact ``Fraction`` arithmetic.

With duration d (a float for audio, a Fraction for video), clip length L and n clips:
    max_start = Fraction(max(d − L, 0))      # the subtraction happens in d's own type (float for audio)
    step      = max_start / max(n − 1, 1)    # the 0.1.5 PyPI release divides by n instead — wrong here
    clip i    = [i·step, i·step + L)
A stream no longer than L therefore gives n identical clips [0, L).
"""

from __future__ import annotations

from fractions import Fraction


def constant_clip_times(duration: float | Fraction, clip_duration: int = 2, clips: int = 3) -> list[tuple[Fraction, Fraction]]:
    """[(start, end)] in seconds as exact Fractions (see module docstring)."""
    max_start = Fraction(max(duration - clip_duration, 0))
    step = Fraction(max_start, max(clips - 1, 1))
    return [(step * i, step * i + clip_duration) for i in range(clips)]
