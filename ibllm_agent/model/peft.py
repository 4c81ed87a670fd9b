"""Parameter-efficient fine-tuning pieces exactly as the reference computes them.

The reference adds to a frozen LLaMA linear ``W`` (shape [out, in]):

- an optional bias ``b`` (zero-initialised) on ``wq``, ``wo``, ``w1``, ``w2``, ``w3`` (never ``wk``/``wv``);
- an optional LoRA pair ``A`` [r, in] (PyTorch's default Kaiming-uniform init) and ``B`` [out, r]
  (zeros) on all seven linears, added with NO ``alpha / r`` scaling and no dropout:

    y = x Wᵀ + b + (x Aᵀ) Bᵀ

``peft.LoraConfig`` always multiplies by ``lora_alpha / r`` (``alpha = r`` would give 1, but the keys are
``lora_A.default.weight`` and the bias has no place), so a 30-line module states the reference more
plainly and keeps the state-dict names fixed: ``<linear>.weight``, ``<linear>.bias``,
``<linear>.lora_a.weight``, ``<linear>.lora_b.weight``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# HF LLaMA linear names -> do they get a bias in the reference (wq, wo, w1, w2, w3 yes; wk, wv no).
ATTN_LINEARS = ("q_proj", "k_proj", "v_proj", "o_proj")
MLP_LINEARS = ("gate_proj", "up_proj", "down_proj")
BIAS_LINEARS = ("q_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
LORA_LINEARS = ATTN_LINEARS + MLP_LINEARS


class PeftLinear(nn.Linear):
    """A frozen-base ``nn.Linear`` with an optional zero-init bias and an optional unscaled LoRA pair.

    It *is* an ``nn.Linear`` (same ``weight`` Parameter object as the module it replaces, so no copy),
    which keeps HF utilities and ``isinstance`` checks working.
    """

    def __init__(self, weight: nn.Parameter, bias: nn.Parameter | None = None, lora_rank: int = 0):
        nn.Module.__init__(self)  # skip nn.Linear.__init__: the weight already exists (maybe on meta)
        self.out_features, self.in_features = weight.shape
        self.weight = weight
        self.bias = bias
        self.lora_a: nn.Linear | None = None
        self.lora_b: nn.Linear | None = None
        if lora_rank:
            self.add_lora(lora_rank)

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, bias: bool, lora_rank: int) -> PeftLinear:
        """Wrap ``linear`` (sharing its weight); add a zero bias if ``bias`` and none exists yet."""
        module = cls(linear.weight, linear.bias)
        if bias and module.bias is None:
            module.add_bias()
        if lora_rank and module.lora_a is None:
            module.add_lora(lora_rank)
        return module

    def add_bias(self) -> None:
        w = self.weight
        self.bias = nn.Parameter(torch.zeros(self.out_features, device=w.device, dtype=w.dtype))

    def add_lora(self, rank: int) -> None:
        w = self.weight
        self.lora_a = nn.Linear(self.in_features, rank, bias=False, device=w.device, dtype=w.dtype)
        self.lora_b = nn.Linear(rank, self.out_features, bias=False, device=w.device, dtype=w.dtype)
        nn.init.zeros_(self.lora_b.weight)  # zero B: the update starts at exactly 0

    def base_forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x Wᵀ`` with the base weight only (the reference's adapter path uses ``wv`` this way)."""
        return F.linear(x, self.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [..., in] -> [..., out]
        # Trainable params may be kept in fp32 while the frozen base runs in bf16/fp16: cast the small
        # ones to the activation dtype (a no-op when dtypes agree).
        bias = None if self.bias is None else self.bias.to(x.dtype)
        y = F.linear(x, self.weight, bias)
        if self.lora_a is not None:
            a = self.lora_a.weight
            y = y + F.linear(F.linear(x.to(a.dtype), a), self.lora_b.weight).to(y.dtype)
        return y

    def extra_repr(self) -> str:
        rank = 0 if self.lora_a is None else self.lora_a.out_features
        return f"in={self.in_features}, out={self.out_features}, bias={self.bias is not None}, lora_rank={rank}"


def apply_peft(lm: nn.Module, *, w_bias: bool, w_lora: bool, lora_rank: int) -> None:
    """Replace the seven linears of every decoder layer of a HF LLaMA with ``PeftLinear``.

    Idempotent: calling it again (e.g. switching a pretrain model to finetune) only adds what is missing.
    """
    for layer in lm.model.layers:
        for parent, names in ((layer.self_attn, ATTN_LINEARS), (layer.mlp, MLP_LINEARS)):
            for name in names:
                linear = getattr(parent, name)
                want_bias = w_bias and name in BIAS_LINEARS
                rank = lora_rank if w_lora else 0
                if isinstance(linear, PeftLinear):
                    if want_bias and linear.bias is None:
                        linear.add_bias()
                    if rank and linear.lora_a is None:
                        linear.add_lora(rank)
                else:
                    setattr(parent, name, PeftLinear.from_linear(linear, bias=want_bias, lora_rank=rank))
