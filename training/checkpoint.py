"""Training checkpoints (atomic, exactly resumable) and the release exports.

Layout under ``<output_dir>/checkpoints/``::

    step-00000040/trainable.safetensors   the trainable parameters (fp32), by model state-dict name
    step-00000040/state.pt                optimizer state, step, data position, RNG states of every rank,
                                          stage/phase/trainable names (torch.save; read weights_only=True)
    latest                                the name of the newest COMPLETE checkpoint folder

A checkpoint is written into ``.tmp-step-…`` and renamed into place only when every file is written and
fsynced; ``latest`` is then replaced atomically. A killed run or a full disk therefore leaves at worst a
``.tmp-*`` folder (ignored, removed by the next save), never a half-written checkpoint as the latest.

Exports (rank 0, end of training): ``export/imagebind_llm.pth`` — ``{'model': {...}}`` in the official
release layout (``image_bind_*``, ``prefix_query.weight``, ``llama.layers.{i}.attention.gate`` …, Meta RoPE
row order), exactly the keys the reference's ``convert_ckpt.py`` keeps — and ``export/model/``
(``ImageBindLLM.save_pretrained``: loadable with ``ImageBindLLM.from_pretrained`` / ``load_model``).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from ibllm_agent.errors import CheckpointError

LATEST = "latest"
TRAINABLE = "trainable.safetensors"
STATE = "state.pt"


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_file(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def save_checkpoint(root: str | Path, step: int, trainable: dict[str, torch.Tensor], state: dict[str, Any],
                    keep: int = 2) -> Path:
    """Write checkpoint ``step`` atomically and point ``latest`` at it; keep the newest ``keep``."""
    from safetensors.torch import save_file

    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    for stale in root.glob(".tmp-*"):  # left by a killed save
        shutil.rmtree(stale, ignore_errors=True)
    final = root / step_name(step)
    tmp = root / f".tmp-{step_name(step)}-{os.getpid()}"
    try:
        tmp.mkdir()
        save_file({k: v.detach().to("cpu").contiguous() for k, v in trainable.items()}, str(tmp / TRAINABLE))
        torch.save(state, tmp / STATE)
        for f in (TRAINABLE, STATE):
            _fsync_file(tmp / f)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        _fsync_dir(root)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(final.name + "\n", encoding="utf-8")
        _fsync_file(pointer)
        os.replace(pointer, root / LATEST)
        _fsync_dir(root)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        prev = latest_checkpoint(root)
        raise CheckpointError(
            f"cannot write checkpoint {final}: {exc.strerror or exc}; "
            + (f"{prev.name} remains the latest checkpoint" if prev else "no earlier checkpoint exists")
        ) from exc
    for old in sorted(p for p in root.glob("step-*") if p.is_dir())[:-keep]:
        if old != final:
            shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(root: str | Path) -> Path | None:
    """The folder ``latest`` names, if it is complete; else the newest complete ``step-*``; else None."""
    root = Path(root)
    pointer = root / LATEST
    if pointer.is_file():
        cand = root / pointer.read_text(encoding="utf-8").strip()
        if (cand / TRAINABLE).is_file() and (cand / STATE).is_file():
            return cand
    done = sorted(p for p in root.glob("step-*") if (p / TRAINABLE).is_file() and (p / STATE).is_file())
    return done[-1] if done else None


def load_checkpoint(folder: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    from ibllm_agent.model.checkpoint import read_safetensors

    folder = Path(folder)
    if not (folder / STATE).is_file():
        raise CheckpointError(f"{folder} is not a training checkpoint (no {STATE})")
    trainable = read_safetensors(folder / TRAINABLE)
    try:
        state = torch.load(folder / STATE, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch.load raises many types for damaged files
        raise CheckpointError(f"cannot read {folder / STATE}: {type(exc).__name__}: {exc}") from None
    return trainable, state


# ------------------------------------------------------------------------------------------ RNG


def rng_state() -> dict[str, Any]:
    """This process's RNG states as tensors/plain values (readable with ``weights_only=True``)."""
    import random

    import numpy as np

    np_state = np.random.get_state()
    out = {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict[str, Any]) -> None:
    import random

    import numpy as np

    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------ exports


def official_adapter(model: Any) -> dict[str, torch.Tensor]:
    """The model's adapter tensors in the official release layout (``convert_ckpt.py`` key set)."""
    from ibllm_agent.model.checkpoint import is_adapter_key
    from ibllm_agent.model.convert import hf_to_meta_rows, ours_key_to_official

    c = model.config
    if c.injected_layers is not None and c.injected_layers != list(range(c.num_layers - len(c.layers), c.num_layers)):
        raise CheckpointError(f"injected_layers {c.injected_layers} cannot be written in the official layout")
    out = {}
    for name, t in model.state_dict().items():
        if not is_adapter_key(name):
            continue
        key, rows = ours_key_to_official(name)
        t = t.detach().to("cpu")
        if rows is not None:
            t = hf_to_meta_rows(t, c.num_heads if rows == "q" else c.num_kv_heads)
        out[key] = t.contiguous()
    return out


def export_release(model: Any, out_dir: str | Path) -> tuple[Path, Path]:
    """-> (``imagebind_llm.pth``, ``model/``) under ``out_dir`` (written via temporary names)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    release = out / "imagebind_llm.pth"
    tmp = out / ".imagebind_llm.pth.tmp"
    torch.save({"model": official_adapter(model)}, tmp)
    os.replace(tmp, release)
    folder, tmp_dir = out / "model", out / ".model.tmp"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    phase = model.config.phase
    model.config.phase = "inference"  # the exported folder loads ready for generation
    try:
        model.save_pretrained(tmp_dir)
    finally:
        model.config.phase = phase
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp_dir, folder)
    return release, folder
