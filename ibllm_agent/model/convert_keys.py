"""Official ↔ our state-dict key names, written once as pairs of templates; both directions are
derived from the same table (``KeyMap``), so they cannot drift apart.

A template slot ``{name}`` matches one value on each side; ``SLOTS`` says how a value on the official
side becomes ours (e.g. ``attn``: Meta ``wq`` ↔ HF ``q_proj``; ``n``: the official 1-based bind
block number ↔ our 0-based index). Each mapping also reports the RoPE "rows" kind of the tensor
(``"q"``/``"k"``/``None``): tensors whose rows are q/k output features (``wq``/``wk`` weights and
biases, LoRA ``B`` factors ``l2``) are permuted between Meta's interleaved and HF's half-split rotary
layout by the caller (see ``convert.py``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping

from ibllm_agent.errors import CheckpointError

# Meta FFN / attention names -> HF names
FFN = {"w1": "gate_proj", "w2": "down_proj", "w3": "up_proj"}
ATTN = {"wq": "q_proj", "wk": "k_proj", "wv": "v_proj", "wo": "o_proj"}


def _table(pairs: Mapping[str, str]) -> tuple[str, str, Callable[[str], str], Callable[[str], str]]:
    inverse = {v: k for k, v in pairs.items()}
    return "|".join(pairs), "|".join(pairs.values()), pairs.__getitem__, inverse.__getitem__


# slot -> (official regex, our regex, official -> ours, ours -> official)
SLOTS: dict[str, tuple[str, str, Callable[[str], str], Callable[[str], str]]] = {
    "i": (r"\d+", r"\d+", str, str),  # transformer layer index (0-based on both sides)
    "n": (r"[1-9]\d*", r"\d+", lambda s: str(int(s) - 1), lambda s: str(int(s) + 1)),  # bind block
    "p": _table({"weight": "weight", "bias": "bias"}),
    "f": _table({"1": "1", "2": "2", "3": "3"}),
    "attn": _table(ATTN),
    "ffn": _table(FFN),
    "lr": _table({"1": "a", "2": "b"}),  # LoRA factor: l1 = A (down), l2 = B (up)
}

# (official template, our template) for the ImageBind-LLM adapter checkpoint (7B.pth and friends)
ADAPTER_KEYS: tuple[tuple[str, str], ...] = (
    ("image_bind_proj.{p}", "bind.proj.{p}"),
    ("image_bind_norm_{n}.{p}", "bind.norms.{n}.{p}"),
    ("image_bind_f{f}_{n}.{p}", "bind.ffn.{n}.w{f}.{p}"),
    ("prefix_query.weight", "prefix_query.weight"),
    ("llama.norm.weight", "lm.model.norm.weight"),
    ("llama.layers.{i}.attention.gate", "lm.model.layers.{i}.self_attn.gate"),
    ("llama.layers.{i}.attention_norm.weight", "lm.model.layers.{i}.input_layernorm.weight"),
    ("llama.layers.{i}.ffn_norm.weight", "lm.model.layers.{i}.post_attention_layernorm.weight"),
    ("llama.layers.{i}.attention.{attn}.bias", "lm.model.layers.{i}.self_attn.{attn}.bias"),
    ("llama.layers.{i}.attention.lora_{attn}_l{lr}.weight", "lm.model.layers.{i}.self_attn.{attn}.lora_{lr}.weight"),
    ("llama.layers.{i}.feed_forward.{ffn}.bias", "lm.model.layers.{i}.mlp.{ffn}.bias"),
    ("llama.layers.{i}.feed_forward.lora_{ffn}_l{lr}.weight", "lm.model.layers.{i}.mlp.{ffn}.lora_{lr}.weight"),
)

# (Meta LLaMA template, our template) for the frozen base model
META_KEYS: tuple[tuple[str, str], ...] = (
    ("tok_embeddings.weight", "lm.model.embed_tokens.weight"),
    ("output.weight", "lm.lm_head.weight"),
    ("norm.weight", "lm.model.norm.weight"),
    ("layers.{i}.attention.{attn}.weight", "lm.model.layers.{i}.self_attn.{attn}.weight"),
    ("layers.{i}.feed_forward.{ffn}.weight", "lm.model.layers.{i}.mlp.{ffn}.weight"),
    ("layers.{i}.attention_norm.weight", "lm.model.layers.{i}.input_layernorm.weight"),
    ("layers.{i}.ffn_norm.weight", "lm.model.layers.{i}.post_attention_layernorm.weight"),
)


def _compile(template: str, side: int) -> re.Pattern[str]:
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(re.escape(p) if k % 2 == 0 else f"(?P<{p}>{SLOTS[p][side]})" for k, p in enumerate(parts))
    return re.compile(regex)


def _rows(official_values: Mapping[str, str]) -> str | None:
    """RoPE rows kind from the official-side slot values (q/k weights, biases and LoRA B factors)."""
    if official_values.get("lr", "2") != "2":
        return None
    return {"wq": "q", "wk": "k"}.get(official_values.get("attn", ""))


class KeyMap:
    """One table of template pairs, usable in both directions."""

    def __init__(self, pairs: tuple[tuple[str, str], ...], official_name: str):
        self.pairs = pairs
        self.official_name = official_name
        self._compiled = [(_compile(o, 0), _compile(u, 1), o, u) for o, u in pairs]

    def to_ours(self, key: str) -> tuple[str, str | None]:
        """Official key -> (our key, rows kind). ``CheckpointError`` for unknown keys."""
        for official_re, _, _, ours in self._compiled:
            if m := official_re.fullmatch(key):
                values = m.groupdict()
                return ours.format(**{k: SLOTS[k][2](v) for k, v in values.items()}), _rows(values)
        raise CheckpointError(f"unknown key in the {self.official_name} checkpoint: {key!r}")

    def to_official(self, key: str) -> tuple[str, str | None]:
        """Our key -> (official key, rows kind). ``CheckpointError`` when it has no counterpart."""
        for _, ours_re, official, _ in self._compiled:
            if m := ours_re.fullmatch(key):
                values = {k: SLOTS[k][3](v) for k, v in m.groupdict().items()}
                return official.format(**values), _rows(values)
        raise CheckpointError(f"key {key!r} has no counterpart in the {self.official_name} layout")


ADAPTER_MAP = KeyMap(ADAPTER_KEYS, "official ImageBind-LLM")
META_MAP = KeyMap(META_KEYS, "Meta LLaMA")
