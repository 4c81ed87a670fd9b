"""Point clouds: readers for every format, normalisation, deterministic resampling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ibllm_agent import media
from ibllm_agent.media.point import farthest_point_sample, prepare_points, read_points

LIMITS = media.MediaLimits()


@pytest.fixture
def cloud():
    return np.random.default_rng(1).normal(size=(500, 3)) * [3.0, 1.0, 0.5] + [10.0, -2.0, 4.0]


def _write_ply(path, pts, fmt):
    header = (f"ply\nformat {fmt} 1.0\ncomment made in a test\nelement vertex {len(pts)}\n"
              "property float x\nproperty float y\nproperty float z\nproperty uchar red\n"
              "element face 0\nproperty list uchar int vertex_indices\nend_header\n")
    with open(path, "wb") as fh:
        fh.write(header.encode())
        if fmt == "ascii":
            fh.write("".join(f"{x} {y} {z} 7\n" for x, y, z in pts).encode())
        else:
            endian = "<" if fmt == "binary_little_endian" else ">"
            rec = np.zeros(len(pts), dtype=[("x", endian + "f4"), ("y", endian + "f4"), ("z", endian + "f4"), ("r", "u1")])
            rec["x"], rec["y"], rec["z"], rec["r"] = pts[:, 0], pts[:, 1], pts[:, 2], 7
            fh.write(rec.tobytes())


@pytest.mark.parametrize("fmt", ["ascii", "binary_little_endian", "binary_big_endian"])
def test_ply_reader(tmp_path, cloud, fmt):
    path = tmp_path / "c.ply"
    _write_ply(path, cloud, fmt)
    got = read_points(path, LIMITS)
    assert got.shape == (500, 3)
    np.testing.assert_allclose(got.numpy(), cloud.astype(np.float32), rtol=1e-6, atol=1e-5)
    assert media.infer_modality(path.read_bytes()) == "point"


def _pcd(pts, mode):
    """A PCD v0.7 file with x y z, an rgb float and a 2-byte padding field between them."""
    head = ("# .PCD v0.7 - Point Cloud Data file format\nVERSION 0.7\nFIELDS x _ y z rgb\nSIZE 4 2 4 4 4\n"
            f"TYPE F U F F F\nCOUNT 1 1 1 1 1\nWIDTH {len(pts)}\nHEIGHT 1\nVIEWPOINT 0 0 0 1 0 0 0\n"
            f"POINTS {len(pts)}\nDATA {mode}\n")
    if mode == "ascii":
        return (head + "".join(f"{x!r} 0 {y!r} {z!r} 4.2108e+06\n" for x, y, z in pts.tolist())).encode()
    rec = np.zeros(len(pts), dtype=[("x", "<f4"), ("pad", "<u2"), ("y", "<f4"), ("z", "<f4"), ("rgb", "<f4")])
    rec["x"], rec["y"], rec["z"], rec["pad"], rec["rgb"] = pts[:, 0], pts[:, 1], pts[:, 2], 65535, 1.5
    return head.encode() + rec.tobytes()


@pytest.mark.parametrize("mode", ["ascii", "binary"])
def test_pcd_reader(tmp_path, cloud, mode):
    path = tmp_path / "scan.pcd"
    path.write_bytes(_pcd(cloud, mode))
    expected = cloud if mode == "ascii" else cloud.astype(np.float32)
    np.testing.assert_allclose(read_points(path, LIMITS).numpy(), expected, rtol=1e-12 if mode == "ascii" else 0)
    # bytes without a name are recognised by the header; the modality is inferred from the extension
    np.testing.assert_allclose(read_points(path.read_bytes(), LIMITS).numpy(), expected, rtol=1e-6)
    assert media.infer_modality(str(path)) == "point"
    assert media.load(path).shape == (8192, 3)


def test_pcd_errors(tmp_path, cloud):
    bad = tmp_path / "bad.pcd"
    bad.write_bytes(_pcd(cloud, "binary_compressed"))
    with pytest.raises(media.UnknownFormatError, match="binary_compressed"):
        read_points(bad, LIMITS)
    bad.write_bytes(_pcd(cloud, "binary")[:-100])
    with pytest.raises(media.UnreadableMediaError, match="truncated"):
        read_points(bad, LIMITS)
    bad.write_bytes(b"VERSION 0.7\nFIELDS a b\nSIZE 4 4\nTYPE F F\nCOUNT 1 1\nPOINTS 1\nDATA ascii\n1 2\n")
    with pytest.raises(media.UnreadableMediaError, match="no x/y/z"):
        read_points(bad, LIMITS)


def test_text_and_obj_readers(tmp_path, cloud):
    (tmp_path / "c.xyz").write_text("x y z\n" + "".join(f"{x},{y},{z},0.1,0.2,0.3\n" for x, y, z in cloud))
    (tmp_path / "c.pts").write_text(f"{len(cloud)}\n" + "".join(f"{x} {y} {z}\n" for x, y, z in cloud))
    (tmp_path / "c.obj").write_text("# obj\nmtllib a.mtl\n" + "".join(f"v {x} {y} {z}\nvn 0 0 1\n" for x, y, z in cloud) + "f 1 2 3\n")
    for name in ("c.xyz", "c.pts", "c.obj"):
        got = read_points(tmp_path / name, LIMITS)
        np.testing.assert_allclose(got.numpy(), cloud, rtol=1e-12, err_msg=name)


def test_npy_and_pt_readers(tmp_path, cloud):
    np.save(tmp_path / "c.npy", cloud)
    torch.save(torch.from_numpy(cloud).float(), tmp_path / "c.pt")
    torch.save({"xyz": torch.from_numpy(cloud)}, tmp_path / "d.pt")
    assert media.infer_modality(tmp_path / "c.npy") == "point"
    np.testing.assert_array_equal(read_points(tmp_path / "c.npy", LIMITS).numpy(), cloud)
    np.testing.assert_array_equal(read_points(tmp_path / "d.pt", LIMITS).numpy(), cloud)
    np.testing.assert_allclose(read_points(tmp_path / "c.pt", LIMITS).numpy(), cloud, rtol=1e-6)


def test_normalised_to_unit_sphere(cloud):
    out = media.load(cloud, "point")
    assert out.shape == (8192, 3) and out.dtype == torch.float32
    norms = out.double().norm(dim=1)
    assert abs(float(norms.max()) - 1.0) < 1e-6
    # every output point is one of the normalised input points (no new points invented)
    unit = (cloud - cloud.mean(0)) / np.linalg.norm(cloud - cloud.mean(0), axis=1).max()
    dist = torch.cdist(out.double(), torch.from_numpy(unit)).min(dim=1).values
    assert float(dist.max()) < 1e-6


def test_prepared_cloud_is_returned_unchanged_in_order():
    rng = np.random.default_rng(3)
    pts = rng.normal(size=(8192, 3))
    pts -= pts.mean(0)
    pts /= np.linalg.norm(pts, axis=1).max()
    t = torch.from_numpy(pts.astype(np.float32))
    out = media.load(t, "point")
    assert torch.equal(out, t)
    shifted = t + 0.01  # no longer centred → normalised (and changed)
    assert not torch.equal(media.load(shifted, "point"), shifted)


def test_downsampling_is_deterministic_and_seeded():
    pts = torch.from_numpy(np.random.default_rng(5).uniform(-1, 1, size=(20000, 3)))
    a = prepare_points(pts)
    b = prepare_points(pts.clone())
    c = prepare_points(pts, seed=1)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert a.shape == (8192, 3) and len(torch.unique(a, dim=0)) == 8192


def test_farthest_point_sampling_spreads_out():
    # two tight clusters of 1000 points and 2 outliers: FPS with 4 samples must take both outliers
    # and one point of each cluster, whatever the start index.
    rng = np.random.default_rng(0)
    a = rng.normal(scale=0.01, size=(1000, 3))
    b = rng.normal(scale=0.01, size=(1000, 3)) + [5, 0, 0]
    pts = torch.from_numpy(np.concatenate([a, b, [[0, 9, 0], [5, -9, 0]]]))
    for seed in range(4):
        idx = farthest_point_sample(pts, 4, seed=seed)
        chosen = set(idx.tolist())
        assert {2000, 2001} <= chosen
        assert any(i < 1000 for i in chosen) and any(1000 <= i < 2000 for i in chosen)


def test_upsampling_keeps_every_point():
    pts = torch.from_numpy(np.random.default_rng(2).normal(size=(1000, 3)))
    out = prepare_points(pts)
    assert out.shape == (8192, 3)
    unit = ((pts - pts.mean(0)) / (pts - pts.mean(0)).norm(dim=1).max()).float()
    assert torch.equal(out[:1000], unit)  # originals first, in order
    assert torch.equal(out, prepare_points(pts))
    # each point appears 8 or 9 times (8192 = 8·1000 + 192)
    counts = torch.unique(out, dim=0, return_counts=True)[1]
    assert set(counts.tolist()) == {8, 9} and int((counts == 9).sum()) == 192


def test_single_point_cloud_is_an_error_not_zeros():
    # One point (or many identical ones) has no extent: scaling to the unit sphere is undefined.
    with pytest.raises(media.InvalidValuesError, match="coincide"):
        media.load(np.array([[1.0, 2.0, 3.0]]), "point")
