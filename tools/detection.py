"""Open-vocabulary detection: GroundingDINO Swin-T OGC through transformers' own
``GroundingDinoForObjectDetection``, loaded from the official ``groundingdino_swint_ogc.pth``.

Why transformers and not ``groundingdino-py``: transformers 5 runs the official weights with the
same architecture (its GroundingDINO is a port of the official code) and no compatibility shim;
``groundingdino-py`` needs ``BertModel`` methods that transformers 5 removed re-added by hand, a
compiled-op fallback and a config file executed as Python. Here the official checkpoint is read with
``torch.load(weights_only=True)`` and its keys are renamed (``convert_official_state_dict``); the
official ``.py`` config is parsed with ``ast`` (never executed). The official checkpoint holds the
BERT text-encoder weights but not its tokenizer vocabulary: the ``groundingdino_swint_ogc`` weights
entry also fetches ``bert-base-uncased``'s ``vocab.txt``.

::

    det = GroundingDinoDetector.from_weights(device="cpu")        # or .tiny() in tests
    [[Detection(label="cat", score=0.62, box=(12.0, 30.5, 200.1, 180.0))]] = det.detect([img], ["cat"])
"""

from __future__ import annotations

import ast
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ibllm_agent.errors import CheckpointError, MissingWeightError, ToolInputError

if TYPE_CHECKING:
    import torch
    from PIL import Image

__all__ = [
    "WEIGHT_NAME",
    "Detection",
    "GroundingDinoDetector",
    "convert_official_state_dict",
    "draw_detections",
    "format_detections",
    "load_detector",
    "official_config",
]

WEIGHT_NAME = "groundingdino_swint_ogc"
VOCAB_FILE = "groundingdino/bert-base-uncased-vocab.txt"
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Detection:
    """One detected object: the phrase it matched, its score in [0, 1] and its box in pixels
    ``(x1, y1, x2, y2)`` of the image given to ``detect``."""

    label: str
    score: float
    box: tuple[float, float, float, float]


# -- official checkpoint → transformers ---------------------------------------------------------------
# Per-layer renames (official suffix → transformers suffix). "in_proj" entries of nn.MultiheadAttention
# and the Swin "qkv" matrices are split into query/key/value in ``_split_rules``.
_DEFORMABLE = {
    "self_attn.sampling_offsets": "deformable_layer.self_attn.sampling_offsets",
    "self_attn.attention_weights": "deformable_layer.self_attn.attention_weights",
    "self_attn.value_proj": "deformable_layer.self_attn.value_proj",
    "self_attn.output_proj": "deformable_layer.self_attn.output_proj",
    "norm1": "deformable_layer.self_attn_layer_norm",
    "linear1": "deformable_layer.fc1",
    "linear2": "deformable_layer.fc2",
    "norm2": "deformable_layer.final_layer_norm",
}
_TEXT_ENHANCER = {
    "self_attn.out_proj": "text_enhancer_layer.self_attn.out_proj",
    "linear1": "text_enhancer_layer.fc1",
    "linear2": "text_enhancer_layer.fc2",
    "norm1": "text_enhancer_layer.layer_norm_before",
    "norm2": "text_enhancer_layer.layer_norm_after",
}
_FUSION = {
    "gamma_v": "fusion_layer.vision_param",
    "gamma_l": "fusion_layer.text_param",
    "layer_norm_v": "fusion_layer.layer_norm_vision",
    "layer_norm_l": "fusion_layer.layer_norm_text",
    "attn.v_proj": "fusion_layer.attn.vision_proj",
    "attn.l_proj": "fusion_layer.attn.text_proj",
    "attn.values_v_proj": "fusion_layer.attn.values_vision_proj",
    "attn.values_l_proj": "fusion_layer.attn.values_text_proj",
    "attn.out_v_proj": "fusion_layer.attn.out_vision_proj",
    "attn.out_l_proj": "fusion_layer.attn.out_text_proj",
}
_DECODER = {
    "cross_attn.sampling_offsets": "encoder_attn.sampling_offsets",
    "cross_attn.attention_weights": "encoder_attn.attention_weights",
    "cross_attn.value_proj": "encoder_attn.value_proj",
    "cross_attn.output_proj": "encoder_attn.output_proj",
    "norm1": "encoder_attn_layer_norm",
    "ca_text.out_proj": "encoder_attn_text.out_proj",
    "catext_norm": "encoder_attn_text_layer_norm",
    "self_attn.out_proj": "self_attn.out_proj",
    "norm2": "self_attn_layer_norm",
    "linear1": "fc1",
    "linear2": "fc2",
    "norm3": "final_layer_norm",
}
_SWIN_BLOCK = {
    "norm1": "layernorm_before",
    "norm2": "layernorm_after",
    "attn.proj": "attention.o_proj",
    "attn.relative_position_bias_table": "attention.relative_position_bias.relative_position_bias_table",
    "mlp.fc1": "mlp.fc1",
    "mlp.fc2": "mlp.fc2",
}
_SWIN = "model.backbone.conv_encoder.model.swin"
# Official entries that are not weights of the transformers model: buffers it recomputes
# (Swin relative_position_index, BERT position_ids) and BERT's pooler, whose output GroundingDINO
# never uses (transformers builds the text backbone without it).
_DROPPED = re.compile(r"(\.relative_position_index|^bert\.embeddings\.position_ids|^bert\.pooler\.)")


def _rename(key: str) -> str | list[tuple[str, slice]] | None:
    """Transformers name of official ``key``; a list of (name, row slice) for fused q/k/v; None = drop."""
    if _DROPPED.search(key):
        return None
    leaf = key.rsplit(".", 1)[-1]
    if m := re.fullmatch(r"backbone\.0\.layers\.(\d+)\.blocks\.(\d+)\.(.+)", key):
        stage, block, rest = m.groups()
        prefix = f"{_SWIN}.encoder.layers.{stage}.blocks.{block}"
        if rest.startswith("attn.qkv."):
            return _qkv(f"{prefix}.attention", ("q_proj", "k_proj", "v_proj"), leaf)
        base = rest.rsplit(".", 1)[0] if rest.endswith((".weight", ".bias")) else rest
        tail = rest[len(base):]
        if base in _SWIN_BLOCK:
            return f"{prefix}.{_SWIN_BLOCK[base]}{tail}"
        return f"{prefix}.{rest}"
    if m := re.fullmatch(r"backbone\.0\.layers\.(\d+)\.downsample\.(.+)", key):
        return f"{_SWIN}.encoder.layers.{m[1]}.downsample.{m[2]}"
    if m := re.fullmatch(r"backbone\.0\.patch_embed\.proj\.(.+)", key):
        return f"{_SWIN}.embeddings.patch_embeddings.projection.{m[1]}"
    if m := re.fullmatch(r"backbone\.0\.patch_embed\.norm\.(.+)", key):
        return f"{_SWIN}.embeddings.norm.{m[1]}"
    if m := re.fullmatch(r"backbone\.0\.norm(\d+)\.(.+)", key):
        # Official norm{i} follows Swin stage i (0-based); transformers names stages from 1.
        return f"model.backbone.conv_encoder.model.hidden_states_norms.stage{int(m[1]) + 1}.{m[2]}"
    if key.startswith("bert."):
        return "model.text_backbone." + key[len("bert."):]
    if key.startswith("feat_map."):
        return "model.text_projection." + key[len("feat_map."):]
    if key.startswith("input_proj."):
        return "model.input_proj_vision." + key[len("input_proj."):]
    if key.startswith("bbox_embed."):
        return key
    fixed = {
        "transformer.level_embed": "model.level_embed",
        "transformer.tgt_embed.weight": "model.query_position_embeddings.weight",
    }
    if key in fixed:
        return fixed[key]
    for old, new in (
        ("transformer.enc_output_norm.", "model.enc_output_norm."),
        ("transformer.enc_output.", "model.enc_output."),
        ("transformer.enc_out_bbox_embed.", "model.encoder_output_bbox_embed."),
        ("transformer.decoder.norm.", "model.decoder.layer_norm."),
        ("transformer.decoder.ref_point_head.", "model.decoder.reference_points_head."),
        ("transformer.decoder.bbox_embed.", "model.decoder.bbox_embed."),
    ):
        if key.startswith(old):
            return new + key[len(old):]
    if m := re.fullmatch(r"transformer\.encoder\.(layers|text_layers|fusion_layers)\.(\d+)\.(.+)", key):
        kind, layer, rest = m.groups()
        prefix = f"model.encoder.layers.{layer}"
        if kind == "text_layers" and rest.startswith("self_attn.in_proj_"):
            return _qkv(f"{prefix}.text_enhancer_layer.self_attn", ("query", "key", "value"), leaf)
        table = {"layers": _DEFORMABLE, "text_layers": _TEXT_ENHANCER, "fusion_layers": _FUSION}[kind]
        return _from_table(prefix, rest, table, key)
    if m := re.fullmatch(r"transformer\.decoder\.layers\.(\d+)\.(.+)", key):
        layer, rest = m.groups()
        prefix = f"model.decoder.layers.{layer}"
        for attn, new in (("self_attn", "self_attn"), ("ca_text", "encoder_attn_text")):
            if rest.startswith(f"{attn}.in_proj_"):
                return _qkv(f"{prefix}.{new}", ("query", "key", "value"), leaf)
        return _from_table(prefix, rest, _DECODER, key)
    raise CheckpointError(f"GroundingDINO checkpoint: no transformers parameter for official key {key!r}")


def _from_table(prefix: str, rest: str, table: dict[str, str], key: str) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return f"{prefix}.{new}{rest[len(old):]}"
    raise CheckpointError(f"GroundingDINO checkpoint: no transformers parameter for official key {key!r}")


def _qkv(prefix: str, names: tuple[str, str, str], leaf: str) -> list[tuple[str, slice]]:
    # Fused [3C, C] weight / [3C] bias → q, k, v in that order (nn.MultiheadAttention and timm Swin).
    suffix = "weight" if leaf in ("weight", "in_proj_weight") else "bias"
    return [(f"{prefix}.{n}.{suffix}", slice(i, i + 1)) for i, n in enumerate(names)]


def convert_official_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official GroundingDINO state dict (``checkpoint["model"]``) → ``GroundingDinoForObjectDetection``
    state dict. A ``module.`` prefix (DDP) is removed; unknown keys raise ``CheckpointError``."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        new = _rename(key)
        if new is None:
            continue
        if isinstance(new, str):
            out[new] = value
            continue
        rows = value.shape[0] // 3
        for name, part in new:
            out[name] = value[part.start * rows : part.stop * rows]
    return out


# -- config ------------------------------------------------------------------------------------------
def read_official_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The literal assignments of an official GroundingDINO ``*.py`` config, read with ``ast`` (the
    file is never executed)."""
    tree = ast.parse(Path(path).read_text(encoding="utf-8"))
    values: dict[str, Any] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            try:
                values[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                continue
    return values


def official_config(values: dict[str, Any] | None = None) -> Any:
    """``GroundingDinoConfig`` of the official model (Swin-T OGC when ``values`` is None or its config).

    transformers' defaults are the Swin-T OGC architecture; the official config's values override the
    fields that map one to one. A different backbone (Swin-B) is refused rather than guessed.
    """
    from transformers import GroundingDinoConfig

    values = values or {}
    backbone = values.get("backbone", "swin_T_224_1k")
    if backbone != "swin_T_224_1k":
        raise CheckpointError(f"unsupported GroundingDINO backbone {backbone!r}: only swin_T_224_1k (Swin-T OGC)")
    mapping = {
        "num_queries": "num_queries", "enc_layers": "encoder_layers", "dec_layers": "decoder_layers",
        "dim_feedforward": "encoder_ffn_dim", "hidden_dim": "d_model", "nheads": "encoder_attention_heads",
        "num_feature_levels": "num_feature_levels", "enc_n_points": "encoder_n_points",
        "dec_n_points": "decoder_n_points", "max_text_len": "max_text_len",
        "two_stage_bbox_embed_share": "two_stage_bbox_embed_share",
        "dec_pred_bbox_embed_share": "decoder_bbox_embed_share",
    }
    kwargs = {new: values[old] for old, new in mapping.items() if old in values}
    if "dim_feedforward" in values:
        kwargs["decoder_ffn_dim"] = values["dim_feedforward"]
    if "nheads" in values:
        kwargs["decoder_attention_heads"] = values["nheads"]
    return GroundingDinoConfig(**kwargs)


def read_vocab(path: str | os.PathLike[str]) -> dict[str, int]:
    """A BERT ``vocab.txt`` (one token per line, id = line number) as a token → id dict."""
    # Split on "\n" only, as transformers' load_vocab does: str.splitlines would also split inside
    # tokens holding other line-break characters (U+0085, U+2028) and shift every later id.
    tokens = Path(path).read_text(encoding="utf-8").split("\n")
    if tokens and tokens[-1] == "":
        tokens.pop()
    return {t.rstrip("\r"): i for i, t in enumerate(tokens)}


def _bert_tokenizer(vocab: dict[str, int]) -> Any:
    from transformers import BertTokenizer

    # transformers 5 ignores vocab_file=; vocab= takes the token → id mapping.
    return BertTokenizer(vocab=vocab, do_lower_case=True)


# -- the detector ------------------------------------------------------------------------------------
class GroundingDinoDetector:
    """Text-prompted box detector (interface shared with the video object detector).

    Args:
        model: a ``GroundingDinoForObjectDetection`` (eval mode, on its device).
        tokenizer: the BERT tokenizer of its text backbone.
        image_size / max_size: resize rule of the official demo (shorter side 800, longer <= 1333).
        max_detections: most boxes kept per image, highest scores first.
    """

    def __init__(self, model: Any, tokenizer: Any, *, image_size: int = 800, max_size: int = 1333,
                 max_detections: int = 20):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.image_size = image_size
        self.max_size = max_size
        self.max_detections = max_detections

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    # -- construction ------------------------------------------------------------------------------
    @classmethod
    def from_official(cls, checkpoint: str | os.PathLike[str], vocab: str | os.PathLike[str],
                      config_file: str | os.PathLike[str] | None = None, *, device: Any = "cpu",
                      dtype: Any = None) -> GroundingDinoDetector:
        """Load ``groundingdino_swint_ogc.pth`` (+ the BERT ``vocab.txt``, optional official config)."""
        import argparse

        import torch
        from transformers import GroundingDinoForObjectDetection

        config = official_config(read_official_config(config_file) if config_file else None)
        # The release file is {"model": state_dict, ...}; an argparse.Namespace of training args may
        # sit beside it, so that (plain data) class is the one non-tensor type allowed.
        with torch.serialization.safe_globals([argparse.Namespace]):
            ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
        state = ckpt.get("model", ckpt) if isinstance(ckpt, dict) else None
        if not isinstance(state, dict):
            raise CheckpointError(f"{checkpoint}: not a GroundingDINO checkpoint (no 'model' state dict)")
        converted = convert_official_state_dict(state)
        with torch.device("meta"):  # shapes only: a misfit is reported before 170M weights are built
            expected = GroundingDinoForObjectDetection(config).state_dict()
        missing = sorted(k for k in expected if k not in converted and not k.startswith(f"{_SWIN}.layernorm."))
        bad = sorted(k for k, v in converted.items() if k not in expected or expected[k].shape != v.shape)
        if missing or bad:
            raise CheckpointError(
                f"{checkpoint} does not fit GroundingDINO Swin-T: missing {missing[:5]}, "
                f"unexpected or mis-shaped {bad[:5]}"
            )
        model = GroundingDinoForObjectDetection(config)
        model.load_state_dict(converted, strict=False)
        model.to(device=device, dtype=dtype)
        return cls(model, _bert_tokenizer(read_vocab(vocab)))

    @classmethod
    def from_weights(cls, settings: Any = None, *, device: Any = "cpu", dtype: Any = None) -> GroundingDinoDetector:
        """The official detector from the weights directory (``ibllm-agent download groundingdino_swint_ogc``)."""
        from ibllm_agent.weights import get_spec, require, weights_path

        try:
            path = require(WEIGHT_NAME, settings)
        except MissingWeightError as exc:
            if exc.path.endswith("vocab.txt"):
                raise MissingWeightError(
                    WEIGHT_NAME, exc.path,
                    "the official checkpoint holds the BERT weights but not the bert-base-uncased "
                    "tokenizer vocabulary; the download entry fetches it too",
                ) from None
            raise
        root = weights_path(WEIGHT_NAME, settings).parents[1]
        config = root / get_spec(WEIGHT_NAME).extra["config"]
        return cls.from_official(path, root / VOCAB_FILE, config, device=device, dtype=dtype)

    @classmethod
    def tiny(cls, words: Sequence[str] = (), *, seed: int = 0, num_queries: int = 10,
             image_size: int = 128) -> GroundingDinoDetector:
        """A random-init tiny GroundingDINO (tests, benchmarks) with a BERT vocabulary laid out like
        bert-base-uncased's at the special ids transformers hard-codes ([CLS] 101, [SEP] 102, "." 1012,
        "?" 1029) plus ``words`` and a few common object names. ``image_size`` >= 128 keeps the
        stride-64 feature level at least 2x2 (GroupNorm needs more than one value per channel)."""
        import torch
        from transformers import BertConfig, GroundingDinoConfig, GroundingDinoForObjectDetection, SwinConfig

        tokens = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tokens += [f"[filler{i}]" for i in range(1012 - len(tokens))] + ["."]
        tokens += [f"[filler{i}]" for i in range(1012, 1028)] + ["?"]
        extra = ["a", "the", "cat", "dog", "car", "person", "red", "square", "box", "tree", "ball", "bird"]
        for w in [*extra, *(w.lower() for w in words)]:
            if w not in tokens:
                tokens.append(w)
        vocab = {t: i for i, t in enumerate(tokens)}
        config = GroundingDinoConfig(
            backbone_config=SwinConfig(
                image_size=image_size, embed_dim=8, depths=[1, 1, 1, 1], num_heads=[1, 1, 1, 1],
                window_size=2, out_features=["stage2", "stage3", "stage4"],
            ),
            text_config=BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=1,
                                   num_attention_heads=2, intermediate_size=64),
            d_model=32, encoder_layers=1, decoder_layers=2, encoder_ffn_dim=64, decoder_ffn_dim=64,
            encoder_attention_heads=2, decoder_attention_heads=2, num_queries=num_queries,
            encoder_n_points=1, decoder_n_points=1,
        )
        torch.manual_seed(seed)
        model = GroundingDinoForObjectDetection(config)
        return cls(model, _bert_tokenizer(vocab), image_size=image_size, max_size=image_size * 2)

    # -- inference ---------------------------------------------------------------------------------
    def _caption(self, phrases: Sequence[str]) -> tuple[list[int], list[tuple[int, int]]]:
        """Token ids of "p1 . p2 ." (the official caption form) and each phrase's token span."""
        tok = self.tokenizer
        ids = [tok.cls_token_id]
        spans = []
        dot = tok.convert_tokens_to_ids(".")
        for p in phrases:
            pieces = tok.convert_tokens_to_ids(tok.tokenize(p))
            spans.append((len(ids), len(ids) + len(pieces)))
            ids += [*pieces, dot]
        ids.append(tok.sep_token_id)
        limit = self.model.config.max_text_len
        if len(ids) > limit:
            raise ToolInputError(f"the object text is too long: {len(ids)} tokens, the detector reads {limit}")
        return ids, spans

    def _pixels(self, image: Image.Image) -> torch.Tensor:
        import numpy as np
        import torch

        w, h = image.size
        scale = self.image_size / min(w, h)
        if max(w, h) * scale > self.max_size:
            scale = self.max_size / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        from PIL import Image

        arr = np.asarray(image.convert("RGB").resize(size, Image.Resampling.BILINEAR), dtype=np.float32) / 255.0
        x = torch.from_numpy(arr).permute(2, 0, 1)  # [3, H, W]
        mean = torch.tensor(_IMAGENET_MEAN).view(3, 1, 1)
        std = torch.tensor(_IMAGENET_STD).view(3, 1, 1)
        return (x - mean) / std

    def detect(self, images: list[Image.Image], phrases: list[str], box_threshold: float = 0.3,
               text_threshold: float = 0.25) -> list[list[Detection]]:
        """Boxes of ``phrases`` in each image, best first.

        A query is kept when its best phrase-token probability exceeds ``box_threshold``; its label is
        the phrase whose tokens score highest, kept when that score exceeds ``text_threshold``.
        """
        import torch

        phrases = [" ".join(str(p).lower().split()).strip(" .") for p in phrases]
        phrases = [p for p in phrases if p]
        if not phrases:
            raise ToolInputError("no object text to detect: give at least one non-empty phrase")
        if not images:
            return []
        ids, spans = self._caption(phrases)
        pixels = [self._pixels(im) for im in images]
        hmax = max(p.shape[1] for p in pixels)
        wmax = max(p.shape[2] for p in pixels)
        batch = torch.zeros(len(pixels), 3, hmax, wmax)
        mask = torch.zeros(len(pixels), hmax, wmax, dtype=torch.long)  # 1 = real pixel, 0 = padding
        for i, p in enumerate(pixels):
            batch[i, :, : p.shape[1], : p.shape[2]] = p
            mask[i, : p.shape[1], : p.shape[2]] = 1
        input_ids = torch.tensor([ids] * len(images), device=self.device)
        with torch.inference_mode():
            out = self.model(
                pixel_values=batch.to(self.device, self.dtype), pixel_mask=mask.to(self.device),
                input_ids=input_ids, attention_mask=torch.ones_like(input_ids),
                token_type_ids=torch.zeros_like(input_ids),
            )
        probs = out.logits.float().sigmoid().cpu()  # [B, Q, max_text_len]
        boxes = out.pred_boxes.float().cpu()  # [B, Q, 4] cx, cy, w, h relative to the unpadded image
        results = []
        for b, image in enumerate(images):
            per_phrase = torch.stack([probs[b, :, s:e].max(dim=-1).values for s, e in spans], dim=-1)  # [Q, P]
            score, which = per_phrase.max(dim=-1)
            keep = (score > box_threshold) & (score > text_threshold)
            order = [int(i) for i in torch.argsort(score, descending=True) if keep[i]][: self.max_detections]
            w, h = image.size
            dets = []
            for q in order:
                cx, cy, bw, bh = boxes[b, q].tolist()
                box = (max(0.0, (cx - bw / 2) * w), max(0.0, (cy - bh / 2) * h),
                       min(float(w), (cx + bw / 2) * w), min(float(h), (cy + bh / 2) * h))
                dets.append(Detection(phrases[int(which[q])], float(score[q]), box))
            results.append(dets)
        return results


def load_detector(device: str = "cpu", settings: Any = None) -> GroundingDinoDetector:
    """Model-pool loader: the official detector on ``device`` in the Settings' dtype."""
    from ibllm_agent.config import get_settings, resolve_dtype

    settings = settings or get_settings()
    import torch

    dtype = resolve_dtype(settings, torch.device(device))
    return GroundingDinoDetector.from_weights(settings, device=device, dtype=dtype)


# -- drawing and text --------------------------------------------------------------------------------
PALETTE = ((255, 0, 0), (0, 200, 0), (0, 90, 255), (255, 160, 0), (200, 0, 200), (0, 200, 200))


def label_colours(dets: Sequence[Detection]) -> dict[str, tuple[int, int, int]]:
    """One palette colour per distinct label, in order of first appearance."""
    colours: dict[str, tuple[int, int, int]] = {}
    for d in dets:
        colours.setdefault(d.label, PALETTE[len(colours) % len(PALETTE)])
    return colours


def draw_detections(image: Image.Image, dets: Sequence[Detection], width: int = 3) -> Image.Image:
    """A copy of ``image`` with each box outlined (``width`` px, one colour per label) and labelled."""
    from PIL import ImageDraw

    out = image.convert("RGB").copy()
    draw = ImageDraw.Draw(out)
    colours = label_colours(dets)
    for d in dets:
        x1, y1, x2, y2 = d.box
        colour = colours[d.label]
        draw.rectangle((x1, y1, x2, y2), outline=colour, width=width)
        text = f"{d.label} {d.score:.2f}"
        # Above the box when there is room, else just inside its top edge.
        ty = y1 - 12 if y1 >= 12 else y1 + width
        draw.text((x1 + width, ty), text, fill=colour)
    return out


def format_detections(dets: Sequence[Detection]) -> str:
    """One line per box: ``label score x1 y1 x2 y2`` (integers, pixels)."""
    return "\n".join(f"{d.label} {d.score:.2f} " + " ".join(str(round(v)) for v in d.box) for d in dets)
