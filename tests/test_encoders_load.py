"""Strict loading of official-format ImageBind checkpoints, proven on tiny files written here."""

from __future__ import annotations

import pytest
import torch

from ibllm_agent.encoders import ImageBind, read_checkpoint
from ibllm_agent.errors import CheckpointError, MissingWeightError

IMG = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
PTS = torch.randn(1, 8192, 3, generator=torch.Generator().manual_seed(1))


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py


class Payload:
    """An arbitrary pickled object: ``weights_only`` loading must refuse it."""


@pytest.fixture(scope="module")
def source():
    model = ImageBind.from_preset("tiny_w3d", seed=1)
    # make the BatchNorm statistics non-default so the test notices if buffers are not loaded
    bn = model.point_trunk.point_encoder.encoder.first_conv[1]
    bn.running_mean.uniform_(-1, 1)
    bn.running_var.uniform_(0.5, 2)
    return model


@pytest.fixture
def ckpt(tmp_path, source):
    path = tmp_path / "imagebind_tiny.pth"
    torch.save(source.state_dict(), path)
    return path


def _same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k].cpu(), sb[k].cpu()), k


@torch.inference_mode()
def test_from_official_round_trip(ckpt, source):
    model = ImageBind.from_official(ckpt)  # preset inferred from the key/shape layout
    assert model.config.name == "tiny_w3d"
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert not any(t.is_meta for t in model.state_dict().values())
    _same_state(model, source)
    torch.testing.assert_close(model.encode("image", IMG), source.encode("image", IMG), rtol=0, atol=0)
    torch.testing.assert_close(model.encode("point", PTS), source.encode("point", PTS), rtol=0, atol=0)


def test_instance_and_class_load_official(ckpt, source):
    other = ImageBind.from_preset("tiny_w3d", seed=2)
    assert not torch.equal(
        other.state_dict()["modality_heads.vision.2.weight"],
        source.state_dict()["modality_heads.vision.2.weight"],
    )
    assert other.load_official(ckpt) is other  # instance form loads in place
    _same_state(other, source)
    built = ImageBind.load_official(ckpt, "tiny_w3d")  # class form = from_official
    _same_state(built, source)
    on_meta = ImageBind.from_preset("tiny_w3d", device="meta").load_official(ckpt)
    assert not any(t.is_meta for t in on_meta.state_dict().values())
    _same_state(on_meta, source)


def test_load_into_bf16_model_casts(ckpt, source):
    model = ImageBind.from_preset("tiny_w3d", dtype=torch.bfloat16).load_official(ckpt)
    w = model.state_dict()["modality_trunks.text.blocks.0.mlp.fc1.weight"]
    assert w.dtype == torch.bfloat16
    assert torch.equal(w, source.state_dict()["modality_trunks.text.blocks.0.mlp.fc1.weight"].bfloat16())
    half = ImageBind.from_official(ckpt, dtype=torch.float16)
    assert half.dtype == torch.float16
    assert (
        half.state_dict()["point_trunk.point_encoder.encoder.first_conv.1.num_batches_tracked"].dtype
        == torch.int64
    )


def test_llm_wrapped_checkpoint(tmp_path, source):
    # ImageBind-LLM training checkpoints: {"model": {"image_bind.<key>": ..., "llama.*": ...}}
    state = {f"image_bind.{k}": v for k, v in source.state_dict().items()}
    state["llama.layers.0.attention.gate"] = torch.zeros(1, 4, 1, 1)
    state["prefix_query.weight"] = torch.zeros(32, 8)
    path = tmp_path / "llm.pth"
    torch.save({"model": state}, path)
    _same_state(ImageBind.from_official(path), source)


def _save(tmp_path, state):
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    return path


def test_missing_key_is_named(tmp_path, source):
    state = dict(source.state_dict())
    del state["modality_trunks.audio.blocks.1.attn.bias_k"]
    with pytest.raises(CheckpointError) as err:
        ImageBind.from_preset("tiny_w3d").load_official(_save(tmp_path, state))
    msg = str(err.value)
    assert "1 missing key(s): modality_trunks.audio.blocks.1.attn.bias_k [1, 1, 32]" in msg
    assert "unexpected" not in msg


def test_unexpected_key_is_named(tmp_path, source):
    state = dict(source.state_dict())
    state["modality_trunks.vision.blocks.0.attn.bias_k"] = torch.zeros(1, 1, 48)
    with pytest.raises(
        CheckpointError, match=r"1 unexpected key\(s\): modality_trunks.vision.blocks.0.attn.bias_k"
    ):
        ImageBind.from_official(_save(tmp_path, state), "tiny_w3d")


def test_shape_mismatch_is_named(tmp_path, source):
    state = dict(source.state_dict())
    state["point_trunk.pc_projection"] = torch.zeros(64, 16)
    with pytest.raises(
        CheckpointError, match=r"point_trunk.pc_projection checkpoint \[64, 16\] vs model \[64, 32\]"
    ):
        ImageBind.from_official(_save(tmp_path, state), "tiny_w3d")
    # without a preset the file fits none of them; the error names the closest and its mismatch
    with pytest.raises(CheckpointError, match=r"fits no ImageBind preset; closest is 'tiny_w3d'"):
        ImageBind.from_official(_save(tmp_path, state))


def test_six_modality_file_does_not_fit_a_w3d_model(tmp_path):
    plain = ImageBind.from_preset("tiny", seed=0)
    path = _save(tmp_path, plain.state_dict())
    assert ImageBind.from_official(path).config.name == "tiny"
    with pytest.raises(CheckpointError, match=r"missing key\(s\): modality_heads.point.0.weight"):
        ImageBind.from_preset("tiny_w3d").load_official(path)


def test_missing_file_and_registry(tmp_path):
    with pytest.raises(MissingWeightError, match="nope.pth") as err:
        ImageBind.from_official(tmp_path / "nope.pth")
    # the suggested command names a registry entry that exists (it used to say `download imagebind`)
    assert "`ibllm-agent download imagebind_w3d`" in str(err.value)
    # no path: the registry file in the (empty, per-test) weights dir
    with pytest.raises(MissingWeightError, match="imagebind_w3D.pth") as err:
        ImageBind.from_official()
    assert "ibllm-agent download imagebind_w3d" in str(err.value)
    with pytest.raises(MissingWeightError, match="imagebind_huge.pth"):
        ImageBind.from_preset("tiny").load_official()


def test_unreadable_files(tmp_path, source):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read ImageBind checkpoint .*junk.pth"):
        read_checkpoint(junk)
    # weights_only refuses arbitrary pickled objects
    evil = tmp_path / "evil.pth"
    torch.save({"weight": torch.zeros(1), "payload": Payload()}, evil)
    with pytest.raises(CheckpointError, match="evil.pth"):
        read_checkpoint(evil)
    not_tensors = tmp_path / "list.pth"
    torch.save([1, 2, 3], not_tensors)
    with pytest.raises(CheckpointError, match="not a state dict of named tensors"):
        read_checkpoint(not_tensors)


def test_legacy_serialization_is_read(tmp_path, source):
    # non-zip torch.save files cannot be memory-mapped; they are read normally
    path = tmp_path / "legacy.pth"
    torch.save(source.state_dict(), path, _use_new_zipfile_serialization=False)
    _same_state(ImageBind.from_official(path), source)
