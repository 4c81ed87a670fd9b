"""Shared fixtures. Reference data (golden outputs, manifests, specs) is read from ``../shared``
beside the checkout (or ``$IBLLM_SHARED``) and never copied into the repository."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("IBLLM_SHARED", REPO.parent / "shared"))


def shared_path(*parts: str) -> Path:
    """Path under ../shared, or skip the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"reference data not found: {path} (set IBLLM_SHARED to the shared/ folder)")
    return path


@pytest.fixture
def golden_dir() -> Path:
    return shared_path("golden")


@pytest.fixture
def manifests_dir() -> Path:
    return shared_path("manifests")


@pytest.fixture(autouse=True)
def _isolated_ibllm_env(tmp_path_factory, monkeypatch):
    """Tests never read the user's ~/.cache/ibllm or IBLLM_* settings."""
    for key in list(os.environ):
        if key.startswith("IBLLM_") and key != "IBLLM_SHARED":
            monkeypatch.delenv(key, raising=False)
    home = tmp_path_factory.mktemp("ibllm_home")
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(home / "weights"))
    monkeypatch.setenv("IBLLM_WORKSPACE_DIR", str(home / "workspace"))
    monkeypatch.setenv("IBLLM_CONFIG_FILE", str(home / "config.toml"))


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module (``pytestmark = pytest.mark.usefixtures(...)``): on 2
    shared, busy cores OpenMP barriers make the many small kernels (farthest-point sampling, tiny
    models) crawl, ~10x slower than one thread. Restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def one_faiss_thread():
    """One faiss OpenMP thread for a module: its threads spin-wait, and on a shared 2-core box one
    thread is many times faster. Restored afterwards."""
    import faiss

    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    yield
    faiss.omp_set_num_threads(before)


@pytest.fixture(scope="module")
def tiny_imagebind():
    """The tiny random-init ImageBind + Point-Bind encoder (seed 0), one per test module; tests must
    not change its weights."""
    from ibllm_agent.encoders import ImageBind

    return ImageBind.from_preset("tiny_w3d", seed=0)
