"""Decoding strategies: pick the next token from the last position's logits.

Small classes in the openai-whisper style: each takes ``logits [B, V]`` (float32, any device) and
returns ``tokens [B]`` (long). ``build_sampler(sampling)`` picks one from a ``Sampling`` value:
temperature 0 → ``Greedy``; otherwise ``TemperatureTopP`` exactly as the reference samples
(softmax(logits / T); sort descending; drop a token when the probability mass *before* it already
exceeds top_p; renormalise; multinomial).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol

from ibllm_agent.errors import ConfigError
from ibllm_agent.types import Sampling

if TYPE_CHECKING:
    import torch


class Sampler(Protocol):
    def __call__(self, logits: torch.Tensor) -> torch.Tensor: ...


class Greedy:
    """Arg-max decoding (temperature 0). Deterministic; needs no random generator."""

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.argmax(dim=-1)

    def __repr__(self) -> str:
        return "Greedy()"


class TemperatureTopP:
    """Nucleus sampling at a temperature, seeded through a ``torch.Generator``.

    The generator is created lazily on the logits' device (CPU or GPU) the first time it samples, so
    one seed gives one token sequence for a given device, independent of the global RNG.
    """

    def __init__(self, temperature: float, top_p: float, seed: int | None = None):
        self.temperature = float(temperature)
        self.top_p = float(top_p)
        self.seed = seed
        self._generator: torch.Generator | None = None

    def _rng(self, device: torch.device) -> torch.Generator | None:
        import torch

        if self.seed is None:
            return None  # the global RNG: callers who want determinism set Sampling.seed
        if self._generator is None or self._generator.device != device:
            self._generator = torch.Generator(device=device)
            self._generator.manual_seed(int(self.seed))
        return self._generator

    def __call__(self, logits: torch.Tensor) -> torch.Tensor:
        import torch

        probs = torch.softmax(logits / self.temperature, dim=-1)  # [B, V]
        sorted_probs, order = probs.sort(dim=-1, descending=True)  # [B, V] each
        mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
        # The top token always survives: its mass_before is 0 <= top_p.
        sorted_probs = sorted_probs.masked_fill(mass_before > self.top_p, 0.0)
        sorted_probs = sorted_probs / sorted_probs.sum(dim=-1, keepdim=True)
        pick = torch.multinomial(sorted_probs, num_samples=1, generator=self._rng(logits.device))  # [B, 1]
        return order.gather(-1, pick).squeeze(-1)

    def __repr__(self) -> str:
        return f"TemperatureTopP(temperature={self.temperature}, top_p={self.top_p}, seed={self.seed})"


def validate_sampling(sampling: Sampling) -> Sampling:
    """Check the user-settable knobs; raise ``ConfigError`` naming the bad field."""
    if not isinstance(sampling, Sampling):
        raise ConfigError(f"sampling must be an ibllm_agent.types.Sampling, got {type(sampling).__name__}")
    if not isinstance(sampling.max_new_tokens, int) or sampling.max_new_tokens < 1:
        raise ConfigError(f"Sampling.max_new_tokens must be an int >= 1, got {sampling.max_new_tokens!r}")
    t = sampling.temperature
    if not isinstance(t, (int, float)) or not math.isfinite(t) or t < 0:
        raise ConfigError(f"Sampling.temperature must be a finite number >= 0, got {t!r}")
    p = sampling.top_p
    if not isinstance(p, (int, float)) or not 0 < p <= 1:
        raise ConfigError(f"Sampling.top_p must be in (0, 1], got {p!r}")
    stops = sampling.stop
    if isinstance(stops, str) or not all(isinstance(s, str) and s for s in stops):
        raise ConfigError(f"Sampling.stop must be a tuple of non-empty strings, got {stops!r}")
    if sampling.seed is not None and not isinstance(sampling.seed, int):
        raise ConfigError(f"Sampling.seed must be an int or None, got {sampling.seed!r}")
    return sampling


def build_sampler(sampling: Sampling) -> Sampler:
    """The strategy for ``sampling``: ``Greedy`` at temperature 0, else ``TemperatureTopP``."""
    validate_sampling(sampling)
    if sampling.temperature == 0:
        return Greedy()
    return TemperatureTopP(sampling.temperature, sampling.top_p, sampling.seed)
