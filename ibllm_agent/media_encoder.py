"""The media stage: attachments → ImageBind / Point-Bind embeddings → fusion → (visual cache) → tensors.

    Media items ─► ibllm_agent.media.load ─► encoder.encode ─► L2-normalise + weighted mix (fusion.py)
               ─► VisualCache.enhance (optional) ═══ VisualFeatures(features [B, D] fp32, active [B]) ═══►

``MediaEncoder`` is built with its encoder and its cache as constructor parts; everything after it
(``ImageBindLLM``, training) sees only the tensors it returns. Numerics are the reference's (§5):
each embedding is L2-normalised, weights are divided by (Σw + 1e-6), the mix is not re-normalised,
and the cache mixes the fused feature of samples with media with its neighbours (k, t, alpha).

A sample without media gets the text-only placeholder of the model's policy: ``zero_image`` (the
reference) = the normalised embedding of an all-zero image, active; ``off`` = zeros, inactive (the
model then runs that row without a visual injection).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch

from ibllm_agent.errors import ConfigError
from ibllm_agent.model.fusion import fuse
from ibllm_agent.types import CacheSettings, Media, VisualFeatures

TextOnlyPolicy = Literal["zero_image", "off"]

__all__ = ["MediaEncoder", "VisualFeatures", "as_batch"]


class MediaEncoder:
    """The media stage of one model: ``encoder`` (an ImageBind with ``.encode(modality, x)``) and an
    optional ``cache`` (a ``VisualCache`` or anything with ``.enhance(f, k=, t=, alpha=)``).

    ``device`` / ``dtype``: where and in what precision the encoder runs (the encoder is moved there;
    default: where its parameters already are). Outputs are always float32 on ``device``.
    ``text_only``: the placeholder policy for samples without media (the model config's ``text_only``).
    """

    def __init__(
        self,
        encoder: Any,
        cache: Any = None,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        text_only: TextOnlyPolicy = "zero_image",
    ):
        if not callable(getattr(encoder, "encode", None)):
            raise ConfigError(f"MediaEncoder needs an encoder with .encode(modality, x), got {type(encoder).__name__}")
        if cache is not None and not callable(getattr(cache, "enhance", None)):
            raise ConfigError(f"the visual cache must have .enhance(features, k, t, alpha), got {type(cache).__name__}")
        if text_only not in ("zero_image", "off"):
            raise ConfigError(f"text_only must be 'zero_image' or 'off', got {text_only!r}")
        p = next(iter(encoder.parameters()), None) if hasattr(encoder, "parameters") else None
        self.device = torch.device(device) if device is not None else (p.device if p is not None else torch.device("cpu"))
        self.dtype = dtype if dtype is not None else (p.dtype if p is not None else torch.float32)
        if hasattr(encoder, "to"):
            encoder.to(device=self.device, dtype=self.dtype)  # integer buffers (BN counters) keep their dtype
        self.encoder = encoder
        self.cache = cache
        self.text_only: TextOnlyPolicy = text_only
        self._placeholder: torch.Tensor | None = None

    def with_cache(self, cache: Any) -> MediaEncoder:
        """The same encoder (shared, not copied) with another visual cache (None: without one)."""
        return MediaEncoder(self.encoder, cache, device=self.device, dtype=self.dtype, text_only=self.text_only)

    @property
    def out_dim(self) -> int | None:
        """Width of the embeddings (None when the encoder does not say)."""
        dim = getattr(self.encoder, "out_dim", None)
        return int(dim) if isinstance(dim, int) else None

    # ------------------------------------------------------------------ embeddings
    def embed(self, media: Sequence[Media]) -> torch.Tensor:
        """One raw embedding per attachment -> [N, D] float32 (not normalised, not fused).

        ``media.load`` turns any source into the per-item tensor (already-preprocessed tensors of the
        item shape pass through unchanged); the encoder gets it with a batch dim of 1."""
        from ibllm_agent import media as media_mod

        out = []
        for m in media:
            if not isinstance(m, Media):
                raise ConfigError(f"media items must be ibllm_agent.types.Media, got {type(m).__name__}")
            x = media_mod.load(m.source, m.modality)
            out.append(self.encode_tensor(m.modality, x.unsqueeze(0)))
        if not out:
            return torch.zeros(0, self.out_dim or 0, device=self.device)
        return torch.cat(out)

    def encode_tensor(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        """A preprocessed batch x [B, ...] of one modality -> raw embeddings [B, D] float32."""
        x = x.to(self.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        with torch.no_grad():
            return self.encoder.encode(modality, x).float()

    def placeholder(self) -> torch.Tensor:
        """The text-only feature [D] float32: the fused embedding of the all-zero image (policy
        ``zero_image``, computed once) or zeros (policy ``off``, where the row is inactive)."""
        if self.text_only == "off":
            return torch.zeros(self.out_dim or 0, device=self.device)
        if self._placeholder is None:
            size = int(getattr(getattr(self.encoder, "config", None), "image_size", 224))
            emb = self.encode_tensor("image", torch.zeros(1, 3, size, size))  # [1, D]
            self._placeholder = fuse(emb, torch.ones(1))  # normalised, weight 1/(1+1e-6)
        return self._placeholder

    # ------------------------------------------------------------------ the stage
    def encode(
        self,
        media: Sequence[Media] | Sequence[Sequence[Media]] | None,
        cache: CacheSettings | None = None,
        *,
        batch_size: int = 1,
    ) -> VisualFeatures:
        """Media of one sample (``[Media, ...]``) or of a batch (``[[...], [...]]``) -> ``VisualFeatures``.

        ``None`` / ``[]`` means ``batch_size`` samples without media. Weights must be >= 0 with a
        positive sum per sample. ``cache``: the enhancement knobs (default ``CacheSettings()``: on when
        this stage has a cache); only samples with media are enhanced.
        """
        batch = as_batch(media) if media is not None and len(media) > 0 else [[] for _ in range(batch_size)]
        feats, active, has_media = [], [], []
        for sample in batch:
            if sample:
                embs = self.embed(sample)  # [N, D]
                weights = torch.tensor([float(m.weight) for m in sample])
                if (weights < 0).any() or float(weights.sum()) <= 0:
                    raise ConfigError(f"media weights must be >= 0 with a positive sum, got {weights.tolist()}")
                feats.append(fuse(embs, weights))
                active.append(True)
                has_media.append(True)
            else:
                feats.append(self.placeholder())
                active.append(self.text_only == "zero_image")
                has_media.append(False)
        f = torch.stack(feats)  # [B, D] fp32
        cache = cache or CacheSettings()
        if self.cache is not None and cache.enabled and any(has_media):
            rows = torch.tensor(has_media, device=f.device)
            enhanced = self.cache.enhance(f[rows], k=cache.k, t=cache.t, alpha=cache.alpha)
            f = f.clone()
            f[rows] = torch.as_tensor(enhanced).to(f)
        return VisualFeatures(f, torch.tensor(active, device=f.device))

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> MediaEncoder:
        """Move the encoder (and future outputs) to ``device`` / ``dtype``."""
        if device is not None:
            self.device = torch.device(device)
        if dtype is not None:
            self.dtype = dtype
        if hasattr(self.encoder, "to"):
            self.encoder.to(device=self.device, dtype=self.dtype)
        self._placeholder = None
        return self

    def __repr__(self) -> str:
        return (f"MediaEncoder(encoder={type(self.encoder).__name__}, cache={self.cache!r}, "
                f"device={self.device}, dtype={self.dtype}, text_only={self.text_only!r})")


def as_batch(media: Any) -> list[list[Media]]:
    """One sample's ``[Media, ...]`` -> ``[[Media, ...]]``; a batch ``[[...], [...]]`` unchanged."""
    media = list(media)
    if not media:
        return [[]]
    if all(isinstance(m, Media) for m in media):
        return [media]
    out = []
    for sample in media:
        if isinstance(sample, Media):
            raise ConfigError("media must be a list of Media or a list of per-sample lists, not a mix")
        sample = list(sample or [])
        for m in sample:
            if not isinstance(m, Media):
                raise ConfigError(f"media items must be ibllm_agent.types.Media, got {type(m).__name__}")
        out.append(sample)
    return out
