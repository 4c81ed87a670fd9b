"""``ImageBindLLM``: a HF LLaMA-family causal LM + bind network + gated one-token visual injection.

Module tree (state-dict names are fixed; conversion and checkpoints rely on them)::

    lm                     transformers.LlamaForCausalLM (HF key names for the base weights)
      model.layers.{i}.self_attn.{q,k,v,o}_proj.{weight, bias?, lora_a.weight?, lora_b.weight?}
      model.layers.{i}.self_attn.gate            [1, n_heads, 1, 1]  zeros (injected layers only)
      model.layers.{i}.mlp.{gate,up,down}_proj.{weight, bias?, lora_a.weight?, lora_b.weight?}
      model.layers.{i}.{input,post_attention}_layernorm.weight, model.norm.weight
    prefix_query.weight    [n_injected_layers, H]  N(0, 1)
    bind.proj / bind.norms.{k} / bind.ffn.{k}.{w1,w2,w3}

The ImageBind encoder, the tokenizer and the optional visual cache are attributes but NOT submodules:
they are frozen, loaded lazily, and saved separately (see ``checkpoint.py``).

Data path (reference §0, §5): media → ImageBind → L2-normalise each, weighted mean → (visual cache) →
bind → [B, 1, H] → per-layer δ (``injection.py``) → LLaMA forward.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ibllm_agent.errors import ConfigError, TokenizerError
from ibllm_agent.model.bind import BindNetwork
from ibllm_agent.model.config import PHASES, ImageBindLLMConfig, config_7b, config_tiny
from ibllm_agent.model.fusion import fuse
from ibllm_agent.model.generation import cache_kwargs, returned_cache
from ibllm_agent.model.injection import (
    InjectionSlot,
    VisualInjection,
    add_gates,
    compute_delta,
    install_injection,
)
from ibllm_agent.model.peft import apply_peft
from ibllm_agent.types import CacheSettings, Generation, Media, Sampling

PRESETS = ("tiny", "7b")


def _build_lm(config: ImageBindLLMConfig, device: torch.device | str | None):
    from transformers import LlamaForCausalLM

    with torch.device(device or "cpu"):
        return LlamaForCausalLM(config.llama_config())


class ImageBindLLM(nn.Module):
    """The multimodal LLaMA of ImageBind-LLM.

    Build with ``from_preset("tiny")`` (tests/demos), ``from_pretrained(dir)`` (our format; see
    ``ibllm-agent convert`` for the official release) or ``ImageBindLLM(config)`` (random init).

    ``forward(input_ids, visual=...)`` is the training/decoding step; ``generate``/``stream`` take a
    final prompt string plus ``Media`` and satisfy ``ibllm_agent.types.TextGenerator``.
    """

    def __init__(
        self,
        config: ImageBindLLMConfig,
        *,
        tokenizer: Any = None,
        encoder: Any = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
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
            self.to(dtype)
        # Non-module attributes (frozen / lazily loaded; never in state_dict()).
        self.tokenizer = tokenizer
        object.__setattr__(self, "_encoder", encoder)  # an nn.Module, deliberately NOT a submodule
        object.__setattr__(self, "visual_cache", None)  # ibllm_agent.cache.VisualCache, set by the user / agent
        self._encoder_seed = 0  # seed of a lazily built non-official (tiny) encoder
        self.checkpoint_dir: Path | None = None  # where encoder.safetensors lives for self-contained saves
        self._zero_image_feature: dict[tuple, torch.Tensor] = {}
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

        ``tiny``: 2-layer, 64-wide GQA LLaMA (4 heads, 2 KV heads), tiny ImageBind (``tiny_w3d``), the tiny
        SentencePiece tokenizer; deterministic for a given ``seed``. Gates start at zero (as in the
        reference), so set some to see the visual input matter.
        ``7b``: the released 7B layout (LLaMA-1 7B + huge ImageBind); use ``device="meta"`` to inspect
        shapes without memory. Real weights come from ``from_pretrained`` after ``ibllm-agent convert``.
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
            model._encoder_seed = seed  # the tiny encoder is built (from this seed) on first use
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

    def save_pretrained(self, path: str | Path) -> Path:
        """Write ``config.json``, ``base.safetensors``, ``adapter.safetensors``, ``tokenizer.model`` (and
        ``encoder.safetensors`` for presets whose encoder is not an official file)."""
        from ibllm_agent.model.checkpoint import save_pretrained

        return save_pretrained(self, path)

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

    @property
    def encoder(self):
        """The frozen ImageBind encoder, loaded on first use and kept on the model's device."""
        if self._encoder is None:
            from ibllm_agent.model.checkpoint import load_encoder

            object.__setattr__(self, "_encoder", load_encoder(self.config, self.checkpoint_dir, self._encoder_seed))
        enc = self._encoder
        p = next(enc.parameters(), None)
        if p is not None and (p.device != self.device or (p.is_floating_point() and p.dtype != self.dtype)):
            enc.to(device=self.device, dtype=self.dtype)
        return enc

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

    def encode_media(
        self,
        media: Sequence[Media] | Sequence[Sequence[Media]],
        cache: CacheSettings | None = None,
    ) -> torch.Tensor:
        """Fused ImageBind features per sample -> [B, visual_dim] fp32 (the bind network's input).

        ``media`` is one sample's list of ``Media`` or a list of such lists (a batch). Each source is
        loaded with ``ibllm_agent.media.load`` (tensors of the per-item shape pass through), encoded
        (image/video → the vision trunk), L2-normalised, and mixed with weights / (Σw + 1e-6) — not
        re-normalised. A sample without media gets the text-only placeholder (the all-zero image, policy
        ``zero_image``; zeros under policy ``off``, where ``visual_tokens`` skips it). When
        ``self.visual_cache`` is set and ``cache`` is enabled, the features of samples with media are
        enhanced with ``visual_cache.enhance(f, k, t, alpha)``.
        """
        return self._encode_batch(_as_batch(media), cache)[0]

    def _encode_batch(self, batch: list[list[Media]], cache: CacheSettings | None):
        """-> (features [B, D] fp32, active [B] bool: rows that get an injection)."""
        feats, active, has_media = [], [], []
        for sample in batch:
            if sample:
                embs = torch.cat([self._encode_one(m) for m in sample])  # [N, D]
                weights = torch.tensor([float(m.weight) for m in sample])
                if (weights < 0).any() or float(weights.sum()) <= 0:
                    raise ConfigError(f"media weights must be >= 0 with a positive sum, got {weights.tolist()}")
                feats.append(fuse(embs, weights))
                active.append(True)
                has_media.append(True)
            else:
                feats.append(self._placeholder_feature())
                active.append(self.config.text_only == "zero_image")
                has_media.append(False)
        f = torch.stack(feats)  # [B, D] fp32
        if f.shape[-1] != self.config.visual_dim:
            raise ConfigError(
                f"the encoder ({self.config.encoder!r}) gives {f.shape[-1]}-d embeddings but the bind network "
                f"takes visual_dim={self.config.visual_dim}: the checkpoint's encoder setting does not match its adapter"
            )
        cache = cache or CacheSettings()
        if self.visual_cache is not None and cache.enabled and any(has_media):
            rows = torch.tensor(has_media)
            enhanced = self.visual_cache.enhance(f[rows], k=cache.k, t=cache.t, alpha=cache.alpha)
            f = f.clone()
            f[rows] = torch.as_tensor(enhanced).to(f)
        return f, torch.tensor(active)

    def visual_tokens(
        self, media: Sequence[Media] | Sequence[Sequence[Media]] | None, cache: CacheSettings | None = None,
        batch_size: int = 1,
    ) -> VisualInjection | None:
        """media -> bind -> ``VisualInjection`` for ``forward`` (None when no row has visual input)."""
        if media is None or len(media) == 0:
            media = [[] for _ in range(batch_size)]
        feats, active = self._encode_batch(_as_batch(media), cache)
        if not bool(active.any()):
            return None
        visual = self.bind(feats.to(self.device, self.bind.proj.weight.dtype))  # [B,1,H]
        return self.injection(visual, None if bool(active.all()) else active)

    def _encode_one(self, m: Media) -> torch.Tensor:
        """One attachment -> raw ImageBind embedding [1, D].

        ``media.load`` turns any source into the per-item tensor (already-preprocessed tensors of the item
        shape pass through unchanged); the encoder gets it with a batch dim of 1."""
        from ibllm_agent import media as media_mod

        x = media_mod.load(m.source, m.modality)
        return self._encode_tensor(m.modality, x.unsqueeze(0))

    def _encode_tensor(self, modality: str, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        x = x.to(self.device)
        if x.is_floating_point():
            x = x.to(self.dtype)
        with torch.no_grad():
            return enc.encode(modality, x).float()

    def _placeholder_feature(self) -> torch.Tensor:
        """L2-normalised embedding of the all-zero image [D] (the reference's text-only input); cached.

        With policy ``off`` the value is unused (rows are inactive) and not computed."""
        if self.config.text_only == "off":
            return torch.zeros(self.config.visual_dim)
        key = (str(self.device), self.dtype)
        if key not in self._zero_image_feature:
            size = int(getattr(getattr(self.encoder, "config", None), "image_size", 224))
            zero = torch.zeros(1, 3, size, size)
            emb = self._encode_tensor("image", zero)  # [1, D]
            self._zero_image_feature[key] = fuse(emb, torch.ones(1))  # normalised, weight 1/(1+1e-6)
        return self._zero_image_feature[key]

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        input_ids: torch.Tensor,
        visual: torch.Tensor | VisualInjection | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: Any = None,
        use_cache: bool = False,
        logits_to_keep: int = 0,
    ) -> tuple[torch.Tensor, Any]:
        """input_ids [B, T] -> (logits [B, T, V], past_key_values).

        ``visual``: the bind output [B, 1, H] (or a precomputed ``VisualInjection``, reused across decode
        steps); ``None`` runs the bare base model (with its PEFT biases/LoRA), bit-identical to the
        underlying ``LlamaForCausalLM``. ``attention_mask`` [B, T_past + T] is the 2-D padding mask (1 =
        real token); ``position_ids`` [B, T]; ``logits_to_keep`` > 0 computes logits of the last positions only.
        """
        if isinstance(visual, torch.Tensor):
            visual = self.injection(visual)
        if visual is not None and visual.batch_size not in (1, input_ids.shape[0]):
            raise ConfigError(
                f"visual input has batch size {visual.batch_size} but input_ids has {input_ids.shape[0]} rows"
            )
        with self._slot.use(visual):
            out = self.lm(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                **cache_kwargs(self.lm, past_key_values),
                use_cache=use_cache,
                logits_to_keep=logits_to_keep,
            )
        return out.logits, returned_cache(out)

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
        """The engine's step with this call's visual injection bound (logits of the last position only)."""

        def step(input_ids, attention_mask, position_ids, past_key_values):
            return self.forward(input_ids, injection, attention_mask=attention_mask, position_ids=position_ids,
                                past_key_values=past_key_values, use_cache=True, logits_to_keep=1)

        return step

    def _prepare(self, prompt, media, cache):
        if not isinstance(prompt, (str, list, tuple)):
            raise ConfigError(f"prompt must be a string or a non-empty list of strings, got {type(prompt).__name__}")
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts or not all(isinstance(p, str) for p in prompts):
            raise ConfigError("prompt must be a string or a non-empty list of strings")
        batch_media = None
        if media is not None and len(media) > 0:
            batch_media = _as_batch(media)
            if len(batch_media) != len(prompts):
                raise ConfigError(f"{len(prompts)} prompts but media for {len(batch_media)} samples")
        tok = self._tok()
        ids = [tok.encode(p, bos=True, eos=False) for p in prompts]
        with torch.no_grad():
            injection = self.visual_tokens(batch_media, cache, batch_size=len(prompts))
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
        media: Sequence[Media] | Sequence[Sequence[Media]] | None = None,
        *,
        sampling: Sampling | None = None,
        cache: CacheSettings | None = None,
        **sampling_overrides: Any,
    ) -> Generation | list[Generation]:
        """Decode a continuation of the final prompt text (already wrapped in ``prompt_template``).

        A list of prompts decodes as one padded batch (``media`` then is a list of per-prompt lists) and
        returns a list. ``sampling_overrides`` (``temperature=0``, ``max_new_tokens=…``, ``stop=[…]``)
        replace fields of ``sampling`` (default: the reference's T=0.1, top_p=0.75).
        """
        _, ids, injection = self._prepare(prompt, media, cache)
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
        media: Sequence[Media] | None = None,
        *,
        sampling: Sampling | None = None,
        cache: CacheSettings | None = None,
        **sampling_overrides: Any,
    ) -> Iterator[str]:
        """Yield text deltas of one generation; they join to ``generate(...).text`` for the same settings."""
        if not isinstance(prompt, str):
            raise ConfigError("stream() takes a single prompt string")
        _, ids, injection = self._prepare(prompt, media, cache)
        s = self._sampling(sampling, sampling_overrides)
        # The engine's TextStream: an iterator of str deltas whose ``.result`` holds the final Result.
        return self.engine.stream(ids[0], s, context_key=self._context_key(injection),
                                  step=self._step_for(injection))


def _as_batch(media) -> list[list[Media]]:
    """One sample's ``[Media, ...]`` -> ``[[Media, ...]]``; a batch ``[[...], [...]]`` unchanged."""
    media = list(media)
    if not media:
        return [[]]
    if all(isinstance(m, Media) for m in media):
        return [media]
    out = []
    for sample in media:
        if isinstance(sample, Media):
            raise ConfigError("media must be a list of Media or a list of per-sample lists, not a mix")
        sample = list(sample or [])
        for m in sample:
            if not isinstance(m, Media):
                raise ConfigError(f"media items must be ibllm_agent.types.Media, got {type(m).__name__}")
        out.append(sample)
    return out
