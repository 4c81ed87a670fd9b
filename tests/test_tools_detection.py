"""GroundingDINO detector: official-checkpoint key compatibility (meta device), tiny end-to-end detection,
drawing and the loader's missing-weights error."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ibllm_agent.errors import CheckpointError, MissingWeightError, ToolInputError
from ibllm_agent.tools.detection import (
    Detection,
    GroundingDinoDetector,
    convert_official_state_dict,
    draw_detections,
    format_detections,
    label_colours,
    official_config,
    read_official_config,
)


def official_swint_ogc_keys() -> dict[str, tuple[int, ...]]:
    """Key → shape of the official ``groundingdino_swint_ogc.pth`` ``model`` state dict, written out
    from the official architecture (IDEA-Research/GroundingDINO: SwinTransformer, BertModelWarper,
    DeformableTransformer with text_layers/fusion_layers, shared bbox_embed MLPs, a separate
    enc_out_bbox_embed since two_stage_bbox_embed_share=False)."""
    k: dict[str, tuple[int, ...]] = {}
    d, ffn, heads, levels, points = 256, 2048, 8, 4, 4
    k["backbone.0.patch_embed.proj.weight"] = (96, 3, 4, 4)
    k["backbone.0.patch_embed.proj.bias"] = (96,)
    k["backbone.0.patch_embed.norm.weight"] = k["backbone.0.patch_embed.norm.bias"] = (96,)
    for i, (depth, nh) in enumerate(zip((2, 2, 6, 2), (3, 6, 12, 24))):
        c = 96 * 2**i
        for j in range(depth):
            p = f"backbone.0.layers.{i}.blocks.{j}."
            for n in ("norm1", "norm2"):
                k[p + n + ".weight"] = k[p + n + ".bias"] = (c,)
            k[p + "attn.relative_position_bias_table"] = (13 * 13, nh)
            k[p + "attn.relative_position_index"] = (49, 49)
            k[p + "attn.qkv.weight"], k[p + "attn.qkv.bias"] = (3 * c, c), (3 * c,)
            k[p + "attn.proj.weight"], k[p + "attn.proj.bias"] = (c, c), (c,)
            k[p + "mlp.fc1.weight"], k[p + "mlp.fc1.bias"] = (4 * c, c), (4 * c,)
            k[p + "mlp.fc2.weight"], k[p + "mlp.fc2.bias"] = (c, 4 * c), (c,)
        if i < 3:
            p = f"backbone.0.layers.{i}.downsample."
            k[p + "reduction.weight"] = (2 * c, 4 * c)
            k[p + "norm.weight"] = k[p + "norm.bias"] = (4 * c,)
    for i, c in ((1, 192), (2, 384), (3, 768)):
        k[f"backbone.0.norm{i}.weight"] = k[f"backbone.0.norm{i}.bias"] = (c,)
    e = "bert.embeddings."
    k[e + "word_embeddings.weight"] = (30522, 768)
    k[e + "position_embeddings.weight"] = (512, 768)
    k[e + "token_type_embeddings.weight"] = (2, 768)
    k[e + "LayerNorm.weight"] = k[e + "LayerNorm.bias"] = (768,)
    k[e + "position_ids"] = (1, 512)
    for layer in range(12):
        p = f"bert.encoder.layer.{layer}."
        for n in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"):
            k[p + n + ".weight"], k[p + n + ".bias"] = (768, 768), (768,)
        for n in ("attention.output.LayerNorm", "output.LayerNorm"):
            k[p + n + ".weight"] = k[p + n + ".bias"] = (768,)
        k[p + "intermediate.dense.weight"], k[p + "intermediate.dense.bias"] = (3072, 768), (3072,)
        k[p + "output.dense.weight"], k[p + "output.dense.bias"] = (768, 3072), (768,)
    k["bert.pooler.dense.weight"], k["bert.pooler.dense.bias"] = (768, 768), (768,)
    k["feat_map.weight"], k["feat_map.bias"] = (d, 768), (d,)
    for i, (cin, ks) in enumerate(((192, 1), (384, 1), (768, 1), (768, 3))):
        k[f"input_proj.{i}.0.weight"], k[f"input_proj.{i}.0.bias"] = (d, cin, ks, ks), (d,)
        k[f"input_proj.{i}.1.weight"] = k[f"input_proj.{i}.1.bias"] = (d,)
    k["transformer.level_embed"] = (levels, d)

    def lin(p: str, out: int, inp: int) -> None:
        k[p + ".weight"], k[p + ".bias"] = (out, inp), (out,)

    def norm(p: str) -> None:
        k[p + ".weight"] = k[p + ".bias"] = (d,)

    def deform(p: str) -> None:
        lin(p + ".sampling_offsets", heads * levels * points * 2, d)
        lin(p + ".attention_weights", heads * levels * points, d)
        lin(p + ".value_proj", d, d)
        lin(p + ".output_proj", d, d)

    def mha(p: str) -> None:
        k[p + ".in_proj_weight"], k[p + ".in_proj_bias"] = (3 * d, d), (3 * d,)
        lin(p + ".out_proj", d, d)

    def mlp(p: str, dims: tuple[tuple[int, int], ...]) -> None:
        for n, (o, i) in enumerate(dims):
            lin(f"{p}.layers.{n}", o, i)

    for layer in range(6):
        p = f"transformer.encoder.layers.{layer}"
        deform(p + ".self_attn")
        norm(p + ".norm1"), norm(p + ".norm2")
        lin(p + ".linear1", ffn, d), lin(p + ".linear2", d, ffn)
        p = f"transformer.encoder.text_layers.{layer}"
        mha(p + ".self_attn")
        lin(p + ".linear1", 1024, d), lin(p + ".linear2", d, 1024)
        norm(p + ".norm1"), norm(p + ".norm2")
        p = f"transformer.encoder.fusion_layers.{layer}"
        k[p + ".gamma_v"] = k[p + ".gamma_l"] = (d,)
        norm(p + ".layer_norm_v"), norm(p + ".layer_norm_l")
        for n in ("v_proj", "l_proj", "values_v_proj", "values_l_proj"):
            lin(f"{p}.attn.{n}", 1024, d)
        lin(p + ".attn.out_v_proj", d, 1024), lin(p + ".attn.out_l_proj", d, 1024)
        p = f"transformer.decoder.layers.{layer}"
        deform(p + ".cross_attn")
        mha(p + ".ca_text"), mha(p + ".self_attn")
        for n in ("norm1", "catext_norm", "norm2", "norm3"):
            norm(f"{p}.{n}")
        lin(p + ".linear1", ffn, d), lin(p + ".linear2", d, ffn)
        box = ((d, d), (d, d), (4, d))
        mlp(f"transformer.decoder.bbox_embed.{layer}", box)
        mlp(f"bbox_embed.{layer}", box)
    norm("transformer.decoder.norm")
    mlp("transformer.decoder.ref_point_head", ((d, 2 * d), (d, d)))
    k["transformer.tgt_embed.weight"] = (900, d)
    lin("transformer.enc_output", d, d)
    norm("transformer.enc_output_norm")
    mlp("transformer.enc_out_bbox_embed", ((d, d), (d, d), (4, d)))
    return k


def test_official_keys_map_onto_transformers_groundingdino_on_meta():
    from transformers import GroundingDinoForObjectDetection

    official = official_swint_ogc_keys()
    with torch.device("meta"):
        model = GroundingDinoForObjectDetection(official_config())
        state = {f"module.{n}": torch.empty(s) for n, s in official.items()}  # DDP prefix is stripped
    expected = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    converted = convert_official_state_dict(state)
    shapes = {n: tuple(t.shape) for n, t in converted.items()}
    unknown = sorted(set(shapes) - set(expected))
    assert not unknown, unknown[:5]
    wrong = {n: (s, expected[n]) for n, s in shapes.items() if s != expected[n]}
    assert not wrong, list(wrong.items())[:5]
    # Every transformers weight is filled except the Swin model's final LayerNorm, which SwinBackbone
    # never runs (transformers lists it in _keys_to_ignore_on_load_missing).
    uncovered = sorted(set(expected) - set(shapes))
    assert uncovered == [
        "model.backbone.conv_encoder.model.swin.layernorm.bias",
        "model.backbone.conv_encoder.model.swin.layernorm.weight",
    ]
    # Only recomputed buffers and the unused BERT pooler are dropped; fused q/k/v become three each.
    dropped = {n for n in official if n.endswith("relative_position_index") or n.startswith("bert.pooler")
               or n == "bert.embeddings.position_ids"}
    fused = [n for n in official if n.endswith(("qkv.weight", "qkv.bias", "in_proj_weight", "in_proj_bias"))]
    assert len(converted) == len(official) - len(dropped) + 2 * len(fused)


def test_fused_qkv_rows_split_in_order():
    w = torch.arange(12.0).view(6, 2)  # [3C, C] with C = 2
    out = convert_official_state_dict({"transformer.decoder.layers.0.ca_text.in_proj_weight": w})
    base = "model.decoder.layers.0.encoder_attn_text."
    assert torch.equal(out[base + "query.weight"], w[0:2])
    assert torch.equal(out[base + "key.weight"], w[2:4])
    assert torch.equal(out[base + "value.weight"], w[4:6])


def test_unknown_official_key_is_a_checkpoint_error():
    with pytest.raises(CheckpointError, match="transformer.decoder.mystery"):
        convert_official_state_dict({"transformer.decoder.mystery.weight": torch.zeros(1)})


def test_official_config_is_read_without_executing_it(tmp_path):
    cfg = tmp_path / "GroundingDINO_SwinT_OGC.py"
    marker = tmp_path / "executed"
    cfg.write_text(
        f'batch_size = 1\nmodelname = "groundingdino"\nbackbone = "swin_T_224_1k"\nnum_queries = 900\n'
        f'enc_layers = 6\ndec_layers = 6\nhidden_dim = 256\nnheads = 8\ntext_encoder_type = "bert-base-uncased"\n'
        f'open({str(marker)!r}, "w")\n'
    )
    values = read_official_config(cfg)
    assert values["num_queries"] == 900 and values["backbone"] == "swin_T_224_1k"
    assert not marker.exists()
    assert official_config(values).num_queries == 900
    with pytest.raises(CheckpointError, match="swin_B_384_22k"):
        official_config({"backbone": "swin_B_384_22k"})


@pytest.fixture(scope="module")
def tiny():
    return GroundingDinoDetector.tiny(seed=0)


def test_tiny_detector_boxes_are_inside_each_image_and_sorted(tiny):
    a, b = Image.new("RGB", (96, 64), "gray"), Image.new("RGB", (64, 80), "white")
    res = tiny.detect([a, b], ["cat", "red dog"], box_threshold=0.0, text_threshold=0.0)
    assert len(res) == 2
    for image, dets in zip((a, b), res):
        assert 0 < len(dets) <= tiny.max_detections
        scores = [d.score for d in dets]
        assert scores == sorted(scores, reverse=True)
        w, h = image.size
        for d in dets:
            x1, y1, x2, y2 = d.box
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert d.label in ("cat", "red dog")


def test_thresholds_filter_and_empty_phrases_are_refused(tiny):
    img = Image.new("RGB", (64, 64), "gray")
    everything = tiny.detect([img], ["cat"], box_threshold=0.0, text_threshold=0.0)[0]
    cut = sorted(d.score for d in everything)[len(everything) // 2]
    kept = tiny.detect([img], ["cat"], box_threshold=cut, text_threshold=0.0)[0]
    assert kept and all(d.score > cut for d in kept) and len(kept) < len(everything)
    assert tiny.detect([img], ["cat"], box_threshold=1.0)[0] == []
    with pytest.raises(ToolInputError, match="no object text"):
        tiny.detect([img], ["  ", "."])


def test_draw_outlines_each_box_in_its_label_colour():
    img = Image.new("RGB", (100, 80), (128, 128, 128))
    dets = [Detection("cat", 0.9, (10.0, 20.0, 60.0, 70.0)), Detection("dog", 0.5, (70.0, 5.0, 95.0, 40.0))]
    out = draw_detections(img, dets, width=3)
    colours = label_colours(dets)
    assert out.size == img.size and img.getpixel((10, 40)) == (128, 128, 128)
    assert out.getpixel((10, 40)) == colours["cat"]  # left edge of the cat box
    assert out.getpixel((35, 69)) == colours["cat"]  # bottom edge
    assert out.getpixel((94, 30)) == colours["dog"]
    assert out.getpixel((35, 45)) == (128, 128, 128)  # inside stays untouched
    assert format_detections(dets) == "cat 0.90 10 20 60 70\ndog 0.50 70 5 95 40"


def test_missing_weights_name_the_download_entry(tmp_path):
    from ibllm_agent.config import get_settings

    with pytest.raises(MissingWeightError, match="ibllm-agent download groundingdino_swint_ogc"):
        GroundingDinoDetector.from_weights(get_settings(weights_dir=tmp_path))


def test_missing_vocab_says_the_checkpoint_lacks_the_tokenizer(tmp_path):
    from ibllm_agent.config import get_settings
    from ibllm_agent.weights import get_spec

    for f in get_spec("groundingdino_swint_ogc").files:
        if not f.path.endswith("vocab.txt"):
            (tmp_path / f.path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / f.path).write_bytes(b"x")
    with pytest.raises(MissingWeightError, match="tokenizer vocabulary") as err:
        GroundingDinoDetector.from_weights(get_settings(weights_dir=tmp_path))
    assert "vocab.txt" in str(err.value)


def test_from_official_refuses_a_checkpoint_that_does_not_fit(tmp_path):
    # Checked against the architecture on the meta device, before the real model is built.
    ckpt = tmp_path / "bad.pth"
    torch.save({"model": {"bert.embeddings.word_embeddings.weight": torch.zeros(30522, 768)}}, ckpt)
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n")
    with pytest.raises(CheckpointError, match="does not fit"):
        GroundingDinoDetector.from_official(ckpt, vocab)


def test_read_vocab_keeps_ids_of_tokens_with_unicode_line_breaks(tmp_path):
    from ibllm_agent.tools.detection import read_vocab

    path = tmp_path / "vocab.txt"
    path.write_text("[PAD]\n\u2028\nx\u0085y\ncat\n", encoding="utf-8")
    assert read_vocab(path) == {"[PAD]": 0, "\u2028": 1, "x\u0085y": 2, "cat": 3}
