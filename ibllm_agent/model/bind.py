"""The bind network: one ImageBind embedding [B, in_dim] -> one LLaMA-width token [B, 1, hidden].

Reference (§4): x₀ = proj(v); for k = 1..3: x_k = x_{k-1} + F2_k(SiLU(F1_k(N_k(x_{k-1}))) ⊙ F3_k(N_k(x_{k-1}))).
No final norm. ``rmsnorm`` (the released "stable" 7B): RMSNorm eps 1e-6, bias-free FFN linears.
``legacy`` (7B-beta): LayerNorm eps 1e-5 with bias, FFN linears with biases.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class RMSNorm(nn.Module):
    """x · rsqrt(mean(x²) + eps), computed in fp32, cast back, then times ``weight`` (LLaMA's order)."""

    def __init__(self, dim: int, eps: float = 1e-6, device=None, dtype=None):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)
        return normed * self.weight.to(x.dtype)


class SwiGLU(nn.Module):
    """w2(silu(w1 x) ⊙ w3 x); biases only in the legacy variant."""

    def __init__(self, dim: int, hidden: int, bias: bool, device=None, dtype=None):
        super().__init__()
        kw = {"bias": bias, "device": device, "dtype": dtype}
        self.w1 = nn.Linear(dim, hidden, **kw)
        self.w2 = nn.Linear(hidden, dim, **kw)
        self.w3 = nn.Linear(dim, hidden, **kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class BindNetwork(nn.Module):
    """proj (with bias) then ``blocks`` pre-norm residual SwiGLU blocks.

    Keys: ``proj.{weight,bias}``, ``norms.{k}.weight`` (+ ``.bias`` legacy), ``ffn.{k}.{w1,w2,w3}.weight``
    (+ ``.bias`` legacy). Sizes: in_dim = encoder out dim (1024), dim = LM hidden (4096), hidden = 4·dim.
    """

    def __init__(
        self,
        in_dim: int,
        dim: int,
        hidden: int | None = None,
        blocks: int = 3,
        variant: str = "rmsnorm",
        device=None,
        dtype=None,
    ):
        super().__init__()
        if variant not in ("rmsnorm", "legacy"):
            from ibllm_agent.errors import ConfigError

            raise ConfigError(f"unknown bind_variant {variant!r}; expected 'rmsnorm' or 'legacy'")
        hidden = hidden or 4 * dim
        legacy = variant == "legacy"
        kw = {"device": device, "dtype": dtype}
        self.variant = variant
        self.proj = nn.Linear(in_dim, dim, bias=True, **kw)
        self.norms = nn.ModuleList(
            nn.LayerNorm(dim, eps=1e-5, **kw) if legacy else RMSNorm(dim, eps=1e-6, **kw) for _ in range(blocks)
        )
        self.ffn = nn.ModuleList(SwiGLU(dim, hidden, bias=legacy, **kw) for _ in range(blocks))

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats: [B, in_dim] or [B, 1, in_dim] -> [B, 1, dim]."""
        if feats.dim() == 2:
            feats = feats[:, None, :]
        x = self.proj(feats.to(self.proj.weight.dtype))
        for norm, ffn in zip(self.norms, self.ffn):
            x = x + ffn(norm(x))
        return x
