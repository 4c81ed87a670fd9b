"""Point Cloud Library ``.pcd`` files (v0.5–0.7): ``DATA ascii`` and ``DATA binary`` → xyz [N, 3].

Header lines (``FIELDS x y z rgb`` / ``SIZE 4 4 4 4`` / ``TYPE F F F U`` / ``COUNT 1 1 1 1`` /
``WIDTH`` / ``HEIGHT`` / ``POINTS`` / ``DATA``) describe one record per point; binary records are
packed little-endian, fields in header order. ``DATA binary_compressed`` (LZF, column-major) is
refused with a clear error: convert such files with ``pcl_convert_pcd_ascii_binary``.
"""

from __future__ import annotations

from .errors import EmptyMediaError, UnknownFormatError, UnreadableMediaError

_TYPES = {("F", 4): "f4", ("F", 8): "f8", ("I", 1): "i1", ("I", 2): "i2", ("I", 4): "i4", ("I", 8): "i8",
          ("U", 1): "u1", ("U", 2): "u2", ("U", 4): "u4", ("U", 8): "u8"}  # fmt: skip


def looks_like_pcd(data: bytes) -> bool:
    head = data[:256].lstrip()
    return head.startswith((b"# .PCD", b"VERSION", b"FIELDS"))


def parse_pcd(data: bytes, desc: str):
    """xyz float64 numpy [N, 3] from the bytes of a .pcd file."""
    import numpy as np

    header: dict[str, list[str]] = {}
    pos = 0
    while "DATA" not in header:
        end = data.find(b"\n", pos)
        if end < 0:
            raise UnreadableMediaError(desc, "PCD header has no DATA line", "point")
        line = data[pos:end].decode("ascii", "replace").strip()
        pos = end + 1
        if line and not line.startswith("#"):
            key, *values = line.split()
            header[key.upper()] = values
    try:
        fields = header["FIELDS"]
        sizes = [int(v) for v in header.get("SIZE", ["4"] * len(fields))]
        types = [t.upper() for t in header.get("TYPE", ["F"] * len(fields))]
        counts = [int(v) for v in header.get("COUNT", ["1"] * len(fields))]
        points = int(header["POINTS"][0]) if "POINTS" in header else int(header["WIDTH"][0]) * int(header["HEIGHT"][0])
        mode = header["DATA"][0].lower()
    except (KeyError, IndexError, ValueError):
        raise UnreadableMediaError(desc, "malformed PCD header (FIELDS/SIZE/TYPE/COUNT/POINTS/DATA)", "point") from None
    if not (len(fields) == len(sizes) == len(types) == len(counts)):
        raise UnreadableMediaError(desc, "PCD header: FIELDS, SIZE, TYPE and COUNT differ in length", "point")
    if not {"x", "y", "z"} <= set(fields):
        raise UnreadableMediaError(desc, f"PCD file has no x/y/z fields (fields: {fields})", "point")
    if points < 1:
        raise EmptyMediaError(desc, "PCD file has no points", "point")
    if mode == "binary_compressed":
        raise UnknownFormatError(desc, "PCD 'DATA binary_compressed' is not supported: save it as ascii or binary", "point")
    if mode == "ascii":
        try:
            table = np.loadtxt(data[pos:].decode("ascii").splitlines(), dtype=np.float64, ndmin=2)
        except ValueError as exc:
            raise UnreadableMediaError(desc, f"malformed PCD ascii data ({exc})", "point") from None
        columns = {}
        col = 0
        for name, count in zip(fields, counts):
            columns[name] = col
            col += count
        if table.shape[1] != col or table.shape[0] < points:
            raise UnreadableMediaError(desc, f"PCD ascii data is {table.shape}, header says {points} × {col}", "point")
        return table[:points, [columns["x"], columns["y"], columns["z"]]]
    if mode == "binary":
        try:
            dtype = np.dtype(
                # positional names: PCD padding fields are all called "_"
                [(f"f{i}", "<" + _TYPES[(kind, size)], (count,)) for i, (kind, size, count) in enumerate(zip(types, sizes, counts))]
            )
        except (KeyError, ValueError, TypeError):
            raise UnreadableMediaError(desc, f"PCD field types {list(zip(types, sizes))} are not supported", "point") from None
        if len(data) - pos < points * dtype.itemsize:
            raise UnreadableMediaError(desc, f"PCD binary data is truncated ({len(data) - pos} bytes for {points} points)", "point")
        records = np.frombuffer(data, dtype=dtype, count=points, offset=pos)
        return np.stack([records[f"f{fields.index(c)}"][:, 0] for c in ("x", "y", "z")], axis=1).astype(np.float64)
    raise UnknownFormatError(desc, f"unknown PCD DATA mode {mode!r} (ascii or binary)", "point")
