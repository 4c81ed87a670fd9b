"""Building blocks of the ImageBind trunks, stems, heads and postprocessors.

Attribute names are chosen so ``state_dict()`` keys equal the official checkpoint's
(``attn.in_proj_weight``, ``norm_1``, ``mlp.fc1``, ``rgbt_stem.proj.1.weight``,
``pos_embedding_helper.pos_embed``, ``1.log_logit_scale`` ...); modules without weights (token
selection, dropout, frame padding) sit at the ``nn.Sequential`` indices the checkpoint skips.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibllm_agent.encoders.config import TrunkConfig


class DropPath(nn.Module):
    """Stochastic depth: in training, zero a residual branch with probability ``p`` (scaled by 1/keep).

    ``per_token=False`` draws one coin per sample (dim 0), the usual semantics and Point-BERT's.
    ``per_token=True`` draws one coin per sequence position (dim 1 of [B, L, D]) shared across the
    batch: the reference ImageBind trunks run sequence-first [L, B, D] and apply timm's per-dim-0
    DropPath there, so this is what they actually do. Both are identities in eval mode, which is how
    the frozen encoder is used.
    """

    def __init__(self, p: float, *, per_token: bool = False):
        super().__init__()
        self.p = float(p)
        self.per_token = per_token

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        if self.per_token:
            shape = (1, x.shape[1]) + (1,) * (x.ndim - 2)
        else:
            shape = (x.shape[0],) + (1,) * (x.ndim - 1)
        mask = x.new_empty(shape).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}, per_token={self.per_token}"


class Mlp(nn.Module):
    """fc1 -> exact GELU -> fc2 (ratio 4, dropout 0 in every reference trunk)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-LN transformer block of the ImageBind trunks (the reference's ``BlockWithMasking``).

    x = x + drop_path(MHA(LN1(x)))      MHA = nn.MultiheadAttention(bias=True, add_bias_kv=...)
    x = x + drop_path(MLP(LN2(x)))
    Tensors are batch-first [B, L, D]; ``attn_mask`` is an additive float mask [L, L] (text: -inf
    above the diagonal). With ``add_bias_kv`` a learned key/value pair is appended to every sequence,
    so each query also attends to one extra slot.
    """

    def __init__(
        self, dim: int, heads: int, *, add_bias_kv: bool, drop_path: float, mlp_ratio: int, eps: float
    ):
        super().__init__()
        self.attn = nn.MultiheadAttention(dim, heads, bias=True, add_bias_kv=add_bias_kv, batch_first=True)
        self.drop_path = DropPath(drop_path, per_token=True) if drop_path > 0 else nn.Identity()
        self.norm_1 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, dim * mlp_ratio)
        self.norm_2 = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        h = self.norm_1(x)
        x = x + self.drop_path(self.attn(h, h, h, need_weights=False, attn_mask=attn_mask)[0])
        return x + self.drop_path(self.mlp(self.norm_2(x)))


class Trunk(nn.Module):
    """A stack of ``Block``s, with the optional pre-trunk LayerNorm (vision) at
    ``pre_transformer_layer.0``. Drop-path rates are linspace(0, cfg.drop_path, depth)."""

    def __init__(self, cfg: TrunkConfig, eps: float):
        super().__init__()
        if cfg.pre_ln:
            self.pre_transformer_layer = nn.Sequential(nn.LayerNorm(cfg.width, eps=eps))
        else:
            self.pre_transformer_layer = nn.Identity()
        # Computed in python so building on the meta device never needs tensor values.
        rates = [cfg.drop_path * i / (cfg.depth - 1) if cfg.depth > 1 else 0.0 for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            Block(
                cfg.width,
                cfg.heads,
                add_bias_kv=cfg.add_bias_kv,
                drop_path=r,
                mlp_ratio=cfg.mlp_ratio,
                eps=eps,
            )
            for r in rates
        )

    def forward(self, tokens: Tensor, attn_mask: Tensor | None = None) -> Tensor:
        x = self.pre_transformer_layer(tokens)
        for blk in self.blocks:
            x = blk(x, attn_mask)
        return x


class PadToFrames(nn.Module):
    """[B,C,H,W] -> [B,C,T,H,W] by repeating the image ``frames`` times (vision's Conv3d stem eats
    2-frame clips); a [B,C,1,H,W] clip is repeated too, a [B,C,T,H,W] clip passes unchanged."""

    def __init__(self, frames: int):
        super().__init__()
        self.frames = frames

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim == 4:
            x = x.unsqueeze(2)
        if x.shape[2] == 1:
            x = x.expand(-1, -1, self.frames, -1, -1)
        return x


class PatchStem(nn.Module):
    """``proj`` (a conv, a Sequential ending in a conv, or a Linear) then optional ``norm_layer``.

    Conv outputs [B,D,(T),H,W] are flattened row-major to tokens [B,N,D]; a Linear stem already
    returns [B,N,D]."""

    def __init__(self, proj: nn.Module, norm_layer: nn.Module | None = None):
        super().__init__()
        self.proj = proj
        if norm_layer is not None:
            self.norm_layer = norm_layer

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if x.ndim > 3:
            x = x.flatten(2).transpose(1, 2)
        if hasattr(self, "norm_layer"):
            x = self.norm_layer(x)
        return x


class PosEmbed(nn.Module):
    """Holder of a learned positional table [1, N(+1 CLS), D] (``pos_embedding_helper.pos_embed``)."""

    def __init__(self, tokens: int, dim: int):
        super().__init__()
        self.pos_embed = nn.Parameter(torch.empty(1, tokens, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)


class SelectToken(nn.Module):
    """x[:, index] — the CLS token of a [B, L, D] sequence."""

    def __init__(self, index: int = 0):
        super().__init__()
        self.index = index

    def forward(self, x: Tensor) -> Tensor:
        return x[:, self.index]


class TextHead(nn.Module):
    """Pick each sequence's EOT token (position of the largest token id), then LN -> Linear."""

    def __init__(self, width: int, out_dim: int, eps: float):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(width, eps=eps), nn.Linear(width, out_dim, bias=False))

    def forward(self, x: Tensor, eot: Tensor) -> Tensor:
        # x: [B, 77, D]; eot: [B] positions
        return self.proj(x[torch.arange(x.shape[0], device=x.device), eot])


class Normalize(nn.Module):
    """L2-normalise the last dim."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=-1, p=2)


class LogitScale(nn.Module):
    """Multiply by clip(exp(log_logit_scale), max): a learnable Parameter (text) or a fixed buffer."""

    def __init__(self, init: float, *, learnable: bool, max_scale: float = 100.0):
        super().__init__()
        value = torch.tensor(float(init)).log()
        if learnable:
            self.log_logit_scale = nn.Parameter(value)
        else:
            self.register_buffer("log_logit_scale", value)
        self.max_scale = max_scale
        self.learnable = learnable

    def scale(self) -> Tensor:
        return self.log_logit_scale.exp().clamp(max=self.max_scale)

    def forward(self, x: Tensor) -> Tensor:
        return self.scale() * x

    def extra_repr(self) -> str:
        return f"learnable={self.learnable}, max_scale={self.max_scale}"
