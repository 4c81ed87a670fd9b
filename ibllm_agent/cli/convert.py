"""``ibllm-agent convert``: official ImageBind-LLM release (+ Meta/HF LLaMA) <-> our checkpoint folder."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ibllm_agent.errors import ConfigError

EPILOG = (
    "Examples: "
    "ibllm-agent convert --official ~/.cache/ibllm/imagebind_llm/7B.pth --llama-dir ~/.cache/ibllm/llama "
    "--llama-type 7B --out ckpt/ibllm-7b  |  "
    "ibllm-agent convert --hf-base llama-2-7b-hf --out ckpt/fresh  (new bind network, for pre-training)  |  "
    "ibllm-agent convert --to-official ckpt/ibllm-7b --out release/  |  "
    "ibllm-agent convert --from-registry  (downloaded 7B.pth + Open-Chinese-LLaMA-7B -> <weights_dir>/official, used by "
    "--model official; `ibllm-agent pull imagebind-llm-7b` does all steps)"
)


def register(app: typer.Typer) -> None:
    @app.command(name="convert", epilog=EPILOG)
    def convert_command(
        out: Annotated[Path | None, typer.Option(
            "--out", help="Output folder (with --from-registry: default <weights_dir>/official).", show_default=False)] = None,
        from_registry: Annotated[bool, typer.Option(
            "--from-registry", help="Take the official 7B adapter and LLaMA-7B from the weights dir (ibllm-agent "
                                    "download imagebind_llm_7b llama_7b; base llama/7B_chinese, see `ibllm-agent pull`); --official/--llama-dir override.")] = False,
        official: Annotated[Path | None, typer.Option(
            "--official", help="Official adapter checkpoint (7B.pth: {'model': ...}).")] = None,
        llama_dir: Annotated[Path | None, typer.Option(
            "--llama-dir", help="Meta LLaMA folder: params.json + consolidated.*.pth (+ tokenizer.model here or "
                                "in the parent).")] = None,
        llama_type: Annotated[str | None, typer.Option(
            "--llama-type", help="Sub-folder of --llama-dir holding params.json, e.g. 7B or 7B_chinese.")] = None,
        hf_base: Annotated[Path | None, typer.Option(
            "--hf-base", help="HF-format LLaMA folder (config.json + *.safetensors + tokenizer.model).")] = None,
        tokenizer: Annotated[Path | None, typer.Option(
            "--tokenizer", help="SentencePiece tokenizer.model (default: found beside the base weights).")] = None,
        to_official: Annotated[Path | None, typer.Option(
            "--to-official", help="Convert OUR checkpoint folder to the official layout instead "
                                  "(writes imagebind_llm.pth and llama/ under --out).")] = None,
        dtype: Annotated[str, typer.Option(
            "--dtype", help="Tensor dtype written: keep (as in the sources), fp32, fp16 or bf16.")] = "keep",
        encoder: Annotated[str, typer.Option(help="ImageBind preset the model uses.")] = "huge_w3d",
        encoder_weights: Annotated[str, typer.Option(
            help="Weights name of the ImageBind file (loaded lazily from the weights dir); 'none' for a small "
                 "preset without an official file, whose weights you place as encoder.safetensors in --out.")] = "imagebind_w3d",
        prompt_template: Annotated[str, typer.Option(help="Prompt template the weights were trained with.")] = "alpaca",
        force: Annotated[bool, typer.Option("--force", help="Write into a non-empty --out folder.")] = False,
    ) -> None:
        """Convert checkpoints between the official release and this project's format.

        To ours: a base LLaMA (--llama-dir in Meta layout, model-parallel shards merged, or --hf-base) plus, optionally, the official adapter (--official). The result is a folder with config.json, base.safetensors, adapter.safetensors and tokenizer.model, loadable with ImageBindLLM.from_pretrained. Meta's interleaved RoPE rows of wq/wk, the wq bias and the q/k LoRA factors are permuted to the HF layout. Without --official the bind network, prefix_query and zero gates are freshly initialised (phase pretrain).

        To official (--to-official SRC): the inverse, giving imagebind_llm.pth ({'model': ...}, the 7B.pth layout) and a Meta LLaMA folder llama/.

        Exit code 2 with a one-line error for unreadable, truncated or mismatched checkpoints.
        """
        from ibllm_agent.model.convert import convert_to_official, convert_to_ours

        def log(msg: str) -> None:
            typer.echo(msg, err=True)

        if from_registry:
            from ibllm_agent.config import get_settings
            from ibllm_agent.weights import require

            if to_official is not None or hf_base is not None:
                raise ConfigError("--from-registry converts the official release; drop --to-official/--hf-base")
            official = official or require("imagebind_llm_7b")
            if llama_dir is None:
                # The stable adapter was trained on Open-Chinese-LLaMA-7B (LLaMA-7B + the published
                # delta): use it; plain LLaMA-7B only when asked (--llama-type 7B).
                llama_dir, llama_type = require("llama_7b"), llama_type or "7B_chinese"
                if not (llama_dir / llama_type / "consolidated.00.pth").is_file():
                    raise ConfigError(
                        f"{llama_dir / llama_type} is missing: the stable adapter runs on Open-Chinese-LLaMA-7B. "
                        "`ibllm-agent pull imagebind-llm-7b` downloads the delta, merges it and converts; or pass "
                        "--llama-type 7B for plain LLaMA-7B (as the reference demos load)"
                    )
            out = out or Path(get_settings().weights_dir) / "official"
        if out is None:
            raise ConfigError("--out is required (the output folder)")
        if out.exists() and not out.is_dir():
            raise ConfigError(f"--out {out} is a file, not a folder")
        if out.exists() and any(out.iterdir()) and not force:
            raise ConfigError(f"output folder {out} is not empty (use --force to write into it)")
        if to_official is not None and (official or llama_dir or hf_base):
            raise ConfigError("--to-official takes only our checkpoint folder; drop --official/--llama-dir/--hf-base")
        if to_official is None and llama_dir is None and hf_base is None:
            raise ConfigError("give the base LLaMA: --llama-dir (Meta layout) or --hf-base (HF layout)")
        try:
            out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create output folder {out}: {exc.strerror or exc}") from None
        if to_official is not None:
            result = convert_to_official(to_official, out, dtype=dtype, log=log)
        else:
            if llama_dir is not None and llama_type:
                llama_dir = llama_dir / llama_type
            result = convert_to_ours(
                out, official=official, llama_dir=llama_dir, hf_base=hf_base, tokenizer=tokenizer, dtype=dtype,
                encoder=encoder, encoder_weights=None if encoder_weights.lower() == "none" else encoder_weights,
                prompt_template=prompt_template, log=log,
            )
        typer.echo(str(result))
