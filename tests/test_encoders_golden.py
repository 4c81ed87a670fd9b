"""The encoders eat exactly what the reference loaders produce: every golden loader output in
../shared/golden goes through the tiny model (and, for the seam, a few files through media.load)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

# golden file prefix -> our media modality
PREFIXES = {"vision": "image", "video": "video", "audio": "audio", "text": "text", "point": "point"}
SCALE = {"image": 1.0, "text": 1 / 0.07, "point": 1.0}


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


@torch.inference_mode()
def test_every_golden_loader_output_encodes(tiny_imagebind, golden_dir):
    files = sorted(p for p in golden_dir.glob("*.npy") if p.name.split("__")[0] in PREFIXES)
    assert len(files) >= 15
    seen = set()
    for path in files:
        modality = PREFIXES[path.name.split("__")[0]]
        x = torch.from_numpy(np.load(path))
        z = tiny_imagebind.encode(modality, x)
        assert z.shape == (x.shape[0], tiny_imagebind.out_dim), path.name
        assert torch.isfinite(z).all(), path.name
        if modality in SCALE:  # no clip axis: exact norm = logit scale
            torch.testing.assert_close(
                z.norm(dim=-1), torch.full((x.shape[0],), SCALE[modality]), rtol=1e-5, atol=1e-5
            )
        else:  # clip-averaged: bounded by the scale (vision 1, audio 20)
            assert (z.norm(dim=-1) <= (20.0 if modality == "audio" else 1.0) + 1e-4).all(), path.name
        seen.add(modality)
    assert seen == set(PREFIXES.values())
    # different texts give different embeddings (the EOT token is read, not a fixed position)
    batch = tiny_imagebind.encode("text", torch.from_numpy(np.load(golden_dir / "text__batch4.npy")))
    assert torch.cdist(batch, batch).triu(1)[torch.triu(torch.ones(4, 4), 1).bool()].min() > 1e-3


@torch.inference_mode()
def test_media_load_feeds_the_encoder(tiny_imagebind, golden_dir):
    media = pytest.importorskip("ibllm_agent.media")
    if not hasattr(media, "load"):
        pytest.skip("ibllm_agent.media.load is not available")
    img = media.load(golden_dir / "media" / "dog_image.jpg", "image")
    ids = media.load("A dog.", "text")
    cloud = media.load(golden_dir / "media" / "airplane.pt", "point")
    z = tiny_imagebind({"vision": img[None], "text": ids[None], "point": cloud[None]})
    assert {k: tuple(v.shape) for k, v in z.items()} == {
        k: (1, tiny_imagebind.out_dim) for k in ("vision", "text", "point")
    }
