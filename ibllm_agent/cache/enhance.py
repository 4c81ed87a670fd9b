"""Cache-enhanced encoding: mix each query feature with its nearest cached image features.

The reference (``forward_visual`` with ``knn=True``) does, for a fused feature f [D]:

    s, x = top-k neighbours of f by inner product      # s [k] scores, x [k, D] cached features
    w = softmax(t * s)                                 # t = cache temperature (20)
    r = sum_i w_i * x_i ;  r = r / ||r||               # weighted mean of neighbours, unit norm
    f' = normalise((1 - alpha) * f + alpha * r)        # alpha = cache weight (0.5)

Its weighted sum is a [B,k] @ [B,k,D] matmul that is only right for B = 1; here every sample uses its
own neighbours, so a batch gives exactly what each sample gives alone.
"""

from __future__ import annotations

import numpy as np

# Guards the divisions; the reference divides by the bare norm (NaN for an all-zero vector).
_EPS = 1e-12


def softmax_weights(scores: np.ndarray, t: float, valid: np.ndarray | None = None) -> np.ndarray:
    """w = softmax(t * s) over the last axis. scores [B,k]; invalid slots (``valid`` False) get 0."""
    logits = (t * scores).astype(np.float64)
    if valid is not None:
        logits = np.where(valid, logits, -np.inf)
    # Subtract the row max so exp never overflows; rows with no valid slot stay all-zero.
    row_max = logits.max(axis=-1, keepdims=True)
    row_max = np.where(np.isfinite(row_max), row_max, 0.0)
    e = np.exp(logits - row_max)
    total = e.sum(axis=-1, keepdims=True)
    return np.divide(e, total, out=np.zeros_like(e), where=total > 0)


def mix_with_neighbours(
    feats: np.ndarray,
    scores: np.ndarray,
    neighbours: np.ndarray,
    *,
    t: float = 20.0,
    alpha: float = 0.5,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """The reference's enhancement, per sample.

    feats [B,D] queries, scores [B,k] their inner products with neighbours [B,k,D]; ``valid`` [B,k]
    marks real neighbours (an approximate index may return fewer than k). Returns [B,D] float32,
    unit rows. A row with no valid neighbour keeps r = 0, i.e. it comes back as normalise(f).
    """
    f = np.asarray(feats, dtype=np.float64)
    w = softmax_weights(np.asarray(scores, dtype=np.float64), t, valid)  # [B,k]
    r = np.einsum("bk,bkd->bd", w, np.asarray(neighbours, dtype=np.float64))  # [B,D]
    r = r / np.maximum(np.linalg.norm(r, axis=-1, keepdims=True), _EPS)
    out = (1.0 - alpha) * f + alpha * r
    out = out / np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), _EPS)
    return out.astype(np.float32)


def check_settings(k: int, t: float, alpha: float) -> None:
    """Reject knobs the math cannot use (typed error naming the knob)."""
    from ibllm_agent.errors import CacheError

    try:
        k, t, alpha = int(k), float(t), float(alpha)
    except (TypeError, ValueError):
        raise CacheError(f"cache settings must be numbers, got k={k!r}, t={t!r}, alpha={alpha!r}") from None
    if k < 1:
        raise CacheError(f"cache k must be >= 1, got {k!r}")
    if not np.isfinite(t):
        raise CacheError(f"cache temperature t must be finite, got {t!r}")
    if not (0.0 <= float(alpha) <= 1.0):
        raise CacheError(f"cache alpha (mix weight) must be in [0, 1], got {alpha!r}")
