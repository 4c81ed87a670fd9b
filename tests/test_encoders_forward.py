"""Forward semantics of the tiny presets: shapes, postprocessing, batching, clip averaging, prenorm,
token selection, the IMU patch layout, input checks, eval vs train mode."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers import SCALES

from ibllm_agent.encoders import ImageBind
from ibllm_agent.errors import ConfigError, EncoderInputError, IbllmError

SOT, EOT = 49406, 49407


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # see tests/conftest.py



def _text(*seqs):
    ids = torch.zeros(len(seqs), 77, dtype=torch.long)
    for i, seq in enumerate(seqs):
        row = [SOT, *seq, EOT]
        ids[i, : len(row)] = torch.tensor(row)
    return ids


def _inputs(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "vision": torch.randn(b, 3, 224, 224, generator=g),
        "text": _text(*[[320 + i, 1125, 539 + 7 * i][: 1 + i % 3] for i in range(b)]),
        "audio": torch.randn(b, 3, 1, 128, 204, generator=g),
        "depth": torch.randn(b, 1, 224, 224, generator=g),
        "thermal": torch.randn(b, 1, 224, 224, generator=g),
        "imu": torch.randn(b, 6, 2000, generator=g),
        "point": torch.randn(b, 8192, 3, generator=g),
    }


@torch.inference_mode()
def test_every_modality_batch2_shape_and_scale(tiny_imagebind):
    assert not tiny_imagebind.training  # from_preset returns eval mode: the encoder is used frozen
    inputs = _inputs()
    out, pre = tiny_imagebind(inputs, prenorm=True)
    assert set(out) == set(pre) == set(inputs)
    for m, z in out.items():
        assert z.shape == (2, tiny_imagebind.out_dim) == pre[m].shape, m
        assert z.dtype == torch.float32
        norms = z.norm(dim=-1)
        if m == "audio":
            # clip-averaged postprocessed embeddings: norm <= scale, not re-normalised
            assert (norms <= 20.0 + 1e-4).all()
        else:
            torch.testing.assert_close(norms, torch.full((2,), SCALES[m]), rtol=1e-5, atol=1e-5)
            # postprocessed = normalize(prenorm) * scale
            torch.testing.assert_close(z, F.normalize(pre[m], dim=-1) * SCALES[m], rtol=1e-5, atol=1e-5)
        assert tiny_imagebind.logit_scale(m) == pytest.approx(SCALES[m], rel=1e-6)


@torch.inference_mode()
def test_batch_equals_single(tiny_imagebind):
    inputs = _inputs(b=3, seed=1)
    batched = tiny_imagebind(inputs)
    for i in range(3):
        single = tiny_imagebind({m: x[i : i + 1] for m, x in inputs.items()})
        for m in inputs:
            torch.testing.assert_close(single[m][0], batched[m][i], rtol=1e-4, atol=1e-5, msg=m)
    # the rows really differ (a constant output would pass the check above)
    assert (batched["vision"][0] - batched["vision"][1]).abs().max() > 1e-3


@torch.inference_mode()
def test_video_clip_average_equals_mean_of_clip_embeddings(tiny_imagebind):
    g = torch.Generator().manual_seed(2)
    video = torch.randn(2, 4, 3, 2, 224, 224, generator=g)
    z, pre = tiny_imagebind.encode("video", video, prenorm=True)
    clips = video.reshape(8, 3, 2, 224, 224)
    # clips as a 1-clip batch each: [8, 1, 3, 2, 224, 224]
    per_clip, per_clip_pre = tiny_imagebind({"vision": clips[:, None]}, prenorm=True)
    torch.testing.assert_close(z, per_clip["vision"].reshape(2, 4, -1).mean(1), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(pre, per_clip_pre["vision"].reshape(2, 4, -1).mean(1), rtol=1e-5, atol=1e-6)
    assert (z.norm(dim=-1) < 1.0 - 1e-6).all()  # mean of distinct unit vectors, not re-normalised


@torch.inference_mode()
def test_audio_clip_average(tiny_imagebind):
    g = torch.Generator().manual_seed(3)
    audio = torch.randn(2, 3, 1, 128, 204, generator=g)
    z = tiny_imagebind.encode("audio", audio)
    per_clip = tiny_imagebind.encode("audio", audio.reshape(6, 1, 128, 204))
    torch.testing.assert_close(z, per_clip.reshape(2, 3, -1).mean(1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(per_clip.norm(dim=-1), torch.full((6,), 20.0), rtol=1e-5, atol=1e-4)


@torch.inference_mode()
def test_image_is_a_two_frame_clip_of_itself(tiny_imagebind):
    img = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(4))
    as_image = tiny_imagebind.encode("image", img)
    as_clip = tiny_imagebind.encode("video", img[:, None, :, None].expand(-1, -1, -1, 2, -1, -1))
    torch.testing.assert_close(as_image, as_clip, rtol=1e-5, atol=1e-6)
    # the two frames are really both seen: changing frame 2 changes the output
    clip = img[:, None, :, None].repeat(1, 1, 1, 2, 1, 1)
    clip[:, :, :, 1] = 0
    assert (tiny_imagebind.encode("video", clip) - as_image).abs().max() > 1e-4


@torch.inference_mode()
def test_text_reads_eot_token_through_causal_mask(tiny_imagebind):
    base = _text([320, 1125, 539])
    z = tiny_imagebind.encode("text", base)
    after_eot = base.clone()
    after_eot[0, 10:20] = 1234  # tokens after EOT are invisible under the causal mask
    torch.testing.assert_close(tiny_imagebind.encode("text", after_eot), z)
    before = base.clone()
    before[0, 2] = 999
    assert (tiny_imagebind.encode("text", before) - z).abs().max() > 1e-4


@torch.inference_mode()
def test_imu_patches_are_channel_major(tiny_imagebind):
    pre = tiny_imagebind.modality_preprocessors["imu"]
    x = torch.randn(2, 6, 2000, generator=torch.Generator().manual_seed(5))
    tokens = pre(x)
    assert tokens.shape == (2, 251, tiny_imagebind.config.imu.width)
    p = 37  # patch p holds samples 8p..8p+7 of all 6 channels, channel by channel
    flat = x[:, :, 8 * p : 8 * p + 8].reshape(2, 48)
    manual = pre.imu_stem.norm_layer(flat @ pre.imu_stem.proj.weight.T) + pre.pos_embed[0, 1 + p]
    torch.testing.assert_close(tokens[:, 1 + p], manual, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(tokens[:, 0], (pre.cls_token + pre.pos_embed[:, 0]).expand(2, 1, -1)[:, 0])


def test_eval_is_deterministic_train_mode_is_not():
    model = ImageBind.from_preset("tiny", seed=0)
    x = torch.randn(2, 6, 2000, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        a, b = model.encode("imu", x), model.encode("imu", x)
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        model.train()  # IMU: head dropout 0.5 and drop-path up to 0.7 become active
        torch.manual_seed(0)
        c = model.encode("imu", x)
    assert (a - c).abs().max() > 1e-3


def test_seeded_presets_are_reproducible():
    a = ImageBind.from_preset("tiny", seed=7).state_dict()
    b = ImageBind.from_preset("tiny", seed=7).state_dict()
    c = ImageBind.from_preset("tiny", seed=8).state_dict()
    key = "modality_trunks.vision.blocks.0.attn.in_proj_weight"
    assert torch.equal(a[key], b[key]) and not torch.equal(a[key], c[key])


@torch.inference_mode()
def test_bfloat16_model():
    model = ImageBind.from_preset("tiny", seed=0, dtype=torch.bfloat16)
    z = model.encode("image", torch.randn(2, 3, 224, 224))  # fp32 input is cast to the model dtype
    assert z.dtype == torch.bfloat16 and z.shape == (2, 64)
    ref = ImageBind.from_preset("tiny", seed=0).encode("image", torch.randn(2, 3, 224, 224))
    assert ref.dtype == torch.float32


@pytest.mark.parametrize(
    "modality, x, fragment",
    [
        ("vision", torch.zeros(2, 3, 112, 112), "vision input: expected"),
        ("vision", torch.zeros(2, 3, 2, 224, 224), "vision input: expected"),
        ("audio", torch.zeros(2, 1, 128, 100), "audio input: expected [B,1,128,204]"),
        ("imu", torch.zeros(2, 2000, 6), "imu input: expected [B,6,2000]"),
        ("depth", torch.zeros(1, 224, 224), "depth input"),
        ("text", torch.zeros(2, 77), "integer token ids"),
        ("text", torch.full((2, 77), 50000), "token ids must lie in [0, 49408)"),
        ("text", torch.zeros(2, 76, dtype=torch.long), "text input: expected [B,77]"),
        ("point", torch.zeros(2, 100, 3), "N >= 512"),
        ("point", torch.full((1, 8192, 3), float("nan")), "NaN or inf"),
        ("thermal", torch.zeros(0, 1, 224, 224), "empty batch"),
        ("image", [[0.0]], "must be a torch.Tensor"),
        ("smell", torch.zeros(1), "unknown modality 'smell'"),
    ],
)
def test_bad_inputs_raise_typed_errors(tiny_imagebind, modality, x, fragment):
    with pytest.raises(EncoderInputError) as err:
        tiny_imagebind.encode(modality, x)
    assert fragment in str(err.value)
    assert isinstance(err.value, IbllmError)


def test_forward_rejects_media_names_and_missing_point_branch():
    model = ImageBind.from_preset("tiny", seed=0)
    with pytest.raises(EncoderInputError, match="use 'vision'"):
        model({"image": torch.zeros(1, 3, 224, 224)})
    with pytest.raises(EncoderInputError, match="no point encoder"):
        model.encode("point", torch.zeros(1, 8192, 3))
    with pytest.raises(ConfigError, match="unknown ImageBind preset 'small'"):
        ImageBind.from_preset("small")


@torch.inference_mode()
def test_tiny_forward_is_fast(tiny_imagebind):
    import time

    inputs = _inputs()
    tiny_imagebind(inputs)  # warm-up
    t = time.perf_counter()
    tiny_imagebind(inputs)
    assert time.perf_counter() - t < 3.0  # < 1 s alone; slack for the shared 2-core machine
    assert math.isfinite(float(sum(v.sum() for v in tiny_imagebind(inputs).values())))
