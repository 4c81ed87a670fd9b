"""The LM stage in several CPU processes on one machine: DDP over gloo, gradients averaged.

A model as small as the demo LLaMA leaves PyTorch's intra-op threads idle much of a step: on 2 cores,
two 1-thread processes run 1.13× the tokens/s of one 2-thread process, 1.27× when compiled
(``benchmarks/demo_lm.py``).
``train_lm`` hands over here when ``LMStageConfig.processes`` > 1:

- every process draws the same batch order and takes every ``world``-th batch of
  ``batch_tokens / world`` tokens, so a step still sees ``batch_tokens`` and the recipe's
  hyper-parameters keep their meaning;
- rank 0's clock sets the learning rate and the stop for all (one small all-reduce a step), so the
  replicas take the same steps at the same rates and stay equal;
- the processes are spawned with the caller's ``model``: torch shares its tensors through shared
  memory, rank 0 trains them in place (the trained weights are in ``model`` when the call returns),
  the other ranks train deep copies that DDP keeps equal.

Spawning re-imports the caller's ``__main__``: a script that trains this way needs the usual
``if __name__ == "__main__":`` guard. ``log`` reaches rank 0 when it can be pickled (a module-level
function); otherwise rank 0 prints.
"""

from __future__ import annotations

import copy
import gc
import pickle
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from ibllm_agent.errors import ConfigError


class ProcessGroup:
    """What ``train_lm`` needs of the process group: who it is, the DDP wrapper, agreement on the
    clock and a token count."""

    def __init__(self, rank: int, world: int, start: float):
        self.rank, self.world = rank, world
        self.start = start  # the parent's time.monotonic() when it spawned the processes
        self.wrapper = None

    def wrap(self, lm: torch.nn.Module) -> torch.nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        # find_unused_parameters: the gates and other injection weights inside the LM get no gradient
        # on text-only batches.
        self.wrapper = DistributedDataParallel(lm, broadcast_buffers=False, find_unused_parameters=True)
        return self.wrapper

    def agree(self, elapsed: float, stop: bool) -> tuple[float, bool]:
        """(rank 0's elapsed seconds, whether any rank is out of time)."""
        t = torch.tensor([elapsed if self.rank == 0 else 0.0, float(stop)], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t[0]), bool(t[1] > 0)

    def replicas_equal(self, params: list[torch.Tensor]) -> bool:
        """Whether every replica holds the same weights (per-tensor sums, compared exactly)."""
        mine = torch.stack([p.detach().double().sum() for p in params])
        every = [torch.empty_like(mine) for _ in range(self.world)]
        dist.all_gather(every, mine)
        return all(torch.equal(every[0], other) for other in every[1:])

    def total(self, tokens: int) -> int:
        t = torch.tensor([float(tokens)], dtype=torch.float64)
        dist.all_reduce(t)
        return int(t[0])


def _printer(message: str) -> None:
    print(message, flush=True)


def _worker(rank: int, world: int, threads: int, init: str, start: float, model, examples, cfg, log,
            results) -> None:
    from ibllm_agent.training.lm import train_lm

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    group = ProcessGroup(rank, world, start)
    try:
        if rank:  # its own replica; rank 0 trains the caller's (shared) tensors
            model = copy.deepcopy(model)
        stats = train_lm(model, examples, cfg, log if rank == 0 else None, group=group)
        if rank == 0:
            results.put(stats)
    finally:
        # Drop the DDP wrapper (and its pending gloo work) before the group goes: destroyed after it,
        # at interpreter exit, it aborts the process now and then (see training.engine).
        group.wrapper = None
        gc.collect()
        dist.destroy_process_group()


def train_lm_processes(model, examples, cfg, log: Callable[[str], None] | None) -> dict[str, Any]:
    """``train_lm`` in ``cfg.processes`` spawned processes of ``torch.get_num_threads() / processes``
    threads each; returns rank 0's figures (tokens/s counts every process)."""
    import torch.multiprocessing as mp

    if cfg.copy_steps:
        raise ConfigError("the copy warm-up (copy_steps) runs in one process: set processes=1 or copy_steps=0")
    if model.device.type != "cpu":
        raise ConfigError(f"processes > 1 trains on the CPU (gloo); the model is on {model.device}")
    threads = max(1, torch.get_num_threads() // cfg.processes)
    if log is not None:
        try:
            pickle.dumps(log)
        except (pickle.PicklingError, AttributeError, TypeError):
            log = _printer
    results = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory(prefix="ibllm-ddp-") as tmp:
        init = (Path(tmp) / "store").as_uri()
        mp.spawn(_worker, args=(cfg.processes, threads, init, time.monotonic(), model, examples, cfg, log, results),
                 nprocs=cfg.processes, join=True)
    stats = results.get()
    model.set_phase("inference")
    return stats


__all__ = ["ProcessGroup", "train_lm_processes"]
