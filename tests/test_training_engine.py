"""Training engine on the tiny preset: loss falls, exact resume, export reload + generate, official layout
round trip, refusal of incompatible runs, schedule and weight-decay rules."""

from __future__ import annotations

import csv
import json
import math

import pytest
import torch
from ibllm_agent.training import load_config, run
from ibllm_agent.training.engine import Trainer, lr_at, param_groups
from training_fixtures import make_alpaca, make_caption_tsv, one_thread  # noqa: F401 (one_thread: autouse)

from ibllm_agent.errors import CheckpointError, ConfigError


def _rows(path):
    return list(csv.DictReader(path.read_text().splitlines()))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("train_data")
    hello = root / "hello.json"  # one task repeated: every batch measures the same thing, so the fall is clean
    hello.write_text(json.dumps([{"instruction": "Say hello.", "input": "", "output": "Hello, world!"}] * 8))
    return {"alpaca": make_alpaca(root), "tsv": make_caption_tsv(root), "hello": hello, "root": root}


@pytest.fixture(scope="module")
def finetune_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("ft_run")
    return run("finetune", "tiny_finetune.yaml", data=[str(data["hello"])], output_dir=str(out), lr=3e-3,
               epochs=4.0, warmup_epochs=0.0, batch_size=4, save_every=4, tensorboard=True)


def test_loss_falls_and_metrics_are_logged(finetune_run):
    r = finetune_run
    assert r.steps == 8 and len(r.losses) == 8  # 8 examples / batch 4 = 2 steps per epoch x 4 epochs
    # ln(512) = 6.24 at random init; frozen embeddings/head make the tiny model learn slowly but surely
    assert r.losses[-1] < r.losses[0] - 0.3 and all(b < a for a, b in zip(r.losses, r.losses[1:])), r.losses
    rows = _rows(r.output_dir / "metrics.csv")
    assert [int(x["step"]) for x in rows] == list(range(1, 9))
    assert [float(x["loss"]) for x in rows] == pytest.approx(r.losses)
    assert float(rows[0]["lr"]) == pytest.approx(3e-3) and float(rows[1]["lr"]) == pytest.approx(
        3e-3 * 0.5 * (1 + math.cos(math.pi * 0.5 / 4)))  # per-iteration half cosine, epoch 0.5 of 4
    assert all(float(x["tokens_per_s"]) > 0 for x in rows)
    assert any((r.output_dir / "tensorboard").iterdir())
    assert (r.output_dir / "checkpoints" / "latest").read_text().strip() == "step-00000008"
    assert sorted(p.name for p in (r.output_dir / "checkpoints").glob("step-*")) == ["step-00000004", "step-00000008"]


def test_exported_model_reloads_and_generates(finetune_run):
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.model.checkpoint import read_safetensors

    model = ImageBindLLM.from_pretrained(finetune_run.model_dir, device="cpu", dtype=torch.float32)
    trained = read_safetensors(finetune_run.checkpoint / "trainable.safetensors")
    state = model.state_dict()
    assert trained and all(torch.equal(state[k], v) for k, v in trained.items())
    assert any(k.endswith("lora_b.weight") and v.abs().sum() > 0 for k, v in trained.items())  # LoRA moved
    from ibllm_agent.prompts import format_prompt

    out = model.generate(format_prompt("Repeat the word cat."), temperature=0, max_new_tokens=6)
    assert out.completion_tokens > 0 and isinstance(out.text, str)


def test_official_release_round_trips_through_converter(finetune_run, tmp_path):
    from ibllm_agent.model.checkpoint import read_safetensors
    from ibllm_agent.model.convert import convert_to_official, convert_to_ours, read_torch

    release = read_torch(finetune_run.release)
    assert "image_bind_proj.weight" in release and "llama.layers.0.attention.lora_wq_l2.weight" in release
    assert not any(k.startswith("llama.tok_embeddings") or k.endswith("attention.wq.weight") for k in release)
    # the same file the project's converter writes from the exported folder
    ref = read_torch(convert_to_official(finetune_run.model_dir, tmp_path / "off") / "imagebind_llm.pth")
    assert release.keys() == ref.keys() and all(torch.equal(release[k], ref[k]) for k in ref)
    # official adapter + Meta base -> ours: identical to the trained model's tensors
    back = convert_to_ours(tmp_path / "back", official=finetune_run.release, llama_dir=tmp_path / "off" / "llama",
                           encoder="tiny_w3d", encoder_weights=None)
    for name in ("adapter.safetensors", "base.safetensors"):
        a, b = read_safetensors(back / name), read_safetensors(finetune_run.model_dir / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def _interrupt_after(monkeypatch, n_windows: int):
    calls = {"n": 0}
    original = Trainer._window

    def window(self, *a, **k):
        calls["n"] += 1
        if calls["n"] > n_windows:
            raise KeyboardInterrupt("killed")
        return original(self, *a, **k)

    monkeypatch.setattr(Trainer, "_window", window)


def test_interrupted_run_resumes_to_the_same_losses(data, tmp_path, monkeypatch):
    kw = {"data": [str(data["alpaca"])], "lr": 1e-2, "epochs": 3.0, "batch_size": 3, "save_every": 3, "export": False}
    full = run("finetune", "tiny_finetune.yaml", output_dir=str(tmp_path / "full"), **kw)
    assert full.steps == 6  # 8 examples, batch 3: 2 steps per epoch (mid-epoch positions on resume)
    with monkeypatch.context() as m:
        _interrupt_after(m, 4)  # dies during step 5; the last checkpoint is step 3 (mid-epoch 2)
        with pytest.raises(KeyboardInterrupt):
            run("finetune", "tiny_finetune.yaml", output_dir=str(tmp_path / "cut"), **kw)
    ckpts = tmp_path / "cut" / "checkpoints"
    assert (ckpts / "latest").read_text().strip() == "step-00000003"
    resumed = run("finetune", "tiny_finetune.yaml", output_dir=str(tmp_path / "cut"), **kw)
    assert resumed.losses == pytest.approx(full.losses[3:], rel=1e-6, abs=1e-7)
    rows = _rows(tmp_path / "cut" / "metrics.csv")
    assert [float(r["loss"]) for r in rows] == pytest.approx(full.losses, rel=1e-6, abs=1e-7)


def test_pretrain_from_features_trains_only_the_visual_path(data, tmp_path):
    from ibllm_agent.training.features import FeatureStore, encode_data

    cfg = load_config(None, "tiny_pretrain.yaml", {"data": [str(data["tsv"])], "features": str(tmp_path / "f")})
    rep = encode_data(cfg)
    assert rep.images == 8 and rep.encoded == 8 and FeatureStore(tmp_path / "f").index["rows"] == 8
    assert encode_data(cfg).reused == 8  # second run: nothing re-encoded
    from ibllm_agent.training.data.dataset import content_key
    from ibllm_agent.training.features import image_features

    from ibllm_agent import media
    from ibllm_agent.model import ImageBindLLM

    store, tiny = FeatureStore(tmp_path / "f"), ImageBindLLM.from_preset("tiny")
    imgs = sorted((data["root"] / "images").glob("*.png"))[:2]
    want = image_features(tiny, torch.stack([media.load(str(p), "image") for p in imgs]))
    got = torch.stack([store.get(content_key(p)) for p in imgs])
    torch.testing.assert_close(got, want, atol=2e-3, rtol=0)  # float16 rows of the model's own features
    assert not torch.allclose(got[0], got[1])
    r = run("pretrain", "tiny_pretrain.yaml", data=[str(data["tsv"])], features=str(tmp_path / "f"),
            output_dir=str(tmp_path / "p"), lr=5e-2, max_steps=3, export=True)
    from ibllm_agent.model.checkpoint import read_safetensors

    names = set(read_safetensors(r.checkpoint / "trainable.safetensors"))
    assert any(n.startswith("bind.") for n in names) and "prefix_query.weight" in names
    assert any(n.endswith(".self_attn.gate") for n in names)
    assert not any(".lora_" in n or n.endswith("norm.weight") and n.startswith("lm.") for n in names)
    rows = _rows(r.output_dir / "metrics.csv")
    assert float(rows[-1]["gate_abs"]) > 0  # gates left zero
    # encoding every step (the reference's way) trains the same: the stored features are the model's own
    live = run("pretrain", "tiny_pretrain.yaml", data=[str(data["tsv"])], output_dir=str(tmp_path / "live"),
               lr=5e-2, max_steps=3, export=False)
    assert live.losses == pytest.approx(r.losses, rel=1e-3)  # float16 storage


def test_incompatible_runs_are_refused_before_compute(data, tmp_path):
    # finetune freezes the gates: image data on a never-pretrained model is refused
    with pytest.raises(ConfigError, match="never pre-trained"):
        run("finetune", "tiny_finetune.yaml", data=[str(data["tsv"])], output_dir=str(tmp_path / "a"),
            check_pretrained=True)
    assert not (tmp_path / "a").exists()
    with pytest.raises(ConfigError, match="no images"):
        run("pretrain", "tiny_pretrain.yaml", data=[str(data["alpaca"])], output_dir=str(tmp_path / "b"))
    # a checkpoint of another stage in output_dir is not silently resumed
    run("finetune", "tiny_finetune.yaml", data=[str(data["alpaca"])], output_dir=str(tmp_path / "c"),
        max_steps=1, export=False)
    with pytest.raises(CheckpointError, match="stage 'finetune'"):
        run("pretrain", "tiny_pretrain.yaml", data=[str(data["tsv"])], output_dir=str(tmp_path / "c"), max_steps=1)
    # an adapter of another architecture
    bad = tmp_path / "bad.pth"
    torch.save({"model": {"image_bind_proj.weight": torch.zeros(8, 3)}}, bad)
    with pytest.raises(CheckpointError, match="does not fit"):
        run("finetune", "tiny_finetune.yaml", data=[str(data["alpaca"])], output_dir=str(tmp_path / "d"),
            init_adapter=str(bad))


def test_schedule_and_weight_decay_rules():
    cfg = load_config("finetune", "finetune.yaml")
    assert cfg.effective_lr(8) == pytest.approx(1.25e-4) and tuple(cfg.betas) == (0.9, 0.95)
    assert load_config("pretrain", "pretrain.yaml").effective_lr(8) == pytest.approx(1.25e-5)
    assert lr_at(0.5, cfg, 1.0) == pytest.approx(0.5)  # warm-up 1 epoch
    assert lr_at(1.0, cfg, 1.0) == pytest.approx(1.0)
    assert lr_at(2.5, cfg, 1.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.5)))
    assert lr_at(4.0, cfg, 1.0) == pytest.approx(0.0, abs=1e-12)
    from ibllm_agent.model import ImageBindLLM

    model = ImageBindLLM.from_preset("tiny").set_phase("pretrain")
    no_decay, decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    dn = {names[id(p)] for p in decay["params"]}
    nn_ = {names[id(p)] for p in no_decay["params"]}
    assert "prefix_query.weight" in dn and any(n.endswith(".gate") for n in dn)  # 4-D gates decay (reference)
    assert "bind.proj.bias" in nn_ and all(".norms." in n or n.endswith(".bias") for n in nn_)


def test_gradient_accumulation_equals_the_larger_batch(data, tmp_path):
    kw = {"data": [str(data["alpaca"])], "lr": 3e-3, "warmup_epochs": 0.0, "max_steps": 2, "export": False}
    big = run("finetune", "tiny_finetune.yaml", output_dir=str(tmp_path / "big"), batch_size=4, **kw)
    acc = run("finetune", "tiny_finetune.yaml", output_dir=str(tmp_path / "acc"), batch_size=2, accum_iter=2, **kw)
    assert acc.losses == pytest.approx(big.losses, rel=1e-5) and acc.lr == big.lr  # lr follows the effective batch
    from ibllm_agent.model.checkpoint import read_safetensors

    a = read_safetensors(acc.checkpoint / "trainable.safetensors")
    b = read_safetensors(big.checkpoint / "trainable.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6, msg=k)


def test_encoder_is_found_for_models_without_one():
    """After the media-stage split the model holds no encoder: training loads the same one itself."""
    from ibllm_agent.training.features import frozen_encoder, image_features

    from ibllm_agent.model import ImageBindLLM

    model = ImageBindLLM.from_preset("tiny")

    class Bare:  # the tensor-only model's surface that training uses
        config, checkpoint_dir, encoder_seed, lm = model.config, None, 0, model.lm

        def parameters(self):
            return model.parameters()

    bare = Bare()
    assert frozen_encoder(bare) is frozen_encoder(bare)  # loaded once
    x = torch.rand(2, 3, 224, 224)
    torch.testing.assert_close(image_features(bare, x), image_features(model, x))
