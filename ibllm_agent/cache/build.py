"""Build a cache from image folders, WebDataset shards or feature files, resumably.

Progress lives in ``OUT/.build/``:

    state.json     sources, encoder, items done, rows written, skipped images (replaced atomically)
    features.f16   float16 rows appended batch by batch
    ids.jsonl      one id per row

After every encoded batch the rows are flushed and fsynced, then state.json is replaced, so after a
crash (or Ctrl-C) a rerun with the same sources truncates the files to the recorded rows and
continues at the recorded item. When every item is done the index is built and the finished cache
is swapped into ``OUT`` atomically (``ibllm_agent.cache.store``), which also removes ``.build``.

Unreadable images are skipped *and counted*: the count and the first ``MAX_SKIPPED_LISTED`` ids with
their reasons go into state.json, the cache's meta.json and the returned ``BuildReport``.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ibllm_agent.cache import store
from ibllm_agent.cache.index import IndexKind, IndexPlan, plan_index
from ibllm_agent.cache.planner import DEFAULT_RECALL, RecallReport, build_planned
from ibllm_agent.cache.sources import FeatureChunk, Source, iter_items, resolve_sources
from ibllm_agent.errors import CacheDimensionError, CacheError, EmptyCacheError, IbllmError

STATE = "state.json"
MAX_SKIPPED_LISTED = 1000
# What a loader may raise for a bad image (MediaError is an IbllmError; PIL raises OSError & co.).
_LOAD_ERRORS = (IbllmError, OSError, ValueError, SyntaxError, EOFError)


@dataclass
class BuildReport:
    """What a build did: rows cached, images skipped (count + first reasons), time, index."""

    out_dir: Path
    rows: int
    items: int
    skipped: int
    skipped_examples: list[dict[str, str]] = field(default_factory=list)
    resumed_from: int = 0
    seconds: float = 0.0
    plan: IndexPlan | None = None
    recall: RecallReport | None = None

    def summary(self) -> str:
        text = f"cached {self.rows} features from {self.items} items into {self.out_dir}"
        if self.resumed_from:
            text += f" (resumed at item {self.resumed_from})"
        text += f"; skipped {self.skipped} unreadable"
        if self.plan is not None:
            text += f"; index {self.plan.kind}"
            if self.plan.kind != "flat" and self.plan.nprobe:
                text += f" nprobe={self.plan.nprobe} refine={self.plan.refine}"
        if self.recall is not None:
            text += f"; {self.recall.summary()}"
        return text + f"; {self.seconds:.1f} s"


# --------------------------------------------------------------------------------- encoder / loader
def load_encoder(spec: Any, device: Any = None) -> tuple[Callable[[Any], Any], str]:
    """(images [B,3,224,224] → feats [B,D], name) from a spec.

    - a callable: used as is (any function of a float tensor batch).
    - ``"tiny"``/``"tiny_w3d"``: the random-init tiny ImageBind preset, seed 0 (tests, demos).
    - another preset name (``"huge"``, ``"huge_w3d"``): official weights from the weights directory.
    - a path: an official ImageBind checkpoint file.

    ``device``: a torch device or a string (``cpu``, ``cuda:0``, ``auto``), checked with
    ``ibllm_agent.config.resolve_device``.
    """
    if callable(spec):
        return spec, getattr(spec, "__name__", type(spec).__name__)
    import torch

    from ibllm_agent.encoders import PRESETS, ImageBind

    if device is not None and not isinstance(device, torch.device):
        from ibllm_agent.config import resolve_device

        device = resolve_device(str(device))  # ConfigError for "foo" or a GPU this machine lacks
    name = str(spec)
    if name.startswith("tiny") and name in PRESETS:
        model = ImageBind.from_preset(name, device=device, seed=0)
    elif name in PRESETS:
        model = ImageBind.from_official(None, preset=name, device=device)
    elif Path(name).expanduser().is_file():
        model = ImageBind.from_official(Path(name).expanduser(), device=device)
    else:
        raise CacheError(f"unknown encoder {name!r}: expected one of {', '.join(sorted(PRESETS))} or a checkpoint file")

    @torch.inference_mode()
    def encode(images: Any) -> Any:
        return model.encode("image", images.to(device=model.device, dtype=model.dtype))

    return encode, name


def default_loader(payload: Path | bytes) -> Any:
    """An image file or its bytes → float32 [3,224,224] via ``ibllm_agent.media`` (reference transform)."""
    from ibllm_agent import media

    return media.load(payload, "image")


# --------------------------------------------------------------------------------- state
def _source_name(s: Source) -> str:
    """What the user named: the folder, shard or feature file (a single image's own path, not the
    folder it sits in, which ``Source.path`` holds so ids stay relative)."""
    return str(s.files[0]) if s.kind == "images" and len(s.files) == 1 and s.files[0].parent == s.path else str(s.path)


def _fingerprint(sources: list[Source], encoder: str) -> dict[str, Any]:
    return {"sources": [_source_name(s) for s in sources] + [f"{s.kind}:{s.count}" for s in sources],
            "encoder": encoder}


def _write_state(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(state), encoding="utf-8")
    with open(tmp, "rb") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _read_state(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None  # a state we cannot read is a build we cannot resume: start over


class _Writer:
    """Appends rows to features.f16 / ids.jsonl and checkpoints state.json after each flush."""

    def __init__(self, build_dir: Path, state: dict[str, Any]):
        self.dir, self.state = build_dir, state
        self.feat_path, self.ids_path = build_dir / store.FEATURES, build_dir / store.IDS
        dim, rows = state.get("dim"), int(state["rows"])
        # Drop anything written after the last checkpoint (a crash between write and checkpoint).
        with open(self.feat_path, "ab") as fh:
            fh.truncate(rows * int(dim or 0) * 2)
        with open(self.ids_path, "ab") as fh:
            fh.truncate(int(state["ids_bytes"]))
        self.feat_fh = open(self.feat_path, "ab")  # noqa: SIM115 - closed by close()
        self.ids_fh = open(self.ids_path, "ab")  # noqa: SIM115

    def append(self, feats: np.ndarray, ids: Sequence[str], consumed: int, skipped: list[dict[str, str]]) -> None:
        """feats [m,D] float32 (already unit rows) for ``ids``; ``consumed`` items incl. ``skipped``."""
        st = self.state
        if len(ids):
            if st.get("dim") is None:
                st["dim"] = int(feats.shape[1])
            elif feats.shape[1] != st["dim"]:
                raise CacheDimensionError(
                    f"features of dimension {feats.shape[1]} (for {ids[0]!r}) do not match the "
                    f"{st['dim']}-d features already in this cache"
                )
            self.feat_fh.write(np.ascontiguousarray(feats, dtype=np.float16).tobytes())
            self.ids_fh.write("".join(json.dumps(i, ensure_ascii=False) + "\n" for i in ids).encode("utf-8"))
            for fh in (self.feat_fh, self.ids_fh):
                fh.flush()
                os.fsync(fh.fileno())
        st["rows"] += len(ids)
        st["ids_bytes"] = self.ids_fh.tell()
        st["done"] += consumed
        st["skipped_count"] += len(skipped)
        room = MAX_SKIPPED_LISTED - len(st["skipped"])
        st["skipped"].extend(skipped[: max(room, 0)])
        _write_state(self.dir / STATE, st)

    def close(self) -> None:
        self.feat_fh.close()
        self.ids_fh.close()


def _unit_rows(x: Any, what: str) -> np.ndarray:
    """Encoder/file output → float32 [m,D] with unit rows (zero rows stay zero)."""
    if type(x).__module__.split(".")[0] == "torch":
        x = x.detach().to("cpu").float().numpy()
    arr = np.asarray(x, dtype=np.float32)
    if arr.ndim != 2:
        raise CacheDimensionError(f"{what} must be [m, D] features, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise CacheError(f"{what} contains NaN or infinite values")
    return arr / np.maximum(np.linalg.norm(arr, axis=1, keepdims=True), 1e-12)


# --------------------------------------------------------------------------------- build
def build_cache(
    sources: Sequence[str | Path] | str | Path,
    out_dir: str | Path,
    *,
    encoder: Any = "huge_w3d",
    loader: Callable[[Path | bytes], Any] | None = None,
    batch_size: int = 64,
    memory_budget: int | None = None,
    index: IndexKind | None = None,
    resume: bool = True,
    progress: bool = True,
    device: Any = None,
    recall: float | None = DEFAULT_RECALL,
) -> BuildReport:
    """Encode every image in ``sources`` (feature files are copied in) and save a cache at ``out_dir``.

    ``encoder``: callable images [B,3,224,224] → [B,D], or a spec for ``load_encoder`` (loaded only if
    there are images left to encode). ``loader``: image file/bytes → [3,224,224] tensor (default
    ``ibllm_agent.media.load``). Rows are stored L2-normalised. ``resume=False`` discards an
    unfinished build in ``out_dir``; with ``resume=True`` a build of *different* sources there is an
    error rather than a silent restart. ``recall``: recall@10 target the search plan is measured to
    reach (``ibllm_agent.cache.planner``; None = the sizing rules, unmeasured).
    """
    t0 = time.perf_counter()
    if recall is not None:
        from ibllm_agent.cache.planner import check_target

        check_target(recall)  # a bad target fails before encoding, not after
    if int(batch_size) < 1:
        raise CacheError(f"batch size must be >= 1, got {batch_size!r}")
    srcs = resolve_sources(sources)
    total = sum(s.count for s in srcs)
    enc_name = encoder if isinstance(encoder, str) else getattr(encoder, "__name__", type(encoder).__name__)
    out = Path(out_dir).absolute()
    store.check_replaceable(out)  # fail before encoding anything, not after
    bdir = out / store.BUILD_DIR
    fp = _fingerprint(srcs, str(enc_name))
    state = _read_state(bdir / STATE) if resume else None
    if state is not None and state.get("fingerprint") != fp:
        raise CacheError(
            f"{out} holds an unfinished build of other sources or another encoder "
            f"({state.get('fingerprint', {}).get('sources', [])[:3]}...); rerun with --restart "
            "(resume=False) to discard it, or choose another output directory"
        )
    if state is None:
        shutil.rmtree(bdir, ignore_errors=True)
        bdir.mkdir(parents=True)
        state = {"fingerprint": fp, "done": 0, "rows": 0, "ids_bytes": 0, "dim": None,
                 "skipped_count": 0, "skipped": []}
        _write_state(bdir / STATE, state)
    resumed_from = int(state["done"])

    writer = _Writer(bdir, state)
    load = loader or default_loader
    encode: Callable[[Any], Any] | None = None
    from tqdm.auto import tqdm

    bar = tqdm(total=total, initial=resumed_from, disable=not progress, unit="img", desc="encoding", dynamic_ncols=True)
    batch_ids: list[str] = []
    batch_imgs: list[Any] = []
    pending_skips: list[dict[str, str]] = []
    pending_items = 0

    def flush() -> None:
        nonlocal encode, batch_ids, batch_imgs, pending_skips, pending_items
        feats = np.zeros((0, int(state.get("dim") or 0)), np.float32)
        if batch_imgs:
            import torch

            if encode is None:
                encode, _ = load_encoder(encoder, device)
            x = torch.stack([torch.as_tensor(im).reshape(3, *torch.as_tensor(im).shape[-2:]) for im in batch_imgs])
            feats = _unit_rows(encode(x), f"encoder output for {batch_ids[0]!r}..")
            if feats.shape[0] != len(batch_ids):
                raise CacheError(f"encoder returned {feats.shape[0]} features for a batch of {len(batch_ids)} images")
        writer.append(feats, batch_ids, pending_items, pending_skips)
        bar.update(pending_items)
        batch_ids, batch_imgs, pending_skips, pending_items = [], [], [], 0

    try:
        for item in iter_items(srcs, start=resumed_from):
            if isinstance(item, FeatureChunk):
                if pending_items:
                    flush()
                feats = _unit_rows(item.features, f"features {item.ids[0]!r}..")
                writer.append(feats, item.ids, len(item.ids), [])
                bar.update(len(item.ids))
                continue
            pending_items += 1
            img, reason = None, item.error
            if item.payload is not None:
                try:
                    img = load(item.payload)
                except _LOAD_ERRORS as exc:
                    reason = str(exc) or type(exc).__name__
            if img is None:
                pending_skips.append({"id": item.id, "reason": reason or "unreadable"})
            else:
                batch_ids.append(item.id)
                batch_imgs.append(img)
            if len(batch_imgs) >= batch_size:
                flush()
        if pending_items:
            flush()
    finally:
        writer.close()
        bar.close()

    rows, dim = int(state["rows"]), state.get("dim")
    if rows == 0:
        raise EmptyCacheError(
            f"no features from {', '.join(_source_name(s) for s in srcs)}: {state['skipped_count']} of {total} "
            f"items were unreadable (first: {state['skipped'][:3]})"
        )
    features = store.open_features(bdir / store.FEATURES, rows, int(dim))
    first = plan_index(rows, int(dim), memory_budget, index)
    ibar = tqdm(total=rows, disable=not progress, unit="vec", desc=f"indexing ({first.kind})", dynamic_ncols=True)
    faiss_index, plan, recall_report = build_planned(
        features, memory_budget=memory_budget, kind=index, recall=recall, progress=ibar.update
    )
    ibar.close()
    seconds = time.perf_counter() - t0
    meta = {
        "count": rows,
        "dim": int(dim),
        "dtype": "float16",
        "index": plan.to_dict(),
        "sources": [_source_name(s) for s in srcs],
        "items": total,
        "skipped": {"count": int(state["skipped_count"]), "items": state["skipped"]},
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    if memory_budget is not None:
        meta["memory_budget"] = int(memory_budget)
    if recall_report is not None:
        meta["recall"] = recall_report.to_dict()
    if any(s.kind in ("images", "tar") for s in srcs):
        # Only when images were encoded: precomputed feature files say nothing about the encoder,
        # and `cache query DIR image.jpg` must not silently encode with one that did not make them.
        meta["encoder"] = str(enc_name)
    del features
    store.save_cache_dir(out, meta=meta, index=faiss_index, features_file=bdir / store.FEATURES,
                         ids_file=bdir / store.IDS)
    return BuildReport(out, rows, total, int(state["skipped_count"]), list(state["skipped"]), resumed_from,
                       seconds, plan, recall_report)
