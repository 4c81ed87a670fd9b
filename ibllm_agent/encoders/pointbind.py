"""Point-Bind's 3D branch: a Point-BERT transformer over point patches, projected to 512-d.

Pipeline for a cloud [B, N, 3] (N >= num_group):

1. farthest-point sampling picks ``num_group`` centres [B, G, 3];
2. each centre's ``group_size`` nearest points (Euclidean, fp32) form a patch [B, G, K, 3], re-centred
   on its centre;
3. a mini-PointNet turns each patch into one ``encoder_dims`` token (max-pooled, so the order of
   the points inside a patch does not matter);
4. tokens -> Linear to ``trans_dim``, a learned CLS token is prepended; centres -> MLP positional
   embeddings (plus a learned CLS position) which are re-added before *every* block;
5. 12 pre-LN blocks, final LN; output concat(CLS, max over the group tokens) [B, 2*trans_dim]
   @ ``pc_projection`` -> [B, embed_dim].

Determinism: the reference's FPS starts from a random point, so the same cloud can give different
embeddings. Here FPS always starts from point index 0 of each cloud and breaks distance ties by the
lowest index, so the output is a pure function of the input (same cloud, same order -> bit-identical
centres). Index 0 is arbitrary but stable; the loader (``ibllm_agent.media``) keeps point order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ibllm_agent.encoders.config import PointConfig
from ibllm_agent.encoders.layers import DropPath, Mlp


def farthest_point_sample(xyz: Tensor, n: int) -> Tensor:
    """Indices [B, n] of ``n`` farthest-point-sampled points of ``xyz`` [B, N, 3].

    Starts at index 0; each step picks the point with the largest distance to the chosen set
    (argmax returns the first of equal maxima). Vectorised over the batch, fp32 distances."""
    b, num, _ = xyz.shape
    pts = xyz.float()
    idx = torch.zeros(b, n, dtype=torch.long, device=xyz.device)
    dist = torch.full((b, num), float("inf"), device=xyz.device)
    rows = torch.arange(b, device=xyz.device)
    far = torch.zeros(b, dtype=torch.long, device=xyz.device)
    for i in range(n):
        idx[:, i] = far
        centre = pts[rows, far].unsqueeze(1)  # [B, 1, 3]
        dist = torch.minimum(dist, (pts - centre).square().sum(-1))
        far = dist.argmax(-1)
    return idx


def group_points(xyz: Tensor, num_group: int, group_size: int) -> tuple[Tensor, Tensor]:
    """Patches [B, G, K, 3] (re-centred) and their centres [B, G, 3] for a cloud [B, N, 3]."""
    b = xyz.shape[0]
    pts = xyz.float()
    rows = torch.arange(b, device=xyz.device)[:, None]
    centres = pts[rows, farthest_point_sample(pts, num_group)]  # [B, G, 3]
    # K nearest by Euclidean distance (same order as squared distance); order inside a patch is
    # irrelevant because the mini-PointNet max-pools over it.
    knn = torch.cdist(centres, pts).topk(group_size, dim=-1, largest=False).indices  # [B, G, K]
    patches = pts[rows[:, :, None], knn] - centres.unsqueeze(2)
    return patches, centres


class PointPatchEncoder(nn.Module):
    """Mini-PointNet: per patch [K, 3] -> one feature [encoder_dims].

    first_conv: 3 -> h1 (BN, ReLU) -> h2; concat(max over points, per-point) -> 2*h2;
    second_conv: 2*h2 -> h3 (BN, ReLU) -> out; max over points."""

    def __init__(self, cfg: PointConfig):
        super().__init__()
        h1, h2, h3 = cfg.pointnet_dims
        self.out_dim = cfg.encoder_dims
        self.first_conv = nn.Sequential(
            nn.Conv1d(3, h1, 1), nn.BatchNorm1d(h1), nn.ReLU(inplace=True), nn.Conv1d(h1, h2, 1)
        )
        self.second_conv = nn.Sequential(
            nn.Conv1d(2 * h2, h3, 1),
            nn.BatchNorm1d(h3),
            nn.ReLU(inplace=True),
            nn.Conv1d(h3, cfg.encoder_dims, 1),
        )

    def forward(self, patches: Tensor) -> Tensor:
        b, g, k, _ = patches.shape
        x = self.first_conv(patches.reshape(b * g, k, 3).transpose(1, 2))  # [BG, h2, K]
        glob = x.amax(dim=2, keepdim=True)  # [BG, h2, 1]
        x = torch.cat([glob.expand(-1, -1, k), x], dim=1)  # global first, as Point-BERT
        x = self.second_conv(x).amax(dim=2)  # [BG, out]
        return x.reshape(b, g, self.out_dim)


class PointAttention(nn.Module):
    """Multi-head self-attention with a bias-free fused qkv projection (Point-BERT ``Attention``)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(hd)) v
        return self.proj(y.transpose(1, 2).reshape(b, n, d))


class PointBlock(nn.Module):
    """Pre-LN block; attribute order (norm1, norm2, mlp, attn) reproduces the checkpoint's key order."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, drop_path: float, eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, dim * mlp_ratio)  # same fc1/fc2 keys as the ImageBind trunks
        self.attn = PointAttention(dim, heads)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PointBlocks(nn.Module):
    """The block stack; positions are re-added to the input of every block."""

    def __init__(self, cfg: PointConfig):
        super().__init__()
        rates = [cfg.drop_path * i / (cfg.depth - 1) if cfg.depth > 1 else 0.0 for i in range(cfg.depth)]
        self.blocks = nn.ModuleList(
            PointBlock(cfg.trans_dim, cfg.heads, cfg.mlp_ratio, r, cfg.ln_eps) for r in rates
        )

    def forward(self, x: Tensor, pos: Tensor) -> Tensor:
        for blk in self.blocks:
            x = blk(x + pos)
        return x


class PointBERT(nn.Module):
    """Point-BERT transformer: cloud [B, N, 3] -> [B, 2 * trans_dim] (CLS ++ max-pool)."""

    def __init__(self, cfg: PointConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.trans_dim
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.cls_pos = nn.Parameter(torch.empty(1, 1, d))
        self.encoder = PointPatchEncoder(cfg)
        self.reduce_dim = nn.Linear(cfg.encoder_dims, d)
        self.pos_embed = nn.Sequential(nn.Linear(3, cfg.pos_hidden), nn.GELU(), nn.Linear(cfg.pos_hidden, d))
        self.blocks = PointBlocks(cfg)
        self.norm = nn.LayerNorm(d, eps=cfg.ln_eps)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.cls_pos, std=0.02)

    def forward(self, xyz: Tensor) -> Tensor:
        patches, centres = group_points(xyz, self.cfg.num_group, self.cfg.group_size)
        dtype = self.reduce_dim.weight.dtype
        tokens = self.reduce_dim(self.encoder(patches.to(dtype)))  # [B, G, D]
        pos = self.pos_embed(centres.to(dtype))  # [B, G, D]
        b = tokens.shape[0]
        x = torch.cat([self.cls_token.expand(b, -1, -1), tokens], dim=1)
        pos = torch.cat([self.cls_pos.expand(b, -1, -1), pos], dim=1)
        x = self.norm(self.blocks(x, pos))
        return torch.cat([x[:, 0], x[:, 1:].amax(dim=1)], dim=-1)


class PointTrunk(nn.Module):
    """``point_trunk``: Point-BERT features [B, 2*trans_dim] @ pc_projection -> [B, embed_dim]."""

    def __init__(self, cfg: PointConfig):
        super().__init__()
        self.pc_projection = nn.Parameter(torch.empty(2 * cfg.trans_dim, cfg.embed_dim))
        self.point_encoder = PointBERT(cfg)
        nn.init.normal_(self.pc_projection, std=(2 * cfg.trans_dim) ** -0.5)

    def forward(self, xyz: Tensor) -> Tensor:
        return self.point_encoder(xyz) @ self.pc_projection
