"""Open-Chinese-LLaMA-7B from LLaMA-7B plus its published delta, in Meta layout.

The stable ImageBind-LLM 7B adapter was trained on Open-Chinese-LLaMA-7B, which is published only
as a delta over Meta's LLaMA-7B (``Cxxs/Open-Chinese-LLaMA``, ``7B_chinese_delta/``). The reference's
``tools/get_chinese_llama.py`` writes ``7B_chinese/``: ``params.json`` copied from the delta, and for
every tensor ``fp16(fp32(orig) + fp32(delta))``, skipping ``rope`` keys. Same tokenizer as LLaMA-7B.

``merge_delta`` does exactly that, one tensor at a time over memory-mapped inputs (peak memory: the
fp16 result, ~13.5 GB for 7B, plus one fp32 tensor), written to ``consolidated.00.pth.part`` and
renamed into place only when complete, so an interrupted merge never leaves a plausible-looking file.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from ibllm_agent.errors import CheckpointError

__all__ = ["merge_delta"]

_WEIGHTS = "consolidated.00.pth"


def _load(path: Path) -> dict:
    import torch

    if not path.is_file():
        raise CheckpointError(f"{path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for truncated/foreign files
        raise CheckpointError(f"cannot read {path}: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds {type(state).__name__}, not a dict of tensors (Meta layout)")
    return state


def merge_delta(base_dir: str | os.PathLike[str], delta_dir: str | os.PathLike[str],
                out_dir: str | os.PathLike[str], *, log: Callable[[str], None] | None = None) -> Path:
    """Write ``out_dir`` (``params.json`` + ``consolidated.00.pth``) = base + delta, fp16.

    ``base_dir``: Meta-layout LLaMA-7B (``llama/7B``); ``delta_dir``: the delta folder
    (``llama/7B_chinese_delta``). Every non-``rope`` tensor of the base must be in the delta with the
    same shape; anything else is a ``CheckpointError`` naming the key (nothing is written then).

    Returns the path of the merged weights file.
    """
    import torch

    base_dir, delta_dir, out_dir = Path(base_dir), Path(delta_dir), Path(out_dir)
    say = log or (lambda _msg: None)
    base = _load(base_dir / _WEIGHTS)
    delta = _load(delta_dir / _WEIGHTS)
    params = delta_dir / "params.json"
    if not params.is_file():
        raise CheckpointError(f"{params} does not exist (the delta's params.json)")
    keys = [k for k in base if "rope" not in k]
    missing = [k for k in keys if k not in delta]
    if missing:
        raise CheckpointError(f"the delta lacks {len(missing)} tensor(s) of the base, e.g. {missing[:3]}")
    for k in keys:
        if tuple(base[k].shape) != tuple(delta[k].shape):
            raise CheckpointError(
                f"tensor {k!r}: base {tuple(base[k].shape)} and delta {tuple(delta[k].shape)} differ in shape"
            )
    merged = {}
    for i, k in enumerate(keys):
        merged[k] = (base[k].float() + delta[k].float()).half()  # the reference's arithmetic
        if i % 50 == 0:
            say(f"merging {i + 1}/{len(keys)}: {k}")
    out_dir.mkdir(parents=True, exist_ok=True)
    dest = out_dir / _WEIGHTS
    part = dest.with_name(dest.name + ".part")
    torch.save(merged, part)
    shutil.copyfile(params, out_dir / "params.json")
    os.replace(part, dest)
    say(f"wrote {dest} ({len(keys)} tensors)")
    return dest
