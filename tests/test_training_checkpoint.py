"""Atomic training checkpoints: a full disk or a kill never leaves a half-written checkpoint as the latest;
RNG states round-trip through the weights-only loader; the CLI and recipes parse and refuse bad input."""

from __future__ import annotations

import errno
import random

import numpy as np
import pytest
import torch
from ibllm_agent.training import checkpoint as ck
from ibllm_agent.training.configs import bundled_configs, load_config, parse_overrides
from typer.testing import CliRunner

from ibllm_agent.errors import CheckpointError, ConfigError


def _save(root, step, value):
    return ck.save_checkpoint(root, step, {"w": torch.full((3,), float(value))}, {"step": step}, keep=2)


def test_full_disk_keeps_the_previous_checkpoint_latest(tmp_path, monkeypatch):
    _save(tmp_path, 2, 2.0)
    real_save = torch.save

    def disk_full(obj, f, *a, **k):
        real_save(obj, f, *a, **k)  # half a checkpoint is on disk when the error comes
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(ck.torch, "save", disk_full)
    with pytest.raises(CheckpointError, match="No space left on device; step-00000002 remains the latest"):
        _save(tmp_path, 4, 4.0)
    monkeypatch.undo()
    assert ck.latest_checkpoint(tmp_path).name == "step-00000002"
    assert not (tmp_path / "step-00000004").exists() and not list(tmp_path.glob(".tmp-*"))
    w, state = ck.load_checkpoint(ck.latest_checkpoint(tmp_path))
    assert w["w"].tolist() == [2.0] * 3 and state["step"] == 2


def test_killed_save_leaves_only_a_temporary_folder(tmp_path):
    _save(tmp_path, 2, 2.0)
    # a save killed mid-way: its temporary folder holds a partial file, `latest` was never touched
    partial = tmp_path / ".tmp-step-00000004-999"
    partial.mkdir()
    (partial / ck.TRAINABLE).write_bytes(b"\x00" * 10)
    assert ck.latest_checkpoint(tmp_path).name == "step-00000002"
    _save(tmp_path, 4, 4.0)  # the next save removes it
    assert not partial.exists() and ck.latest_checkpoint(tmp_path).name == "step-00000004"
    _save(tmp_path, 6, 6.0)
    assert sorted(p.name for p in tmp_path.glob("step-*")) == ["step-00000004", "step-00000006"]  # keep=2
    # a dangling pointer falls back to the newest complete folder
    (tmp_path / ck.LATEST).write_text("step-00000099\n")
    assert ck.latest_checkpoint(tmp_path).name == "step-00000006"


def test_rng_states_round_trip_weights_only(tmp_path):
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ck.rng_state()
    _ = random.random(), np.random.rand(), torch.rand(1)
    expect = (random.random(), float(np.random.rand()), float(torch.rand(1)))
    ck.save_checkpoint(tmp_path, 1, {"w": torch.zeros(1)}, {"rng": [state]})
    _, loaded = ck.load_checkpoint(tmp_path / "step-00000001")
    ck.set_rng_state(loaded["rng"][0])
    _ = random.random(), np.random.rand(), torch.rand(1)
    assert (random.random(), float(np.random.rand()), float(torch.rand(1))) == expect


def test_recipes_and_overrides():
    assert {"pretrain.yaml", "finetune.yaml", "tools.yaml", "chat.yaml", "tiny_tools.yaml"} <= set(bundled_configs())
    pre = load_config("pretrain", "pretrain.yaml")
    assert (pre.max_words, pre.weight_decay, pre.epochs, pre.warmup_epochs, pre.phase) == (96, 0.05, 3.0, 0.1, "pretrain")
    tools = load_config("tools", "tools.yaml", parse_overrides(["--batch-size", "2", "--data=a.json,b.json",
                                                                "--clip-grad", "1.0", "--tensorboard"]))
    assert (tools.lr, tools.max_words, tools.phase, tools.batch_size) == (3e-4, 2048, "finetune", 2)
    assert tools.data == ["a.json", "b.json"] and tools.clip_grad == 1.0 and tools.tensorboard is True
    with pytest.raises(ConfigError, match="is a 'pretrain' recipe"):
        load_config("finetune", "pretrain.yaml")
    with pytest.raises(ConfigError, match="unknown option --bogus"):
        parse_overrides(["--bogus", "1"])
    with pytest.raises(ConfigError, match="'batch_size' expects int"):
        load_config("finetune", None, {"batch_size": "two"})
    with pytest.raises(ConfigError, match="augment needs on-the-fly"):
        load_config("finetune", None, {"augment": True, "features": "x"})


def test_cli_train_help_and_errors(tmp_path):
    from ibllm_agent.cli import _register_all, app

    if not app.registered_commands:
        _register_all()
    res = CliRunner().invoke(app, ["train", "--help"])
    assert res.exit_code == 0
    for field in ("--max-words", "--features", "--accum-iter", "--clip-grad", "encode", "tiny_finetune.yaml"):
        assert field in res.output
    res = CliRunner().invoke(app, ["train", "finetune", "--config", "tiny_finetune.yaml", "--bogus", "1"])
    assert res.exit_code == 2 and "unknown option --bogus" in res.output
    res = CliRunner().invoke(app, ["train", "finetune", "--config", "tiny_finetune.yaml",
                                   "--data", str(tmp_path / "none.json")])
    assert res.exit_code == 2 and "data file not found" in res.output


def test_cli_encode_step_writes_a_store(tmp_path):
    from ibllm_agent.training.features import FeatureStore
    from training_fixtures import make_caption_tsv

    from ibllm_agent.cli import _register_all, app

    if not app.registered_commands:
        _register_all()
    tsv = make_caption_tsv(tmp_path / "d")
    args = ["train", "encode", "--config", "tiny_pretrain.yaml", "--data", str(tsv), "--features", str(tmp_path / "f")]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "8 distinct image(s): encoded 8" in res.output
    store = FeatureStore(tmp_path / "f")
    assert store.index["rows"] == 8 and store.dim == 64 and len(store.placeholder) == 64
    res = CliRunner().invoke(app, ["train", "encode", "--config", "tiny_pretrain.yaml", "--data", str(tsv)])
    assert res.exit_code == 2 and "needs an output folder" in res.output
