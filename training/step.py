"""The model side of a training step: building the model for a stage, loading adapters, the one
features -> logits function, and FSDP sharding (with the visual injection computed inside each layer).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ibllm_agent.errors import CheckpointError, ConfigError
from ibllm_agent.training.configs import TrainConfig


def forward_logits(model: nn.Module, input_ids: torch.Tensor, features: torch.Tensor, active: torch.Tensor
                   ) -> torch.Tensor:
    """Token ids [B, T] + visual features [B, D] (+ active [B] bool) -> logits [B, T, V].

    The one place training calls the model (becomes ``model(input_ids, features=, active=)``)."""
    visual = model.bind(features.to(model.bind.proj.weight.dtype))  # [B, 1, H]
    # Always inject (rows masked by ``active``) so every trainable takes part in each step (DDP).
    injection = model.injection(visual, None if bool(active.all()) else active)
    logits, _ = model(input_ids, visual=injection)
    return logits


class _LazyDeltas(dict):
    """Per-layer δ computed when the layer's ``o_proj`` asks for it, i.e. INSIDE that layer's forward. Under
    FSDP a layer's weights (``v_proj`` for δ) are only gathered while the layer runs, so the eager
    ``model.injection`` (all δ up front) cannot be used there. Same values as ``model.injection``."""

    def __init__(self, model: Any, visual: torch.Tensor, active: torch.Tensor):
        super().__init__()
        self.model, self.visual, self.active = model, visual, active
        self.rows = {layer: row for row, layer in enumerate(model.config.layers)}

    def get(self, layer_idx: int, default: Any = None) -> Any:
        from ibllm_agent.model.injection import compute_delta

        row = self.rows.get(layer_idx)
        if row is None:
            return default
        c, attn = self.model.config, self.model.lm.model.layers[layer_idx].self_attn
        d = compute_delta(self.visual, self.model.prefix_query.weight[row], attn.v_proj.weight, attn.gate,
                          c.num_heads, c.num_kv_heads)
        return d * self.active.to(d.device, d.dtype).view(-1, 1, 1)


def forward_logits_sharded(model: nn.Module, input_ids: torch.Tensor, features: torch.Tensor,
                           active: torch.Tensor) -> torch.Tensor:
    """``forward_logits`` for FSDP-sharded layers (δ computed inside each layer, see ``_LazyDeltas``)."""
    from ibllm_agent.model.injection import VisualInjection

    visual = model.bind(features.to(model.bind.proj.weight.dtype))  # [B, 1, H]
    logits, _ = model(input_ids, visual=VisualInjection(_LazyDeltas(model, visual, active), visual))
    return logits


class _Step(nn.Module):
    """Wraps the model so DDP sees one forward per micro-batch."""

    def __init__(self, model: nn.Module, sharded: bool = False):
        super().__init__()
        self.model = model
        self.fn = forward_logits_sharded if sharded else forward_logits

    def forward(self, input_ids, features, active):
        return self.fn(self.model, input_ids, features, active)


def shard_fsdp(step: _Step, model: Any, amp: torch.dtype | None) -> nn.Module:
    """FSDP2 (``fully_shard``): every decoder layer is its own unit (gathered only while it runs), the rest
    (embeddings, head, bind network, prefix) the root unit. Frozen and trainable parameters share units;
    with autocast the gathered weights are cast to the autocast dtype, gradients are reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    mp = MixedPrecisionPolicy(param_dtype=amp, reduce_dtype=torch.float32) if amp is not None else MixedPrecisionPolicy()
    for layer in model.lm.model.layers:
        fully_shard(layer, mp_policy=mp)
    fully_shard(step, mp_policy=mp)
    return step


def build_model(cfg: TrainConfig, device: torch.device, frozen_dtype: torch.dtype | None) -> Any:
    """Preset or folder -> model on ``device`` with the stage's trainables (fp32) and frozen weights in
    ``frozen_dtype`` (fp32 when None)."""
    from ibllm_agent.model import ImageBindLLM
    from ibllm_agent.model.llm import PRESETS

    if cfg.model in PRESETS:
        model = ImageBindLLM.from_preset(cfg.model, seed=cfg.model_seed, device=device)
    else:
        if not Path(cfg.model).is_dir():
            raise ConfigError(f"model {cfg.model!r} is neither a preset ({', '.join(PRESETS)}) nor a checkpoint folder")
        model = ImageBindLLM.from_pretrained(cfg.model, device=device, dtype=torch.float32)
    if cfg.init_adapter:
        load_adapter(model, cfg.init_adapter)
    model.set_phase(cfg.phase)
    for p in model.parameters():
        p.data = p.data.float() if p.requires_grad or frozen_dtype is None else p.data.to(frozen_dtype)
    return model


def load_adapter(model: Any, path: str) -> None:
    """Official release ``.pth`` or our ``adapter.safetensors`` onto ``model``; refused (before any compute)
    when a key is unknown to the model or a shape differs."""
    from ibllm_agent.model.checkpoint import read_safetensors
    from ibllm_agent.model.convert import official_adapter_to_ours, read_torch, release_keys

    p = Path(path)
    if p.suffix == ".safetensors":
        state = read_safetensors(p)
    else:
        state = official_adapter_to_ours(release_keys(read_torch(p)), model.config.num_heads, model.config.num_kv_heads)
    if any(".lora_" in k for k in state) and not model.config.w_lora:
        model.set_phase("finetune")  # add the LoRA/bias structure the adapter fills
    own = model.state_dict()
    bad = [k for k in state if k not in own]
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}" for k, v in state.items()
              if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if bad or shapes:
        raise CheckpointError(f"adapter {p} does not fit the model: "
                              + "; ".join(filter(None, [bad and f"unknown keys {bad[:5]}", shapes and f"shapes {shapes[:3]}"])))
    with torch.no_grad():
        for k, v in state.items():
            own[k].copy_(v)
