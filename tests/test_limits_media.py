"""Media limits of issue 16: every numpy byte order loads; corrupt headers and degenerate clouds are
MediaErrors, never silent zeros."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ibllm_agent import media

_XYZ = np.random.default_rng(0).normal(size=(600, 3))


@pytest.mark.parametrize("order", ["<", ">", "=", "|"])
@pytest.mark.parametrize("kind", ["f4", "f8", "i4"])
def test_point_npy_every_byte_order_loads_the_same(tmp_path, order, kind):
    values = (_XYZ * 100) if kind.startswith("i") else _XYZ
    dtype = np.dtype(kind) if order == "|" else np.dtype(kind).newbyteorder(order)
    path = tmp_path / "p.npy"
    np.save(path, values.astype(dtype))
    native = tmp_path / "native.npy"
    np.save(native, values.astype(kind))
    out = media.load(path, "point")
    assert torch.equal(out, media.load(native, "point"))


@pytest.mark.parametrize("order", ["<", ">"])
def test_imu_depth_and_arrays_in_big_and_little_endian(tmp_path, order):
    rng = np.random.default_rng(1)
    imu = rng.normal(size=(6, 2000)).astype(np.dtype("f4").newbyteorder(order))
    depth = rng.uniform(0.5, 4, size=(60, 80)).astype(np.dtype("f4").newbyteorder(order))
    np.save(tmp_path / "imu.npy", imu)
    np.save(tmp_path / "depth.npy", depth)
    assert torch.allclose(media.load(tmp_path / "imu.npy", "imu"), torch.from_numpy(imu.astype("=f4")))
    d = media.load(tmp_path / "depth.npy", "depth")
    assert torch.equal(d, media.load(depth.astype("=f4"), "depth"))
    prepared = rng.uniform(0, 1, size=(1, 224, 224)).astype(np.dtype("f4").newbyteorder(order))
    assert torch.equal(media.load(prepared, "depth"), torch.from_numpy(prepared.astype("=f4")))


@pytest.mark.parametrize("points", [np.ones((100, 3)), np.array([[1.0, 2.0, 3.0]]), np.full((9000, 3), -2.5)])
def test_coincident_points_are_an_error(points):
    with pytest.raises(media.InvalidValuesError, match="coincide"):
        media.load(points, "point")


_HDR = "ply\nformat {fmt} 1.0\nelement vertex {n}\n{props}end_header\n"
_XYZ_PROPS = "property float x\nproperty float y\nproperty float z\n"


@pytest.mark.parametrize(("data", "match"), [
    (_HDR.format(fmt="ascii", n="abc", props=_XYZ_PROPS) + "1 2 3\n", "corrupt PLY header"),
    (_HDR.format(fmt="ascii", n="-5", props=_XYZ_PROPS) + "1 2 3\n", "corrupt PLY header"),
    (_HDR.format(fmt="ascii", n="3", props=_XYZ_PROPS) + "1 2 3\n", "declares 3 vertices"),
    (_HDR.format(fmt="ascii", n="1", props="property float x\n" + _XYZ_PROPS) + "1 2 3 4\n", "twice"),
    (_HDR.format(fmt="binary_little_endian", n="50", props=_XYZ_PROPS) + "\0" * 24, "shorter"),
    ("ply\nformat ascii 1.0\nelement vertex 1\n" + _XYZ_PROPS + "end_header", "declares 1 vertices"),
    ("ply\nformat ascii 1.0\n" + _XYZ_PROPS, "end_header"),
])
def test_corrupt_ply_headers_are_unreadable_media(tmp_path, data, match):
    path = tmp_path / "bad.ply"
    path.write_bytes(data.encode())
    with pytest.raises(media.UnreadableMediaError, match=match):
        media.load(path, "point")


def test_npy_header_inconsistent_with_data(tmp_path):
    path = tmp_path / "short.npy"
    np.save(path, np.zeros((1000, 3), np.float32))
    path.write_bytes(path.read_bytes()[:500])  # header says 1000 rows, data holds far fewer
    with pytest.raises(media.MediaError):
        media.load(path, "point")
