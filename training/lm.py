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

import itertools
import math
import random
import time
from collections.abc import Callable, Sequence
from contextlib import contextmanager
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
    copy_steps / copy_target / copy_layers: a copy warm-up before the pairs. Tool calls are mostly
        copies (the file from the request, the tool from the list, the value from the request), which
        needs induction heads; a model trained from scratch on the pairs alone does not form them in
        the budget (it answers the commonest file or object instead). The warm-up trains on
        ``repeat_rows`` only, for at most ``copy_steps`` or until the copy accuracy (EMA) reaches
        ``copy_target``. With ``copy_layers`` = k it trains the first k layers only (cheaper steps; in
        probes a 2-layer model formed the heads after 375 steps for one seed, a 4-layer one after
        ~575, and other seeds took longer); the layers above then start as identities (zero output
        projections), so the grown model computes the same function and keeps the heads.
    compile: ``torch.compile`` the LM for the training steps (dynamic shapes, so batches of every
        length share one graph): one compilation (~30 s on 2 CPU cores for the demo model, ~60 s with
        two processes). Needs a C++ compiler (Inductor's CPU backend).
    processes: data-parallel CPU processes (``training.data_parallel``). A step still sees
        ``batch_tokens`` (each process ``batch_tokens / processes``). Spawned: a script that calls
        this needs the ``if __name__ == "__main__":`` guard. On 2 cores, for the demo model
        (``benchmarks/demo_lm.py``, steady tokens/s): compiled 1.10×, two eager 1-thread processes
        1.13×, both 1.27× one eager 2-thread process; in the demo recipe's 20 minutes, 1.15× and
        1.70× the steps (2,351 and 3,474 against 2,040).
    copy_rows: repeat rows beside every batch of pairs after the warm-up (their loss added), so
        the pairs' large early gradients do not wipe the fresh heads out.
    copy_len / copy_batch / copy_seg / copy_gap: tokens per repeat row; rows per warm-up step; longest
        repeated segment; most random tokens between a segment and its repeat. Short rows leave the
        plateau sooner (plausibly: attention over fewer positions gives the right key more gradient):
        32-token rows reached 0.24 copy accuracy in 400 steps where 96-token rows (same tokens per step)
        were at 0.04, but stalled there; repeats at once (gap 0) learn sooner than with gaps of up
        to 8 tokens (0.02 against 0.004 after 275 steps).
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
    compile: bool = False
    processes: int = 1
    copy_steps: int = 0
    copy_target: float = 0.9
    copy_layers: int | None = None
    copy_rows: int = 0
    copy_len: int = 96
    copy_batch: int = 48
    copy_seg: int = 16
    copy_gap: int = 0


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


def repeat_rows(n: int, length: int, low: int, high: int, gen: torch.Generator,
                min_seg: int = 4, max_seg: int = 16, max_gap: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Copy rows: ids [n, length] of random tokens in ``[low, high)`` made of chunks ``seg gap seg``
    (a random segment of ``min_seg``..``max_seg`` tokens, 0..``max_gap`` random tokens, the segment
    again), and weights [n, length] = 1 on each repeated token after the first (the first is not
    predictable). Segment lengths and gaps vary, so the only way to predict a repeat is to find the
    earlier occurrence of the current token and read what followed it: an induction head."""
    ids = torch.randint(low, high, (n, length), generator=gen)
    w = torch.zeros(n, length)

    def draw(lo: int, hi: int) -> int:
        return int(torch.randint(lo, hi + 1, (1,), generator=gen))

    for row in range(n):
        pos = draw(0, max_gap)
        while True:
            seg, gap = draw(min_seg, max_seg), draw(0, max_gap)
            if pos + 2 * seg + gap > length:
                break
            dst = pos + seg + gap
            ids[row, dst:dst + seg] = ids[row, pos:pos + seg]
            w[row, dst + 1:dst + seg] = 1.0
            pos = dst + seg
    return ids, w


@contextmanager
def first_layers(lm, k: int | None):
    """Run ``lm`` (a ``LlamaForCausalLM``) with its first ``k`` decoder layers only (None: all)."""
    layers = lm.model.layers
    if k is None or k >= len(layers):
        yield
        return
    lm.model.layers = torch.nn.ModuleList(list(layers)[:k])
    try:
        yield
    finally:
        lm.model.layers = layers


@contextmanager
def training_lm(model, compile: bool, group=None):
    """``model.lm`` replaced while inside by its training wrappers: ``group.wrap`` (data parallel), then
    ``torch.compile`` (dynamic shapes: batches of every length share one graph). The wrappers share the
    parameters; the plain module is put back on exit, so checkpoints keep their keys."""
    lm = model.lm
    wrapped = group.wrap(lm) if group is not None else lm
    if compile:
        wrapped = torch.compile(wrapped, dynamic=True)
    model.lm = wrapped
    try:
        yield
    finally:
        model.lm = lm


def identity_layers(lm, start: int) -> None:
    """Zero the output projections (attention ``o_proj``, MLP ``down_proj``) of layers ``start``..:
    each then adds nothing to the residual stream, so the model computes what its first ``start``
    layers did; training grows them from there (their gradients are not zero)."""
    with torch.no_grad():
        for layer in list(lm.model.layers)[start:]:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
            for mod in (layer.self_attn.o_proj, layer.mlp.down_proj):
                if getattr(mod, "bias", None) is not None:
                    mod.bias.zero_()


def _weighted_nll(model, ids, w, mask, amp_dtype, hits: bool = False):
    """(mean weighted NLL, per-token NLL [N], weights [N], argmax hits [N] or None) of next-token
    prediction."""
    with torch.autocast(ids.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
        logits, _ = model(ids, attention_mask=mask)  # [B, T, V]
    nll = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten(), reduction="none")
    wt = w[:, 1:].flatten()
    right = (logits[:, :-1].argmax(-1).flatten() == ids[:, 1:].flatten()).float() if hits else None
    return (nll * wt).sum() / wt.sum().clamp_min(1e-9), nll.detach(), wt, right


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
             log: Callable[[str], None] | None = print, *, group=None) -> dict[str, float]:
    """Train ``model.lm`` in place (full parameters) on ``examples``; returns run figures
    (steps, seconds, tokens/s, final response loss). The model is left in ``inference`` phase.
    With ``cfg.processes`` > 1 the steps run in spawned processes (``training.data_parallel``, which
    calls back here with its ``group``)."""
    if cfg.processes > 1 and group is None:
        from ibllm_agent.training.data_parallel import train_lm_processes

        return train_lm_processes(model, examples, cfg, log)
    rank, world = (group.rank, group.world) if group is not None else (0, 1)
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
    # Every process draws the same batch order and takes every world-th batch of batch_tokens/world.
    batches = itertools.islice(_batches(examples, max(1, cfg.batch_tokens // world), rng), rank, None, world)
    gen = torch.Generator().manual_seed(cfg.seed)
    low = 1 + max(i for i in (lm.config.bos_token_id, lm.config.eos_token_id, lm.config.pad_token_id, 0)
                  if isinstance(i, int))
    vocab = lm.config.vocab_size

    def copy_batch(n: int):
        ids, w = repeat_rows(n, cfg.copy_len, low, vocab, gen, max_seg=cfg.copy_seg, max_gap=cfg.copy_gap)
        return ids.to(device), w.to(device)

    def clock() -> float:
        return time.monotonic() - start

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        opt.step()

    # Processes count from their parent's start (CLOCK_MONOTONIC is machine-wide): spawning is in the budget.
    start = group.start if group is not None else time.monotonic()
    tokens, ema, done, total = 0, None, 0, 0
    copy_acc = None
    with first_layers(lm, cfg.copy_layers):  # the copy warm-up: its steps are the first ``total``
        while total < cfg.copy_steps:
            if (cfg.time_budget_s is not None and clock() > cfg.time_budget_s) or (
                    copy_acc is not None and copy_acc >= cfg.copy_target):
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(total, cfg, clock())
            ids, w = copy_batch(cfg.copy_batch)
            loss, _, wt, hits = _weighted_nll(model, ids, w, None, amp_dtype, hits=True)
            update(loss)
            tokens += ids.numel()
            acc = float((hits * wt).sum() / wt.sum())
            copy_acc = acc if copy_acc is None else 0.8 * copy_acc + 0.2 * acc
            if log and total % cfg.log_every == 0:
                log(f"copy {total:5d}  lr {g['lr']:.2e}  loss {loss.item():.4f}  accuracy {copy_acc:.3f}  "
                    f"{tokens / max(clock(), 1e-9):,.0f} tok/s  {clock():.0f}s")
            total += 1
    copy_steps = total
    if cfg.copy_steps and cfg.copy_layers is not None:
        identity_layers(lm, cfg.copy_layers)
    with training_lm(model, cfg.compile, group):  # the pairs (the copy warm-up stays eager, unwrapped)
        for step in range(cfg.steps):
            el = clock()
            stop = cfg.time_budget_s is not None and el > cfg.time_budget_s
            if group is not None:  # rank 0's clock sets every replica's lr and stop: they stay equal
                el, stop = group.agree(el, stop)
            if stop:
                break
            for g in opt.param_groups:
                g["lr"] = lr_at(total, cfg, el)
            ids, mask, w = _collate(examples, next(batches), cfg.prompt_loss_weight, device)
            # Visual input None: the bare LM (closed gates would add nothing anyway).
            loss, nll, wt, _ = _weighted_nll(model, ids, w, mask, amp_dtype)
            if cfg.copy_rows:
                c_ids, c_w = copy_batch(cfg.copy_rows)
                loss = loss + _weighted_nll(model, c_ids, c_w, None, amp_dtype)[0]
                tokens += c_ids.numel()
            update(loss)
            total += 1
            done += 1
            tokens += int(mask.sum())
            resp = (wt == 1.0)
            r_loss = nll[resp].mean().item() if resp.any() else float("nan")
            ema = r_loss if ema is None else 0.9 * ema + 0.1 * r_loss
            if log and (step % cfg.log_every == 0 or step == cfg.steps - 1):
                el = clock()
                log(f"step {step:5d}  lr {g['lr']:.2e}  response loss {ema:.4f}  "
                    f"{world * tokens / max(el, 1e-9):,.0f} tok/s  {el:.0f}s")
    elapsed = time.monotonic() - start
    model.set_phase("inference")
    stats = {"steps": done, "seconds": elapsed, "tokens_per_s": tokens / max(elapsed, 1e-9),
             "response_loss": float(ema) if ema is not None else float("nan"),
             "copy_steps": copy_steps, "copy_accuracy": float(copy_acc) if copy_acc is not None else None}
    if group is not None:
        stats["tokens_per_s"] = group.total(tokens) / max(elapsed, 1e-9)
        stats["processes"] = world
        stats["replicas_equal"] = group.replicas_equal(params)
    return stats


__all__ = ["Example", "LMStageConfig", "encode_pairs", "first_layers", "identity_layers", "lr_at", "repeat_rows",
           "train_lm", "training_lm"]
