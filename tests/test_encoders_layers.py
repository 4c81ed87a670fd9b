"""Transformer blocks against the equations, and the Point-Bind grouping / determinism."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ibllm_agent.encoders import ImageBind, farthest_point_sample, group_points
from ibllm_agent.encoders.config import PointConfig, TrunkConfig
from ibllm_agent.encoders.layers import Block, DropPath, Trunk
from ibllm_agent.encoders.pointbind import PointBlock, PointPatchEncoder

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


def _layer_norm(x, ln):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + ln.eps) * ln.weight + ln.bias


def _gelu(x):
    return 0.5 * x * (1 + torch.erf(x / math.sqrt(2)))


def _block_by_equations(blk: Block, x, mask=None):
    """x [B, L, D] through one block, written out: LN -> per-head softmax(q k^T / sqrt(hd) + mask) v
    with the learned bias key/value appended as an extra key slot -> out proj -> residual -> MLP."""
    attn = blk.attn
    b, n, d = x.shape
    h = attn.num_heads
    hd = d // h
    y = _layer_norm(x, blk.norm_1)
    w, bias = attn.in_proj_weight, attn.in_proj_bias
    q = y @ w[:d].T + bias[:d]
    k = y @ w[d : 2 * d].T + bias[d : 2 * d]
    v = y @ w[2 * d :].T + bias[2 * d :]
    if attn.bias_k is not None:
        k = torch.cat([k, attn.bias_k.expand(b, 1, d)], dim=1)
        v = torch.cat([v, attn.bias_v.expand(b, 1, d)], dim=1)
    heads = []
    for i in range(h):
        sl = slice(i * hd, (i + 1) * hd)
        scores = q[..., sl] @ k[..., sl].transpose(1, 2) / math.sqrt(hd)  # [B, L, L(+1)]
        if mask is not None:
            full = torch.zeros(n, k.shape[1])
            full[:, :n] = mask
            scores = scores + full
        heads.append(torch.softmax(scores, dim=-1) @ v[..., sl])
    a = torch.cat(heads, dim=-1) @ attn.out_proj.weight.T + attn.out_proj.bias
    x = x + a
    z = _layer_norm(x, blk.norm_2)
    return x + _gelu(z @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias


def _randomise(module):
    torch.manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.3)
    return module.eval()


@pytest.mark.parametrize("add_bias_kv", [False, True])
@pytest.mark.parametrize("causal", [False, True])
def test_block_matches_equations(add_bias_kv, causal):
    blk = _randomise(Block(24, 4, add_bias_kv=add_bias_kv, drop_path=0.3, mlp_ratio=4, eps=1e-6))
    x = torch.randn(3, 7, 24, generator=torch.Generator().manual_seed(1))
    mask = torch.full((7, 7), float("-inf")).triu(1) if causal else None
    with torch.no_grad():
        got = blk(x, mask)
        want = _block_by_equations(blk, x, mask)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    if add_bias_kv:  # the bias slot matters: without it the result differs
        with torch.no_grad():
            blk.attn.bias_k.zero_(), blk.attn.bias_v.zero_()
            assert (blk(x, mask) - got).abs().max() > 1e-3


def test_trunk_pre_ln_and_stack():
    trunk = _randomise(Trunk(TrunkConfig(16, 2, 2, pre_ln=True), eps=1e-6))
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        want = _block_by_equations(
            trunk.blocks[1],
            _block_by_equations(trunk.blocks[0], _layer_norm(x, trunk.pre_transformer_layer[0])),
        )
        torch.testing.assert_close(trunk(x), want, rtol=1e-4, atol=1e-4)


def test_point_block_matches_equations():
    blk = _randomise(PointBlock(16, 4, 4, drop_path=0.0, eps=1e-5))
    x = torch.randn(2, 9, 16)
    with torch.no_grad():
        y = _layer_norm(x, blk.norm1)
        q, k, v = (y @ blk.attn.qkv.weight.T).split(16, dim=-1)  # qkv has no bias
        heads = []
        for i in range(4):
            sl = slice(4 * i, 4 * i + 4)
            heads.append(torch.softmax(q[..., sl] @ k[..., sl].transpose(1, 2) * 4**-0.5, -1) @ v[..., sl])
        x1 = x + torch.cat(heads, -1) @ blk.attn.proj.weight.T + blk.attn.proj.bias
        z = _layer_norm(x1, blk.norm2)
        want = (
            x1 + _gelu(z @ blk.mlp.fc1.weight.T + blk.mlp.fc1.bias) @ blk.mlp.fc2.weight.T + blk.mlp.fc2.bias
        )
        torch.testing.assert_close(blk(x), want, rtol=1e-4, atol=1e-4)


def test_drop_path_in_training_only():
    x = torch.ones(1000, 50, 4)
    per_sample, per_token = DropPath(0.5), DropPath(0.5, per_token=True)
    assert torch.equal(per_sample.eval()(x), x) and torch.equal(per_token.eval()(x), x)
    torch.manual_seed(0)
    y = per_sample.train()(x).reshape(1000, -1)
    assert ((y == 0).all(1) | (y == 2).all(1)).all()  # a whole sample dropped or scaled by 1/keep
    assert 400 < int((y[:, 0] == 0).sum()) < 600
    # ImageBind trunks (reference runs them sequence-first): one coin per position, shared by the batch
    z = per_token.train()(torch.ones(8, 2000, 4))
    assert (z == z[:1]).all()
    assert 800 < int((z[0, :, 0] == 0).sum()) < 1200


def test_imagebind_blocks_use_per_token_drop_path():
    model = ImageBind.from_preset("tiny", device="meta")
    assert model.modality_trunks["imu"].blocks[-1].drop_path.per_token
    assert (
        not ImageBind.from_preset("tiny_w3d", device="meta")
        .point_trunk.point_encoder.blocks.blocks[-1]
        .drop_path.per_token
    )


# ---- Point-Bind ---------------------------------------------------------------------------------
def _fps_reference(points: np.ndarray, n: int) -> list[int]:
    chosen, dist = [0], np.full(len(points), np.inf)
    for _ in range(n - 1):
        dist = np.minimum(dist, ((points - points[chosen[-1]]) ** 2).sum(-1))
        chosen.append(int(np.argmax(dist)))
    return chosen


def test_fps_matches_reference_loop_and_is_deterministic():
    cloud = torch.randn(3, 300, 3, generator=torch.Generator().manual_seed(0))
    idx = farthest_point_sample(cloud, 40)
    assert idx.shape == (3, 40) and idx.dtype == torch.long
    for b in range(3):
        assert idx[b].tolist() == _fps_reference(cloud[b].double().numpy(), 40)
        assert len(set(idx[b].tolist())) == 40
    assert torch.equal(idx, farthest_point_sample(cloud, 40))
    assert (idx[:, 0] == 0).all()  # documented start index


def test_grouping_is_knn_around_fps_centres():
    cloud = torch.randn(2, 500, 3, generator=torch.Generator().manual_seed(1))
    patches, centres = group_points(cloud, 16, 8)
    assert patches.shape == (2, 16, 8, 3) and centres.shape == (2, 16, 3)
    idx = farthest_point_sample(cloud, 16)
    torch.testing.assert_close(centres, cloud[torch.arange(2)[:, None], idx])
    for b in range(2):
        for g in (0, 7, 15):
            d = (cloud[b] - centres[b, g]).norm(dim=-1)
            nearest = cloud[b][d.argsort()[:8]] - centres[b, g]
            got = {tuple(np.round(p, 5)) for p in patches[b, g].numpy()}
            assert got == {tuple(np.round(p, 5)) for p in nearest.numpy()}
    assert (patches.norm(dim=-1).amin(dim=-1) < 1e-6).all()  # each centre is its own nearest point


def test_mini_pointnet_ignores_point_order_inside_a_patch():
    enc = _randomise(PointPatchEncoder(PointConfig(encoder_dims=12, pointnet_dims=(8, 16, 24))))
    patches = torch.randn(2, 5, 32, 3)
    with torch.no_grad():
        a = enc(patches)
        b = enc(patches[:, :, torch.randperm(32)])
    assert a.shape == (2, 5, 12)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@torch.inference_mode()
def test_point_branch_is_deterministic():
    model = ImageBind.from_preset("tiny_w3d", seed=0)
    cloud = torch.randn(2, 8192, 3, generator=torch.Generator().manual_seed(2))
    a = model.encode("point", cloud)
    b = model.encode("point", cloud.clone())
    assert torch.equal(a, b)
    # the output depends on the cloud (not a constant), and on where the points are
    c = model.encode("point", cloud * 0.5)
    assert (a - c).abs().max() > 1e-4
