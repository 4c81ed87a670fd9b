"""The full-size huge_w3d model runs every modality on CPU (random weights: ~5 GB RAM, minutes on
2 cores, hence slow). Key/shape fidelity of huge is covered without memory in test_encoders_manifest."""

from __future__ import annotations

import pytest
import torch
from helpers import SCALES

from ibllm_agent.encoders import ImageBind


@pytest.mark.slow
@torch.inference_mode()
def test_huge_w3d_forward_every_modality_on_cpu():
    model = ImageBind.from_preset("huge_w3d", seed=0)
    g = torch.Generator().manual_seed(0)
    ids = torch.zeros(1, 77, dtype=torch.long)
    ids[0, :4] = torch.tensor([49406, 320, 1929, 49407])
    inputs = {
        "vision": torch.randn(1, 3, 224, 224, generator=g),
        "text": ids,
        "audio": torch.randn(1, 3, 1, 128, 204, generator=g),
        "depth": torch.randn(1, 1, 224, 224, generator=g),
        "thermal": torch.randn(1, 1, 224, 224, generator=g),
        "imu": torch.randn(1, 6, 2000, generator=g),
        "point": torch.randn(1, 8192, 3, generator=g),
    }
    out = model(inputs)
    for m, z in out.items():
        assert z.shape == (1, 1024), m
        assert torch.isfinite(z).all(), m
        if m != "audio":  # audio is a 3-clip average: norm <= 20
            torch.testing.assert_close(z.norm(dim=-1), torch.tensor([SCALES[m]]), rtol=1e-4, atol=1e-4)
