"""Gated visual-token injection (reference §3.3) into a HF LLaMA.

For each injected layer l (row r of ``prefix_query``), with v = bind output [B, 1, H]:

    a_l  = v + prefix_query[r]                                  [B, 1, H]
    V_a  = a_l W_vᵀ        (BASE v_proj weight: no bias, no LoRA) [B, 1, n_kv·D]
    V_a  → [B, n_kv, D] → repeat each KV head n_heads/n_kv times (HF ``repeat_kv`` order) → [B, n_heads, D]
    δ_l  = flatten_h( tanh(gate_l)[h] · V_a[h] )                 [B, 1, n_heads·D]

and δ_l is added to the attention output at every position BEFORE ``o_proj`` (``InjectedLinear``; so
o_proj's bias and LoRA apply to it, exactly like the reference, which adds tanh(g)·V_a to O [B, n_heads, L, D] then merges heads).
The reference's softmax-over-adapter-keys branch is dead code for an adapter of length 1 and has no
counterpart here.

δ depends only on the visual token and frozen/adapter weights, not on the text, so it is computed once per
visual input (``VisualInjection``) and reused for every decoding step; ``o_proj`` only adds it.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ibllm_agent.model.peft import PeftLinear


@dataclass
class VisualInjection:
    """Per-layer additive terms δ_l [B, 1, n_heads·D] for the ``o_proj`` inputs, keyed by layer index.

    ``visual`` keeps the bind output it came from ([B, 1, H]) for inspection/caching keys.
    """

    deltas: dict[int, torch.Tensor]
    visual: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.visual.shape[0]

    def select(self, rows: torch.Tensor | list[int]) -> VisualInjection:
        """The injection of a subset of batch rows (e.g. when a decoder drops finished sequences)."""
        idx = torch.as_tensor(rows, device=self.visual.device, dtype=torch.long)
        return VisualInjection({k: d.index_select(0, idx) for k, d in self.deltas.items()},
                               self.visual.index_select(0, idx))


class InjectionSlot:
    """Holds the injection of the forward pass running on this thread (None = bare base model).

    Thread-local so two threads running forwards on one model never see each other's visual input.
    A copied model (``copy.deepcopy``) gets a fresh, empty slot shared by all of its layers.
    """

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def current(self) -> VisualInjection | None:
        return getattr(self._local, "value", None)

    @contextmanager
    def use(self, injection: VisualInjection | None) -> Iterator[None]:
        previous = self.current
        self._local.value = injection
        try:
            yield
        finally:
            self._local.value = previous

    def __deepcopy__(self, memo: dict) -> InjectionSlot:
        return InjectionSlot()

    def __getstate__(self) -> dict:
        return {}

    def __setstate__(self, state: dict) -> None:
        self._local = threading.local()


def add_gates(attn: nn.Module, num_heads: int) -> nn.Parameter:
    """Register ``gate`` [1, n_heads, 1, 1] (zeros, like the reference) on a HF attention module."""
    w = attn.o_proj.weight
    gate = nn.Parameter(torch.zeros(1, num_heads, 1, 1, device=w.device, dtype=w.dtype))
    attn.register_parameter("gate", gate)
    return gate


class InjectedLinear(PeftLinear):
    """``o_proj`` of an injected layer: input [B, T, n_heads·D] += δ_layer [B, 1, n_heads·D] when an
    injection is active on this thread, then the usual weight / bias / LoRA.

    A module (rather than a forward hook) keeps PyTorch's hook-free fast call path, which matters for
    small models where per-step Python overhead is a visible share of decode time. It shares the
    parameters of the ``PeftLinear`` it replaces, so state-dict names are unchanged."""

    def __init__(self, base: PeftLinear, layer_idx: int, slot: InjectionSlot):
        super().__init__(base.weight, base.bias)
        self.lora_a, self.lora_b = base.lora_a, base.lora_b
        self.layer_idx = layer_idx
        self.slot = slot

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        injection = self.slot.current
        if injection is not None:
            delta = injection.deltas.get(self.layer_idx)
            if delta is not None:
                x = x + delta.to(x.dtype)
        return super().forward(x)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", injected_layer={self.layer_idx}"


def install_injection(attn: nn.Module, layer_idx: int, slot: InjectionSlot) -> None:
    """Make ``attn.o_proj`` (a ``PeftLinear``) add layer ``layer_idx``'s δ to its input."""
    attn.o_proj = InjectedLinear(attn.o_proj, layer_idx, slot)


def compute_delta(
    visual: torch.Tensor,
    prefix_row: torch.Tensor,
    v_weight: torch.Tensor,
    gate: torch.Tensor,
    num_heads: int,
    num_kv_heads: int,
) -> torch.Tensor:
    """δ for one layer. visual [B,1,H], prefix_row [H], v_weight [n_kv·D, H], gate [1,n_heads,1,1]
    -> [B, 1, n_heads·D]."""
    a = visual.to(v_weight.dtype) + prefix_row.to(v_weight.dtype)  # [B,1,H]
    va = F.linear(a, v_weight)  # [B,1,n_kv·D], base weight only
    b = va.shape[0]
    head_dim = va.shape[-1] // num_kv_heads
    va = va.view(b, num_kv_heads, head_dim)
    if num_heads != num_kv_heads:  # GQA: query head h reads KV head h // n_rep
        va = va.repeat_interleave(num_heads // num_kv_heads, dim=1)  # [B,n_heads,D]
    g = torch.tanh(gate.view(1, num_heads, 1).to(va.dtype))
    return (g * va).reshape(b, 1, num_heads * head_dim)
