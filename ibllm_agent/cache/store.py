"""On-disk layout of a visual cache, written atomically.

    DIR/
      meta.json      format tag, count, dim, index plan, sources, skipped-image report (written last)
      features.f16   float16 [count, dim], row-major, no header; memory-mapped on load
      index.faiss    the faiss index (``faiss.write_index``)
      ids.jsonl      one JSON string per row: the source id of each feature (optional)

A save fills a hidden sibling temp directory, fsyncs it and renames it onto DIR (an old DIR is renamed
aside first and removed after), so a crash leaves either the old cache or the new one, never a half
one that loads. A directory without meta.json (e.g. an interrupted build, which keeps its state in
``DIR/.build/``) is not a cache.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ibllm_agent.errors import CacheError, CorruptCacheError

FORMAT = "ibllm-visual-cache"
VERSION = 1
META, FEATURES, INDEX, IDS, BUILD_DIR = "meta.json", "features.f16", "index.faiss", "ids.jsonl", ".build"


def _fsync_file(path: Path) -> None:
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some filesystems do not allow opening directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


INDEX_KINDS = ("flat", "ivf_sq8", "ivf_pq", "external")  # ``index.IndexKind``
CACHE_ENTRIES = frozenset({META, FEATURES, INDEX, IDS, BUILD_DIR})


def check_replaceable(out: Path) -> None:
    """Saving replaces ``out`` wholesale, so it must be absent, empty, or hold only cache files."""
    if not out.exists():
        return
    if not out.is_dir():
        raise CacheError(f"cannot write a cache to {out}: it exists and is not a directory")
    foreign = sorted(p.name for p in out.iterdir() if p.name not in CACHE_ENTRIES)
    if foreign:
        raise CacheError(
            f"refusing to write a cache to {out}: it holds other files ({', '.join(foreign[:3])}"
            f"{', ...' if len(foreign) > 3 else ''}) that replacing it would delete; choose a new directory"
        )


def atomic_dir(out: Path, fill: Callable[[Path], None]) -> None:
    """Run ``fill(tmp)`` on a fresh temp dir beside ``out``, then atomically swap it into place."""
    out = Path(out).absolute()
    check_replaceable(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    umask = os.umask(0o022)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700; a cache dir gets ordinary permissions
    try:
        fill(tmp)
        for child in tmp.iterdir():
            if child.is_file():
                _fsync_file(child)
        _fsync_dir(tmp)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if out.exists():
        old = out.parent / f".{out.name}.old-{uuid.uuid4().hex[:8]}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)
    _fsync_dir(out.parent)


def write_features(path: Path, features: np.ndarray, chunk: int = 65_536) -> None:
    """Stream [n,D] rows to a raw float16 file in chunks (RAM stays bounded for memmapped input)."""
    with open(path, "wb") as fh:
        fh.writelines(np.ascontiguousarray(features[start : start + chunk], dtype=np.float16).tobytes() for start in range(0, features.shape[0], chunk))


def open_features(path: Path, count: int, dim: int, *, resident: bool = False) -> np.ndarray:
    """features.f16 as [count, dim] float16, checking its size first.

    ``resident``: read into RAM (the recall planner found room in the memory budget), so the exact
    re-scoring never waits on a page fault. Otherwise a read-only memory map, with the kernel asked
    to read the file ahead (``MADV_WILLNEED``, asynchronous) so first queries rarely hit the disk.
    """
    expected = count * dim * 2
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise CorruptCacheError(f"cache file {path} is missing") from None
    if size != expected:
        raise CorruptCacheError(
            f"cache features {path} has {size} bytes, expected {expected} ({count} x {dim} float16)"
        )
    if resident:
        return np.fromfile(path, dtype=np.float16, count=count * dim).reshape(count, dim)
    with open(path, "rb") as fh:
        mapping = mmap.mmap(fh.fileno(), expected, access=mmap.ACCESS_READ)
    if hasattr(mapping, "madvise") and hasattr(mmap, "MADV_WILLNEED"):
        mapping.madvise(mmap.MADV_WILLNEED)
    return np.frombuffer(mapping, dtype=np.float16).reshape(count, dim)


def is_mapped(features: Any) -> bool:
    """Whether an array's memory is a file mapping (``open_features`` or ``np.memmap``) rather than RAM."""
    base = features
    while base is not None:
        if isinstance(base, (np.memmap, mmap.mmap)):
            return True
        base = base.obj if isinstance(base, memoryview) else getattr(base, "base", None)
    return False


def write_ids(path: Path, ids: Iterable[str]) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        fh.writelines(json.dumps(str(item), ensure_ascii=False) + "\n" for item in ids)


def read_ids(path: Path, count: int) -> list[str]:
    try:
        with open(path, encoding="utf-8") as fh:
            ids = [json.loads(line) for line in fh if line.strip()]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCacheError(f"cache ids file {path} cannot be read: {exc}") from None
    if len(ids) != count:
        raise CorruptCacheError(f"cache ids file {path} has {len(ids)} rows, expected {count}")
    return ids


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    path.write_text(json.dumps({"format": FORMAT, "version": VERSION, **meta}, indent=2), encoding="utf-8")


def replace_meta(cache_dir: Path, meta: dict[str, Any]) -> None:
    """Atomically rewrite meta.json of an existing cache (a re-planned search; the data is unchanged)."""
    read_meta(cache_dir)  # it must be a cache already
    tmp = Path(cache_dir) / f".{META}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_meta(tmp, meta)
        _fsync_file(tmp)
        os.replace(tmp, Path(cache_dir) / META)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(Path(cache_dir))


def read_meta(cache_dir: Path) -> dict[str, Any]:
    """meta.json of a finished cache, or a typed error saying why ``cache_dir`` is not one."""
    cache_dir = Path(cache_dir)
    if not cache_dir.exists():
        raise CacheError(f"no visual cache at {cache_dir}: the directory does not exist")
    meta_path = cache_dir / META
    if not meta_path.exists():
        if (cache_dir / BUILD_DIR).exists():
            raise CacheError(
                f"{cache_dir} holds an unfinished build (state in {cache_dir / BUILD_DIR}); "
                "rerun `ibllm-agent cache build` with the same sources to resume it"
            )
        raise CacheError(f"{cache_dir} is not a visual cache: {META} is missing")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CorruptCacheError(f"cache metadata {meta_path} cannot be read: {exc}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CorruptCacheError(f"{meta_path} is not ibllm visual-cache metadata")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CorruptCacheError(f"cache metadata {meta_path} has a non-integer version {version!r}")
    if version > VERSION:
        raise CacheError(f"cache {cache_dir} has format version {meta['version']}; this build reads <= {VERSION}")
    for key in ("count", "dim", "index"):
        if key not in meta:
            raise CorruptCacheError(f"cache metadata {meta_path} lacks {key!r}")
    # A hand-edited or damaged meta.json must fail here with a typed error, not as a bare
    # ValueError/TypeError deep inside numpy or the IndexPlan constructor.
    for key in ("count", "dim"):
        value = meta[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise CorruptCacheError(f"cache metadata {meta_path}: {key!r} must be a positive integer, got {value!r}")
    index = meta["index"]
    if not isinstance(index, dict) or index.get("kind") not in INDEX_KINDS:
        raise CorruptCacheError(
            f"cache metadata {meta_path}: 'index' must describe one of {', '.join(INDEX_KINDS)}, got {index!r}"
        )
    return meta


def read_index(path: Path, *, mmap: bool = False) -> Any:
    """faiss.read_index with a typed error for missing, truncated or foreign files."""
    import faiss

    path = Path(path)
    if not path.is_file():
        raise CorruptCacheError(f"faiss index file {path} is missing")
    flags = faiss.IO_FLAG_MMAP | faiss.IO_FLAG_READ_ONLY if mmap else 0
    try:
        return faiss.read_index(str(path), flags)
    except RuntimeError as exc:  # faiss raises RuntimeError for any unreadable file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "unreadable"
        raise CorruptCacheError(f"faiss index file {path} is corrupt or not a faiss index ({first})") from None


def write_index(path: Path, index: Any) -> None:
    import faiss

    faiss.write_index(index, str(path))


def _link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link (free on one filesystem; the source stays valid if the save fails) or copy."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copyfile(src, dst)


def save_cache_dir(
    out: Path,
    *,
    meta: dict[str, Any],
    index: Any,
    features: np.ndarray | None = None,
    features_file: Path | None = None,
    ids: Sequence[str] | None = None,
    ids_file: Path | None = None,
) -> None:
    """Atomically write a cache. Features (and ids) come as arrays or as ready files to move in."""

    def fill(tmp: Path) -> None:
        if features_file is not None:
            _link_or_copy(features_file, tmp / FEATURES)
        elif features is not None:
            write_features(tmp / FEATURES, features)
        else:
            raise CacheError("internal: save needs features")
        if ids_file is not None:
            _link_or_copy(ids_file, tmp / IDS)
        elif ids is not None:
            write_ids(tmp / IDS, ids)
        write_index(tmp / INDEX, index)
        write_meta(tmp / META, {**meta, "ids": (ids is not None or ids_file is not None)})

    atomic_dir(out, fill)
