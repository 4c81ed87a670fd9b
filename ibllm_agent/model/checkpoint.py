"""Our checkpoint format: one folder, safetensors only.

    config.json            ImageBindLLMConfig (LM config, bind variant, injected layers, PEFT, policies)
    base.safetensors       frozen LM weights: embeddings, lm_head, q/k/v/o/gate/up/down ``.weight``
    adapter.safetensors    what ImageBind-LLM adds or trains: bind.*, prefix_query, gates, PEFT biases, LoRA,
                           all RMSNorm weights (small: ~650M params for 7B vs 6.7B in base)
    tokenizer.model        SentencePiece model (LLaMA's for real checkpoints)
    encoder.safetensors    only when ``config.encoder_weights`` is None (tiny/test encoders); the official
                           ImageBind is referenced by weights name and loaded lazily from the weights dir

Keys are the model's own state-dict names (``lm.model.layers.0.self_attn.q_proj.lora_a.weight``...), so
a load is a strict key-for-key match; any difference raises ``CheckpointError`` naming the first keys.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ibllm_agent.errors import CheckpointError, TokenizerError
from ibllm_agent.model.config import ImageBindLLMConfig

if TYPE_CHECKING:
    from ibllm_agent.model.llm import ImageBindLLM

CONFIG_FILE = "config.json"
BASE_FILE = "base.safetensors"
ADAPTER_FILE = "adapter.safetensors"
TOKENIZER_FILE = "tokenizer.model"
ENCODER_FILE = "encoder.safetensors"

# Allowed difference between embedding rows and tokenizer pieces (models pad their vocab to a multiple
# of 64/128; the engine never samples ids past the tokenizer).
MAX_VOCAB_PADDING = 256


def is_adapter_key(name: str) -> bool:
    """True for parameters ImageBind-LLM adds or fine-tunes (saved in ``adapter.safetensors``)."""
    if name.startswith(("bind.", "prefix_query.")):
        return True
    return name.startswith("lm.") and (
        name.endswith((".gate", ".bias")) or ".lora_a." in name or ".lora_b." in name or "norm" in name
    )


def split_state_dict(state: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """-> (base, adapter) by ``is_adapter_key``."""
    base, adapter = {}, {}
    for k, v in state.items():
        (adapter if is_adapter_key(k) else base)[k] = v
    return base, adapter


def describe_mismatch(expected: Mapping[str, Any], got: Mapping[str, Any], limit: int = 5) -> str:
    """'' when keys and shapes agree; else a message naming the first missing / unexpected / mis-shaped keys."""
    exp_keys, got_keys = list(expected), set(got)
    missing = [k for k in exp_keys if k not in got_keys]
    unexpected = [k for k in got if k not in expected]
    shapes = [
        f"{k}: checkpoint {tuple(got[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in exp_keys
        if k in got_keys and tuple(got[k].shape) != tuple(expected[k].shape)
    ]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), first: {missing[:limit]}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first: {unexpected[:limit]}")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es), first: {shapes[:limit]}")
    return "; ".join(parts)


def _save_tensors(tensors: Mapping[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(path),
              metadata={"format": "pt", "producer": "ibllm-agent"})


def save_pretrained(model: ImageBindLLM, path: str | Path, encoder: Any = None) -> Path:
    """Write the checkpoint folder (see module docstring). Returns the folder.

    ``encoder``: the ImageBind to store as ``encoder.safetensors`` when the config names no official
    encoder file (default: the model's own, see ``load_encoder``)."""
    out = Path(path)
    state = model.state_dict()
    if any(t.is_meta for t in state.values()):
        raise CheckpointError("cannot save a model whose weights are on the meta device (no values)")
    if model.config.lm.get("tie_word_embeddings"):
        state.pop("lm.lm_head.weight", None)  # shared with embed_tokens; re-tied on load
    out.mkdir(parents=True, exist_ok=True)
    base, adapter = split_state_dict(state)
    model.config.save(out / CONFIG_FILE)
    _save_tensors(base, out / BASE_FILE)
    _save_tensors(adapter, out / ADAPTER_FILE)
    tok_path = getattr(model.tokenizer, "path", None)
    if tok_path is not None and Path(tok_path).resolve() != (out / TOKENIZER_FILE).resolve():
        shutil.copyfile(tok_path, out / TOKENIZER_FILE)
    if model.config.encoder_weights is None:
        if encoder is None:
            encoder = load_encoder(model.config, model.checkpoint_dir, model.encoder_seed)
        _save_tensors(encoder.state_dict(), out / ENCODER_FILE)
    return out


def read_safetensors(path: Path, device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"checkpoint file missing: {path}")
    try:
        return load_file(str(path), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint file {path} is not a readable safetensors file: {exc}") from None


def _default_device_dtype(device, dtype) -> tuple[torch.device, torch.dtype]:
    """None -> the user's settings (``IBLLM_DEVICE`` / ``IBLLM_DTYPE``, default auto: cuda + bf16 when
    available, else cpu + fp32)."""
    from ibllm_agent.config import resolve_device, resolve_dtype

    dev = resolve_device(None if device is None else str(device))
    if isinstance(dtype, torch.dtype):
        return dev, dtype
    return dev, resolve_dtype(None if dtype is None else str(dtype), device=dev)


def load_pretrained(cls, path: str | Path, *, device=None, dtype=None) -> ImageBindLLM:
    """Build ``cls`` on the meta device and take the folder's tensors (no random init, no second copy)."""
    folder = Path(path)
    if not folder.is_dir():
        raise CheckpointError(f"checkpoint folder not found: {folder}")
    if not (folder / CONFIG_FILE).is_file():
        raise CheckpointError(f"{folder} is not an ImageBind-LLM checkpoint: no {CONFIG_FILE}")
    config = ImageBindLLMConfig.load(folder / CONFIG_FILE)
    dev, dt = _default_device_dtype(device, dtype)
    tokenizer = load_tokenizer(folder, config)
    state = read_safetensors(folder / BASE_FILE, dev)
    adapter = read_safetensors(folder / ADAPTER_FILE, dev)
    overlap = sorted(set(state) & set(adapter))
    if overlap:
        raise CheckpointError(f"{folder}: keys present in both {BASE_FILE} and {ADAPTER_FILE}: {overlap[:5]}")
    state.update(adapter)
    model = cls(config, tokenizer=tokenizer, device="meta")
    load_state(model, state, source=str(folder))
    model.to(device=dev, dtype=dt)
    model.checkpoint_dir = folder
    model.set_phase(config.phase)
    return model


def load_state(model: ImageBindLLM, state: dict[str, torch.Tensor], *, source: str) -> None:
    """Strictly assign ``state`` to a meta-built model, then rebuild the non-persistent buffers."""
    expected = model.state_dict()
    tied = bool(model.config.lm.get("tie_word_embeddings"))
    if tied:
        expected.pop("lm.lm_head.weight", None)
        state.pop("lm.lm_head.weight", None)
    problem = describe_mismatch(expected, state)
    if problem:
        raise CheckpointError(f"checkpoint {source} does not fit the model config: {problem}")
    model.load_state_dict(state, strict=not tied, assign=True)
    if tied:
        model.lm.lm_head.weight = model.lm.model.embed_tokens.weight
    rebuild_buffers(model, next(iter(state.values())).device)


def rebuild_buffers(model: ImageBindLLM, device: torch.device) -> None:
    """Recompute non-persistent buffers (RoPE inverse frequencies) that a meta build left empty."""
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    with torch.device(device):
        model.lm.model.rotary_emb = LlamaRotaryEmbedding(config=model.lm.config)
    left = [n for n, b in model.named_buffers() if b.is_meta]
    if left:
        raise CheckpointError(f"buffers left without values after loading: {left[:5]}")


def load_tokenizer(folder: Path, config: ImageBindLLMConfig):
    """The folder's ``tokenizer.model`` (None when absent); its size must fit the embedding rows."""
    path = folder / TOKENIZER_FILE
    if not path.is_file():
        return None
    from ibllm_agent.model.tokenizer import SentencePieceTokenizer

    tok = SentencePieceTokenizer(path)
    check_tokenizer(tok, config.vocab_size, str(path))
    return tok


def check_tokenizer(tokenizer, rows: int, source: str) -> None:
    n = int(tokenizer.vocab_size)
    if n > rows or rows - n > MAX_VOCAB_PADDING:
        raise TokenizerError(
            f"tokenizer {source} has {n} pieces but the model's embedding has {rows} rows: wrong tokenizer for "
            "this checkpoint"
        )


def load_encoder(config: ImageBindLLMConfig, checkpoint_dir: Path | None, seed: int = 0):
    """The ImageBind encoder for ``config`` (frozen, eval mode, on CPU in float32; the media stage
    moves it).

    ``encoder_weights`` set: the official file from the weights dir (``MissingWeightError`` if absent).
    Otherwise ``<checkpoint_dir>/encoder.safetensors`` when present, else a deterministic random init of
    the preset (tiny models built by ``from_preset``)."""
    from ibllm_agent.encoders import ImageBind

    if config.encoder_weights is not None:
        from ibllm_agent.weights import require

        return ImageBind.from_official(require(config.encoder_weights), preset=config.encoder)
    path = None if checkpoint_dir is None else Path(checkpoint_dir) / ENCODER_FILE
    if path is not None and path.is_file():
        enc = ImageBind.from_preset(config.encoder)  # small presets only (official ones use encoder_weights)
        state = read_safetensors(path)
        problem = describe_mismatch(enc.state_dict(), state)
        if problem:
            raise CheckpointError(f"encoder file {path} does not fit ImageBind preset {config.encoder!r}: {problem}")
        enc.load_state_dict(state, strict=True)
        enc.requires_grad_(False)
        return enc.eval()
    if config.encoder_weights is None and checkpoint_dir is not None:
        raise CheckpointError(f"{checkpoint_dir} has no {ENCODER_FILE} and the config names no official encoder")
    enc = ImageBind.from_preset(config.encoder, seed=seed)
    enc.requires_grad_(False)
    return enc.eval()


__all__ = [
    "check_tokenizer",
    "describe_mismatch",
    "is_adapter_key",
    "load_encoder",
    "load_pretrained",
    "load_state",
    "save_pretrained",
    "split_state_dict",
]
