"""Multimodal fusion (reference §5), batched.

Each input embedding is L2-normalised (this removes the text/audio/point logit scales), user weights are
divided by (Σw + 1e-6), and the weighted sum is returned WITHOUT re-normalisation (its norm is < 1 when
modalities disagree, exactly like the reference). The reference only worked for batch 1; here each sample
has its own list of inputs and weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

WEIGHT_EPS = 1e-6


def fuse(embeddings: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """embeddings [N, D] (one per input of ONE sample), weights [N] -> fused [D]."""
    e = F.normalize(embeddings.float(), dim=-1)
    w = weights.to(e) / (weights.to(e).sum() + WEIGHT_EPS)
    return (w[:, None] * e).sum(0)


def fuse_batch(per_sample: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """[(embeddings [N_i, D], weights [N_i])] * B -> [B, D] (fp32)."""
    return torch.stack([fuse(e, w) for e, w in per_sample])
