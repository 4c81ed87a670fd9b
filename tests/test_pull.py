"""`ibllm-agent pull`: fetch (stubbed: no network here), check LLaMA, merge the Open-Chinese delta,
convert — resumable and idempotent — on tiny Meta-layout weights."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file
from test_convert import make_meta, make_official, write_meta_folder

from ibllm_agent.cli import pull as pull_cli
from ibllm_agent.errors import ManualWeightMissingError
from ibllm_agent.model import ImageBindLLM
from ibllm_agent.model.tokenizer import tiny_tokenizer


@pytest.fixture
def weights(tmp_path, monkeypatch):
    root = tmp_path / "weights"
    monkeypatch.setenv("IBLLM_WEIGHTS_DIR", str(root))
    fetched: list[str] = []

    def fake_fetch(name, settings=None, **kw):  # the registry files, as a finished download leaves them
        fetched.append(name)
        if name == "open_chinese_llama_7b_delta":
            delta_dir = root / "llama" / "7B_chinese_delta"
            delta_dir.mkdir(parents=True, exist_ok=True)
            torch.save(DELTA, delta_dir / "consolidated.00.pth")
            shutil.copyfile(root / "llama" / "7B" / "params.json", delta_dir / "params.json")
        return root

    monkeypatch.setattr("ibllm_agent.download.fetch_weight", fake_fetch)
    return root, fetched


g = torch.Generator().manual_seed(0)
TOK = tiny_tokenizer()
META = make_meta(g, TOK.vocab_size)
OFFICIAL = make_official(g)
DELTA = {k: (torch.randn(v.shape, generator=g) * 0.01).half() for k, v in META.items() if "rope" not in k}


def _place_llama_and_adapter(root):
    write_meta_folder(root / "llama", META, TOK.path, shards=1)
    (root / "imagebind_llm").mkdir(parents=True)
    torch.save({"model": OFFICIAL}, root / "imagebind_llm" / "7B.pth")


def test_missing_llama_says_which_file_goes_where(weights):
    root, fetched = weights
    with pytest.raises(ManualWeightMissingError) as info:
        pull_cli.pull("imagebind-llm-7b", encoder="tiny_w3d", encoder_weights=None, say=lambda m: None)
    assert fetched == ["imagebind_llm_7b", "imagebind_w3d"]  # what can be fetched was, first
    msg = str(info.value)
    assert str(root / "llama" / "7B" / "params.json") in msg and "consolidated.00.pth" in msg


def test_pull_merges_the_delta_converts_and_is_idempotent(weights):
    root, fetched = weights
    _place_llama_and_adapter(root)
    out = pull_cli.pull("imagebind-llm-7b", encoder="tiny_w3d", encoder_weights=None, say=lambda m: None)
    assert out == root / "official" and fetched == ["imagebind_llm_7b", "imagebind_w3d", "open_chinese_llama_7b_delta"]
    merged = torch.load(root / "llama" / "7B_chinese" / "consolidated.00.pth", weights_only=True)
    for k, d in DELTA.items():
        assert torch.equal(merged[k], (META[k].float() + d.float()).half())
    # The converted model runs on the merged base: its embeddings are LLaMA + delta, not LLaMA.
    base = load_file(out / "base.safetensors")
    emb = next(v for k, v in base.items() if "embed_tokens" in k)
    assert torch.equal(emb.to(torch.float16), merged["tok_embeddings.weight"])
    assert ImageBindLLM.from_pretrained(out, device="cpu").config.lora_rank > 0

    # Again: nothing is fetched, merged or converted.
    fetched.clear()
    before = (out / "config.json").stat().st_mtime_ns
    assert pull_cli.pull("imagebind-llm-7b", encoder="tiny_w3d", encoder_weights=None, say=lambda m: None) == out
    assert fetched == [] and (out / "config.json").stat().st_mtime_ns == before


def test_pull_after_an_interrupted_merge_resumes(weights):
    root, _fetched = weights
    _place_llama_and_adapter(root)
    (root / "llama" / "7B_chinese").mkdir(parents=True)
    (root / "llama" / "7B_chinese" / "consolidated.00.pth.part").write_bytes(b"half a file")
    out = pull_cli.pull("imagebind-llm-7b", base="7B_chinese", encoder="tiny_w3d", encoder_weights=None,
                        say=lambda m: None)
    assert json.loads((out / "config.json").read_text())
    assert (root / "llama" / "7B_chinese" / "consolidated.00.pth").is_file()
    assert not (root / "llama" / "7B_chinese" / "consolidated.00.pth.part").exists()


def test_pull_from_an_hf_format_llama_repo(weights, tmp_path, monkeypatch):
    """--hf-llama: the repo's config/safetensors/tokenizer are fetched (stubbed Hub) and converted; the
    result equals the model converted from the same weights in Meta layout."""
    from transformers import LlamaForCausalLM

    from ibllm_agent.errors import ConfigError
    from ibllm_agent.model.convert import convert_to_ours

    root, _fetched = weights
    _place_llama_and_adapter(root)
    ref = convert_to_ours(tmp_path / "ref", official=root / "imagebind_llm" / "7B.pth", llama_dir=root / "llama" / "7B",
                          encoder="tiny_w3d", encoder_weights=None)
    ours = ImageBindLLM.from_pretrained(ref, device="cpu", dtype=torch.float32)
    bare = LlamaForCausalLM(ours.config.llama_config())
    bare.load_state_dict({k.removeprefix("lm."): v for k, v in ours.state_dict().items()
                          if k.startswith("lm.") and not (k.endswith((".gate", ".bias")) or ".lora_" in k)})
    served = tmp_path / "hub"
    bare.save_pretrained(served)
    (served / "tokenizer.model").write_bytes(TOK.path.read_bytes())
    (served / "README.md").write_text("not fetched")
    shutil.rmtree(root / "llama")  # no Meta copy: everything comes from the repo

    listing = [{"path": p.name, "size": p.stat().st_size, "sha256": None} for p in served.iterdir()]
    monkeypatch.setattr("ibllm_agent.hub.list_repo_files", lambda repo, rev, **kw: listing)
    downloaded = []

    def fake_download(hub, dest, **kw):
        downloaded.append(hub.filename)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(served / hub.filename, dest)
        return dest

    monkeypatch.setattr("ibllm_agent.hub.hub_download", fake_download)
    with pytest.raises(ConfigError, match="--base 7B"):
        pull_cli.pull("imagebind-llm-7b", hf_llama="org/llama-7b-hf", encoder="tiny_w3d", encoder_weights=None,
                      say=lambda m: None)
    out = pull_cli.pull("imagebind-llm-7b", base="7B", hf_llama="org/llama-7b-hf", encoder="tiny_w3d",
                        encoder_weights=None, say=lambda m: None)
    assert "README.md" not in downloaded and "config.json" in downloaded
    assert (root / "llama" / "hf" / "org__llama-7b-hf" / "config.json").is_file()
    a, b = load_file(ref / "base.safetensors"), load_file(out / "base.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k].float(), b[k].float()) for k in a)
