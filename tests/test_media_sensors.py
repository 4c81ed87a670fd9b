"""Depth, thermal and IMU loaders (our documented conventions; the reference has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ibllm_agent import media


def test_depth_png_millimetres_to_metres(tmp_path):
    depth_mm = np.full((240, 320), 1500, np.uint16)
    depth_mm[:, 160:] = 3000
    path = tmp_path / "d.png"
    Image.fromarray(depth_mm).save(path)
    assert Image.open(path).mode.startswith("I")
    assert media.infer_modality(path) == "depth"
    out = media.load(path)
    assert out.shape == (1, 224, 224) and out.dtype == torch.float32
    assert out[0, 100, 10].item() == pytest.approx(1.5)
    assert out[0, 100, 215].item() == pytest.approx(3.0)


def test_depth_npy_metres_matches_png(tmp_path):
    metres = np.random.default_rng(0).uniform(0.5, 4.0, (120, 90)).astype(np.float32)
    np.save(tmp_path / "d.npy", metres)
    Image.fromarray(np.round(metres * 1000).astype(np.uint16)).save(tmp_path / "d.png")
    assert media.infer_modality(tmp_path / "d.npy") == "depth"
    a = media.load(tmp_path / "d.npy")
    b = media.load(tmp_path / "d.png")
    assert a.shape == b.shape == (1, 224, 224)
    assert (a - b).abs().max() < 2e-3  # 1 mm quantisation of the PNG
    assert torch.equal(media.load(metres, "depth"), a)


def test_depth_constant_map_stays_constant():
    out = media.load(np.full((50, 300), 2.0, np.float32), "depth")
    assert torch.allclose(out, torch.full((1, 224, 224), 2.0))


def test_thermal_grayscale(tmp_path):
    arr = np.tile(np.linspace(0, 255, 400).astype(np.uint8), (300, 1))
    Image.fromarray(arr).convert("RGB").save(tmp_path / "t.png")
    out = media.load(tmp_path / "t.png", "thermal")
    assert out.shape == (1, 224, 224)
    assert 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    row = out[0, 100]
    assert bool((row[1:] >= row[:-1] - 1e-3).all())  # the left→right ramp survives


def test_imu_npy_transposed_and_padded(tmp_path):
    x = np.random.default_rng(0).normal(size=(1500, 6)).astype(np.float32)
    np.save(tmp_path / "imu.npy", x)
    assert media.infer_modality(tmp_path / "imu.npy") == "imu"
    out = media.load(tmp_path / "imu.npy")
    assert out.shape == (6, 2000)
    assert torch.equal(out[:, :1500], torch.from_numpy(x.T))
    assert torch.count_nonzero(out[:, 1500:]) == 0


def test_imu_csv_with_header_and_timestamp(tmp_path):
    x = np.random.default_rng(1).normal(size=(2500, 6))
    lines = ["t,ax,ay,az,gx,gy,gz"] + [f"{i * 0.005}," + ",".join(f"{v:.6f}" for v in row) for i, row in enumerate(x)]
    (tmp_path / "imu.csv").write_text("\n".join(lines))
    out = media.load(tmp_path / "imu.csv")
    assert out.shape == (6, 2000)
    np.testing.assert_allclose(out.numpy(), x[:2000].T, atol=1e-6)


def test_imu_passthrough():
    x = torch.randn(6, 2000)
    assert media.load(x, "imu") is x
