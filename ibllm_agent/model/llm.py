"""``ImageBindLLM``: a HF LLaMA-family causal LM + bind network + gated one-token visual injection.

Module tree (state-dict names are fixed; conversion and checkpoints rely on them)::

    lm                     transformers.LlamaForCausalLM (HF key names for the base weights)
      model.layers.{i}.self_attn.{q,k,v,o}_proj.{weight, bias?, lora_a.weight?, lora_b.weight?}
      model.layers.{i}.self_attn.gate            [1, n_heads, 1, 1]  zeros (injected layers only)
      model.layers.{i}.mlp.{gate,up,down}_proj.{weight, bias?, lora_a.weight?, lora_b.weight?}
      model.layers.{i}.{input,post_attention}_layernorm.weight, model.norm.weight
    prefix_query.weight    [n_injected_layers, H]  N(0, 1)
    bind.proj / bind.norms.{k} / bind.ffn.{k}.{w1,w2,w3}

The model takes token ids and visual features (tensors) only. Media loading, the ImageBind encoder,
fusion and the visual cache are the media stage (``ibllm_agent.media_encoder.MediaEncoder``); this
package never imports ``ibllm_agent.media`` or ``ibllm_agent.cache``.

Data path (reference §0, §5): features [B, visual_dim] (fused, normalised ImageBind embeddings) →
bind → [B, 1, H] → per-layer δ (``injection.py``) → LLaMA forward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ibllm_agent.errors import ConfigError, TokenizerError
from ibllm_agent.model.bind import BindNetwork
from ibllm_agent.model.config import PHASES, ImageBindLLMConfig, config_7b, config_tiny
from ibllm_agent.model.injection import (
    InjectionSlot,
    VisualInjection,
    add_gates,
    compute_delta,
    install_injection,
)
from ibllm_agent.model.peft import apply_peft
from ibllm_agent.types import Generation, Sampling, VisualFeatures

PRESETS = ("tiny", "7b")


def _build_lm(config: ImageBindLLMConfig, device: torch.device | str | None):
    from transformers import LlamaForCausalLM

    with torch.device(device or "cpu"):
        return LlamaForCausalLM(config.llama_config())


class ImageBindLLM(nn.Module):
    """The multimodal LLaMA of ImageBind-LLM.

    Build with ``from_preset("tiny")`` (tests/demos), ``from_pretrained(dir)`` (our format; see
    ``ibllm-agent convert`` for the official release) or ``ImageBindLLM(config)`` (random init).

    ``forward(input_ids, features=..., active=...)`` is the training/decoding step; ``generate`` /
    ``stream`` take a final prompt string plus visual features. Media (files, PIL images …) go through
    a media stage first: ``ibllm_agent.load_model`` returns both joined in a ``MultimodalLLM`` (the
    ``ibllm_agent.types.TextGenerator`` the chat model uses).
    """

    def __init__(
        self,
        config: ImageBindLLMConfig,
        *,
        tokenizer: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ):
        super().__init__()
        self.config = config
        c = config
        self.lm = _build_lm(c, device)
        apply_peft(self.lm, w_bias=c.w_bias, w_lora=c.w_lora, lora_rank=c.lora_rank)
        with torch.device(device or "cpu"):
            self.bind = BindNetwork(c.visual_dim, c.hidden_size, c.bind_hidden, c.bind_blocks, c.bind_variant)
            self.prefix_query = nn.Embedding(len(c.layers), c.hidden_size)  # N(0,1), like the reference
        self._slot = InjectionSlot()  # injection of the forward running on this thread
        for layer_idx in c.layers:
            attn = self.lm.model.layers[layer_idx].self_attn
            add_gates(attn, c.num_heads)
            install_injection(attn, layer_idx, self._slot)
        if dtype is not None:
            self.to(_as_dtype(dtype))
        # Non-module attributes (never in state_dict()).
        self.tokenizer = tokenizer
        # Where this model's encoder comes from when the config names no official file (see
        # ``checkpoint.load_encoder``): encoder.safetensors in the checkpoint folder, else the preset
        # built from this seed.
        self.encoder_seed = 0
        self.checkpoint_dir: Path | None = None
        self._engine = None
        self._engine_on: tuple | None = None  # (device, dtype) the engine's prefix cache was computed on
        self.set_phase(c.phase)

    # ------------------------------------------------------------------ presets / io
    @classmethod
    def from_preset(
        cls,
        name: str,
        *,
        seed: int = 0,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **config_overrides: Any,
    ) -> ImageBindLLM:
        """Build a named architecture with random weights.

        ``tiny``: 2-layer, 64-wide GQA LLaMA (4 heads, 2 KV heads) for a tiny ImageBind (``tiny_w3d``,
        built from the same ``seed`` by ``checkpoint.load_encoder``), the tiny SentencePiece tokenizer;
        deterministic for a given ``seed``. Gates start at zero (as in the reference), so set some to
        see the visual input matter.
        ``7b``: the released 7B layout (LLaMA-1 7B + huge ImageBind); use ``device="meta"`` to inspect
        shapes without memory. Real weights come from ``from_pretrained`` after ``ibllm-agent convert``.

        ``device`` / ``dtype`` are taken as given (None: CPU, float32); ``ibllm_agent.load_model``
        applies the Settings rules (``IBLLM_DEVICE`` …) and builds the media stage too.
        """
        import dataclasses

        unknown = sorted(set(config_overrides) - {f.name for f in dataclasses.fields(ImageBindLLMConfig)})
        if unknown:
            raise ConfigError(f"unknown model config override(s) {unknown} for preset {name!r}")
        if "lm" in config_overrides:
            raise ConfigError(f"preset {name!r} fixes the LM architecture ('lm'); build ImageBindLLM(config) instead")
        if name == "tiny":
            from ibllm_agent.encoders.config import preset as encoder_preset
            from ibllm_agent.model.tokenizer import tiny_tokenizer

            tokenizer = tiny_tokenizer()
            visual_dim = config_overrides.pop("visual_dim", encoder_preset("tiny_w3d").out_dim)
            config = config_tiny(tokenizer.vocab_size, visual_dim, **config_overrides)
            with torch.random.fork_rng(devices=[]):  # reproducible without disturbing the caller's RNG
                torch.manual_seed(seed)
                model = cls(config, tokenizer=tokenizer, device=device, dtype=dtype)
            model.encoder_seed = seed  # checkpoint.load_encoder builds the tiny encoder from this seed
            return model
        if name == "7b":
            return cls(config_7b(**config_overrides), device=device, dtype=dtype)
        raise ConfigError(f"unknown model preset {name!r}; known: {list(PRESETS)}")

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | str | None = None,
    ) -> ImageBindLLM:
        """Load a folder written by ``save_pretrained`` / ``ibllm-agent convert`` (see ``checkpoint.py``)."""
        from ibllm_agent.model.checkpoint import load_pretrained

        return load_pretrained(cls, path, device=device, dtype=dtype)

    def save_pretrained(self, path: str | Path, encoder: Any = None) -> Path:
        """Write ``config.json``, ``base.safetensors``, ``adapter.safetensors``, ``tokenizer.model`` (and
        ``encoder.safetensors`` — ``encoder`` or this model's own — for presets whose encoder is not an
        official file)."""
        from ibllm_agent.model.checkpoint import save_pretrained

        return save_pretrained(self, path, encoder)

    # ------------------------------------------------------------------ properties
    @property
    def device(self) -> torch.device:
        return self.lm.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm.lm_head.weight.dtype

    @property
    def prompt_template(self) -> str:
        return self.config.prompt_template

    @property
    def context_length(self) -> int:
        return self.config.context_length

    # ------------------------------------------------------------------ phases
    def trainable_names(self, phase: str) -> list[str]:
        """Parameter names trained in ``phase`` (reference §6.1).

        pretrain: ``bind.*``, ``prefix_query.weight``, every ``...self_attn.gate``.
        finetune: LLaMA norms (input/post-attention/final), the PEFT biases, every LoRA matrix.
        inference: none.
        """
        if phase not in PHASES:
            raise ConfigError(f"unknown phase {phase!r}; expected one of {PHASES}")
        names = []
        for name, _ in self.named_parameters():
            if phase == "pretrain":
                ok = name.startswith(("bind.", "prefix_query.")) or name.endswith(".self_attn.gate")
            elif phase == "finetune":
                ok = name.startswith("lm.") and (
                    "norm" in name or ".lora_a." in name or ".lora_b." in name or name.endswith(".bias")
                )
            else:
                ok = False
            if ok:
                names.append(name)
        return names

    def set_phase(self, phase: str) -> ImageBindLLM:
        """Freeze everything except the reference's trainable set of ``phase``; ``inference`` also sets
        eval mode. Switching to ``finetune`` adds the zero-init biases / LoRA if the model lacks them
        (the function computed is unchanged by that)."""
        if phase not in PHASES:
            raise ConfigError(f"unknown phase {phase!r}; expected one of {PHASES}")
        if phase == "finetune" and not (self.config.w_bias and self.config.w_lora):
            apply_peft(self.lm, w_bias=True, w_lora=True, lora_rank=self.config.lora_rank or 16)
            self.config.w_bias = self.config.w_lora = True
            self.config.lora_rank = self.config.lora_rank or 16
        keep = set(self.trainable_names(phase))
        for name, p in self.named_parameters():
            p.requires_grad_(name in keep)
        self.train(phase != "inference")
        self.config.phase = phase
        return self

    def num_trainable(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    # ------------------------------------------------------------------ visual path
    def injection(self, visual: torch.Tensor, active: torch.Tensor | None = None) -> VisualInjection:
        """Bind output ``visual`` [B, 1, H] (or [B, H]) -> per-layer δ's. ``active`` [B] bool zeroes the δ of
        rows without visual input (text-only policy ``off`` inside a mixed batch)."""
        if visual.dim() == 2:
            visual = visual[:, None, :]
        if visual.shape[-1] != self.config.hidden_size:
            raise ConfigError(f"visual token width {visual.shape[-1]} != LM hidden size {self.config.hidden_size}")
        c = self.config
        deltas = {}
        for row, layer_idx in enumerate(c.layers):
            attn = self.lm.model.layers[layer_idx].self_attn
            d = compute_delta(visual, self.prefix_query.weight[row], attn.v_proj.weight, attn.gate,
                              c.num_heads, c.num_kv_heads)
            if active is not None:
                d = d * active.to(d.device, d.dtype).view(-1, 1, 1)
            deltas[layer_idx] = d
        return VisualInjection(deltas, visual)

    def visual_input(
        self, features: torch.Tensor | VisualFeatures | None, active: torch.Tensor | None = None
    ) -> VisualInjection | None:
        """Visual features [B, visual_dim] (+ ``active`` [B] bool) -> bind -> ``VisualInjection`` (None
        when there are no features or no row is active). A ``VisualFeatures`` brings its own ``active``."""
        if isinstance(features, VisualFeatures):
            features, active = features.features, features.active if active is None else active
        if features is None:
            return None
        if not isinstance(features, torch.Tensor):
            raise ConfigError(
                f"visual features must be a tensor [B, {self.config.visual_dim}] or VisualFeatures, got "
                f"{type(features).__name__} (media go through a media stage first: ibllm_agent.load_model)"
            )
        if features.dim() == 1:
            features = features[None]
        if features.dim() != 2 or features.shape[-1] != self.config.visual_dim:
            raise ConfigError(
                f"the features are {features.shape[-1]}-d embeddings but the bind network takes "
                f"visual_dim={self.config.visual_dim} (shape {tuple(features.shape)}): the encoder does not match "
                "this adapter"
            )
        if active is not None:
            active = torch.as_tensor(active, dtype=torch.bool)
            if active.shape != features.shape[:1]:
                raise ConfigError(f"active must be [B={features.shape[0]}] bool, got shape {tuple(active.shape)}")
            if not bool(active.any()):
                return None
            if bool(active.all()):
                active = None
        visual = self.bind(features.to(self.device, self.bind.proj.weight.dtype))  # [B,1,H]
        return self.injection(visual, active)

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        features: torch.Tensor | VisualFeatures | None = None,
        active: torch.Tensor | None = None,
        visual: torch.Tensor | VisualInjection | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        """input_ids [B, T] -> (logits [B, T, V], cache).

        The visual input is one of: ``features`` [B, visual_dim] (the media stage's fused embeddings;
        ``active`` [B] bool zeroes the injection of rows without visual input), ``visual`` = the bind
        output [B, 1, H] or a precomputed ``VisualInjection`` (reused across decode steps). None of them
        runs the bare base model (with its PEFT biases/LoRA), bit-identical to the underlying
        ``LlamaForCausalLM``. ``attention_mask`` [B, T_past + T] is the 2-D padding mask (1 = real
        token); ``position_ids`` [B, T]; ``cache``: a transformers ``Cache`` (e.g. ``DynamicCache``) holding
        the keys/values of earlier positions, extended in place and returned (with ``use_cache``; a new
        ``DynamicCache`` when None); ``logits_to_keep`` > 0 computes logits of the last positions only.
        """
        if features is not None and visual is not None:
            raise ConfigError("pass either features (+ active) or visual, not both")
        if features is not None:
            visual = self.visual_input(features, active)
        elif isinstance(visual, torch.Tensor):
            visual = self.injection(visual, active)
        if visual is not None and visual.batch_size not in (1, input_ids.shape[0]):
            raise ConfigError(
                f"visual input has batch size {visual.batch_size} but input_ids has {input_ids.shape[0]} rows"
            )
        if use_cache and cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=self.lm.config)
        with self._slot.use(visual):
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                cache=cache,
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
            )
        return out.logits, out.cache

    # ------------------------------------------------------------------ text generation
    def count_tokens(self, text: str) -> int:
        """Number of tokens of ``text`` without BOS (so pieces of a prompt add up)."""
        return len(self._tok().encode(text, bos=False, eos=False))

    def _tok(self):
        if self.tokenizer is None:
            raise TokenizerError("this ImageBindLLM has no tokenizer (pass tokenizer= or load a checkpoint with one)")
        return self.tokenizer

    def _sampling(self, sampling: Sampling | None, overrides: dict[str, Any]) -> Sampling:
        base = sampling or Sampling(**self.config.sampling)
        if overrides:
            stop = overrides.get("stop")
            if isinstance(stop, str):  # stop="###" is one stop string, not three one-character ones
                overrides["stop"] = (stop,)
            elif stop is not None:
                try:
                    overrides["stop"] = tuple(stop)
                except TypeError:
                    raise ConfigError(f"stop must be a string or a list of strings, got {stop!r}") from None
            try:
                base = replace(base, **overrides)
            except TypeError as exc:
                raise ConfigError(f"unknown sampling option: {exc}") from None
        return base

    @property
    def engine(self):
        """The decoding engine (``generation.Generator``), created on first use; it keeps the prefix KV
        cache across calls (keyed by the visual input and the weights' state), and ``engine.stats`` counts reused
        tokens."""
        truncate = "left" if self.config.context_overflow == "truncate" else "error"
        if self._engine is None:
            from ibllm_agent.model.generation import Generator

            self._engine = Generator(
                self._step_for(None), self._tok(), context_length=self.config.context_length, device=self.device,
                truncate=truncate,
            )
        engine = self._engine
        # Follow the model after .to(...) and config edits made since the engine was created. A prefix
        # cache computed on another device / in another dtype cannot be reused.
        if self._engine_on != (self.device, self.dtype):
            engine.clear_cache()
            engine.device, self._engine_on = self.device, (self.device, self.dtype)
        engine.context_length, engine.truncate = self.config.context_length, truncate
        return engine

    def _step_for(self, injection: VisualInjection | None):
        """The engine's step with this call's visual injection bound (logits of the last position only,
        unless the engine asks for more to score guided options)."""

        def step(input_ids, attention_mask, position_ids, cache, logits_to_keep=1):
            return self.forward(input_ids, visual=injection, attention_mask=attention_mask,
                                position_ids=position_ids, cache=cache, use_cache=True,
                                logits_to_keep=logits_to_keep)

        return step

    def _prepare(self, prompt, features, active):
        if not isinstance(prompt, (str, list, tuple)):
            raise ConfigError(f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompt must be a string or a non-empty list of strings")
        with torch.no_grad():
            injection = self.visual_input(features, active)
        if injection is not None and injection.batch_size not in (1, len(prompts)):
            raise ConfigError(f"{len(prompts)} prompts but visual features for {injection.batch_size} samples")
        tok = self._tok()
        ids = [tok.encode(p, bos=True, eos=False) for p in prompts]
        return prompts, ids, injection

    def _context_key(self, injection: VisualInjection | None) -> tuple[str, int]:
        """Identifies what a KV cache was computed with besides the tokens (the engine reuses a cached
        prompt prefix only under the same key): the visual input, and the weights' state."""
        if injection is None:
            visual = "no-visual"
        else:
            v = injection.visual.detach().float().cpu().contiguous()
            visual = hashlib.sha1(v.numpy().tobytes()).hexdigest()
        return visual, self._weights_stamp()

    def _weights_stamp(self) -> int:
        """Changes whenever a parameter is modified in place (optimizer step, ``copy_``, ``load_state_dict``)
        or replaced, so a prefix cache computed with older weights is never reused. Reads PyTorch's
        per-tensor version counters: O(number of parameter tensors), no data is touched."""
        return hash(tuple((id(p), p.data_ptr(), p._version) for p in self.parameters()))

    def generate(
        self,
        prompt: str | list[str],
        features: torch.Tensor | VisualFeatures | None = None,
        *,
        active: torch.Tensor | None = None,
        sampling: Sampling | None = None,
        **sampling_overrides: Any,
    ) -> Generation | list[Generation]:
        """Decode a continuation of the final prompt text (already wrapped in ``prompt_template``).

        ``features``: visual features [B, visual_dim] (or ``VisualFeatures`` from a media stage; one row
        per prompt, or one row for all); None decodes without visual input. A list of prompts decodes as
        one padded batch and returns a list. ``sampling_overrides`` (``temperature=0``,
        ``max_new_tokens=…``, ``stop=[…]``) replace fields of ``sampling`` (default: the reference's
        T=0.1, top_p=0.75).
        """
        _, ids, injection = self._prepare(prompt, features, active)
        s = self._sampling(sampling, sampling_overrides)
        with torch.no_grad():
            results = self.engine.generate(ids, s, context_key=self._context_key(injection),
                                           step=self._step_for(injection))
        gens = [r.to_generation() for r in results]
        if injection is not None:
            for g in gens:
                g.extras["visual"] = True
        return gens[0] if isinstance(prompt, str) else gens

    def stream(
        self,
        prompt: str,
        features: torch.Tensor | VisualFeatures | None = None,
        *,
        active: torch.Tensor | None = None,
        sampling: Sampling | None = None,
        **sampling_overrides: Any,
    ) -> Iterator[str]:
        """Yield text deltas of one generation; they join to ``generate(...).text`` for the same settings."""
        if not isinstance(prompt, str):
            raise ConfigError("stream() takes a single prompt string")
        _, ids, injection = self._prepare(prompt, features, active)
        s = self._sampling(sampling, sampling_overrides)
        # The engine's TextStream: an iterator of str deltas whose ``.result`` holds the final Result.
        return self.engine.stream(ids[0], s, context_key=self._context_key(injection),
                                  step=self._step_for(injection))



def _as_dtype(dtype: torch.dtype | str) -> torch.dtype:
    """A torch dtype or one of the Settings spellings ('bf16', 'float32', 'auto' …)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    from ibllm_agent.config import resolve_dtype

    return resolve_dtype(str(dtype))
