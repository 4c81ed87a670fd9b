"""SAM loader against the official checkpoint layouts, on the meta device (no download): the official
``sam_model_registry`` architectures hold exactly as many fp32 bytes as the published files, and
``load_sam`` accepts their state dicts strictly and refuses others by name."""

from __future__ import annotations

import pytest
import torch

from ibllm_agent.errors import CheckpointError
from ibllm_agent.tools.segmentation import load_sam
from ibllm_agent.weights import WEIGHTS


@pytest.mark.parametrize("variant", ["vit_b", "vit_l", "vit_h"])
def test_sam_official_layout_loads_strictly_on_meta(variant, monkeypatch, tmp_path):
    from segment_anything import sam_model_registry

    with torch.device("meta"):
        state = sam_model_registry[variant]().state_dict()
    # The published .pth is this state dict in fp32 plus pickle overhead (< 0.1 %).
    nbytes = sum(t.numel() * 4 for t in state.values())
    published = WEIGHTS[f"sam_{variant}"].size_bytes
    assert 0 < published - nbytes < 0.001 * published
    monkeypatch.setattr(torch, "load", lambda *a, **k: dict(state))
    sam = load_sam(tmp_path / "sam.pth", variant, device="meta")
    assert set(sam.state_dict()) == set(state)
    broken = dict(state)
    broken["image_encoder.extra.weight"] = broken.pop("image_encoder.neck.0.weight")
    monkeypatch.setattr(torch, "load", lambda *a, **k: broken)
    with pytest.raises(CheckpointError, match="image_encoder.neck.0.weight"):
        load_sam(tmp_path / "sam.pth", variant, device="meta")


def test_sam_loader_uses_weights_only(monkeypatch, tmp_path):
    seen = {}

    def fake_load(*args, **kwargs):
        seen.update(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(torch, "load", fake_load)
    with pytest.raises(RuntimeError, match="stop"):
        load_sam(tmp_path / "sam.pth", "vit_b", device="meta")
    assert seen["weights_only"] is True
