"""VisualCache.build: image folders, WebDataset shards, feature files, skipped images, resuming."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest

faiss = pytest.importorskip("faiss")
torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

from ibllm_agent import VisualCache
from ibllm_agent.cache.build import build_cache
from ibllm_agent.errors import (
    CacheDimensionError,
    CacheError,
    CacheSourceError,
    EmptyCacheError,
)

pytestmark = pytest.mark.usefixtures("one_faiss_thread")  # see tests/conftest.py


def pil_loader(payload):
    """Small stand-in for media.load: file or bytes → [3,16,16] float tensor."""
    src = io.BytesIO(payload) if isinstance(payload, bytes) else payload
    img = Image.open(src).convert("RGB").resize((16, 16))
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)


class PoolEncoder:
    """Deterministic encoder: 4x4 average pool per channel → [B, 48] (+ a call counter)."""

    __name__ = "pool4"

    def __init__(self, fail_after: int | None = None):
        self.calls = 0
        self.images = 0
        self.fail_after = fail_after

    def __call__(self, x):
        if self.fail_after is not None and self.calls >= self.fail_after:
            raise KeyboardInterrupt("simulated interruption")
        self.calls += 1
        self.images += x.shape[0]
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).reshape(x.shape[0], -1) - 0.5


def expected_features(paths: list[Path]) -> np.ndarray:
    x = torch.stack([pil_loader(p) for p in paths])
    f = PoolEncoder()(x).numpy()
    return (f / np.linalg.norm(f, axis=1, keepdims=True)).astype(np.float16)


def write_images(folder: Path, n: int, seed: int = 0, fmt: str = "png") -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        arr = rng.integers(0, 255, (20 + i % 5, 24, 3), dtype=np.uint8)
        p = folder / f"img{i:03d}.{fmt}"
        Image.fromarray(arr).save(p)
        paths.append(p)
    return paths


def write_shard(path: Path, images: list[Path], extra: dict[str, bytes] | None = None) -> None:
    """A WebDataset shard as img2dataset writes it: <key>.jpg/.png + <key>.json + <key>.txt."""
    with tarfile.open(path, "w") as tf:
        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for i, img in enumerate(images):
            key = f"{i:09d}"
            add(f"{key}{img.suffix}", img.read_bytes())
            add(f"{key}.json", json.dumps({"key": key, "url": f"http://x/{i}"}).encode())
            add(f"{key}.txt", b"a caption")
        for name, data in (extra or {}).items():
            add(name, data)


def build(src, out, **kw):
    kw.setdefault("encoder", PoolEncoder())
    kw.setdefault("loader", pil_loader)
    kw.setdefault("batch_size", 4)
    kw.setdefault("progress", False)
    return VisualCache.build(src, out, **kw)


def test_build_from_folder_skips_and_counts_unreadable(tmp_path):
    paths = write_images(tmp_path / "imgs", 9)
    sub = write_images(tmp_path / "imgs" / "sub", 2, seed=1, fmt="jpg")
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG not really")
    (tmp_path / "imgs" / "empty.jpg").write_bytes(b"")
    (tmp_path / "imgs" / "notes.txt").write_text("ignored: not an image")
    cache = build([tmp_path / "imgs"], tmp_path / "cache")

    good = sorted(paths + sub, key=lambda p: p.relative_to(tmp_path / "imgs").as_posix())
    assert cache.ids == [p.relative_to(tmp_path / "imgs").as_posix() for p in good]
    np.testing.assert_array_equal(np.asarray(cache.features), expected_features(good))
    assert cache.report.skipped == 2 and cache.report.items == 13 and cache.report.rows == 11
    skipped = cache.meta["skipped"]
    assert skipped["count"] == 2
    assert sorted(s["id"] for s in skipped["items"]) == ["broken.png", "empty.jpg"]
    assert all(s["reason"] for s in skipped["items"])
    assert "skipped 2 unreadable" in cache.report.summary()
    # The finished cache dir holds no build state; nearest neighbour of a cached row is itself.
    assert not (tmp_path / "cache" / ".build").exists()
    _, rows = cache.search(np.asarray(cache.features[3], np.float32), k=1)
    assert rows[0, 0] == 3


def test_tar_shard_gives_same_features_as_folder(tmp_path):
    paths = write_images(tmp_path / "imgs", 6, fmt="jpg")
    write_shard(tmp_path / "00000.tar", paths, {"000000099.jpg": b"corrupt jpeg bytes"})
    cache = build([tmp_path / "00000.tar"], tmp_path / "cache")
    assert cache.ids == [f"00000.tar/{i:09d}" for i in range(6)]
    np.testing.assert_array_equal(np.asarray(cache.features), expected_features(paths))
    assert cache.meta["skipped"]["count"] == 1
    assert cache.meta["skipped"]["items"][0]["id"] == "00000.tar/000000099"


def test_truncated_shard_is_reported_not_silent(tmp_path):
    paths = write_images(tmp_path / "imgs", 6)
    write_shard(tmp_path / "s.tar", paths)
    data = (tmp_path / "s.tar").read_bytes()
    (tmp_path / "s.tar").write_bytes(data[: len(data) // 2])
    cache = build([tmp_path / "s.tar"], tmp_path / "cache")
    assert 0 < len(cache) < 6
    assert cache.meta["skipped"]["count"] >= 1
    assert any("s.tar" in s["id"] for s in cache.meta["skipped"]["items"])


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
    write_images(tmp_path / "imgs", 14)
    (tmp_path / "imgs" / "bad.png").write_bytes(b"nope")
    write_shard(tmp_path / "shard.tar", write_images(tmp_path / "more", 5, seed=3, fmt="jpg"))
    sources = [tmp_path / "imgs", tmp_path / "shard.tar"]

    full = build(sources, tmp_path / "full")

    flaky = PoolEncoder(fail_after=2)  # dies on its third batch
    with pytest.raises(KeyboardInterrupt):
        build(sources, tmp_path / "part", encoder=flaky)
    state = json.loads((tmp_path / "part" / ".build" / "state.json").read_text())
    assert state["rows"] == 8 and state["done"] >= 8
    with pytest.raises(CacheError, match="unfinished build"):
        VisualCache.load(tmp_path / "part")

    again = PoolEncoder()
    resumed = build(sources, tmp_path / "part", encoder=again)
    assert resumed.report.resumed_from == state["done"]
    assert again.images == len(full) - 8  # only the images after the checkpoint were encoded
    assert resumed.ids == full.ids
    np.testing.assert_array_equal(np.asarray(resumed.features), np.asarray(full.features))
    assert resumed.meta["skipped"] == full.meta["skipped"]


def test_resume_drops_rows_written_after_last_checkpoint(tmp_path):
    write_images(tmp_path / "imgs", 10)
    with pytest.raises(KeyboardInterrupt):
        build([tmp_path / "imgs"], tmp_path / "c", encoder=PoolEncoder(fail_after=1))
    # A crash between writing rows and the checkpoint leaves extra bytes: they must be discarded.
    with open(tmp_path / "c" / ".build" / "features.f16", "ab") as fh:
        fh.write(b"\x00" * 48 * 2 * 3)
    with open(tmp_path / "c" / ".build" / "ids.jsonl", "a") as fh:
        fh.write('"ghost"\n')
    cache = build([tmp_path / "imgs"], tmp_path / "c")
    full = build([tmp_path / "imgs"], tmp_path / "full")
    assert cache.ids == full.ids
    np.testing.assert_array_equal(np.asarray(cache.features), np.asarray(full.features))


def test_other_sources_in_unfinished_dir_need_restart(tmp_path):
    write_images(tmp_path / "a", 6)
    write_images(tmp_path / "b", 6, seed=5)
    with pytest.raises(KeyboardInterrupt):
        build([tmp_path / "a"], tmp_path / "c", encoder=PoolEncoder(fail_after=1))
    with pytest.raises(CacheError, match="restart"):
        build([tmp_path / "b"], tmp_path / "c")
    cache = build([tmp_path / "b"], tmp_path / "c", resume=False)
    assert len(cache) == 6 and cache.report.resumed_from == 0


def test_feature_files_npy_and_parquet(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    rng = np.random.default_rng(0)
    a = rng.standard_normal((30, 16)).astype(np.float32)
    b = rng.standard_normal((20, 16)).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    table = pa.table({"key": [f"k{i}" for i in range(20)], "embedding": [list(map(float, r)) for r in b]})
    pq.write_table(table, tmp_path / "b.parquet", row_group_size=7)
    cache = build([tmp_path / "a.npy", tmp_path / "b.parquet"], tmp_path / "c", encoder="unused")
    want = np.concatenate([a, b])
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    np.testing.assert_array_equal(np.asarray(cache.features), want.astype(np.float16))
    assert cache.ids[:2] == ["a.npy#0", "a.npy#1"] and cache.ids[30:32] == ["k0", "k1"]

    np.save(tmp_path / "wide.npy", rng.standard_normal((5, 8)).astype(np.float32))
    with pytest.raises(CacheDimensionError, match="dimension 8"):
        build([tmp_path / "a.npy", tmp_path / "wide.npy"], tmp_path / "d")


def test_source_errors(tmp_path):
    with pytest.raises(CacheSourceError, match="does not exist"):
        build([tmp_path / "missing"], tmp_path / "c")
    with pytest.raises(CacheSourceError, match="matches no files"):
        build([str(tmp_path / "*.tar")], tmp_path / "c")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CacheSourceError, match="holds no images"):
        build([tmp_path / "empty"], tmp_path / "c")
    (tmp_path / "x.csv").write_text("1,2")
    with pytest.raises(CacheSourceError, match="not a directory, image"):
        build([tmp_path / "x.csv"], tmp_path / "c")
    write_images(tmp_path / "ok", 2)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(CacheError, match="refusing"):
        build([tmp_path / "ok"], tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").exists() and not (tmp_path / "mine" / ".build").exists()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "a.png").write_bytes(b"x")
    (tmp_path / "bad" / "b.jpg").write_bytes(b"y")
    with pytest.raises(EmptyCacheError, match="2 of 2 items were unreadable"):
        build([tmp_path / "bad"], tmp_path / "c")
    with pytest.raises(CacheError, match="batch size"):
        build([tmp_path / "bad"], tmp_path / "c", batch_size=0)


def test_default_loader_and_tiny_imagebind(tmp_path):
    """The real path: ibllm_agent.media.load + the tiny ImageBind preset."""
    pytest.importorskip("ibllm_agent.encoders")
    pytest.importorskip("ibllm_agent.media")
    paths = write_images(tmp_path / "imgs", 3)
    (tmp_path / "imgs" / "bad.jpg").write_bytes(b"not an image")
    report = build_cache([tmp_path / "imgs"], tmp_path / "c", encoder="tiny", batch_size=2, progress=False)
    assert report.rows == 3 and report.skipped == 1
    cache = VisualCache.load(tmp_path / "c")
    from ibllm_agent import media
    from ibllm_agent.encoders import ImageBind

    model = ImageBind.from_preset("tiny", seed=0)
    with torch.inference_mode():
        want = model.encode("image", torch.stack([media.load(p, "image") for p in paths])).numpy()
    want /= np.linalg.norm(want, axis=1, keepdims=True)
    assert cache.meta["encoder"] == "tiny" and cache.dim == model.out_dim
    np.testing.assert_allclose(np.asarray(cache.features, np.float32), want, atol=2e-3)


def test_single_image_sources_are_named_and_fingerprinted_by_file(tmp_path):
    """Single image files used to be recorded (meta 'sources', resume fingerprint) as the folder
    they sit in, so an unfinished build of a.png b.png … resumed silently for c.png d.png …,
    skipping their first images and storing the wrong features under their ids."""
    paths = write_images(tmp_path / "imgs", 10)
    first, second = paths[:5], paths[5:]
    with pytest.raises(KeyboardInterrupt):
        build(first, tmp_path / "c", encoder=PoolEncoder(fail_after=1))  # 4 rows checkpointed
    with pytest.raises(CacheError, match="restart"):
        build(second, tmp_path / "c")
    cache = build(second, tmp_path / "c", resume=False)
    assert cache.ids == [p.name for p in second]
    np.testing.assert_array_equal(np.asarray(cache.features), expected_features(second))
    assert cache.meta["sources"] == [str(p) for p in second]
