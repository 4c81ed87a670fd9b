"""``ibllm-agent pull NAME``: everything a model needs, fetched and converted, in one command.

    ibllm-agent pull imagebind-llm-7b            # -> <weights_dir>/official (what --model official loads)

Steps (each skipped when its result is already there, so running it again resumes or does nothing):

1. download the adapter (``imagebind_llm_7b``) and ImageBind with Point-Bind (``imagebind_w3d``);
2. check LLaMA-7B in Meta layout (``llama_7b``; gated: placed by hand, the error says where) — or,
   with ``--hf-llama org/name --base 7B``, download an HF-format LLaMA-7B repo you have access to
   (``HF_TOKEN``) and convert from it (the delta needs Meta layout, so this path is plain LLaMA-7B);
3. for the stable adapter: download the Open-Chinese-LLaMA delta (``open_chinese_llama_7b_delta``)
   and merge it into ``llama/7B_chinese`` — the base the adapter was trained on;
4. convert adapter + base into the model folder (``ibllm-agent convert``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer


@dataclass(frozen=True)
class Recipe:
    adapter: str  # registry name of the official adapter
    base: str  # llama sub-folder the adapter was trained on: "7B_chinese" or "7B"


RECIPES: dict[str, Recipe] = {
    # The stable release was trained on Open-Chinese-LLaMA-7B (reference README, training scripts).
    "imagebind-llm-7b": Recipe("imagebind_llm_7b", "7B_chinese"),
    "imagebind-llm-7b-pretrained": Recipe("imagebind_llm_7b_pretrained", "7B_chinese"),
}
ENCODER = "imagebind_w3d"


HF_LLAMA_FILES = ("config.json", ".safetensors", ".safetensors.index.json", "tokenizer.model", "generation_config.json")


def fetch_hf_llama(repo: str, root: Path, *, progress: bool = True, say=typer.echo) -> Path:
    """An HF-format LLaMA repo (``org/name`` or ``org/name@revision``; gated ones with ``HF_TOKEN``)
    downloaded into ``<weights_dir>/llama/hf/<org>__<name>``: config, safetensors shards, tokenizer."""
    from ibllm_agent.errors import ConfigError
    from ibllm_agent.hub import HubFile, hub_download, list_repo_files

    repo_id, _, revision = repo.partition("@")
    if repo_id.count("/") != 1:
        raise ConfigError(f"--hf-llama {repo!r}: give a Hub repo as org/name (optionally @revision)")
    files = [f for f in list_repo_files(repo_id, revision or "main")
             if f["path"].endswith(HF_LLAMA_FILES) and "/" not in f["path"]]
    names = {f["path"] for f in files}
    if "config.json" not in names or not any(n.endswith(".safetensors") for n in names):
        raise ConfigError(f"{repo_id} is not an HF-format LLaMA with safetensors weights (found: "
                          f"{', '.join(sorted(names)) or 'nothing'})")
    folder = root / "llama" / "hf" / repo_id.replace("/", "__")
    for f in files:
        hub_download(HubFile(repo_id, revision or "main", f["path"]), folder / f["path"], sha256=f.get("sha256"),
                     size=f.get("size"), progress=progress, say=say)
    return folder


def pull(name: str, *, out: Path | None = None, base: str | None = None, force: bool = False,
         progress: bool = True, say=typer.echo, encoder: str = "huge_w3d",
         encoder_weights: str | None = ENCODER, hf_llama: str | None = None) -> Path:
    """Run the steps of the module docstring; returns the model folder. ``encoder`` /
    ``encoder_weights`` go to the conversion (tests use the tiny preset without a file)."""
    from ibllm_agent.config import get_settings
    from ibllm_agent.download import fetch_weight
    from ibllm_agent.errors import ConfigError
    from ibllm_agent.weights import require

    if name not in RECIPES:
        raise ConfigError(f"unknown model {name!r} for pull; known: {', '.join(RECIPES)}")
    recipe = RECIPES[name]
    settings = get_settings()
    base = base or recipe.base
    if base not in ("7B_chinese", "7B"):
        raise ConfigError(f"--base must be 7B_chinese or 7B, got {base!r}")
    out = out or Path(settings.weights_dir) / "official"
    if (out / "config.json").is_file() and not force:
        say(f"{out} is already converted (use --force to rebuild it)")
        return out
    for weight in (recipe.adapter, ENCODER):
        fetch_weight(weight, settings, progress=progress, echo=say)
    if hf_llama is not None:
        if base != "7B":
            raise ConfigError(
                "the Open-Chinese-LLaMA delta applies to LLaMA-7B in Meta layout (llama/7B); with an HF-format "
                "LLaMA pass --base 7B (plain LLaMA-7B, as the reference demos load)"
            )
        from ibllm_agent.model.convert import convert_to_ours

        hf_dir = fetch_hf_llama(hf_llama, Path(settings.weights_dir), progress=progress, say=say)
        out.mkdir(parents=True, exist_ok=True)
        say(f"converting {recipe.adapter} on {hf_llama} into {out}")
        tokenizer = hf_dir / "tokenizer.model"
        convert_to_ours(out, official=require(recipe.adapter), hf_base=hf_dir,
                        tokenizer=tokenizer if tokenizer.is_file() else None, encoder=encoder,
                        encoder_weights=encoder_weights, log=say)
        return out
    llama = require("llama_7b")  # ManualWeightMissingError: which file to place where
    llama_type = "7B"
    if base == "7B_chinese":
        merged = llama / "7B_chinese"
        if (merged / "consolidated.00.pth").is_file() and (merged / "params.json").is_file():
            say(f"{merged} already merged")
        else:
            fetch_weight("open_chinese_llama_7b_delta", settings, progress=progress, echo=say)
            from ibllm_agent.model.delta import merge_delta

            say(f"merging the Open-Chinese-LLaMA delta into {merged} (needs ~14 GB of memory)")
            merge_delta(llama / "7B", llama / "7B_chinese_delta", merged, log=say)
        llama_type = "7B_chinese"
    from ibllm_agent.model.convert import convert_to_ours

    out.mkdir(parents=True, exist_ok=True)
    say(f"converting {recipe.adapter} on llama/{llama_type} into {out}")
    convert_to_ours(out, official=require(recipe.adapter), llama_dir=llama / llama_type,
                    tokenizer=llama / "tokenizer.model", encoder=encoder, encoder_weights=encoder_weights, log=say)
    return out


def register(app: typer.Typer) -> None:
    @app.command(name="pull", epilog="Models: " + ", ".join(RECIPES) + ".")
    def pull_command(
        name: Annotated[str, typer.Argument(help="Model to fetch and convert.")] = "imagebind-llm-7b",
        out: Annotated[Path | None, typer.Option(
            "--out", help="Model folder to write (default <weights_dir>/official, what --model official loads).")] = None,
        base: Annotated[str | None, typer.Option(
            "--base", help="LLaMA the adapter runs on: 7B_chinese (what the stable adapter was trained on; "
            "default) or 7B (plain LLaMA-7B, as the reference demos load).")] = None,
        hf_llama: Annotated[str | None, typer.Option(
            "--hf-llama", help="Take LLaMA-7B from this HF-format Hub repo (org/name[@revision]; gated repos with "
            "HF_TOKEN) instead of llama/7B; needs --base 7B.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Convert again even if the folder exists.")] = False,
        progress: Annotated[bool, typer.Option("--progress/--no-progress", help="Show progress bars.")] = True,
    ) -> None:
        """Fetch everything a model needs and convert it (resumable: run it again after an interruption).

        Downloads the adapter and ImageBind, checks LLaMA-7B (Meta's gated release, placed by hand: the error names each file and where it goes), downloads and merges the Open-Chinese-LLaMA delta for the stable adapter, and converts everything into the model folder. HF_TOKEN / HF_ENDPOINT are used for Hugging Face downloads.
        """
        from ibllm_agent.errors import ConfigError

        if out is not None and out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder")
        folder = pull(name, out=out, base=base, force=force, progress=progress, hf_llama=hf_llama,
                      say=lambda msg: typer.echo(msg, err=True))
        typer.echo(str(folder))
