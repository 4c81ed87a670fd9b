"""Build sources: what a path means and the items it yields, in a fixed order (resuming relies on it).

- a **directory**: every image file below it (``IMAGE_EXTS``, sorted by relative path) and every
  ``*.tar`` shard below it (sorted), in that order. Parquet files inside a directory are *not* read
  (img2dataset writes per-shard metadata parquet there); pass feature files explicitly.
- a **.tar** file: a WebDataset shard, the format img2dataset writes: members ``<key>.<ext>``; each
  image member is one item with id ``<shard name>/<key>``.
- an **image** file: one item.
- a **.npy** file: an [n, D] feature array; ids ``<file name>#<row>``.
- a **.parquet** file: one list-of-floats column (named ``embedding``/``embeddings``/``features``/
  ``feature``/``vector``, or the only list column); ids from an ``id``/``key``/``image_path``/
  ``path``/``url`` column when present, else ``<file name>#<row>``.
- a glob pattern (``shards/*.tar``) expands to the matching paths, sorted.
"""

from __future__ import annotations

import glob
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ibllm_agent.errors import CacheDimensionError, CacheSourceError
from ibllm_agent.media.formats import EXTENSIONS

IMAGE_EXTS = frozenset(ext for ext, modality in EXTENSIONS.items() if modality == "image")
FEATURE_COLUMNS = ("embedding", "embeddings", "features", "feature", "vector")
ID_COLUMNS = ("id", "key", "image_path", "path", "url")


@dataclass
class Source:
    """One resolved source. ``count`` = items it yields (images, or feature rows)."""

    kind: str  # "images" | "tar" | "npy" | "parquet"
    path: Path
    files: list[Path] = field(default_factory=list)  # for "images": the image files, in order
    count: int = 0


@dataclass
class ImageItem:
    id: str
    payload: Path | bytes | None  # None: the item could not even be read (reason in ``error``)
    error: str | None = None


@dataclass
class FeatureChunk:
    ids: list[str]
    features: np.ndarray  # [m, D] float32


_TAR_ERRORS = (tarfile.TarError, OSError, EOFError)


def _tar_members_with_files(path: Path) -> Iterator[tuple[tarfile.TarInfo, object] | Exception]:
    """(member, read-callable) for each image member in stored order; a read error of the archive
    itself ends the shard and is yielded (not raised). Data is read only when the callable is called."""
    try:
        with tarfile.open(path, "r:*") as tf:
            for member in tf:
                if member.isfile() and Path(member.name).suffix.lower() in IMAGE_EXTS:
                    try:
                        fh = tf.extractfile(member)
                        yield member, fh.read
                    except _TAR_ERRORS as exc:
                        yield member, exc
    except _TAR_ERRORS as exc:
        yield exc


def _count_tar(path: Path) -> int:
    """Items the shard yields: its image members, plus one for a damaged tail."""
    return sum(1 for _ in _tar_members_with_files(path))


def _parquet_columns(path: Path) -> tuple[str, str | None]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
    except (OSError, pa.ArrowException) as exc:
        raise CacheSourceError(f"cannot read parquet file {path}: {exc}") from None
    names = schema.names
    lists = [f.name for f in schema if pa.types.is_list(f.type) or pa.types.is_fixed_size_list(f.type)
             or pa.types.is_large_list(f.type)]
    feat = next((c for c in FEATURE_COLUMNS if c in lists), None)
    if feat is None and len(lists) == 1:
        feat = lists[0]
    if feat is None:
        raise CacheSourceError(
            f"parquet file {path} has no feature column: expected one list-of-floats column named one of "
            f"{', '.join(FEATURE_COLUMNS)} (columns: {', '.join(names)})"
        )
    ident = next((c for c in ID_COLUMNS if c in names), None)
    return feat, ident


def resolve_sources(sources: Sequence[str | Path]) -> list[Source]:
    """Expand globs/directories into ``Source``s with item counts; typed error for missing paths."""
    if isinstance(sources, (str, Path)):
        sources = [sources]
    out: list[Source] = []
    for raw in sources:
        text = str(raw)
        if not Path(text).exists() and any(ch in text for ch in "*?["):
            matches = sorted(glob.glob(text, recursive=True))
            if not matches:
                raise CacheSourceError(f"cache source pattern {text!r} matches no files")
            out.extend(resolve_sources(matches))
            continue
        path = Path(text).expanduser()
        if not path.exists():
            raise CacheSourceError(f"cache source {text!r} does not exist")
        path = path.absolute()
        if path.is_dir():
            images = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTS)
            tars = sorted(p for p in path.rglob("*.tar") if p.is_file())
            if not images and not tars:
                raise CacheSourceError(f"cache source directory {path} holds no images ({', '.join(sorted(IMAGE_EXTS))}) or .tar shards")
            if images:
                out.append(Source("images", path, images, len(images)))
            out.extend(Source("tar", t, count=_count_tar(t)) for t in tars)
            continue
        suffix = path.suffix.lower()
        if suffix == ".tar":
            out.append(Source("tar", path, count=_count_tar(path)))
        elif suffix in IMAGE_EXTS:
            out.append(Source("images", path.parent, [path], 1))
        elif suffix == ".npy":
            try:
                arr = np.load(path, mmap_mode="r")
            except (OSError, ValueError) as exc:
                raise CacheSourceError(f"cannot read feature file {path}: {exc}") from None
            if arr.ndim != 2:
                raise CacheDimensionError(f"feature file {path} must hold an [n, D] array, got shape {arr.shape}")
            out.append(Source("npy", path, count=int(arr.shape[0])))
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            _parquet_columns(path)
            out.append(Source("parquet", path, count=int(pq.ParquetFile(path).metadata.num_rows)))
        else:
            raise CacheSourceError(
                f"cache source {path} is not a directory, image, .tar shard, .npy or .parquet feature file"
            )
    return out


def iter_items(sources: Sequence[Source], start: int = 0, chunk: int = 4096) -> Iterator[ImageItem | FeatureChunk]:
    """Items from item number ``start`` on (images one by one, feature rows in chunks)."""
    offset = 0
    for src in sources:
        if offset + src.count <= start:
            offset += src.count
            continue
        skip = max(0, start - offset)
        if src.kind == "images":
            for p in src.files[skip:]:
                yield ImageItem(p.relative_to(src.path).as_posix() if p != src.path else p.name, p)
        elif src.kind == "tar":
            yield from _iter_tar(src, skip)
        elif src.kind == "npy":
            arr = np.load(src.path, mmap_mode="r")
            for a in range(skip, src.count, chunk):
                b = min(src.count, a + chunk)
                yield FeatureChunk([f"{src.path.name}#{r}" for r in range(a, b)], np.asarray(arr[a:b], dtype=np.float32))
        elif src.kind == "parquet":
            yield from _iter_parquet(src, skip, chunk)
        offset += src.count


def _iter_tar(src: Source, skip: int) -> Iterator[ImageItem]:
    """Image members of a shard from image number ``skip`` on; ids ``<shard>/<key>``."""
    seen = 0
    for member in _tar_members_with_files(src.path):
        if isinstance(member, Exception):
            # A truncated/corrupt shard: the images after the damage cannot be listed; the shard is
            # reported as one skipped item (``_count_tar`` counts it the same way).
            if seen >= skip:
                yield ImageItem(src.path.name, None, f"shard unreadable after {seen} images: {member}")
            return
        info, data = member
        if seen >= skip:
            parent, _, base = info.name.rpartition("/")
            item_id = f"{src.path.name}/{parent + '/' if parent else ''}{base.split('.', 1)[0]}"
            if not isinstance(data, Exception):
                try:
                    data = data()
                except _TAR_ERRORS as exc:
                    data = exc
            if isinstance(data, Exception):
                yield ImageItem(item_id, None, f"cannot read from shard: {data}")
            else:
                yield ImageItem(item_id, data, None)
        seen += 1  # noqa: SIM113 - also read after the loop breaks on a damaged tail


def _iter_parquet(src: Source, skip: int, chunk: int) -> Iterator[FeatureChunk]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    feat_col, id_col = _parquet_columns(src.path)
    cols = [feat_col] + ([id_col] if id_col else [])
    row = 0
    for batch in pq.ParquetFile(src.path).iter_batches(batch_size=chunk, columns=cols):
        m = batch.num_rows
        if row + m <= skip:
            row += m
            continue
        lo = max(0, skip - row)
        lists = batch.column(feat_col)
        lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False)
        if m and (lengths.min() != lengths.max() or lists.null_count):
            raise CacheDimensionError(
                f"parquet file {src.path}: rows {row}..{row + m - 1} of column {feat_col!r} have "
                f"different lengths or nulls; every feature must have the same dimension"
            )
        dim = int(lengths[0]) if m else 0
        flat = pc.list_flatten(lists).to_numpy(zero_copy_only=False)
        feats = np.asarray(flat, dtype=np.float32).reshape(m, dim)[lo:]
        if id_col:
            ids = [str(v) for v in batch.column(id_col).to_pylist()[lo:]]
        else:
            ids = [f"{src.path.name}#{r}" for r in range(row + lo, row + m)]
        yield FeatureChunk(ids, feats)
        row += m
