"""``ImageBindLLMConfig``: everything needed to rebuild an ``ImageBindLLM`` (saved as ``config.json``).

The language model is any LLaMA-architecture ``transformers.LlamaConfig`` (kept as its dict in ``lm``), so
LLaMA-1/2/3, Vicuna or GQA bases work by config. The rest describes the ImageBind-LLM additions and the
runtime policies (prompt template, text-only handling, context length, sampling defaults).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ibllm_agent.errors import ConfigError

PHASES = ("pretrain", "finetune", "inference")
TEXT_ONLY_POLICIES = ("zero_image", "off")
BIND_VARIANTS = ("rmsnorm", "legacy")


@dataclass
class ImageBindLLMConfig:
    """Config of the multimodal model.

    lm: ``LlamaConfig`` kwargs (``hidden_size``, ``num_hidden_layers``, ``num_attention_heads``,
        ``num_key_value_heads``, ``intermediate_size``, ``vocab_size``, ``rms_norm_eps``, rope settings).
    visual_dim: ImageBind output width (1024 for huge; the bind network's input).
    encoder: ImageBind preset name (``ibllm_agent.encoders.ImageBind.from_preset``).
    encoder_weights: weights name for ``ibllm_agent.weights.require`` (``imagebind_w3d``), or ``None`` when
        the checkpoint folder carries its own ``encoder.safetensors`` (tiny/test presets).
    bind_variant: ``rmsnorm`` (released stable 7B) or ``legacy`` (7B-beta: LayerNorm + biases).
    injected_layers: LM layer indices that receive the visual token (``None`` = all, the reference).
    lora_rank / w_bias / w_lora: PEFT structure (reference finetune: 16 / True / True).
    phase: last phase set (``pretrain`` | ``finetune`` | ``inference``).
    prompt_template: the ``ibllm_agent.prompts`` template the weights were trained with.
    text_only: ``zero_image`` injects the embedding of an all-zero image (the reference's text-only
        placeholder), ``off`` switches the visual path off for prompts without media.
    context_length: maximum prompt + generated tokens (reference 512).
    context_overflow: ``error`` (raise ``ContextLengthError``) or ``truncate`` (drop oldest prompt tokens).
    sampling: default ``Sampling`` field overrides (e.g. ``{"max_new_tokens": 128}``).
    """

    lm: dict[str, Any]
    visual_dim: int = 1024
    encoder: str = "huge_w3d"
    encoder_weights: str | None = "imagebind_w3d"
    bind_variant: str = "rmsnorm"
    bind_blocks: int = 3
    bind_hidden: int | None = None
    injected_layers: list[int] | None = None
    lora_rank: int = 16
    w_bias: bool = True
    w_lora: bool = True
    phase: str = "inference"
    prompt_template: str = "alpaca"
    text_only: str = "zero_image"
    context_length: int = 512
    context_overflow: str = "error"
    sampling: dict[str, Any] = field(default_factory=dict)
    format_version: int = 1

    def __post_init__(self) -> None:
        self.validate()

    # ---------------------------------------------------------------- derived values
    @property
    def hidden_size(self) -> int:
        return int(self.lm["hidden_size"])

    @property
    def num_layers(self) -> int:
        return int(self.lm["num_hidden_layers"])

    @property
    def num_heads(self) -> int:
        return int(self.lm["num_attention_heads"])

    @property
    def num_kv_heads(self) -> int:
        return int(self.lm.get("num_key_value_heads") or self.num_heads)

    @property
    def head_dim(self) -> int:
        return int(self.lm.get("head_dim") or self.hidden_size // self.num_heads)

    @property
    def vocab_size(self) -> int:
        return int(self.lm["vocab_size"])

    @property
    def layers(self) -> list[int]:
        """The injected layer indices, resolved (default: every layer, in order)."""
        return list(range(self.num_layers)) if self.injected_layers is None else list(self.injected_layers)

    def llama_config(self):
        """The ``transformers.LlamaConfig`` of the base LM (imports transformers lazily)."""
        from transformers import LlamaConfig

        kwargs = {k: v for k, v in self.lm.items() if k not in ("transformers_version", "architectures")}
        kwargs.setdefault("tie_word_embeddings", False)
        return LlamaConfig(**kwargs)

    # ---------------------------------------------------------------- validation / io
    def validate(self) -> None:
        for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"):
            if key not in self.lm:
                raise ConfigError(f"model config 'lm' is missing {key!r}")
        if self.num_heads % self.num_kv_heads:
            raise ConfigError(
                f"num_attention_heads {self.num_heads} is not a multiple of num_key_value_heads {self.num_kv_heads}"
            )
        if self.phase not in PHASES:
            raise ConfigError(f"unknown phase {self.phase!r}; expected one of {PHASES}")
        if self.text_only not in TEXT_ONLY_POLICIES:
            raise ConfigError(f"unknown text_only policy {self.text_only!r}; expected one of {TEXT_ONLY_POLICIES}")
        if self.bind_variant not in BIND_VARIANTS:
            raise ConfigError(f"unknown bind_variant {self.bind_variant!r}; expected one of {BIND_VARIANTS}")
        if self.context_overflow not in ("error", "truncate"):
            raise ConfigError(f"context_overflow must be 'error' or 'truncate', got {self.context_overflow!r}")
        if not isinstance(self.context_length, int) or isinstance(self.context_length, bool) or self.context_length < 2:
            raise ConfigError(f"context_length must be an int >= 2, got {self.context_length!r}")
        if not isinstance(self.lora_rank, int) or self.lora_rank < 0:
            raise ConfigError(f"lora_rank must be an int >= 0, got {self.lora_rank!r}")
        if self.injected_layers is not None:
            bad = [i for i in self.injected_layers if not 0 <= int(i) < self.num_layers]
            if bad or len(set(self.injected_layers)) != len(self.injected_layers):
                raise ConfigError(
                    f"injected_layers {self.injected_layers} must be distinct indices in [0, {self.num_layers})"
                )
        from ibllm_agent.prompts import MODEL_TEMPLATES

        if self.prompt_template not in MODEL_TEMPLATES:
            raise ConfigError(f"unknown prompt_template {self.prompt_template!r}; known: {sorted(MODEL_TEMPLATES)}")
        from ibllm_agent.types import Sampling

        known = {f.name for f in dataclasses.fields(Sampling)}
        unknown = set(self.sampling) - known
        if unknown:
            raise ConfigError(f"unknown sampling defaults {sorted(unknown)}; known: {sorted(known)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageBindLLMConfig:
        if not isinstance(data, dict) or "lm" not in data:
            raise ConfigError("model config must be a JSON object with an 'lm' entry")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ConfigError(f"unknown model config keys {sorted(unknown)}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | Path) -> ImageBindLLMConfig:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError(f"model config not found: {path}") from None
        except json.JSONDecodeError as exc:
            raise ConfigError(f"model config {path} is not valid JSON: {exc}") from None
        return cls.from_dict(data)


# -------------------------------------------------------------------- LM config builders


def ffn_hidden_size(dim: int, multiple_of: int, ffn_dim_multiplier: float | None = None) -> int:
    """Meta's FFN width: int(2·4·dim/3), optionally scaled, rounded UP to ``multiple_of`` (7B: 11008)."""
    hidden = int(2 * 4 * dim / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def lm_config_from_meta_params(params: dict[str, Any], vocab_size: int | None = None) -> dict[str, Any]:
    """Meta ``params.json`` (LLaMA-1/2/3 style) -> ``LlamaConfig`` kwargs.

    ``vocab_size`` -1 in the file (LLaMA-1) is replaced by the tokenizer's size, like the reference.
    """
    try:
        dim, n_layers, n_heads = int(params["dim"]), int(params["n_layers"]), int(params["n_heads"])
    except KeyError as exc:
        raise ConfigError(f"params.json lacks {exc.args[0]!r}") from None
    vocab = int(params.get("vocab_size", -1))
    if vocab <= 0:
        if vocab_size is None:
            raise ConfigError("params.json has vocab_size -1: pass the tokenizer's vocabulary size")
        vocab = int(vocab_size)
    rope: dict[str, Any] = {"rope_type": "default", "rope_theta": float(params.get("rope_theta", 10000.0))}
    if params.get("use_scaled_rope"):  # LLaMA-3.1 frequency scaling
        rope.update(
            rope_type="llama3", factor=float(params.get("rope_scaling_factor", 8.0)), low_freq_factor=1.0,
            high_freq_factor=4.0, original_max_position_embeddings=8192,
        )
    return {
        "hidden_size": dim,
        "num_hidden_layers": n_layers,
        "num_attention_heads": n_heads,
        "num_key_value_heads": int(params.get("n_kv_heads") or n_heads),
        "intermediate_size": ffn_hidden_size(dim, int(params.get("multiple_of", 256)), params.get("ffn_dim_multiplier")),
        "vocab_size": vocab,
        "rms_norm_eps": float(params.get("norm_eps", 1e-6)),
        "rope_parameters": rope,
        "max_position_embeddings": 4096,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }


LLAMA_7B_PARAMS = {"dim": 4096, "multiple_of": 256, "n_heads": 32, "n_layers": 32, "norm_eps": 1e-06, "vocab_size": -1}


def config_7b(**overrides: Any) -> ImageBindLLMConfig:
    """The released ImageBind-LLM 7B layout (LLaMA-1 7B, vocab 32000, huge ImageBind w/ Point-Bind)."""
    lm = lm_config_from_meta_params(LLAMA_7B_PARAMS, vocab_size=32000)
    return ImageBindLLMConfig(lm=lm, **overrides)


def config_tiny(vocab_size: int, visual_dim: int, **overrides: Any) -> ImageBindLLMConfig:
    """A 2-layer, 64-wide GQA LLaMA (4 query heads, 2 KV heads) for tests and demos."""
    lm = {
        "hidden_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 176,
        "vocab_size": int(vocab_size),
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0},
        "max_position_embeddings": 2048,
        "tie_word_embeddings": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
    }
    # 2048 tokens of context (not the reference's 512): the GPT4Tools prompt alone is ~700 tiny-tokenizer
    # tokens, and the tiny preset must run the tool protocol end to end with default settings.
    defaults: dict[str, Any] = {
        "visual_dim": visual_dim, "encoder": "tiny_w3d", "encoder_weights": None, "context_length": 2048,
    }
    defaults.update(overrides)
    return ImageBindLLMConfig(lm=lm, **defaults)
