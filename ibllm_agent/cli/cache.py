"""``ibllm-agent cache build|info|tune|query``: make, inspect and re-plan visual caches (``ibllm_agent.cache``)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Annotated

import typer

from ibllm_agent.errors import CacheError, IbllmError
from ibllm_agent.sizes import format_size, parse_size


def _sleeping_openmp_waiters() -> None:
    """OpenMP threads that spin while waiting make faiss many times slower on shared cores (measured:
    17 s vs 0.3 s to train a small IVF-PQ on a busy 2-core box). Must run before faiss/torch load
    OpenMP; an explicit OMP_WAIT_POLICY in the environment wins."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def _fail(exc: IbllmError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def register(app: typer.Typer) -> None:
    cache_app = typer.Typer(
        name="cache", no_args_is_help=True,
        help="Visual cache of ImageBind image features (cache-enhanced encoding): build, info, tune, query.",
    )
    app.add_typer(cache_app, name="cache")

    @cache_app.command("build")
    def build_command(
        sources: Annotated[list[str], typer.Argument(
            help="Image folders, WebDataset .tar shards (img2dataset), images, .npy/.parquet feature files or globs.",
            show_default=False)],
        out: Annotated[Path, typer.Option("--out", "-o", help="Cache directory to write (replaced atomically).")],
        encoder: Annotated[str, typer.Option(
            help="ImageBind to encode with: a preset (huge_w3d, huge: official weights; tiny: random, for tests) "
                 "or a checkpoint path.")] = "huge_w3d",
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Images per encoder batch.")] = 64,
        memory_budget: Annotated[str | None, typer.Option(
            "--memory-budget", help="RAM for the index, e.g. 4GiB or 500MB (GB = 10^9, GiB = 2^30; default 4 GiB); picks the index kind, and keeps the features in RAM when both fit.")] = None,
        index: Annotated[str | None, typer.Option(
            help="Force the index kind: flat, ivf_sq8 or ivf_pq (default: by size and budget).")] = None,
        device: Annotated[str | None, typer.Option(help="Torch device for the encoder (default cpu).")] = None,
        restart: Annotated[bool, typer.Option(
            "--restart", help="Discard an unfinished build in --out instead of resuming it.")] = False,
        recall: Annotated[float, typer.Option(
            "--recall", min=0.0, max=1.0,
            help="recall@10 target: nprobe/refine are measured on held-out rows against exact search "
                 "and the fastest plan reaching it is kept (0 = the sizing rules, unmeasured).")] = 0.95,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    ) -> None:
        """Encode images into a cache; an interrupted build resumes when rerun with the same sources.

        Unreadable images are skipped and counted (see `cache info`). Feature files are copied in
        without encoding. Rows are stored L2-normalised as float16. The search plan is measured to
        reach --recall (see `cache info`; `cache tune` re-plans).
        """
        _sleeping_openmp_waiters()
        from ibllm_agent.cache.build import build_cache

        try:
            report = build_cache(
                sources, out, encoder=encoder, batch_size=batch_size, memory_budget=parse_size(memory_budget, what="memory budget"),
                index=index, resume=not restart, progress=progress, device=device, recall=recall or None,
            )
        except IbllmError as exc:
            _fail(exc)
        typer.echo(report.summary())
        for item in report.skipped_examples[:5]:
            typer.echo(f"  skipped {item['id']}: {item['reason']}", err=True)
        if report.skipped > 5:
            typer.echo(f"  ... {report.skipped - 5} more (listed in {out}/meta.json)", err=True)

    @cache_app.command("info")
    def info_command(
        cache_dir: Annotated[Path, typer.Argument(
            help="A cache directory (or a plain faiss index file such as knn.index).", show_default=False)],
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Size, index, memory, encoder, sources and skipped images of a cache."""
        try:
            info = _open(cache_dir).info()
        except IbllmError as exc:
            _fail(exc)
        if as_json:
            typer.echo(json.dumps(info, indent=2))
            return
        skipped = info.get("skipped") or {"count": 0, "items": []}
        lines = [
            f"cache      {info['path']}",
            f"features   {info['count']} x {info['dim']} float16 ({format_size(info['features_bytes'], binary=True, unknown='-')} on disk)",
            f"index      {info['index']} {' '.join(f'{k}={v}' for k, v in info['index_params'].items())}",
            f"index RAM  ~{format_size(info['index_ram_bytes'], binary=True, unknown='-')}",
            f"refine     {_refine_line(info)}",
            f"recall     {_recall_line(info)}",
            f"encoder    {info.get('encoder', '-')}",
            f"sources    {', '.join(info.get('sources', [])) or '-'}",
            f"skipped    {skipped['count']} unreadable",
        ]
        lines += [f"  {s['id']}: {s['reason']}" for s in skipped["items"][:10]]
        typer.echo("\n".join(lines))

    @cache_app.command("tune")
    def tune_command(
        cache_dir: Annotated[Path, typer.Argument(help="A cache directory.", show_default=False)],
        recall: Annotated[float, typer.Option(
            "--recall", min=0.0, max=1.0, help="recall@10 target to re-plan nprobe/refine for.")] = 0.95,
        memory_budget: Annotated[str | None, typer.Option(
            "--memory-budget", help="RAM for index + refinement store, e.g. 8G (default: the build's, else 4 GiB).")] = None,
        queries: Annotated[int, typer.Option("--queries", min=10, help="Held-out rows to measure recall on.")] = 256,
    ) -> None:
        """Re-plan the search of an existing cache for a recall target (measured against exact search).

        Only the plan in meta.json changes; features and index stay. The index kind is kept: if the
        target is out of its reach, rebuild with a larger --memory-budget.
        """
        _sleeping_openmp_waiters()
        from ibllm_agent.cache import VisualCache

        try:
            if recall <= 0:
                raise CacheError("recall target must lie in (0, 1]")
            cache = VisualCache.load(cache_dir)
            before = cache.recall_report
            report = cache.plan_for_recall(recall, memory_budget=parse_size(memory_budget, what="memory budget"), queries=queries)
            cache.save_plan()
        except IbllmError as exc:
            _fail(exc)
        if before is not None:
            typer.echo(f"before  {_plan_text(before.to_dict(), None)}")
        typer.echo(f"after   {_plan_text(report.to_dict(), cache.plan)}")
        if not report.met:
            typer.echo("target not reached by this index; rebuild with a larger --memory-budget "
                       "(an SQ8 or flat index) or accept the recall above", err=True)

    @cache_app.command("query")
    def query_command(
        cache_dir: Annotated[Path, typer.Argument(
            help="A cache directory (or a plain faiss index file such as knn.index).", show_default=False)],
        file: Annotated[Path, typer.Argument(
            help="An image (encoded with --encoder) or a .npy feature vector [D] / batch [B, D].", show_default=False)],
        k: Annotated[int, typer.Option("--k", "-k", min=1, help="Neighbours to list.")] = 10,
        encoder: Annotated[str | None, typer.Option(
            help="Encoder for an image query (default: the one the cache was built with).")] = None,
        device: Annotated[str | None, typer.Option(help="Torch device for the encoder.")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """Nearest cached features of an image or feature vector: rank, inner product, source id."""
        _sleeping_openmp_waiters()
        try:
            cache = _open(cache_dir)
            q = _query_features(cache, file, encoder, device)
            scores, rows = cache.search(q, k)
        except IbllmError as exc:
            _fail(exc)
        ids = cache.ids_of(rows)
        results = [
            [{"rank": r + 1, "row": int(rows[b, r]), "score": float(scores[b, r]), "id": ids[b][r]}
             for r in range(rows.shape[1]) if rows[b, r] >= 0]
            for b in range(rows.shape[0])
        ]
        if as_json:
            typer.echo(json.dumps(results if len(results) > 1 else results[0], indent=2))
            return
        for b, res in enumerate(results):
            if len(results) > 1:
                typer.echo(f"query {b}:")
            for hit in res:
                typer.echo(f"{hit['rank']:>4}  {hit['score']:+.4f}  {hit['id']}")


def _plan_text(rec: dict, plan) -> str:
    text = ""
    if plan is not None and plan.nprobe:
        text = f"nprobe={plan.nprobe} refine={plan.refine} "
    if rec.get("method") == "exact":
        return text + f"recall@{rec['k']} 1.0 (exact index)"
    text += f"recall@{rec['k']} {rec['recall']:.3f} (target {rec['target']:g}"
    text += ")" if rec.get("met", True) else ", NOT met)"
    if rec.get("p50_ms") is not None:
        text += f", p50 {rec['p50_ms']:.2f} ms, p99 {rec['p99_ms']:.2f} ms"
    return text


def _recall_line(info: dict) -> str:
    rec = info.get("recall")
    if not rec:
        return "exact" if info["index"] == "flat" else "not measured (sizing rules or tuned by hand; `cache tune --recall`)"
    return _plan_text(rec, None) + (f" on {rec['queries']} held-out rows" if rec.get("queries") else "")


def _refine_line(info: dict) -> str:
    store = info.get("refine_store")
    if info["index"] in ("flat", "external") or store is None:
        return "-"
    return "float16 features in RAM" if store == "ram" else "float16 features memory-mapped (read ahead at load)"


def _open(path: Path):
    """A cache directory, or a plain faiss index file such as the reference's knn.index."""
    from ibllm_agent.cache import VisualCache

    return VisualCache.from_faiss_index(path) if path.is_file() else VisualCache.load(path)


def _query_features(cache, file: Path, encoder: str | None, device: str | None):
    """A .npy vector/batch as is, or an image encoded like the cache was built."""
    import numpy as np

    if not file.exists():
        raise CacheError(f"query file {file} does not exist")
    if file.suffix.lower() == ".npy":
        try:
            return np.load(file, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise CacheError(f"cannot read query features {file}: {exc}") from None
    from ibllm_agent.cache.build import default_loader, load_encoder
    from ibllm_agent.encoders import PRESETS

    spec = encoder or cache.meta.get("encoder")
    where = cache.path or cache.meta.get("source_index")
    if not spec:
        raise CacheError(
            f"{where} records no encoder; pass --encoder (huge_w3d for the reference's knn.index) "
            "or query with a .npy feature vector"
        )
    if spec not in PRESETS and not Path(spec).is_file():
        raise CacheError(
            f"cache {where} was built with encoder {spec!r}, which cannot be loaded here; "
            "pass --encoder (a preset name or checkpoint path) or query with a .npy feature vector"
        )
    encode, _ = load_encoder(spec, device)
    return encode(default_loader(file)[None])
