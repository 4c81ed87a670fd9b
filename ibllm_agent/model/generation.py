"""The decoding engine: KV-cached, batched, streaming generation over any causal-LM ``step``.

The engine knows nothing about images. A model hands it a ``step`` function::

    step(input_ids [B, T] long, attention_mask [B, T_past + T] long, position_ids [B, T] long,
         cache | None[, logits_to_keep=0]) -> (logits [B, T', V], cache)   # T' = T or 1

(``hf_step(model)`` builds one for a transformers causal LM; ``ImageBindLLM`` binds its visual
injection into its own). ``cache`` is a transformers ``Cache`` (a ``DynamicCache``, passed as the
model's ``cache=`` argument — transformers 5 deprecates ``past_key_values=``): None on the prefill,
where the step creates one, then the object the previous step returned. Per call the engine runs
one prefill pass over the prompt, then one token per step.

- Batches are LEFT padded; the attention mask hides the pads and position ids come from the mask,
  so every row sees the positions it would see alone (batch results equal single results).
- Each row stops on EOS, on a stop string (searched in decoded text), or at ``max_new_tokens``.
- Guided decoding: ``Sampling.guide`` (see ``guidance``) constrains rows to a grammar; options of a
  ``Choose`` are scored in extra passes over the cache (``step(..., logits_to_keep=0)``, then
  ``cache.crop``), so a step must accept ``logits_to_keep`` when guides are used.
- Prefix reuse: for B = 1 and a ``context_key``, the KV cache of each call is kept
  (``prefix_cache.PrefixCache``: several entries, LRU under a byte budget); a new prompt with the
  same key reuses the longest common token prefix of any entry and prefills only the rest (an
  agent's next step re-encodes only the new observation; a thread's next turn only what follows the
  shared system prompt / history). The key must identify everything besides the tokens that shaped
  the cache (e.g. the media the model was conditioned on, the weights): different keys never share
  a cache, ``None`` never reuses.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from ibllm_agent.errors import ConfigError, ContextLengthError, PromptError, TokenizerError
from ibllm_agent.model.detokenizer import Detokenizer
from ibllm_agent.model.guidance import Choose, Filter, PieceTable, filter_pick, option_ids, row_guides
from ibllm_agent.model.prefix_cache import DEFAULT_MAX_BYTES, PrefixCache
from ibllm_agent.model.sampling import build_sampler, validate_sampling
from ibllm_agent.model.tokenizer import Tokenizer
from ibllm_agent.types import Generation, Sampling

if TYPE_CHECKING:
    import torch

Step = Callable[..., "tuple[torch.Tensor, Any]"]
FinishReason = Literal["eos", "stop", "length"]


@dataclass
class Result:
    """One generated sequence.

    ``text``: the completion only (prompt excluded), cut before a stop string.
    ``token_ids``: the generated ids, EOS excluded (with a stop string: every id generated until the
    stop text was complete, so its decode may run past ``text``).
    ``prompt_tokens``: prompt length after truncation; ``truncated_tokens``: how many were dropped.
    ``reused_tokens``: prompt tokens whose keys/values came from the prefix cache.
    """

    text: str
    token_ids: list[int]
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    truncated_tokens: int = 0
    reused_tokens: int = 0

    def to_generation(self) -> Generation:
        return Generation(
            text=self.text,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            extras={"token_ids": list(self.token_ids), "truncated_tokens": self.truncated_tokens,
                    "reused_tokens": self.reused_tokens},
        )


@dataclass
class GenerationStats:
    """Counters over the engine's life (``Generator.stats``); reset with ``reset()``."""

    calls: int = 0
    prefill_tokens_computed: int = 0  # prompt tokens run through the model
    prefill_tokens_reused: int = 0  # prompt tokens whose KV came from the prefix cache
    decode_tokens: int = 0  # tokens fed one at a time after the prefill (summed over rows)

    def reset(self) -> None:
        self.calls = self.prefill_tokens_computed = self.prefill_tokens_reused = self.decode_tokens = 0


class TextStream(Iterator[str]):
    """The iterator ``Generator.stream`` returns: text deltas; ``.result`` is set once exhausted."""

    def __init__(self, gen: Iterator[str]):
        self._gen = gen
        self.result: Result | None = None

    def __iter__(self) -> TextStream:
        return self

    def __next__(self) -> str:
        try:
            return next(self._gen)
        except StopIteration as stop:
            self.result = stop.value
            raise StopIteration from None

    def close(self) -> None:
        self._gen.close()  # type: ignore[attr-defined]


class BatchStream(Iterator[list[tuple[int, str]]]):
    """The iterator ``Generator.stream_batch`` returns: per step a list of ``(row, delta)``;
    ``.results`` (one ``Result`` per row) is set once exhausted."""

    def __init__(self, run: Iterator[list[tuple[int, str]]]):
        self._run = run
        self.results: list[Result] | None = None

    def __iter__(self) -> BatchStream:
        return self

    def __next__(self) -> list[tuple[int, str]]:
        try:
            return next(self._run)
        except StopIteration as stop:
            self.results = stop.value
            raise StopIteration from None

    def close(self) -> None:
        self._run.close()  # type: ignore[attr-defined]


def hf_step(model: Any, *, logits_to_keep: int = 1) -> Step:
    """A ``step`` for a transformers causal LM (e.g. ``LlamaForCausalLM``).

    ``logits_to_keep=1`` makes the LM head run on the last position only (the engine reads nothing
    else), which saves a [B, T, V] matmul in the prefill; pass 0 to get logits for every position.
    """

    def step(input_ids, attention_mask, position_ids, cache, logits_to_keep=logits_to_keep):
        if cache is None:
            from transformers import DynamicCache

            cache = DynamicCache(config=model.config)
        out = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=logits_to_keep,
        )
        return out.logits, out.cache

    return step


class Generator:
    """Decode with a causal LM ``step`` (see module docstring) and a ``Tokenizer``.

    context_length: prompt + ``max_new_tokens`` must fit; otherwise ``truncate="error"`` raises
    ``ContextLengthError`` and ``"left"`` drops the oldest prompt tokens (BOS kept).
    device: where input ids/masks are created (the model's device); default CPU.
    prefix_cache: keep the KV caches of calls with a ``context_key`` (B = 1), at most
    ``max_cached_prefixes`` of them and ``max_prefix_bytes`` of key/value tensors (least recently
    used dropped first), and reuse their longest common token prefix.

    Concurrent calls on one engine are safe: a call takes its cached prefix out of the shared cache
    (or a copy of it) under a lock and puts its own back, so no two calls ever extend the same KV.
    """

    def __init__(
        self,
        step: Step,
        tokenizer: Tokenizer,
        *,
        context_length: int,
        device: torch.device | str | None = None,
        truncate: Literal["error", "left"] = "error",
        prefix_cache: bool = True,
        max_cached_prefixes: int = 16,
        max_prefix_bytes: int = DEFAULT_MAX_BYTES,
    ):
        import torch

        if truncate not in ("error", "left"):
            raise ConfigError(f"truncate must be 'error' or 'left', got {truncate!r}")
        if not isinstance(context_length, int) or context_length < 2:
            raise ConfigError(f"context_length must be an int >= 2, got {context_length!r}")
        if max_cached_prefixes < 1:
            raise ConfigError(f"max_cached_prefixes must be >= 1, got {max_cached_prefixes!r}")
        if max_prefix_bytes < 0:
            raise ConfigError(f"max_prefix_bytes must be >= 0, got {max_prefix_bytes!r}")
        self.step = step
        self.tokenizer = tokenizer
        self.context_length = context_length
        self.device = torch.device(device if device is not None else "cpu")
        self.truncate = truncate
        self.prefix_cache = prefix_cache
        self.max_cached_prefixes = max_cached_prefixes
        self.stats = GenerationStats()
        self._cache = PrefixCache(max_prefix_bytes, max_cached_prefixes)
        vocab = int(tokenizer.vocab_size)
        # Id fed where a row has no real token (left pads, finished rows). LLaMA's pad is -1, which
        # must never index the embedding table, so fall back to EOS; the mask hides these anyway.
        self._filler = tokenizer.pad_id if 0 <= tokenizer.pad_id < vocab else tokenizer.eos_id
        self._pieces: PieceTable | None = None  # token texts for guided decoding, built on first use

    # ------------------------------------------------------------------ public API

    def generate(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: Sampling | None = None,
        *,
        context_key: Hashable | None = None,
        step: Step | None = None,
    ) -> list[Result]:
        """Complete each prompt (token ids, BOS included) and return one ``Result`` per prompt.

        ``step`` overrides the engine's step for this call (a model binding per-call inputs such as
        media into it); ``context_key`` must then identify those inputs for prefix reuse.
        """
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
            raise PromptError("generate expects a non-empty list of prompts, each a list of token ids")
        run = self._run(self._prepare(prompts, sampling), context_key, step or self.step)
        while True:
            try:
                next(run)
            except StopIteration as done:
                return done.value

    def stream(
        self,
        prompt: Sequence[int],
        sampling: Sampling | None = None,
        *,
        context_key: Hashable | None = None,
        step: Step | None = None,
    ) -> TextStream:
        """Complete one prompt, yielding text deltas as they become safe to show.

        The deltas join to exactly ``generate([prompt], sampling)[0].text`` (same settings and seed).
        Bad input raises here, before the first delta; ``.result`` holds the ``Result`` at the end.
        """
        job = self._prepare([prompt], sampling)

        def deltas() -> Iterator[str]:
            run = self._run(job, context_key, step or self.step)
            try:
                while True:
                    try:
                        events = next(run)
                    except StopIteration as done:
                        return done.value[0]
                    for _row, delta in events:
                        yield delta
            finally:
                run.close()  # a consumer that stops early still lets the engine keep its cache

        return TextStream(deltas())

    def stream_batch(
        self,
        prompts: Sequence[Sequence[int]],
        sampling: Sampling | None = None,
        *,
        step: Step | None = None,
    ) -> BatchStream:
        """Complete several prompts as ONE left-padded batch, yielding per decoding step a list of
        ``(row, text delta)``; ``.results`` holds one ``Result`` per prompt once exhausted.

        What a server needs to share forward passes between requests while streaming each its own
        text. Rows are independent (their own detokenizer, stop strings and finish); ``close()``
        stops decoding for all rows. No prefix reuse (B > 1 never uses the prefix cache).
        """
        if isinstance(prompts, (str, bytes)) or not isinstance(prompts, Sequence) or not prompts:
            raise PromptError("stream_batch expects a non-empty list of prompts, each a list of token ids")
        return BatchStream(self._run(self._prepare(prompts, sampling), None, step or self.step))

    def clear_cache(self) -> None:
        """Drop every cached prefix (e.g. after the model's weights changed)."""
        self._cache.clear()

    # ------------------------------------------------------------------ internals

    def _prepare(self, prompts: Sequence[Sequence[int]], sampling: Sampling | None) -> _Job:
        sampling = validate_sampling(sampling if sampling is not None else Sampling())
        budget = self.context_length - sampling.max_new_tokens  # room left for the prompt
        vocab = int(self.tokenizer.vocab_size)
        rows: list[list[int]] = []
        truncated: list[int] = []
        for n, prompt in enumerate(prompts):
            if isinstance(prompt, (str, bytes)):
                raise PromptError(f"prompt {n} is text; encode it first (tokenizer.encode)")
            try:
                ids = [int(i) for i in prompt]
            except (TypeError, ValueError):
                raise PromptError(
                    f"prompt {n} is not a list of token ids (got {type(prompt).__name__}"
                    f"{' of ' + type(prompt[0]).__name__ if isinstance(prompt, Sequence) and prompt else ''}); "
                    "generate takes a list of prompts, stream takes one prompt"
                ) from None
            if not ids:
                raise PromptError(f"prompt {n} is empty: need at least one token (usually BOS)")
            bad = [i for i in ids if not 0 <= i < vocab]
            if bad:
                raise PromptError(f"prompt {n} holds token ids {bad[:5]} outside the vocabulary [0, {vocab})")
            dropped = 0
            if len(ids) > budget:
                keep_bos = 1 if ids[0] == self.tokenizer.bos_id else 0
                if self.truncate == "error" or budget < keep_bos + 1:
                    raise ContextLengthError(
                        f"prompt {n} has {len(ids)} tokens and max_new_tokens is {sampling.max_new_tokens}: "
                        f"{len(ids) + sampling.max_new_tokens} > context length {self.context_length}"
                        + ("" if self.truncate == "error" else " even after truncating the prompt")
                    )
                dropped = len(ids) - budget
                ids = ids[:keep_bos] + ids[keep_bos + dropped :]
            rows.append(ids)
            truncated.append(dropped)
        row_guides(sampling.guide, len(rows))  # a bad guide fails here, before any decoding
        return _Job(rows, truncated, sampling)

    def _run(self, job: _Job, context_key: Hashable | None, step: Step):
        """Generator: yields per step a list of (row, text delta); returns the list of Results."""
        import torch

        prompts, sampling = job.prompts, job.sampling
        B, dev = len(prompts), self.device
        sampler = build_sampler(sampling)
        detoks = [Detokenizer(self.tokenizer, sampling.stop) for _ in range(B)]
        finish: list[FinishReason | None] = [None] * B
        guides = row_guides(sampling.guide, B)
        guided = any(g is not None for g in guides)
        forced: list[list[int]] = [[] for _ in range(B)]  # tokens of a chosen option still to emit

        # --- prefix reuse (B = 1): the best cached entry's KV (taken out, or a copy of its prefix,
        # so no two calls extend the same cache); ours is put back only if consistent.
        past, reused = None, 0
        use_cache = self.prefix_cache and context_key is not None and B == 1
        if use_cache:
            past, reused = self._cache.take(context_key, prompts[0])

        # --- prefill: left-pad to [B, T]; position ids count only real tokens.
        lengths = [len(p) - reused for p in prompts]
        T = max(lengths)
        ids = torch.full((B, T), self._filler, dtype=torch.long)
        mask = torch.zeros((B, reused + T), dtype=torch.long)
        for r, p in enumerate(prompts):
            ids[r, T - lengths[r] :] = torch.tensor(p[reused:], dtype=torch.long)
            mask[r, : reused] = 1
            mask[r, reused + T - lengths[r] :] = 1
        ids, mask = ids.to(dev), mask.to(dev)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # [B, reused + T]
        pos = positions[:, reused:]

        fed = list(prompts[0]) if use_cache else []  # ids whose KV the cache holds (row 0)
        consistent = False  # the cache matches ``fed`` (False while a step may be half-done)
        self.stats.calls += 1
        self.stats.prefill_tokens_computed += sum(lengths)
        self.stats.prefill_tokens_reused += reused * B
        try:
            with torch.inference_mode():
                logits, past = step(ids, mask, pos, past)
            consistent = True
            last_pos = positions[:, -1]  # [B]
            for _ in range(sampling.max_new_tokens):
                with torch.inference_mode():
                    last = self._last_logits(logits)  # [B, vocab]
                    if guided:
                        consistent = False  # scoring passes extend the cache, then crop it back
                        tokens, past = self._guided_tokens(
                            last, sampler, guides, detoks, finish, forced, step, past, mask, last_pos
                        )
                        consistent = True
                    else:
                        tokens = sampler(last)  # [B]
                events: list[tuple[int, str]] = []
                for r, tok in enumerate(tokens.tolist()):
                    if finish[r] is not None:
                        continue
                    if tok == self.tokenizer.eos_id:
                        finish[r] = "eos"
                        delta = detoks[r].flush()
                    else:
                        delta = detoks[r].push(tok)
                        if detoks[r].stopped:
                            finish[r] = "stop"
                        elif len(detoks[r].ids) >= sampling.max_new_tokens:
                            finish[r] = "length"
                            delta += detoks[r].flush()
                    if delta:
                        events.append((r, delta))
                if events:
                    yield events
                if all(f is not None for f in finish):
                    break
                # Finished rows keep stepping on a filler id; their outputs are ignored.
                feed = [t if f is None else self._filler for t, f in zip(tokens.tolist(), finish)]
                step_ids = torch.tensor(feed, dtype=torch.long, device=dev).unsqueeze(1)  # [B, 1]
                mask = torch.cat([mask, torch.ones((B, 1), dtype=torch.long, device=dev)], dim=1)
                last_pos = last_pos + 1
                consistent = False
                with torch.inference_mode():
                    logits, past = step(step_ids, mask, last_pos.unsqueeze(1), past)
                consistent = True
                fed.append(feed[0])
                self.stats.decode_tokens += sum(f is None for f in finish)
        finally:
            if use_cache and consistent and past is not None:
                self._cache.put(context_key, fed, past)

        return [
            Result(
                text=d.text,
                token_ids=list(d.ids),
                prompt_tokens=len(p),
                completion_tokens=len(d.ids),
                finish_reason=f or "length",
                truncated_tokens=job.truncated[r],
                reused_tokens=reused,
            )
            for r, (d, p, f) in enumerate(zip(detoks, prompts, finish))
        ]

    def _guided_tokens(self, last, sampler, guides, detoks, finish, forced, step, past, mask, last_pos):
        """This step's tokens [B] under the rows' guides (see ``guidance``), and the cache (unchanged
        in content: scoring passes are cropped off)."""
        if self._pieces is None or self._pieces.tokenizer is not self.tokenizer:
            self._pieces = PieceTable(self.tokenizer)
        eos = self.tokenizer.eos_id
        logits, picks, choices = last, {}, {}
        for r, guide in enumerate(guides):
            if guide is None or finish[r] is not None:
                continue
            if forced[r]:
                picks[r] = forced[r].pop(0)
                continue
            text = detoks[r].text
            rule = guide.constraint(text)
            if isinstance(rule, Choose):
                opts = [ids for o in rule.options if (ids := option_ids(self.tokenizer, rule.anchor, o))]
                if opts:
                    choices[r] = opts
            elif isinstance(rule, Filter):
                masked, swap = filter_pick(last[r], rule, text, self._pieces, eos)
                if swap is not None:
                    picks[r] = swap
                else:
                    logits = logits.clone() if logits is last else logits
                    logits[r] = masked
        if choices:
            scores, past = self._score_options(choices, last, step, past, mask, last_pos)
            for r, opts in choices.items():
                chosen = opts[int(sampler(scores[r].unsqueeze(0))[0])]
                picks[r], forced[r] = chosen[0], list(chosen[1:])
        tokens = sampler(logits)
        for r, tok in picks.items():
            tokens[r] = tok
        return tokens, past

    def _score_options(self, choices, last, step, past, mask, last_pos):
        """Log-probability of each option (token ids) of each row, given the row's text so far:
        ``{row: tensor [n_options]}``. Option j of every row is scored in one batched pass over the
        cache (rows without one are fed fillers, masked out); the pass is cropped off afterwards."""
        import torch

        B = mask.shape[0]
        first = torch.log_softmax(last, dim=-1)  # [B, vocab]
        scores = {r: [float(first[r, ids[0]]) for ids in opts] for r, opts in choices.items()}
        for j in range(max(len(opts) for opts in choices.values())):
            rows = [r for r, opts in choices.items() if j < len(opts) and len(opts[j]) > 1]
            if not rows:
                continue
            width = max(len(choices[r][j]) - 1 for r in rows)
            ids = torch.full((B, width), self._filler, dtype=torch.long)
            ext = torch.zeros((B, width), dtype=torch.long)
            for r in rows:
                fed = choices[r][j][:-1]  # the last token needs no logits after it
                ids[r, : len(fed)] = torch.tensor(fed, dtype=torch.long)
                ext[r, : len(fed)] = 1
            ids, ext = ids.to(self.device), ext.to(self.device)
            pos = last_pos.unsqueeze(1) + 1 + torch.arange(width, device=self.device)  # [B, width]
            logits, past = step(ids, torch.cat([mask, ext], dim=1), pos, past, logits_to_keep=0)
            past.crop(-width)  # transformers 5: a negative count removes that many trailing positions
            logp = torch.log_softmax(logits[..., : last.shape[-1]].float(), dim=-1)  # [B, width, vocab]
            for r in rows:
                seq = choices[r][j]
                scores[r][j] += float(sum(logp[r, t, seq[t + 1]] for t in range(len(seq) - 1)))
        return {r: torch.tensor(s, device=last.device) for r, s in scores.items()}, past

    def _last_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """[B, T, V] (any float dtype) → float32 [B, vocab] at the last position."""
        vocab = int(self.tokenizer.vocab_size)
        if logits.shape[-1] < vocab:
            raise TokenizerError(
                f"the model has {logits.shape[-1]} output logits but the tokenizer has {vocab} pieces: "
                "wrong tokenizer for this model"
            )
        # A model may pad its vocabulary (e.g. 32000 → 32128); ids past the tokenizer never win.
        return logits[:, -1, :vocab].float()


@dataclass
class _Job:
    prompts: list[list[int]]
    truncated: list[int]
    sampling: Sampling
