"""The weights registry: names others rely on, table consistency, require() errors, status()."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from ibllm_agent.config import get_settings
from ibllm_agent.errors import ManualWeightMissingError, MissingWeightError, UnknownWeightError
from ibllm_agent.weights import WEIGHTS, require, status, weights_path

NAMES = [
    "imagebind_huge",
    "imagebind_w3d",
    "imagebind_llm_7b",
    "imagebind_llm_7b_pretrained",
    "imagebind_llm_7b_beta",
    "llama_7b",
    "open_chinese_llama_7b_delta",
    "knn_index_cc3m",
    "groundingdino_swint_ogc",
    "sam_vit_h",
    "sam_vit_l",
    "sam_vit_b",
    "sd_inpainting",
    "sd15",
    "sd21_unclip",
    "instruct_pix2pix",
    "whisper_tiny",
    "whisper_base",
    "whisper_small",
    "whisper_medium",
    "whisper_large_v3",
    "whisper_turbo",
]


@pytest.fixture
def settings(tmp_path):
    return get_settings(weights_dir=tmp_path / "w")


def _touch(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def test_registry_names_are_exactly_the_documented_ones():
    assert list(WEIGHTS) == NAMES
    assert all(spec.name == name for name, spec in WEIGHTS.items())


@pytest.mark.parametrize("name", NAMES)
def test_entry_is_consistent(name):
    spec = WEIGHTS[name]
    assert spec.kind in {"file", "hf-repo", "manual"}
    assert spec.licence and spec.description and spec.source
    assert not Path(spec.path).is_absolute() and ".." not in Path(spec.path).parts
    if spec.kind == "file":
        assert spec.files and all(f.url and f.url.startswith("https://") for f in spec.files)
    if spec.kind == "hf-repo":
        assert spec.repo_id and spec.allow_patterns and "model_index.json" in spec.required
    if spec.kind == "manual":
        assert spec.how_to_get and not any(f.url for f in spec.files)
    for f in spec.files:
        assert f.path == spec.path or f.path.startswith(spec.path.rsplit("/", 1)[0] + "/")
        if f.sha256 is not None:
            assert re.fullmatch(r"[0-9a-f]{64}", f.sha256)
        if f.size_exact:
            assert f.size_bytes and f.size_bytes > 0


def test_whisper_checksums_are_the_ones_in_the_published_urls():
    whisper = [spec for name, spec in WEIGHTS.items() if name.startswith("whisper_")]
    assert len(whisper) == 6
    for spec in whisper:
        # openai-whisper publishes the sha256 as the second-to-last URL segment.
        assert spec.url.split("/")[-2] == spec.sha256
        assert spec.url.split("/")[-1] == spec.filename


def test_no_two_entries_share_a_file():
    paths = [f.path for spec in WEIGHTS.values() for f in spec.files]
    assert len(paths) == len(set(paths))


def test_weights_path_is_under_weights_dir(settings):
    assert weights_path("imagebind_llm_7b", settings) == settings.weights_dir / "imagebind_llm/7B.pth"
    assert weights_path("llama_7b", settings) == settings.weights_dir / "llama"
    # Without settings: the settings in effect (tests/conftest.py points IBLLM_WEIGHTS_DIR at a temp dir).
    assert weights_path("sam_vit_h") == get_settings().weights_dir / "sam/sam_vit_h_4b8939.pth"


def test_require_missing_names_file_and_command(settings):
    with pytest.raises(MissingWeightError) as info:
        require("sam_vit_b", settings)
    message = str(info.value)
    assert str(settings.weights_dir / "sam/sam_vit_b_01ec64.pth") in message
    assert "ibllm-agent download sam_vit_b" in message
    assert isinstance(info.value, FileNotFoundError)


def test_require_present_returns_path(settings):
    _touch(settings.weights_dir / "whisper/tiny.pt")
    assert require("whisper_tiny", settings) == settings.weights_dir / "whisper/tiny.pt"


def test_require_multi_file_entry_needs_every_file(settings):
    _touch(settings.weights_dir / "groundingdino/groundingdino_swint_ogc.pth")
    with pytest.raises(MissingWeightError, match="GroundingDINO_SwinT_OGC.py"):
        require("groundingdino_swint_ogc", settings)
    _touch(settings.weights_dir / "groundingdino/GroundingDINO_SwinT_OGC.py")
    with pytest.raises(MissingWeightError, match="bert-base-uncased-vocab.txt"):
        require("groundingdino_swint_ogc", settings)
    _touch(settings.weights_dir / "groundingdino/bert-base-uncased-vocab.txt")
    assert require("groundingdino_swint_ogc", settings).name == "groundingdino_swint_ogc.pth"


def test_require_manual_entry_explains_where_to_get_it(settings):
    with pytest.raises(ManualWeightMissingError) as info:
        require("llama_7b", settings)
    message = str(info.value)
    assert "cannot be downloaded automatically" in message
    assert f"{settings.weights_dir}/llama/tokenizer.model" in message
    assert "ibllm-agent download" not in message  # it cannot be downloaded
    assert isinstance(info.value, MissingWeightError)
    for rel in ("llama/7B/params.json", "llama/7B/consolidated.00.pth", "llama/tokenizer.model"):
        _touch(settings.weights_dir / rel)
    assert require("llama_7b", settings) == settings.weights_dir / "llama"


def test_require_hf_repo_entry_checks_required_files(settings):
    root = settings.weights_dir / "diffusers/instruct-pix2pix"
    _touch(root / "model_index.json")
    with pytest.raises(MissingWeightError, match="unet"):
        require("instruct_pix2pix", settings)
    for rel in WEIGHTS["instruct_pix2pix"].required:
        _touch(root / rel)
    assert require("instruct_pix2pix", settings) == root


def test_unknown_name_lists_known_ones(settings):
    with pytest.raises(UnknownWeightError, match="unknown weight 'llama_13b'.*imagebind_llm_7b"):
        require("llama_13b", settings)


def test_status_on_empty_and_partly_filled_dir(settings):
    rows = status(settings)
    assert [r.name for r in rows] == NAMES
    assert not any(r.present for r in rows) and all(r.size_on_disk == 0 for r in rows)
    _touch(settings.weights_dir / "imagebind_llm/7B.pth", b"12345")
    _touch(settings.weights_dir / "llama/7B/params.json", b"{}")
    by_name = {r.name: r for r in status(settings)}
    assert by_name["imagebind_llm_7b"].present and by_name["imagebind_llm_7b"].size_on_disk == 5
    llama = by_name["llama_7b"]
    assert not llama.present and llama.size_on_disk == 2
    assert [p.name for p in llama.missing] == ["consolidated.00.pth", "tokenizer.model"]
    _touch(settings.weights_dir / "knn/knn.index.part", b"123")
    _touch(settings.weights_dir / "diffusers/instruct-pix2pix/unet/x.safetensors.part", b"1234")
    by_name = {r.name: r for r in status(settings)}
    assert by_name["knn_index_cc3m"].partial_bytes == 3 and by_name["knn_index_cc3m"].size_on_disk == 0
    assert by_name["instruct_pix2pix"].partial_bytes == 4 and by_name["instruct_pix2pix"].size_on_disk == 0
    # The download's version note and lock beside a part are bookkeeping, not model files.
    _touch(settings.weights_dir / "diffusers/instruct-pix2pix/unet/x.safetensors.part.meta", b'{"total": 9}')
    _touch(settings.weights_dir / "diffusers/instruct-pix2pix/unet/x.safetensors.part.lock", b"")
    assert {r.name: r for r in status(settings)}["instruct_pix2pix"].size_on_disk == 0


def test_readme_weights_table_matches_registry():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("<!-- section: weights -->", 1)[1].split("<!-- /section: weights -->", 1)[0]
    rows = {
        line.split("|")[1].strip().strip("`"): line for line in section.splitlines() if line.startswith("| `")
    }
    assert list(rows) == list(WEIGHTS), "README weights table is out of date with ibllm_agent.weights.WEIGHTS"
    for name, spec in WEIGHTS.items():
        assert spec.licence in rows[name]
        if spec.sha256:
            assert spec.sha256 in rows[name]
        for f in spec.files:
            if f.url:
                assert f.url in rows[name]
