"""``ibllm-agent info``: settings in effect, torch/CUDA/device, optional packages, the vision tools
(available, or what they miss), and which registry weights are present or missing. Needs no weights
and no model code."""

from __future__ import annotations

import importlib.util
import json
import platform
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ibllm_agent.errors import IbllmError
from ibllm_agent.sizes import format_size

# Import names of the optional packages the extras install (checked without importing them).
_OPTIONAL = {
    "diffusers": "tools",
    "segment_anything": "tools",
    "cv2": "tools",
    "whisper": "tools",
    "accelerate": "train",
    "datasets": "train",
    "fastapi": "serve",
    "uvicorn": "serve",
}


def _environment(settings: Any) -> dict[str, Any]:
    from ibllm_agent import __version__

    env: dict[str, Any] = {
        "ibllm_agent": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    try:
        import torch
    except Exception as exc:  # noqa: BLE001 - a broken torch install is exactly what `info` reports
        env["torch"] = f"not importable: {type(exc).__name__}: {exc}"
        return env
    env["torch"] = torch.__version__
    env["cuda_available"] = torch.cuda.is_available()
    env["cuda_version"] = torch.version.cuda
    env["gpus"] = (
        [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        if env["cuda_available"]
        else []
    )
    from ibllm_agent.config import resolve_device, resolve_dtype

    try:
        device = resolve_device(settings)
        env["device"] = str(device)
        env["dtype"] = str(resolve_dtype(settings, device)).removeprefix("torch.")
    except IbllmError as exc:
        env["device"] = env.get("device") or f"error: {exc}"
        env.setdefault("dtype", "?")
    return env


def _packages() -> dict[str, Any]:
    return {
        name: {"extra": extra, "installed": importlib.util.find_spec(name) is not None}
        for name, extra in _OPTIONAL.items()
    }


def _tools(settings: Any) -> list[dict[str, Any]]:
    """The built-in vision tools: which the agent offers here and what the others miss."""
    from ibllm_agent.tools import tool_status

    return [{"name": t.name, "available": t.available, "missing": list(t.missing)}
            for t in tool_status(settings, with_chat_model=True)]


def _models(settings: Any) -> list[dict[str, Any]]:
    """Models ``--model`` can load: ``official`` (present or not), ``demo`` (shipped in the package),
    other converted folders in the weights dir, and the random ``tiny`` preset."""
    from ibllm_agent.shipped import DEMO_DIR

    root = Path(settings.weights_dir)
    official = root / "official"
    rows = [{"name": "official", "present": (official / "config.json").is_file(), "path": str(official),
             "use": "--model official" if (official / "config.json").is_file()
             else "missing: ibllm-agent pull imagebind-llm-7b"}]
    shipped = (DEMO_DIR / "config.json").is_file()
    rows.append({"name": "demo", "present": shipped, "path": str(DEMO_DIR),
                 "use": "--model demo" if shipped else "missing: python -m ibllm_agent.training.demo " + str(DEMO_DIR)})
    if root.is_dir():
        for cfg in sorted(root.glob("*/config.json")):
            if cfg.parent.name != "official" and (cfg.parent / "adapter.safetensors").is_file():
                rows.append({"name": cfg.parent.name, "present": True, "path": str(cfg.parent),
                             "use": f"--model {cfg.parent}"})
    rows.append({"name": "tiny", "present": True, "path": None, "use": "--model tiny (random weights: smoke tests)"})
    return rows


def collect(settings: Any) -> dict[str, Any]:
    """Everything ``info`` shows, as plain JSON-able data."""
    from ibllm_agent.weights import status

    rows = status(settings)
    return {
        "settings": {
            "weights_dir": str(settings.weights_dir),
            "workspace_dir": str(settings.workspace_dir),
            "config_file": str(settings.config_file),
            "config_file_exists": settings.config_file.is_file(),
            "device": settings.device,
            "dtype": settings.dtype,
            "memory_url": settings.memory_url,
            "visual_cache": str(settings.visual_cache) if settings.visual_cache else None,
        },
        "models": _models(settings),
        "environment": _environment(settings),
        "packages": _packages(),
        "tools": _tools(settings),
        "weights": [
            {
                "name": r.name,
                "kind": r.kind,
                "present": r.present,
                "path": str(r.path),
                "missing": [str(p) for p in r.missing],
                "size_bytes": r.size_bytes,
                "size_on_disk": r.size_on_disk,
                "partial_bytes": r.partial_bytes,
                "licence": r.licence,
            }
            for r in rows
        ],
    }


def _print_human(data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, soft_wrap=True)
    s = data["settings"]
    console.print("[bold]Settings[/bold]")
    for key in ("weights_dir", "workspace_dir", "device", "dtype", "memory_url"):
        console.print(f"  {key:<14} {s[key]}", markup=False)
    cache = s["visual_cache"]
    if cache is None:
        cache_state = "none (media are encoded without cache enhancement; --cache DIR / IBLLM_VISUAL_CACHE)"
    else:
        cache_state = cache + ("" if Path(cache).is_dir() else " (folder missing)")
    console.print(f"  {'visual_cache':<14} {cache_state}", markup=False)
    found = "found" if s["config_file_exists"] else "not found, defaults used"
    console.print(f"  {'config_file':<14} {s['config_file']} ({found})", markup=False)

    console.print("[bold]Environment[/bold]")
    for key, value in data["environment"].items():
        if key == "gpus":
            value = ", ".join(value) or "none"
        console.print(f"  {key:<14} {value}", markup=False)

    console.print("[bold]Models[/bold] (for --model)")
    for m in data["models"]:
        console.print(f"  {m['name']:<14} {'present' if m['present'] else 'missing':<8} {m['use']}", markup=False)

    console.print("[bold]Optional packages[/bold]")
    for name, p in data["packages"].items():
        console.print(
            f"  {name:<17} {'installed' if p['installed'] else 'missing'} (extra: {p['extra']})", markup=False
        )

    table = Table(title="Weights", title_justify="left", title_style="bold")
    for column in ("name", "status", "size", "path (in weights_dir)"):
        table.add_column(column, overflow="fold")
    for w in data["weights"]:
        if w["present"]:
            state = "present"
        elif w["size_on_disk"]:
            state = f"partial ({len(w['missing'])} missing)"
        else:
            state = "missing (manual)" if w["kind"] == "manual" else "missing"
        if w["partial_bytes"] and not w["present"]:
            state += f", {format_size(w['partial_bytes'])} downloaded (resumable)"
        rel = Path(w["path"]).relative_to(data["settings"]["weights_dir"])
        table.add_row(w["name"], state, format_size(w["size_bytes"]), str(rel))
    console.print(table)
    console.print("[bold]Tools[/bold] (offered by the agent when nothing is missing)")
    for t in data["tools"]:
        state = "available" if t["available"] else "missing " + ", ".join(t["missing"])
        console.print(f"  {t['name']:<40} {state}", markup=False)
    present = sum(w["present"] for w in data["weights"])
    console.print(
        f"{present} of {len(data['weights'])} present. Fetch one with `ibllm-agent download NAME`.",
        markup=False,
    )


def register(app: typer.Typer) -> None:
    @app.command(name="info")
    def info_command(
        weights_dir: Annotated[
            Path | None, typer.Option("--weights-dir", help="Weights folder to inspect (default: settings).")
        ] = None,
        config: Annotated[Path | None, typer.Option("--config", help="TOML settings file to read.")] = None,
        device: Annotated[
            str | None, typer.Option(help='Device to resolve ("auto", "cpu", "cuda:0" ...).')
        ] = None,
        dtype: Annotated[
            str | None, typer.Option(help='Dtype to resolve ("auto", "fp32", "fp16", "bf16").')
        ] = None,
        as_json: Annotated[
            bool, typer.Option("--json", help="Print one JSON object instead of tables.")
        ] = False,
    ) -> None:
        """Show settings, torch/CUDA/device and which weights are present or missing.

        Also lists the optional packages of the extras and the vision tools: which the agent offers
        here and what the others miss. Works with an empty weights folder and without any model code; --json prints the same as one JSON object.
        """
        from ibllm_agent.config import get_settings

        try:
            settings = get_settings(weights_dir=weights_dir, config_file=config, device=device, dtype=dtype)
        except IbllmError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None
        data = collect(settings)
        if as_json:
            typer.echo(json.dumps(data, indent=2))
        else:
            _print_human(data)
