"""The training loop: one process per device under torchrun (DDP over NCCL on GPUs, gloo on CPU).

Semantics (reference §6, with the reference's quirks fixed where noted):
- trainable set = ``model.set_phase(phase)`` (§6.1), trainables fp32; frozen weights in the autocast dtype
  on GPU (bf16 by default), fp32 on CPU (no autocast).
- loss = cross-entropy of logits[:, :-1] vs labels[:, 1:] over answer tokens, averaged over ALL answer
  tokens of the global batch (all ranks x all accumulation micro-batches). Each rank back-propagates
  ``sum_ce * world / n_tokens_global`` and DDP averages, so N processes with batch b give exactly the
  gradient of one process with batch N·b (the reference averaged per-rank means instead).
- AdamW betas (0.9, 0.95); no weight decay on 1-D parameters and biases; lr = blr·eff_batch/256;
  lr set every optimizer step from the fractional epoch: linear warm-up, then half cosine to min_lr.
- data order: ``DistributedSampler(shuffle, seed)`` per epoch, resumable mid-epoch; per-rank RNG seeds
  seed + rank; optional gradient clipping (the reference only measured the norm).
"""

from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import random
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler

from ibllm_agent.errors import CheckpointError, ConfigError
from ibllm_agent.training import checkpoint as ckpt
from ibllm_agent.training.configs import TrainConfig
from ibllm_agent.training.data.dataset import IGNORE_INDEX, DataReport, TrainDataset, collate, load_examples
from ibllm_agent.training.data.records import DataError
from ibllm_agent.training.step import _Step, build_model, shard_fsdp


@dataclass
class TrainResult:
    """What ``run`` returns (rank 0 has the exports)."""

    output_dir: Path
    stage: str
    steps: int
    losses: list[float]  # every optimizer step of THIS process's run (global token-mean loss)
    checkpoint: Path | None
    release: Path | None = None  # export/imagebind_llm.pth
    model_dir: Path | None = None  # export/model
    data: DataReport = field(default_factory=DataReport)
    tokens: int = 0  # input tokens fed by all ranks
    seconds: float = 0.0  # whole run (setup, steps, saves, export)
    train_seconds: float = 0.0  # the steps only: data loading, (encoding,) forward/backward, optimizer
    world_size: int = 1
    lr: float = 0.0


def lr_at(epoch: float, cfg: TrainConfig, base_lr: float) -> float:
    """Per-iteration schedule of the reference (``adjust_learning_rate``) at fractional epoch ``epoch``."""
    if epoch < cfg.warmup_epochs:
        return base_lr * epoch / cfg.warmup_epochs
    span = cfg.epochs - cfg.warmup_epochs
    progress = 0.0 if span <= 0 else (epoch - cfg.warmup_epochs) / span
    return cfg.min_lr + (base_lr - cfg.min_lr) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Reference rule: 1-D parameters and ``*.bias`` get no decay (gates [1,h,1,1] and prefix_query do)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [{"params": no_decay, "weight_decay": 0.0}, {"params": decay, "weight_decay": weight_decay}]


def gate_magnitude(model: nn.Module) -> float:
    """Mean |tanh(gate)| over every injected layer's heads (0 = visual path silent)."""
    vals = [torch.tanh(_full(p.detach()).float()).abs().mean() for n, p in model.named_parameters() if n.endswith(".gate")]
    return float(torch.stack(vals).mean()) if vals else 0.0


def _full(t: torch.Tensor) -> torch.Tensor:
    """A sharded DTensor gathered (collective: call on every rank); plain tensors unchanged."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if hasattr(t, "to_local") else t


class ResumableSampler(DistributedSampler):
    """``DistributedSampler`` that can start an epoch at a given position of this rank's index list."""

    def __init__(self, *args: Any, **kw: Any):
        super().__init__(*args, **kw)
        self.start = 0

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start:])

    def __len__(self) -> int:
        return super().__len__() - self.start


# ------------------------------------------------------------------------------------ setup


@dataclass
class _Dist:
    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool


def _setup_dist(cfg: TrainConfig) -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cfg.device:
        device = torch.device(cfg.device)
    elif torch.cuda.is_available():
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if world > 1 and cfg.strategy == "none":
        raise ConfigError(f"strategy 'none' but launched with WORLD_SIZE={world}")
    owns = False
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return _Dist(rank, world, local, device, owns)


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _amp_dtype(cfg: TrainConfig, device: torch.device) -> torch.dtype | None:
    if cfg.precision == "fp32" or (cfg.precision == "auto" and device.type != "cuda"):
        return None
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError("precision fp16 needs a CUDA device (use bf16 or fp32 on CPU)")
    return torch.float16 if cfg.precision == "fp16" else torch.bfloat16


def _check_compatible(cfg: TrainConfig, model: Any, examples: list, store: Any) -> None:
    """Refuse phase/weights/data combinations that cannot train what the stage is for, before any compute."""
    with_images = sum(ex.image is not None for ex in examples)
    if cfg.stage == "pretrain" and with_images == 0:
        raise ConfigError("stage pretrain trains the visual path (bind network, prefix, gates) but the data has "
                          "no images; use image-text pairs (TSV or WebDataset shards)")
    if cfg.phase == "finetune" and with_images and cfg.check_pretrained and gate_magnitude(model) == 0.0:
        raise ConfigError(
            f"stage {cfg.stage} freezes the gates, and every gate of {cfg.model!r} is zero: the model was never "
            "pre-trained, so its images would be ignored. Run stage pretrain first (or set init_adapter to a "
            "pre-trained release such as 7B-pretrained.pth; check_pretrained: false to train anyway)"
        )
    if store is not None:
        store.check_model(model.config)


# ------------------------------------------------------------------------------------ the run


class Trainer:
    def __init__(self, cfg: TrainConfig):
        self.cfg = cfg
        self.d = _setup_dist(cfg)
        self.out = Path(cfg.output_dir)
        self.amp = _amp_dtype(cfg, self.d.device)

    def _all_sum(self, x: torch.Tensor) -> torch.Tensor:
        if self.d.world > 1:
            x = x.to(self.d.device if self.d.device.type == "cuda" else "cpu")
            dist.all_reduce(x)
        return x

    def run(self) -> TrainResult:
        try:
            return self._run()
        finally:  # also after an error, so a later run in this process starts a fresh group
            # Free the DDP/FSDP wrapper first: gloo work objects it still holds, destroyed at interpreter
            # exit after the group is gone, abort the process (SIGABRT, "terminate called without an
            # active exception") now and then.
            self.step_mod = None
            gc.collect()
            if self.d.owns_group and dist.is_initialized():
                dist.destroy_process_group()

    def _run(self) -> TrainResult:
        cfg, d = self.cfg, self.d
        t0 = time.perf_counter()
        examples, report = load_examples(cfg.data, cfg.data_format, cfg.image_root, cfg.template, cfg.on_error)
        _seed_all(cfg.seed)  # model init identical on every rank
        model = build_model(cfg, d.device, self.amp if d.device.type == "cuda" else None)
        store = None
        if cfg.features:
            from ibllm_agent.training.features import FeatureStore

            store = FeatureStore(cfg.features)
        _check_compatible(cfg, model, examples, store)
        if model.tokenizer is None:
            raise ConfigError(f"model {cfg.model!r} has no tokenizer.model")
        ds = TrainDataset(examples, model.tokenizer, cfg.max_words, store=store, augment=cfg.augment, report=report)
        if len(ds) == 0:
            raise DataError(f"no usable training examples: {report.summary()}"
                            + (f"; first errors: {report.errors[:3]}" if report.errors else ""))
        sampler = ResumableSampler(ds, num_replicas=d.world, rank=d.rank, shuffle=True, seed=cfg.seed)
        micro_per_epoch = len(sampler) // cfg.batch_size
        steps_per_epoch = micro_per_epoch // cfg.accum_iter
        if steps_per_epoch < 1:
            raise ConfigError(f"{len(ds)} examples cannot fill one optimizer step of {cfg.batch_size} x "
                              f"{cfg.accum_iter} x {d.world} processes")
        total = math.ceil(cfg.epochs * steps_per_epoch)
        stop_at = min(total, cfg.max_steps) if cfg.max_steps else total
        base_lr = cfg.effective_lr(d.world)
        names = [n for n, p in model.named_parameters() if p.requires_grad]
        scaler = torch.amp.GradScaler("cuda") if self.amp == torch.float16 else None

        start, resumed = 0, None
        resume_from = self._resume_source()
        if resume_from is not None:  # trainables go in before sharding, the optimizer state after
            start, resumed = self._restore(resume_from, model, names, len(ds))
        else:
            _seed_all(cfg.seed + d.rank)  # per-rank streams (augmentation); a resume restores the saved ones
        self.fsdp = cfg.strategy == "fsdp" and d.world > 1
        step_mod: nn.Module = _Step(model, sharded=self.fsdp)
        if self.fsdp:
            step_mod = shard_fsdp(step_mod, model, self.amp)
        elif d.world > 1:
            from torch.nn.parallel import DistributedDataParallel as DDP

            step_mod = DDP(step_mod, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        self.step_mod = step_mod
        # After sharding: under FSDP the parameters are now sharded DTensors.
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(param_groups(model, cfg.weight_decay), lr=base_lr, betas=tuple(cfg.betas))
        if resumed is not None:
            self._restore_optimizer(opt, resumed, resume_from)

        placeholder = self._placeholder(model, store)
        loader = DataLoader(ds, batch_size=cfg.batch_size, sampler=sampler, collate_fn=collate, drop_last=True,
                            num_workers=cfg.num_workers, pin_memory=d.device.type == "cuda")
        logger = None
        if d.rank == 0:
            from ibllm_agent.training.logs import MetricsLogger

            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
            (self.out / "data_report.json").write_text(json.dumps(asdict(report), indent=2) + "\n")
            logger = MetricsLogger(self.out, resume_step=start, tensorboard=cfg.tensorboard,
                                   wandb_project=cfg.wandb_project, config=cfg.to_dict())
        bar = None
        if cfg.progress and d.rank == 0:
            from tqdm.auto import tqdm

            bar = tqdm(total=stop_at, initial=start, desc=f"train {cfg.stage}", unit="step")
        losses: list[float] = []
        tokens_total = 0
        train_seconds = 0.0
        last_ckpt = resume_from
        step = start
        try:
            while step < stop_at:
                epoch, window = divmod(step, steps_per_epoch)
                sampler.set_epoch(epoch)
                sampler.start = window * cfg.accum_iter * cfg.batch_size
                batches = iter(loader)
                for _ in range(window, steps_per_epoch):
                    if step >= stop_at:
                        break
                    tw = time.perf_counter()
                    micro = [next(batches) for _ in range(cfg.accum_iter)]
                    lr = lr_at(step / steps_per_epoch, cfg, base_lr)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    loss, ntok = self._window(step_mod, model, micro, placeholder, scaler)
                    if scaler is not None:
                        scaler.unscale_(opt)
                    grad_norm = _local(torch.nn.utils.clip_grad_norm_(params, cfg.clip_grad or float("inf")))
                    if scaler is not None:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    opt.zero_grad(set_to_none=True)
                    train_seconds += time.perf_counter() - tw
                    step += 1
                    losses.append(loss)
                    tokens_total += ntok
                    log_now = step % cfg.log_every == 0 or step == stop_at
                    gates = gate_magnitude(model) if log_now else 0.0  # collective under FSDP: every rank
                    if logger is not None and log_now:
                        logger.log({"step": step, "epoch": step / steps_per_epoch, "loss": loss, "lr": lr,
                                    "grad_norm": float(grad_norm), "gate_abs": gates,
                                    "tokens_per_s": ntok / max(time.perf_counter() - tw, 1e-9),
                                    "seconds": time.perf_counter() - t0})
                    if bar is not None:
                        bar.update(1)
                        bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
                    if step % cfg.save_every == 0 or step == stop_at:
                        last_ckpt = self._save(step, model, opt, names, len(ds), scaler)
        finally:
            if bar is not None:
                bar.close()
            if logger is not None:
                logger.close()
        result = TrainResult(self.out, cfg.stage, step, losses, last_ckpt, data=report, tokens=tokens_total,
                             world_size=d.world, lr=base_lr, train_seconds=train_seconds)
        if cfg.export:
            full = self._full_model(model)  # collective under FSDP
            if d.rank == 0:
                result.release, result.model_dir = ckpt.export_release(full, self.out / "export")
        if d.world > 1:
            dist.barrier()
        result.seconds = time.perf_counter() - t0
        return result

    # ---------------------------------------------------------------------------- one optimizer step
    def _window(self, step_mod: nn.Module, model: Any, micro: list[dict], placeholder: torch.Tensor,
                scaler: Any) -> tuple[float, int]:
        """Forward/backward of the accumulation window -> (global token-mean loss, tokens fed by all ranks)."""
        d = self.d
        n_local = sum(int((b["labels"][:, 1:] != IGNORE_INDEX).sum()) for b in micro)
        n_tok = int(self._all_sum(torch.tensor([n_local], dtype=torch.float64))[0])
        ce_sum = torch.zeros((), dtype=torch.float64)
        for i, b in enumerate(micro):
            sync = contextlib.nullcontext()
            last = i == len(micro) - 1
            if self.fsdp:
                step_mod.set_requires_gradient_sync(last)
            elif d.world > 1 and not last:
                sync = step_mod.no_sync()
            feats, active = self._visual(model, b, placeholder)
            ids, labels = b["input_ids"].to(d.device), b["labels"].to(d.device)
            with sync:
                autocast = (torch.autocast(d.device.type, dtype=self.amp) if self.amp is not None
                            else contextlib.nullcontext())
                with autocast:
                    logits = step_mod(ids, feats, active)
                ce = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1),
                                     ignore_index=IGNORE_INDEX, reduction="sum")
                loss = ce * d.world / n_tok if n_tok else logits.sum() * 0.0
                (scaler.scale(loss) if scaler is not None else loss).backward()
            ce_sum += ce.detach().double().cpu()
        fed = sum(int(b["n_tokens"]) for b in micro)
        ce_total, fed_total = self._all_sum(torch.stack([ce_sum, torch.tensor(float(fed), dtype=torch.float64)])).tolist()
        return (ce_total / n_tok if n_tok else 0.0), int(fed_total)

    def _visual(self, model: Any, b: dict, placeholder: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """-> features [B, D] fp32 on device (placeholder for rows without an image), active [B] bool."""
        has = b["has_image"]
        bsz = has.shape[0]
        if b["features"] is not None:
            f = b["features"].clone()
        else:
            f = torch.zeros(bsz, placeholder.shape[-1])
            if b["pixels"] is not None:
                from ibllm_agent.training.features import image_features

                f[has] = image_features(model, b["pixels"]).cpu()
        f[~has] = placeholder
        active = has | (model.config.text_only == "zero_image")
        return f.to(self.d.device), active.to(self.d.device)

    def _placeholder(self, model: Any, store: Any) -> torch.Tensor:
        if model.config.text_only == "off":
            return torch.zeros(model.config.visual_dim)
        if store is not None:
            return store.placeholder
        from ibllm_agent.training.features import placeholder_feature

        return placeholder_feature(model)

    # ---------------------------------------------------------------------------- checkpoints
    def _resume_source(self) -> Path | None:
        r = self.cfg.resume
        if r == "never":
            return None
        if r == "auto":
            return ckpt.latest_checkpoint(self.out / "checkpoints")
        p = Path(r)
        if not p.is_dir():
            raise CheckpointError(f"resume checkpoint {r} not found")
        return p

    def _state(self, step: int, names: list[str], n_examples: int) -> dict[str, Any]:
        return {"step": step, "stage": self.cfg.stage, "phase": self.cfg.phase, "trainable": names,
                "world": self.d.world, "examples": n_examples, "strategy": self._strategy_kind(), "format": 1}

    def _save(self, step: int, model: Any, opt: Any, names: list[str], n_examples: int, scaler: Any) -> Path | None:
        rng = ckpt.rng_state()
        if self.d.world > 1:
            states: list[Any] = [None] * self.d.world
            dist.all_gather_object(states, rng)
        else:
            states = [rng]
        if self.fsdp:  # full (unsharded) tensors gathered to rank 0; optimizer state keyed by parameter name
            from torch.distributed.checkpoint.state_dict import (
                StateDictOptions,
                get_model_state_dict,
                get_optimizer_state_dict,
            )

            opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
            full = get_model_state_dict(self.step_mod, options=opts)
            optim = get_optimizer_state_dict(self.step_mod, opt, options=opts)
            tensors = {n: full.get(f"model.{n}") for n in names}
        else:
            own = dict(model.named_parameters())
            tensors, optim = {n: own[n] for n in names}, opt.state_dict()
        path = None
        if self.d.rank == 0:
            state = self._state(step, names, n_examples)
            state.update(optimizer=optim, rng=states, scaler=scaler.state_dict() if scaler is not None else None)
            path = ckpt.save_checkpoint(self.out / "checkpoints", step, tensors, state, keep=self.cfg.keep_checkpoints)
        if self.d.world > 1:
            dist.barrier()
        return path if path is not None else ckpt.latest_checkpoint(self.out / "checkpoints")

    def _full_model(self, model: Any) -> Any:
        """The model with full tensors for export (under FSDP: an unsharded copy on rank 0's CPU)."""
        if not self.fsdp:
            return model
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(self.step_mod, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        if self.d.rank != 0:
            return None
        copy = build_model(self.cfg, torch.device("cpu"), None)
        copy.load_state_dict({k[len("model."):]: v for k, v in full.items()}, strict=True)
        return copy

    def _restore(self, folder: Path, model: Any, names: list[str], n_examples: int) -> tuple[int, dict]:
        """Trainables + RNG from ``folder`` (before sharding) -> (step, the saved state)."""
        trainable, state = ckpt.load_checkpoint(folder)
        expect = self._state(0, names, n_examples)
        for key in ("stage", "phase"):
            if state.get(key) != expect[key]:
                raise CheckpointError(f"checkpoint {folder} is from stage {state.get('stage')!r} ({state.get('phase')}), "
                                      f"this run is {self.cfg.stage!r} ({self.cfg.phase}); use resume: never or another output_dir")
        if state.get("trainable") != names or set(trainable) != set(names):
            raise CheckpointError(f"checkpoint {folder} trains a different parameter set than this model")
        if state.get("examples") != n_examples:
            raise CheckpointError(f"checkpoint {folder} was trained on {state.get('examples')} examples, the data now "
                                  f"gives {n_examples}: the data position cannot be restored")
        if state.get("strategy", "ddp") != self._strategy_kind():
            raise CheckpointError(f"checkpoint {folder} was written by a {state.get('strategy')} run; resume it with "
                                  f"strategy {'fsdp' if state.get('strategy') == 'fsdp' else 'ddp/none'}")
        own = dict(model.named_parameters())
        with torch.no_grad():
            for n in names:
                if own[n].shape != trainable[n].shape:
                    raise CheckpointError(f"checkpoint {folder}: {n} has shape {tuple(trainable[n].shape)}, "
                                          f"model {tuple(own[n].shape)}")
                own[n].copy_(trainable[n])
        rng = state.get("rng") or []
        if state.get("world") == self.d.world and len(rng) == self.d.world:
            ckpt.set_rng_state(rng[self.d.rank])
        else:
            _seed_all(self.cfg.seed + self.d.rank + int(state["step"]))
        return int(state["step"]), state

    def _restore_optimizer(self, opt: Any, state: dict, folder: Path) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.step_mod, opt, optim_state_dict=state["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            opt.load_state_dict(state["optimizer"])

    def _strategy_kind(self) -> str:
        return "fsdp" if self.cfg.strategy == "fsdp" and self.d.world > 1 else "ddp"
