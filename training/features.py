"""The ``encode`` step: ImageBind features of a data set computed ONCE (the encoder is frozen), stored as
float16 shards keyed by the image's content hash, then read by stage-1/2 training instead of images.

Store layout (``<dir>/``)::

    index.json        {"format": 1, "dim": D, "encoder": preset, "encoder_weights": name|null,
                       "shards": ["00000", ...], "rows": n, "placeholder": [D floats]}
    00000.f16         float16 [rows, D], row i = fused feature of key i (L2-normalised, weight 1/(1+1e-6),
                      exactly what the model's media path feeds the bind network)
    00000.keys        one sha256 hex key per line
    refs.jsonl        {"ref": path or shard:member, "size", "mtime", "key"}: lets training find a file's key
                      without re-reading it (a changed file is re-hashed)

Shards are written to temporary names and renamed, and ``index.json`` is replaced last, so an interrupted
encode leaves a valid store of the shards finished so far; rerunning continues with the missing keys.
``placeholder`` is the feature of the all-zero image (the reference's text-only input), so training from
a store never needs the encoder.
"""

from __future__ import annotations

import json
import os
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ibllm_agent.errors import IbllmError
from ibllm_agent.model.fusion import WEIGHT_EPS
from ibllm_agent.training.data.dataset import content_key, read_image_bytes
from ibllm_agent.training.data.records import DataError, TarMember

INDEX = "index.json"
REFS = "refs.jsonl"
SHARD_ROWS = 65536
_LOAD_ERRORS = (IbllmError, OSError, ValueError, SyntaxError, EOFError)


_ENCODERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def frozen_encoder(model: Any) -> Any:
    """The frozen ImageBind paired with ``model`` (its official file, the checkpoint's
    ``encoder.safetensors`` or a preset's seeded init), on the model's device; loaded once per model."""
    if "encoder" in dir(type(model)):  # the model still owns its encoder (before the media-stage split)
        return model.encoder
    enc = _ENCODERS.get(model)
    if enc is None:
        from ibllm_agent.model.checkpoint import load_encoder

        enc = load_encoder(model.config, model.checkpoint_dir, getattr(model, "encoder_seed", 0))
        p = next(model.parameters())
        enc = _ENCODERS[model] = enc.to(device=p.device, dtype=model.lm.lm_head.weight.dtype)
    return enc


def image_features(model: Any, pixels: torch.Tensor) -> torch.Tensor:
    """pixels [N, 3, H, W] -> fused features [N, D] fp32 (L2-normalised ImageBind embedding times the
    single-input weight 1/(1+1e-6), as ``fusion.fuse``). The ONE place training calls the encoder;
    it becomes ``MediaEncoder.encode`` when the media stage lands."""
    enc = frozen_encoder(model)
    p = next(enc.parameters())
    with torch.no_grad():
        emb = enc.encode("image", pixels.to(p.device, p.dtype)).float()
    return F.normalize(emb, dim=-1) * (1.0 / (1.0 + WEIGHT_EPS))


def placeholder_feature(model: Any) -> torch.Tensor:
    """Feature of the all-zero image [D] fp32: the reference's input for text-only examples."""
    size = int(getattr(getattr(frozen_encoder(model), "config", None), "image_size", 224))
    return image_features(model, torch.zeros(1, 3, size, size))[0].cpu()


def _ref_name(ref: Path | TarMember) -> str:
    return f"{ref.shard.resolve()}:{ref.name}" if isinstance(ref, TarMember) else str(Path(ref).resolve())


def _ref_stat(ref: Path | TarMember) -> tuple[int, float]:
    st = os.stat(ref.shard if isinstance(ref, TarMember) else ref)
    return (ref.size if isinstance(ref, TarMember) else st.st_size), st.st_mtime


class FeatureStore:
    """Read access to a store (all shards memory-mapped)."""

    def __init__(self, folder: str | Path):
        self.dir = Path(folder)
        path = self.dir / INDEX
        if not path.is_file():
            raise DataError(f"{self.dir} is not a feature store (no {INDEX}); run `ibllm-agent train encode` first")
        self.index = json.loads(path.read_text(encoding="utf-8"))
        self.dim = int(self.index["dim"])
        self.rows: dict[str, tuple[np.ndarray, int]] = {}
        for name in self.index["shards"]:
            keys = (self.dir / f"{name}.keys").read_text(encoding="ascii").split()
            arr = np.memmap(self.dir / f"{name}.f16", dtype=np.float16, mode="r", shape=(len(keys), self.dim))
            for i, k in enumerate(keys):
                self.rows[k] = (arr, i)
        self.refs: dict[str, dict] = {}
        if (self.dir / REFS).is_file():
            for line in (self.dir / REFS).read_text(encoding="utf-8").splitlines():
                if line.strip():
                    r = json.loads(line)
                    self.refs[r["ref"]] = r

    @property
    def placeholder(self) -> torch.Tensor:
        return torch.tensor(self.index["placeholder"], dtype=torch.float32)

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def key_for(self, ref: Path | TarMember) -> str:
        """The content key of an image file; from ``refs.jsonl`` when the file is unchanged."""
        r = self.refs.get(_ref_name(ref))
        if r is not None:
            size, mtime = _ref_stat(ref)
            if r["size"] == size and r["mtime"] == mtime:
                return r["key"]
        return content_key(ref)

    def get(self, key: str, where: str = "") -> torch.Tensor:
        if key not in self.rows:
            raise DataError(f"{where}: image (sha256 {key[:12]}…) is not in the feature store {self.dir}; "
                            "run `ibllm-agent train encode` on this data")
        arr, i = self.rows[key]
        return torch.from_numpy(np.asarray(arr[i], dtype=np.float32))

    def check_model(self, model_config: Any) -> None:
        """Refuse a store made by another encoder / width before any compute."""
        if self.dim != model_config.visual_dim:
            raise DataError(f"feature store {self.dir} holds {self.dim}-d features but the model's bind network "
                            f"takes visual_dim={model_config.visual_dim}")
        if self.index.get("encoder") != model_config.encoder:
            raise DataError(f"feature store {self.dir} was encoded with ImageBind preset {self.index.get('encoder')!r}, "
                            f"the model uses {model_config.encoder!r}")


@dataclass
class EncodeReport:
    out_dir: Path
    images: int  # distinct images referenced by the data
    encoded: int  # newly encoded this run
    reused: int  # already in the store
    unreadable: int
    unreadable_examples: list[str]
    seconds: float

    def summary(self) -> str:
        return (f"{self.images} distinct image(s): encoded {self.encoded}, already stored {self.reused}, "
                f"unreadable {self.unreadable}; {self.seconds:.1f}s -> {self.out_dir}")


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def encode_store(refs: list[Path | TarMember], model: Any, out_dir: str | Path, *, batch_size: int = 32,
                 shard_rows: int = SHARD_ROWS, progress: Callable[[int], None] | None = None) -> EncodeReport:
    """Encode every distinct image of ``refs`` not yet in the store at ``out_dir`` (created if needed)."""
    from ibllm_agent import media

    t0 = time.perf_counter()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    index_path = out / INDEX
    dim = int(model.config.visual_dim)
    if index_path.is_file():
        store = FeatureStore(out)
        store.check_model(model.config)
        index, have, ref_lines = store.index, set(store.rows), dict(store.refs)
    else:
        index = {"format": 1, "dim": dim, "encoder": model.config.encoder,
                 "encoder_weights": model.config.encoder_weights, "shards": [], "rows": 0,
                 "placeholder": placeholder_feature(model).tolist()}
        have, ref_lines = set(), {}
    todo: list[tuple[str, Path | TarMember]] = []
    seen: set[str] = set()
    unreadable: list[str] = []
    n_images = reused = 0
    for ref in dict.fromkeys(refs):
        try:
            key = content_key(ref)
            size, mtime = _ref_stat(ref)
        except OSError as exc:
            unreadable.append(f"{_ref_name(ref)}: {exc}")
            continue
        ref_lines[_ref_name(ref)] = {"ref": _ref_name(ref), "size": size, "mtime": mtime, "key": key}
        if key in seen:
            continue
        seen.add(key)
        n_images += 1
        if key in have:
            reused += 1
        else:
            todo.append((key, ref))
    keys: list[str] = []
    rows: list[np.ndarray] = []
    encoded = 0

    def flush() -> None:
        nonlocal keys, rows
        if not keys:
            return
        name = f"{len(index['shards']):05d}"
        _write_atomic(out / f"{name}.f16", np.concatenate(rows).astype(np.float16).tobytes())
        _write_atomic(out / f"{name}.keys", ("\n".join(keys) + "\n").encode("ascii"))
        index["shards"].append(name)
        index["rows"] += len(keys)
        _write_atomic(out / REFS, "".join(json.dumps(r) + "\n" for r in ref_lines.values()).encode("utf-8"))
        _write_atomic(index_path, json.dumps(index).encode("utf-8"))  # last: the shard now counts
        keys, rows = [], []

    for a in range(0, len(todo), batch_size):
        batch = todo[a:a + batch_size]
        pix, ok = [], []
        for key, ref in batch:
            try:
                pix.append(media.load(read_image_bytes(ref), "image"))
                ok.append(key)
            except _LOAD_ERRORS as exc:
                unreadable.append(f"{_ref_name(ref)}: {exc}")
        if pix:
            feats = image_features(model, torch.stack(pix)).cpu().numpy()
            keys.extend(ok)
            rows.append(feats)
            encoded += len(ok)
        if progress is not None:
            progress(len(batch))
        if len(keys) >= shard_rows:
            flush()
    flush()
    if not index_path.is_file():  # nothing to encode: still a valid (empty) store with its placeholder
        _write_atomic(out / REFS, "".join(json.dumps(r) + "\n" for r in ref_lines.values()).encode("utf-8"))
        _write_atomic(index_path, json.dumps(index).encode("utf-8"))
    return EncodeReport(out, n_images, encoded, reused, len(unreadable), unreadable[:20],
                        time.perf_counter() - t0)


def encode_data(cfg: Any, out_dir: str | Path | None = None, *, batch_size: int = 32) -> EncodeReport:
    """The ``encode`` step of a recipe: every image of ``cfg.data`` -> the store at ``out_dir`` (default:
    ``cfg.features``), encoded by the ImageBind of ``cfg.model``. Resumable; one process."""
    from ibllm_agent.training.data.dataset import load_examples
    from ibllm_agent.training.engine import build_model

    from ibllm_agent.errors import ConfigError

    target = out_dir or cfg.features
    if not target:
        raise ConfigError("encode needs an output folder: set `features` in the config or pass --features DIR")
    device = torch.device(cfg.device) if cfg.device else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = build_model(cfg, device, None)
    examples, report = load_examples(cfg.data, cfg.data_format, cfg.image_root, cfg.template, cfg.on_error)
    refs = [ex.image for ex in examples if ex.image is not None]
    if not refs:
        raise DataError(f"the data has no images to encode ({report.summary()})")
    bar = None
    if cfg.progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(set(refs)), desc="encode", unit="img")
    try:
        return encode_store(refs, model, target, batch_size=batch_size,
                            progress=None if bar is None else bar.update)
    finally:
        if bar is not None:
            bar.close()
