"""The huge / huge_w3d modules have exactly the official checkpoints' state_dict layout.

Built on the meta device (no memory), compared key by key with ../shared/manifests: same keys in the
same order, same shapes, same dtypes, and the same parameter/buffer split.
"""

from __future__ import annotations

import json
import re

import pytest
import torch

from ibllm_agent.encoders import ImageBind
from ibllm_agent.encoders.imagebind import _infer_preset, checkpoint_mismatch

POINT_PREFIXES = ("point_trunk.", "modality_heads.point.", "modality_postprocessors.point.")


def _manifest(manifests_dir, name):
    data = json.loads((manifests_dir / name).read_text())
    about = data.pop("_about")
    return about, data


def _w3d_buffers(about: str) -> set[str]:
    # The w3d manifest's _about lists its 12 buffers: "... (1464 parameters, 12 buffers: a, b, ...)."
    m = re.search(r"(\d+) buffers: ([^)]*)\)", about)
    assert m, "manifest _about no longer lists the buffers"
    names = {s.strip() for s in m.group(2).split(",")}
    assert len(names) == int(m.group(1)) == 12
    return names


@pytest.fixture(scope="module")
def meta_models():
    return {name: ImageBind.from_preset(name, device="meta") for name in ("huge", "huge_w3d")}


@pytest.mark.parametrize(
    "preset, manifest", [("huge_w3d", "imagebind_w3d.json"), ("huge", "imagebind_huge.json")]
)
def test_state_dict_equals_manifest(meta_models, manifests_dir, preset, manifest):
    _, expected = _manifest(manifests_dir, manifest)
    model = meta_models[preset]
    sd = model.state_dict()
    assert all(t.is_meta for t in sd.values())
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    assert not missing and not unexpected, (missing[:5], unexpected[:5])
    assert list(sd) == list(expected)  # registration order too
    for key, spec in expected.items():
        assert list(sd[key].shape) == spec["shape"], key
        assert str(sd[key].dtype).removeprefix("torch.") == spec["dtype"], key
    assert (
        checkpoint_mismatch(sd, {k: torch.empty(v["shape"], device="meta") for k, v in expected.items()})
        == ""
    )


@pytest.mark.parametrize(
    "preset, manifest, total",
    [
        ("huge_w3d", "imagebind_w3d.json", 1_223_565_617),
        ("huge", "imagebind_huge.json", 1_200_786_990),
    ],
)
def test_parameter_buffer_split_and_size(meta_models, manifests_dir, preset, manifest, total):
    about_w3d, _ = _manifest(manifests_dir, "imagebind_w3d.json")
    _, expected = _manifest(manifests_dir, manifest)
    buffers = {k for k in _w3d_buffers(about_w3d) if k in expected}
    model = meta_models[preset]
    assert {k for k, _ in model.named_buffers()} == buffers
    assert {k for k, _ in model.named_parameters()} == set(expected) - buffers
    # the text logit scale is the one learnable scale; the others are fixed buffers
    assert "modality_postprocessors.text.1.log_logit_scale" in dict(model.named_parameters())
    assert sum(t.numel() for t in model.state_dict().values()) == total
    if preset == "huge":
        assert not any(k.startswith(POINT_PREFIXES) for k in model.state_dict())
        # the text mask and the four fixed logit scales remain without Point-Bind
        assert len(buffers) == 5


def test_preset_inferred_from_a_manifest_layout(manifests_dir):
    for name, preset in (("imagebind_w3d.json", "huge_w3d"), ("imagebind_huge.json", "huge")):
        _, expected = _manifest(manifests_dir, name)
        state = {k: torch.empty(v["shape"], device="meta") for k, v in expected.items()}
        assert _infer_preset(state, name) == preset


def test_huge_architecture_numbers(meta_models):
    m = meta_models["huge_w3d"]
    assert m.out_dim == 1024
    assert [
        len(m.modality_trunks[k].blocks) for k in ("vision", "text", "audio", "depth", "thermal", "imu")
    ] == [32, 24, 12, 12, 12, 6]
    heads = {k: m.modality_trunks[k].blocks[0].attn.num_heads for k in m.modality_trunks}
    assert heads == {"vision": 16, "text": 16, "audio": 12, "depth": 8, "thermal": 12, "imu": 8}
    bias_kv = {k: m.modality_trunks[k].blocks[0].attn.bias_k is not None for k in m.modality_trunks}
    assert bias_kv == {
        "vision": False,
        "text": False,
        "audio": True,
        "depth": True,
        "thermal": True,
        "imu": True,
    }
    # drop-path rates: linspace(0, rate, depth); audio 0.1, imu 0.7, point 0.1, others 0
    assert m.modality_trunks["imu"].blocks[-1].drop_path.p == pytest.approx(0.7)
    assert m.modality_trunks["imu"].blocks[1].drop_path.p == pytest.approx(0.14)
    assert m.modality_trunks["audio"].blocks[-1].drop_path.p == pytest.approx(0.1)
    assert isinstance(m.modality_trunks["vision"].blocks[-1].drop_path, torch.nn.Identity)
    assert m.point_trunk.point_encoder.blocks.blocks[-1].drop_path.p == pytest.approx(0.1)
    # LayerNorm eps: 1e-6 in the ImageBind blocks/heads, 1e-5 in the stems and in Point-BERT
    assert m.modality_trunks["text"].blocks[0].norm_1.eps == 1e-6
    assert m.modality_heads["audio"][0].eps == 1e-6
    assert m.modality_preprocessors["audio"].rgbt_stem.norm_layer.eps == 1e-5
    assert m.point_trunk.point_encoder.norm.eps == 1e-5
