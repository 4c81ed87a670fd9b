"""``ibllm-agent cache build|info|query`` end to end (tiny ImageBind, typer CliRunner)."""

from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("faiss")
pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")
from typer.testing import CliRunner


@pytest.fixture(autouse=True)
def _restore_omp_env(monkeypatch):
    """`cache build/query` set OMP_WAIT_POLICY (setdefault); keep that out of other tests."""
    import os

    monkeypatch.setenv("OMP_WAIT_POLICY", os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))


@pytest.fixture(scope="module")
def app():
    import typer

    from ibllm_agent.cli import cache as cache_cli

    app = typer.Typer()
    cache_cli.register(app)
    app.command("noop")(lambda: None)  # a second command keeps `cache` a named subcommand
    return app


def run(app, *args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(5):
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (folder / "broken.jpg").write_bytes(b"garbage")
    return folder


def test_build_info_query(app, images, tmp_path):
    out = tmp_path / "cache"
    res = run(app, "cache", "build", images, "--out", out, "--encoder", "tiny", "--batch-size", "2", "--no-progress")
    assert res.exit_code == 0, res.output
    assert "cached 5 features from 6 items" in res.output and "skipped 1 unreadable" in res.output
    assert "broken.jpg" in res.output

    res = run(app, "cache", "info", out, "--json")
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["count"] == 5 and info["index"] == "flat" and info["encoder"] == "tiny"
    assert info["skipped"]["count"] == 1 and info["skipped"]["items"][0]["id"] == "broken.jpg"
    res = run(app, "cache", "info", out)
    assert "5 x" in res.output and "1 unreadable" in res.output

    # An image query is encoded with the cache's own encoder; a cached image finds itself first.
    res = run(app, "cache", "query", out, images / "p3.png", "--k", "2", "--json")
    assert res.exit_code == 0, res.output
    hits = json.loads(res.output)
    assert len(hits) == 2 and {h["id"] for h in hits} <= {f"p{i}.png" for i in range(5)}
    assert hits[0]["score"] >= hits[1]["score"]

    # A .npy vector: the neighbours are exactly the top inner products with the stored features.
    from ibllm_agent.cache import VisualCache

    feats = np.asarray(VisualCache.load(out).features, np.float32)
    q = feats[4] - feats[0]
    np.save(tmp_path / "q.npy", q)
    res = run(app, "cache", "query", out, tmp_path / "q.npy", "-k", "3", "--json")
    assert res.exit_code == 0, res.output
    assert [h["row"] for h in json.loads(res.output)] == list(np.argsort(-(feats @ q))[:3])
    res = run(app, "cache", "query", out, tmp_path / "q.npy", "-k", "1")
    assert res.output.split()[0] == "1" and res.output.split()[-1].endswith(".png")


def test_cli_errors_are_one_line(app, images, tmp_path):
    res = run(app, "cache", "build", tmp_path / "missing", "--out", tmp_path / "c", "--encoder", "tiny")
    assert res.exit_code == 2 and "error: cache source" in res.output and "Traceback" not in res.output
    res = run(app, "cache", "info", tmp_path / "nowhere")
    assert res.exit_code == 2 and "does not exist" in res.output
    res = run(app, "cache", "build", images, "--out", tmp_path / "c", "--memory-budget", "lots")
    assert res.exit_code == 2 and "memory budget" in res.output

    out = tmp_path / "c"
    assert run(app, "cache", "build", images, "--out", out, "--encoder", "tiny", "--no-progress").exit_code == 0
    np.save(tmp_path / "wrong.npy", np.ones(7, np.float32))
    res = run(app, "cache", "query", out, tmp_path / "wrong.npy")
    assert res.exit_code == 2 and "dimension 7" in res.output


def test_info_and_query_on_plain_faiss_index(app, tmp_path):
    import faiss

    rng = np.random.default_rng(1)
    bank = rng.standard_normal((50, 12)).astype(np.float32)
    index = faiss.IndexFlatIP(12)
    index.add(bank)
    faiss.write_index(index, str(tmp_path / "knn.index"))
    res = run(app, "cache", "info", tmp_path / "knn.index", "--json")
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["count"] == 50
    np.save(tmp_path / "q.npy", bank[7])
    res = run(app, "cache", "query", tmp_path / "knn.index", tmp_path / "q.npy", "--k", "4", "--json")
    assert [h["row"] for h in json.loads(res.output)] == list(np.argsort(-(bank @ bank[7]))[:4])
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "x.png")
    res = run(app, "cache", "query", tmp_path / "knn.index", tmp_path / "x.png")
    assert res.exit_code == 2 and "--encoder" in res.output


def test_unreadable_memory_budget_is_a_clear_cli_error(app, images, tmp_path):
    res = run(app, "cache", "build", images, "--out", tmp_path / "c", "--memory-budget", "4 parsecs")
    assert res.exit_code == 2 and "invalid memory budget '4 parsecs'" in res.output


def test_feature_file_cache_records_no_encoder(app, images, tmp_path):
    """A cache of precomputed features must not claim the default encoder made them, or an image
    query would be encoded with a model unrelated to the cached features."""
    rng = np.random.default_rng(1)
    np.save(tmp_path / "f.npy", rng.standard_normal((12, 64)).astype(np.float32))
    out = tmp_path / "pre"
    res = run(app, "cache", "build", tmp_path / "f.npy", "--out", out, "--no-progress")
    assert res.exit_code == 0, res.output
    info = json.loads(run(app, "cache", "info", out, "--json").output)
    assert "encoder" not in info
    assert "encoder    -" in run(app, "cache", "info", out).output
    res = run(app, "cache", "query", out, images / "p0.png")
    assert res.exit_code == 2 and "records no encoder" in res.output
    res = run(app, "cache", "query", out, images / "p0.png", "--encoder", "tiny", "--json")
    assert res.exit_code == 0, res.output
    assert len(json.loads(res.output)) == 10


def test_bad_or_unavailable_device_is_one_error_line(app, images, tmp_path):
    """`--device foo` / `--device cuda` on a machine without a GPU used to end in a torch traceback."""
    res = run(app, "cache", "build", images, "--out", tmp_path / "c", "--encoder", "tiny", "--device", "foo",
              "--no-progress")
    assert res.exit_code == 2 and "error:" in res.output and "'foo'" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        res = run(app, "cache", "build", images, "--out", tmp_path / "d", "--encoder", "tiny", "--device", "cuda",
                  "--no-progress")
        assert res.exit_code == 2 and "CUDA is not available" in res.output


def test_build_recall_info_and_tune(app, tmp_path):
    """`cache build --recall` measures the plan, `cache info` shows it, `cache tune --recall` re-plans."""
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16))
    feats = centres[rng.integers(0, 20, 3000)] + 0.7 * rng.standard_normal((3000, 16))
    np.save(tmp_path / "f.npy", feats.astype(np.float32))
    out = tmp_path / "c"
    res = run(app, "cache", "build", tmp_path / "f.npy", "--out", out, "--index", "ivf_pq", "--recall", "0.97",
              "--no-progress")
    assert res.exit_code == 0, res.output
    assert "recall@10" in res.output and "target 0.97" in res.output
    info = json.loads(run(app, "cache", "info", out, "--json").output)
    assert info["recall"]["target"] == 0.97 and info["recall"]["recall"] >= 0.97 and info["recall"]["met"]
    cost = info["index_params"]["nprobe"] * info["index_params"]["refine"]
    text = run(app, "cache", "info", out).output
    assert "recall     nprobe" not in text and "recall@10" in text and "held-out rows" in text
    res = run(app, "cache", "tune", out, "--recall", "0.5", "--queries", "100")
    assert res.exit_code == 0, res.output
    assert res.output.startswith("before") and "target 0.5)" in res.output.splitlines()[1]
    info = json.loads(run(app, "cache", "info", out, "--json").output)
    assert info["recall"]["target"] == 0.5 and info["recall"]["queries"] == 100
    assert info["index_params"]["nprobe"] * info["index_params"]["refine"] <= cost  # a lower target costs less
    res = run(app, "cache", "tune", tmp_path / "nowhere", "--recall", "0.9")
    assert res.exit_code == 2 and "error:" in res.output
    res = run(app, "cache", "build", tmp_path / "f.npy", "--out", tmp_path / "d", "--recall", "0", "--no-progress")
    assert res.exit_code == 0 and "recall@" not in res.output
