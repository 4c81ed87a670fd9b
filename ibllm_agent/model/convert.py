"""Checkpoint conversion: the official release (+ a Meta or HF LLaMA) <-> our folder format.

Sources
- official adapter ``7B.pth`` (``{'model': {...}}``; keys ``image_bind_*``, ``prefix_query.weight``,
  ``llama.layers.{i}.attention.{gate, wq.bias, wo.bias, lora_w{q,k,v,o}_l{1,2}.weight}``,
  ``llama.layers.{i}.feed_forward.{w1,w2,w3}.bias``, ``...lora_w{1,2,3}_l{1,2}.weight``,
  ``...{attention,ffn}_norm.weight``, ``llama.norm.weight``). Missing groups are allowed as in the
  reference's ``strict=False`` load (``7B-pretrained.pth`` has no bias/LoRA), but a group that is present
  must be complete, and unknown keys are an error.
- Meta LLaMA folder: ``params.json``, ``consolidated.*.pth`` (model-parallel shards are merged along the
  dims Meta split them), ``tokenizer.model`` (in the folder or its parent, like Meta's download).
- HF LLaMA folder: ``config.json`` + ``*.safetensors`` (``model.layers...`` keys) + ``tokenizer.model``.

RoPE layout. Meta's q/k rows interleave each rotary pair (2j, 2j+1); HF's LLaMA rotates halves
(``rotate_half``), so HF rows are permuted per head: row (h, j, c) of Meta -> row (h, c, j) of HF, for
c ∈ {0, 1}, j < D/2. Every tensor whose ROWS are q/k output features moves with them: base ``wq``/``wk``,
the ``wq`` bias and the LoRA ``B`` factors (``lora_wq_l2``/``lora_wk_l2``). LoRA ``A`` factors, ``wv``,
``wo`` and the gates are untouched (the head order is unchanged; only dims inside a head move).
``to_official`` applies the inverse permutation, so ours -> official -> ours is exact.
"""

from __future__ import annotations

import json
import math
import pickle
import re
import shutil
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ibllm_agent.errors import CheckpointError, ConfigError, TokenizerNotFoundError
from ibllm_agent.model.checkpoint import (
    ADAPTER_FILE,
    BASE_FILE,
    CONFIG_FILE,
    TOKENIZER_FILE,
    _save_tensors,
    check_tokenizer,
    describe_mismatch,
    split_state_dict,
)
from ibllm_agent.model.config import ImageBindLLMConfig, lm_config_from_meta_params
from ibllm_agent.model.convert_keys import ADAPTER_MAP, META_MAP

# Model-parallel split dims in Meta shards (ColumnParallel = 0, RowParallel = 1).
_SHARD_DIM = {"wq": 0, "wk": 0, "wv": 0, "wo": 1, "w1": 0, "w2": 1, "w3": 0, "output": 0}


# ------------------------------------------------------------------------------------------- RoPE rows


def meta_to_hf_rows(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Permute the rows of a q/k-output tensor [n_heads·D, ...] from Meta's interleaved pairs to HF halves."""
    rest = t.shape[1:]
    d = t.shape[0] // n_heads
    return t.reshape(n_heads, d // 2, 2, *rest).transpose(1, 2).reshape(t.shape).contiguous()


def hf_to_meta_rows(t: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Inverse of ``meta_to_hf_rows``."""
    rest = t.shape[1:]
    d = t.shape[0] // n_heads
    return t.reshape(n_heads, 2, d // 2, *rest).transpose(1, 2).reshape(t.shape).contiguous()


# ------------------------------------------------------------------------------------------- reading


def read_torch(path: Path) -> dict[str, torch.Tensor]:
    """``torch.load`` with ``weights_only=True`` (memory-mapped when the file allows); unwraps
    ``{'model': ...}``."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint file not found: {path}")
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format
    except pickle.UnpicklingError:
        # torch's own message is a multi-line essay suggesting weights_only=False, which we never do.
        raise CheckpointError(
            f"cannot read checkpoint {path}: not a torch.save file of tensors (the weights-only loader refused it)"
        ) from None
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types: truncated zip, bad magic ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise CheckpointError(f"cannot read checkpoint {path}: {type(exc).__name__}: {first}") from None
    if isinstance(obj, Mapping) and "model" in obj and isinstance(obj["model"], Mapping):
        obj = obj["model"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} is not a dict of tensors (or {{'model': dict of tensors}})")
    return dict(obj)


_FROZEN_BASE = re.compile(
    r"llama\.(tok_embeddings\.weight|output\.weight|freqs_cis|layers\.\d+\.(attention\.w[qkvo]|feed_forward\.w[123])\.weight)"
)


def release_keys(adapter: Mapping[str, torch.Tensor], log: Callable[[str], None] = lambda s: None
                 ) -> dict[str, torch.Tensor]:
    """Apply the reference's ``convert_ckpt.py`` rules, so a full training checkpoint converts like a
    release: ``llma`` -> ``llama``; drop the ImageBind encoder (``image_bind.*``), ``prefix_projector_norm``
    and the frozen LLaMA weights. Only recognised frozen-weight names are dropped (the reference drops every
    ``llama.*`` key without bias/gate/lora/norm), so a misspelt key still fails loudly. A release passes
    unchanged."""
    out, dropped = {}, 0
    for k, v in adapter.items():
        if k.startswith("llma."):
            k = "llama." + k[len("llma."):]
        if k.startswith(("image_bind.", "prefix_projector_norm.")) or _FROZEN_BASE.fullmatch(k):
            dropped += 1
            continue
        out[k] = v
    if dropped:
        log(f"dropped {dropped} encoder / frozen-base tensor(s) from the training checkpoint (convert_ckpt.py rules)")
    return out


def _find_tokenizer(folder: Path, explicit: Path | None) -> Path:
    for cand in ([explicit] if explicit else []) + [folder / TOKENIZER_FILE, folder.parent / TOKENIZER_FILE]:
        if cand is not None and cand.is_file():
            return cand
    raise TokenizerNotFoundError(
        f"no tokenizer.model in {folder} or {folder.parent} (pass --tokenizer PATH to a SentencePiece model)"
    )


def read_meta_llama(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Meta folder -> (params.json dict, merged flat state dict in Meta naming)."""
    params_path = folder / "params.json"
    if not params_path.is_file():
        subs = sorted(p.parent.name for p in folder.glob("*/params.json")) if folder.is_dir() else []
        hint = f" (sub-folders with one: {subs}; pass --llama-type NAME)" if subs else ""
        raise CheckpointError(f"{folder} is not a Meta LLaMA folder: no params.json{hint}")
    try:
        params = json.loads(params_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{params_path} is not valid JSON: {exc}") from None
    shards = sorted(folder.glob("consolidated.*.pth"))
    if not shards:
        raise CheckpointError(f"{folder} has no consolidated.*.pth shard")
    states = [read_torch(p) for p in shards]
    return params, merge_meta_shards(states, params, [p.name for p in shards])


def merge_meta_shards(states: list[dict[str, torch.Tensor]], params: Mapping[str, Any], names: list[str]
                      ) -> dict[str, torch.Tensor]:
    """Merge model-parallel shards: column-parallel weights along dim 0, row-parallel along dim 1,
    replicated tensors (norms, rope.freqs) from shard 0. The embedding is split along the model dim
    (LLaMA-1/2) or the vocab dim (LLaMA-3): told apart by the shard's width."""
    if len(states) == 1:
        return states[0]
    keys = list(states[0])
    for s, name in zip(states[1:], names[1:]):
        if set(s) != set(keys):
            diff = sorted(set(s) ^ set(keys))
            raise CheckpointError(f"shard {name} has different keys from {names[0]}: {diff[:5]}")
    dim = int(params["dim"])
    merged = {}
    for k in keys:
        parts = [s[k] for s in states]
        leaf = k.split(".")[-2] if k.endswith(".weight") else k
        if k == "tok_embeddings.weight":
            cat = 1 if parts[0].shape[1] != dim else 0
            merged[k] = torch.cat(parts, dim=cat)
        elif leaf in _SHARD_DIM and parts[0].dim() == 2:
            merged[k] = torch.cat(parts, dim=_SHARD_DIM[leaf])
        else:
            merged[k] = parts[0]  # replicated
    return merged


def read_hf_llama(folder: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """HF folder -> (LlamaConfig dict, state dict with HF keys ``model.*`` / ``lm_head.weight``)."""
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise CheckpointError(f"{folder} is not a HF model folder: no config.json")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{cfg_path} is not valid JSON: {exc}") from None
    if isinstance(cfg, dict) and "lm" in cfg and "hidden_size" not in cfg:
        raise CheckpointError(
            f"{folder} is an ImageBind-LLM checkpoint (ours), not a HF base: load it with "
            "ImageBindLLM.from_pretrained or convert it with --to-official"
        )
    if not isinstance(cfg, dict) or "hidden_size" not in cfg:
        raise CheckpointError(f"{cfg_path} is not a transformers LLaMA config (no hidden_size)")
    mt = cfg.get("model_type", "llama")
    if mt != "llama":
        raise CheckpointError(f"{folder}: model_type {mt!r} is not a LLaMA-architecture model")
    files = sorted(folder.glob("*.safetensors"))
    state: dict[str, torch.Tensor] = {}
    if files:
        from ibllm_agent.model.checkpoint import read_safetensors

        for f in files:
            state.update(read_safetensors(f))
    else:
        bins = sorted(folder.glob("pytorch_model*.bin"))
        if not bins:
            raise CheckpointError(f"{folder} has no *.safetensors or pytorch_model*.bin weights")
        for f in bins:
            state.update(read_torch(f))
    state = {k: v for k, v in state.items() if not k.endswith("rotary_emb.inv_freq")}
    drop = {"architectures", "transformers_version", "torch_dtype", "dtype", "model_type", "_name_or_path"}
    lm = {k: v for k, v in cfg.items() if k not in drop}
    return lm, state


# ------------------------------------------------------------------------------------------- key maps


def meta_base_to_ours(meta: Mapping[str, torch.Tensor], n_heads: int, n_kv_heads: int) -> dict[str, torch.Tensor]:
    """Meta LLaMA keys -> our ``lm.*`` keys (q/k rows permuted). ``rope.freqs`` is dropped (recomputed)."""
    out: dict[str, torch.Tensor] = {}
    unknown = []
    for k, v in meta.items():
        if k == "rope.freqs":
            continue
        try:
            ours, rows = META_MAP.to_ours(k)
        except CheckpointError:
            unknown.append(k)
            continue
        out[ours] = v if rows is None else meta_to_hf_rows(v, n_heads if rows == "q" else n_kv_heads)
    if unknown:
        raise CheckpointError(f"unknown key(s) in the Meta LLaMA checkpoint: {unknown[:5]}")
    return out


def hf_base_to_ours(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {f"lm.{k}": v for k, v in state.items()}


def official_key_to_ours(key: str) -> tuple[str, str | None]:
    """Official adapter key -> (our key, rope rows kind 'q'/'k'/None). ``CheckpointError`` for unknown keys."""
    return ADAPTER_MAP.to_ours(key)


def ours_key_to_official(key: str) -> tuple[str, str | None]:
    """Inverse of ``official_key_to_ours`` for adapter keys (same table, see ``convert_keys``)."""
    return ADAPTER_MAP.to_official(key)


def ours_base_to_meta(key: str) -> tuple[str, str | None]:
    """Our base (or norm) key -> (Meta LLaMA key, rope rows kind)."""
    return META_MAP.to_official(key)


def official_adapter_to_ours(adapter: Mapping[str, torch.Tensor], n_heads: int, n_kv_heads: int
                             ) -> dict[str, torch.Tensor]:
    out = {}
    for k, v in adapter.items():
        ours, rows = official_key_to_ours(k)
        if rows is not None:
            v = meta_to_hf_rows(v, n_heads if rows == "q" else n_kv_heads)
        out[ours] = v
    return out


# ------------------------------------------------------------------------------------------- structure


def infer_adapter_structure(adapter: Mapping[str, torch.Tensor], num_layers: int) -> dict[str, Any]:
    """Config fields implied by an official adapter dict (bind sizes/variant, injected layers, PEFT)."""
    need = ["image_bind_proj.weight", "prefix_query.weight"]
    missing = [k for k in need if k not in adapter]
    if missing:
        raise CheckpointError(f"official adapter lacks required key(s) {missing}: not an ImageBind-LLM checkpoint")
    blocks = sorted({int(m[1]) for k in adapter if (m := re.fullmatch(r"image_bind_norm_(\d+)\.weight", k))})
    if blocks != list(range(1, len(blocks) + 1)) or not blocks:
        raise CheckpointError(f"official adapter has bind-network norms {blocks}; expected 1..N")
    n_inj = adapter["prefix_query.weight"].shape[0]
    if n_inj > num_layers:
        raise CheckpointError(f"prefix_query has {n_inj} rows but the LLaMA has only {num_layers} layers")
    lora = [v for k, v in adapter.items() if ".lora_" in k and k.endswith("_l1.weight")]
    return {
        "visual_dim": int(adapter["image_bind_proj.weight"].shape[1]),
        "bind_variant": "legacy" if "image_bind_norm_1.bias" in adapter else "rmsnorm",
        "bind_blocks": len(blocks),
        "bind_hidden": int(adapter["image_bind_f1_1.weight"].shape[0]) if "image_bind_f1_1.weight" in adapter else None,
        # The reference injects into the LAST query_layer layers (layers[-query_layer:]).
        "injected_layers": None if n_inj == num_layers else list(range(num_layers - n_inj, num_layers)),
        "w_bias": any(k.endswith(".bias") and k.startswith("llama.") for k in adapter),
        "w_lora": bool(lora),
        "lora_rank": int(lora[0].shape[0]) if lora else 16,
    }


def _cast(state: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return state
    return {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in state.items()}


def parse_dtype(name: str | None) -> torch.dtype | None:
    """``keep``/None -> None (keep each tensor's dtype); fp32/fp16/bf16 (and long names) -> dtype."""
    if name in (None, "keep", "auto"):
        return None
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16, "float16": torch.float16,
             "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise ConfigError(f"dtype {name!r} is not one of keep, fp32, fp16, bf16")
    return table[name]


# ------------------------------------------------------------------------------------------- to ours


def convert_to_ours(
    out: str | Path,
    *,
    official: str | Path | None = None,
    llama_dir: str | Path | None = None,
    hf_base: str | Path | None = None,
    tokenizer: str | Path | None = None,
    dtype: str | torch.dtype | None = None,
    encoder: str = "huge_w3d",
    encoder_weights: str | None = "imagebind_w3d",
    prompt_template: str = "alpaca",
    seed: int = 0,
    log: Callable[[str], None] = lambda s: None,
) -> Path:
    """Write our checkpoint folder from a base LLaMA (Meta ``llama_dir`` or HF ``hf_base``) and, optionally,
    the official adapter ``official``. Without an adapter the ImageBind-LLM parts are freshly initialised
    (bind network PyTorch default, ``prefix_query`` N(0,1), gates zero; ``seed``) for pre-training."""
    if (llama_dir is None) == (hf_base is None):
        raise ConfigError("give exactly one base: llama_dir (Meta layout) or hf_base (HF layout)")
    dt = dtype if isinstance(dtype, torch.dtype) or dtype is None else parse_dtype(dtype)
    out = Path(out)

    from ibllm_agent.model.tokenizer import SentencePieceTokenizer

    if llama_dir is not None:
        folder = Path(llama_dir)
        log(f"reading Meta LLaMA from {folder}")
        params, meta = read_meta_llama(folder)
        tok_path = _find_tokenizer(folder, Path(tokenizer) if tokenizer else None)
        tok = SentencePieceTokenizer(tok_path)
        # vocab_size -1 (LLaMA-1): the embedding's rows decide; the tokenizer is then checked against it.
        emb = meta.get("tok_embeddings.weight")
        lm = lm_config_from_meta_params(params, vocab_size=tok.vocab_size if emb is None else emb.shape[0])
        n_kv = int(lm["num_key_value_heads"])
        state = meta_base_to_ours(meta, lm["num_attention_heads"], n_kv)
    else:
        folder = Path(hf_base)
        log(f"reading HF LLaMA from {folder}")
        lm, hf = read_hf_llama(folder)
        tok_path = _find_tokenizer(folder, Path(tokenizer) if tokenizer else None)
        tok = SentencePieceTokenizer(tok_path)
        state = hf_base_to_ours(hf)

    extra: dict[str, Any] = {}
    if official is not None:
        log(f"reading official adapter {official}")
        adapter_raw = release_keys(read_torch(Path(official)), log)
        extra = infer_adapter_structure(adapter_raw, int(lm["num_hidden_layers"]))
        if extra["injected_layers"] is not None:
            # The reference gives EVERY layer a gate but uses only those of the last query_layer layers;
            # the others never touch the output, and our model has no gate there.
            injected = set(extra["injected_layers"])
            unused = [k for k in adapter_raw if (g := re.fullmatch(r"llama\.layers\.(\d+)\.attention\.gate", k))
                      and int(g[1]) not in injected]
            for k in unused:
                del adapter_raw[k]
            if unused:
                log(f"dropped {len(unused)} unused gate(s) of layers without the visual query")
        heads = int(lm["num_attention_heads"])
        n_kv = int(lm.get("num_key_value_heads") or heads)
        adapter = official_adapter_to_ours(adapter_raw, heads, n_kv)
        state.update(adapter)  # the adapter's norms replace the base's (the reference loads it second)
    else:
        from ibllm_agent.encoders.config import preset as encoder_preset

        # A new bind network takes the chosen encoder's embeddings (1024-d for ImageBind-huge).
        extra = {"w_bias": False, "w_lora": False, "phase": "pretrain",
                 "visual_dim": int(encoder_preset(encoder).out_dim)}

    config = ImageBindLLMConfig(lm=lm, encoder=encoder, encoder_weights=encoder_weights,
                                prompt_template=prompt_template, **extra)
    check_tokenizer(tok, config.vocab_size, str(tok_path))

    from ibllm_agent.model.llm import ImageBindLLM

    skeleton = ImageBindLLM(config, device="meta")
    expected = skeleton.state_dict()
    if config.lm.get("tie_word_embeddings"):
        expected.pop("lm.lm_head.weight", None)
        state.pop("lm.lm_head.weight", None)
    if official is None:
        fresh = _fresh_adapter(config, seed)
        state.update({k: v for k, v in fresh.items() if k not in state})
    check_groups(expected, state)
    problem = describe_mismatch(expected, state)
    if problem:
        raise CheckpointError(f"converted weights do not fit the model: {problem}")
    state = _cast({k: state[k] for k in expected}, dt)
    out.mkdir(parents=True, exist_ok=True)
    base, adapter_part = split_state_dict(state)
    config.save(out / CONFIG_FILE)
    log(f"writing {out / BASE_FILE} ({len(base)} tensors)")
    _save_tensors(base, out / BASE_FILE)
    log(f"writing {out / ADAPTER_FILE} ({len(adapter_part)} tensors)")
    _save_tensors(adapter_part, out / ADAPTER_FILE)
    shutil.copyfile(tok_path, out / TOKENIZER_FILE)
    return out


def check_groups(expected: Mapping[str, Any], state: Mapping[str, Any]) -> None:
    """Norms may come from the base alone, but every other expected key must be present: a partially
    present group (e.g. LoRA on some layers only) means a truncated or foreign checkpoint."""
    missing = [k for k in expected if k not in state]
    if missing:
        raise CheckpointError(f"{len(missing)} weight(s) missing from the sources, first: {missing[:5]}")


def _fresh_adapter(config: ImageBindLLMConfig, seed: int) -> dict[str, torch.Tensor]:
    """Newly initialised bind network, prefix_query and (zero) gates, for a base without an adapter."""
    from ibllm_agent.model.bind import BindNetwork

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        bind = BindNetwork(config.visual_dim, config.hidden_size, config.bind_hidden, config.bind_blocks,
                           config.bind_variant)
        prefix = torch.randn(len(config.layers), config.hidden_size)
    out = {f"bind.{k}": v for k, v in bind.state_dict().items()}
    out["prefix_query.weight"] = prefix
    for i in config.layers:
        out[f"lm.model.layers.{i}.self_attn.gate"] = torch.zeros(1, config.num_heads, 1, 1)
    return out


# ------------------------------------------------------------------------------------------- to official


def meta_params_from_lm(lm: Mapping[str, Any]) -> dict[str, Any]:
    """Our LlamaConfig dict -> a Meta ``params.json`` that rebuilds the same shapes."""
    dim, inter = int(lm["hidden_size"]), int(lm["intermediate_size"])
    params: dict[str, Any] = {"dim": dim, "n_layers": int(lm["num_hidden_layers"]),
                              "n_heads": int(lm["num_attention_heads"])}
    kv = int(lm.get("num_key_value_heads") or params["n_heads"])
    if kv != params["n_heads"]:
        params["n_kv_heads"] = kv
    base = int(2 * 4 * dim / 3)
    for multiple_of in (256, 128, 64, 32, 16, 8, 4, 2, 1):
        if inter % multiple_of == 0 and math.ceil(base / multiple_of) * multiple_of == inter:
            params["multiple_of"] = multiple_of
            break
    else:  # widths Meta's rule cannot reach without a multiplier
        params["multiple_of"] = 1
        params["ffn_dim_multiplier"] = (inter + 0.5) / base
    params["norm_eps"] = float(lm.get("rms_norm_eps", 1e-6))
    params["vocab_size"] = int(lm["vocab_size"])
    rope = lm.get("rope_parameters") or lm.get("rope_scaling") or {}  # transformers 5 / 4 spelling
    theta = rope.get("rope_theta", lm.get("rope_theta", 10000.0))
    if float(theta) != 10000.0:
        params["rope_theta"] = float(theta)
    if rope.get("rope_type", rope.get("type")) == "llama3":  # LLaMA-3.1 frequency scaling
        params["use_scaled_rope"] = True
        if float(rope.get("factor", 8.0)) != 8.0:
            params["rope_scaling_factor"] = float(rope["factor"])
    return params


def convert_to_official(src: str | Path, out: str | Path, *, dtype: str | torch.dtype | None = None,
                        log: Callable[[str], None] = lambda s: None) -> Path:
    """Our folder -> ``<out>/imagebind_llm.pth`` (``{'model': adapter}`` in the official layout) and a Meta
    LLaMA folder ``<out>/llama/`` (``params.json``, ``consolidated.00.pth``, ``tokenizer.model``)."""
    from ibllm_agent.model.checkpoint import read_safetensors

    src, out = Path(src), Path(out)
    if not (src / CONFIG_FILE).is_file():
        raise CheckpointError(f"{src} is not an ImageBind-LLM checkpoint: no {CONFIG_FILE}")
    config = ImageBindLLMConfig.load(src / CONFIG_FILE)
    if config.injected_layers is not None and config.injected_layers != list(
            range(config.num_layers - len(config.layers), config.num_layers)):
        raise CheckpointError(
            f"injected_layers {config.injected_layers} cannot be expressed in the official layout (it injects "
            "into the last N layers only)"
        )
    dt = dtype if isinstance(dtype, torch.dtype) or dtype is None else parse_dtype(dtype)
    base = read_safetensors(src / BASE_FILE)
    adapter = read_safetensors(src / ADAPTER_FILE)
    heads, kv = config.num_heads, config.num_kv_heads

    def rows(t: torch.Tensor, kind: str | None) -> torch.Tensor:
        return t if kind is None else hf_to_meta_rows(t, heads if kind == "q" else kv)

    official = {}
    for k, v in adapter.items():
        name, kind = ours_key_to_official(k)
        official[name] = rows(v, kind)
    meta = {}
    for k, v in {**base, **{k: v for k, v in adapter.items() if "norm" in k and k.startswith("lm.")}}.items():
        name, kind = ours_base_to_meta(k)
        meta[name] = rows(v, kind)
    if "output.weight" not in meta and "tok_embeddings.weight" in meta:
        meta["output.weight"] = meta["tok_embeddings.weight"]  # tied embeddings
    out.mkdir(parents=True, exist_ok=True)
    llama = out / "llama"
    llama.mkdir(exist_ok=True)
    (llama / "params.json").write_text(json.dumps(meta_params_from_lm(config.lm)) + "\n")
    log(f"writing {llama / 'consolidated.00.pth'} ({len(meta)} tensors)")
    torch.save(_cast(meta, dt), llama / "consolidated.00.pth")
    if (src / TOKENIZER_FILE).is_file():
        shutil.copyfile(src / TOKENIZER_FILE, llama / TOKENIZER_FILE)
    log(f"writing {out / 'imagebind_llm.pth'} ({len(official)} tensors)")
    torch.save({"model": _cast(official, dt)}, out / "imagebind_llm.pth")
    return out


def manifest_keys(manifest: Mapping[str, Any]) -> Iterable[tuple[str, tuple[int, ...]]]:
    """(key, shape) pairs of a shared/manifests JSON object (skips ``_about``)."""
    for k, v in manifest.items():
        if not k.startswith("_"):
            yield k, tuple(v["shape"])
