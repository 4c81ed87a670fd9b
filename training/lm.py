"""From-scratch language-model stage: train a small LLaMA's every weight on prompt → response pairs.

The official recipe starts from a pretrained LLaMA and tunes adapters; a model small enough to train on
two CPU cores has no pretrained base, so this stage (before the adapter phases) trains the whole LM —
embeddings, attention, MLPs, norms, head — of an ``ImageBindLLM``. The visual path (bind network,
prefix queries, zero-initialised gates) is left as built: with closed gates the visual token adds
nothing, and the adapter phases own it.

Each pair is tokenised exactly as the chat model will present it at run time: the prompt string alone
(BOS first), then the response (EOS last) — so a prompt ending in a forced prefill (``Action: ``) is
followed by the same tokens the model must produce there. The loss weights response tokens 1 and
prompt tokens ``prompt_loss_weight`` (a little prompt loss teaches the fixed prompt's structure, e.g.
that tool names recur, for free: the forward pass computes those logits anyway).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ibllm_agent.errors import ConfigError


@dataclass
class LMStageConfig:
    """Optimiser and schedule of the stage.

    batch_tokens: padded tokens per step (rows of similar length are batched together).
    time_budget_s: stop when the wall clock says so (``None``: run all ``steps``); the cosine schedule
        ends at whichever of ``steps`` and the budget comes first.
    autocast: ``"bfloat16"`` runs the forward under ``torch.autocast`` on the model's device (1.3–1.4×
        the tokens/s of fp32 on an AVX512-BF16 CPU); the loss, weights and optimiser stay fp32.
    """

    steps: int = 1000
    batch_tokens: int = 4096
    lr: float = 3e-3
    min_lr: float = 3e-4
    warmup: int = 50
    weight_decay: float = 0.01
    prompt_loss_weight: float = 0.1
    max_len: int = 512
    grad_clip: float = 1.0
    seed: int = 0
    time_budget_s: float | None = None
    log_every: int = 25
    autocast: str | None = None  # "bfloat16": mixed precision forward (fp32 master weights and optimiser)


@dataclass(frozen=True)
class Example:
    """One tokenised pair: ``ids`` [T] and how many of them are prompt (``n_prompt``)."""

    ids: tuple[int, ...]
    n_prompt: int


def encode_pairs(tokenizer, pairs: Sequence[tuple[str, str]], max_len: int) -> list[Example]:
    """(prompt, response) → ``Example``; pairs longer than ``max_len`` tokens are left out (a cut
    prompt would teach answers to questions the model never saw)."""
    out = []
    for prompt, response in pairs:
        p = tokenizer.encode(prompt, bos=True, eos=False)
        r = tokenizer.encode(response, bos=False, eos=True)
        if len(p) + len(r) <= max_len:
            out.append(Example(tuple(p + r), len(p)))
    if not out:
        raise ConfigError(f"no training pair fits max_len={max_len} tokens")
    return out


def _batches(examples: list[Example], batch_tokens: int, rng: random.Random):
    """Endless batches of similar-length examples: sort by length, cut into ≤ ``batch_tokens`` padded
    chunks, shuffle the chunks each epoch."""
    order = sorted(range(len(examples)), key=lambda i: len(examples[i].ids))
    while True:
        chunks, cur, longest = [], [], 0
        jitter = sorted(order, key=lambda i: len(examples[i].ids) + rng.random() * 8)
        for i in jitter:
            n = len(examples[i].ids)
            if cur and max(longest, n) * (len(cur) + 1) > batch_tokens:
                chunks.append(cur)
                cur, longest = [], 0
            cur.append(i)
            longest = max(longest, n)
        if cur:
            chunks.append(cur)
        rng.shuffle(chunks)
        yield from chunks


def _collate(examples: list[Example], idx: list[int], prompt_w: float, device: torch.device):
    """ids/mask/weights [B, T] (right padding with id 0, weight 0)."""
    t = max(len(examples[i].ids) for i in idx)
    ids = torch.zeros(len(idx), t, dtype=torch.long)
    mask = torch.zeros(len(idx), t, dtype=torch.long)
    w = torch.zeros(len(idx), t)
    for row, i in enumerate(idx):
        ex = examples[i]
        n = len(ex.ids)
        ids[row, :n] = torch.tensor(ex.ids)
        mask[row, :n] = 1
        w[row, : ex.n_prompt] = prompt_w
        w[row, ex.n_prompt : n] = 1.0
    return ids.to(device), mask.to(device), w.to(device)


def lr_at(step: int, cfg: LMStageConfig, elapsed_s: float = 0.0) -> float:
    """Linear warm-up, then a cosine to ``min_lr`` over whichever ends first: the ``steps`` or the
    ``time_budget_s`` (so a run cut by the clock still ends at the low learning rate)."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    frac = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    if cfg.time_budget_s:
        frac = max(frac, elapsed_s / cfg.time_budget_s)
    frac = min(1.0, frac)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1 + math.cos(math.pi * frac))


def train_lm(model, examples: list[Example], cfg: LMStageConfig,
             log: Callable[[str], None] | None = print) -> dict[str, float]:
    """Train ``model.lm`` in place (full parameters) on ``examples``; returns run figures
    (steps, seconds, tokens/s, final response loss). The model is left in ``inference`` phase."""
    lm = model.lm
    for p in model.parameters():
        p.requires_grad_(False)
    params = [p for p in lm.parameters()]
    for p in params:
        p.requires_grad_(True)
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(0.9, 0.98))
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    device = model.device
    if cfg.autocast not in (None, "bfloat16", "float16"):
        raise ConfigError(f"autocast must be None, 'bfloat16' or 'float16', got {cfg.autocast!r}")
    amp_dtype = getattr(torch, cfg.autocast) if cfg.autocast else None
    lm.train()
    batches = _batches(examples, cfg.batch_tokens, rng)
    start, tokens, ema, step = time.monotonic(), 0, None, 0
    for step in range(cfg.steps):
        if cfg.time_budget_s is not None and time.monotonic() - start > cfg.time_budget_s:
            break
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, time.monotonic() - start)
        ids, mask, w = _collate(examples, next(batches), cfg.prompt_loss_weight, device)
        # Visual input None: the bare LM (closed gates would add nothing anyway).
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            logits, _ = model(ids, attention_mask=mask)  # [B, T, V]
        nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
        wt = w[:, 1:].flatten()
        loss = (nll * wt).sum() / wt.sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()
        tokens += int(mask.sum())
        resp = (wt == 1.0)
        r_loss = nll.detach()[resp].mean().item() if resp.any() else float("nan")
        ema = r_loss if ema is None else 0.9 * ema + 0.1 * r_loss
        if log and (step % cfg.log_every == 0 or step == cfg.steps - 1):
            el = time.monotonic() - start
            log(f"step {step:5d}  lr {g['lr']:.2e}  response loss {ema:.4f}  {tokens / max(el, 1e-9):,.0f} tok/s  {el:.0f}s")
    elapsed = time.monotonic() - start
    model.set_phase("inference")
    return {"steps": step + 1, "seconds": elapsed, "tokens_per_s": tokens / max(elapsed, 1e-9),
            "response_loss": float(ema) if ema is not None else float("nan")}


__all__ = ["Example", "LMStageConfig", "encode_pairs", "lr_at", "train_lm"]
