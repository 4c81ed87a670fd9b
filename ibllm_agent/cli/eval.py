"""``ibllm-agent eval tools|mme``: GPT4Tools tool-use metrics and MME yes/no metrics.

    ibllm-agent eval tools --data val.json --pred pred.json --json
    ibllm-agent eval tools --data val.json --model DIR --save-pred pred.json --by modality
    ibllm-agent eval tools --data val.json --model demo --guided --json
    ibllm-agent eval mme --data mme.json --model DIR

Scoring rules: ``ibllm_agent.evaluation.metrics`` (GPT4Tools' ``evaluate_result.py``, MME's
``calculation.py``).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from ibllm_agent.errors import ConfigError, IbllmError

_MODEL_HELP = (
    "Run this model first: a saved model folder, 'demo', 'official', 'auto', 'tiny' (random tiny model) or "
    "'scripted:FILE.json' (replays a JSON list of outputs; testing aid)."
)


PredOpt = Annotated[Path | None, typer.Option(
    "--pred", help="Predictions: JSON list of {id, output} (the model's continuation only).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help=_MODEL_HELP)]
SavePredOpt = Annotated[Path | None, typer.Option("--save-pred", help="With --model: write the predictions here.")]
BatchOpt = Annotated[int, typer.Option("--batch-size", min=1, help="Prompts decoded together (--model).")]


def _fail(exc: IbllmError) -> None:
    typer.echo(f"error: {exc}", err=True)
    raise typer.Exit(2)


def _predictions(
    data: Path, pred: Path | None, model: str | None, save_pred: Path | None, run: Any
) -> dict[Any, str]:
    """``id -> output`` from ``--pred`` or from running ``--model`` (``run(generator)`` → records)."""
    from ibllm_agent.evaluation.runner import load_generator, load_predictions

    if (pred is None) == (model is None):
        raise ConfigError("give exactly one of --pred FILE or --model MODEL")
    if pred is not None:
        if save_pred is not None:
            raise ConfigError("--save-pred only applies with --model")
        return load_predictions(pred)
    records = run(load_generator(model))
    if save_pred is not None:
        save_pred.parent.mkdir(parents=True, exist_ok=True)
        save_pred.write_text(json.dumps(records, ensure_ascii=False, indent=1), encoding="utf-8")
    return {r["id"]: r["output"] for r in records}


def _progress(total: int):
    from tqdm import tqdm

    bar = tqdm(total=total, desc="inference", unit="sample", disable=None)
    return bar, bar.update


def register(app: typer.Typer) -> None:
    eval_app = typer.Typer(
        name="eval", no_args_is_help=True,
        help="Evaluate a model: GPT4Tools tool-use metrics (SR_t, SR_act, SR_args, SR, IoU) and MME yes/no "
        "accuracy.",
    )
    app.add_typer(eval_app, name="eval")

    @eval_app.command("tools")
    def tools_command(
        data: Annotated[Path, typer.Option("--data", help="GT file: JSON list of {id, instruction, input, output}.")],
        pred: PredOpt = None,
        model: ModelOpt = None,
        save_pred: SavePredOpt = None,
        by: Annotated[str | None, typer.Option(
            "--by", help="Also report the metrics per value of this GT key (e.g. modality, kind).")] = None,
        batch_size: BatchOpt = 8,
        max_new_tokens: Annotated[int, typer.Option(
            "--max-new-tokens", min=1, help="Generation limit (--model).")] = 256,
        guided: Annotated[bool, typer.Option(
            "--guided/--free", help="With --model: decode each Action among the tool names its prompt offers "
            "(the chat model's guided decoding; arguments stay free) or decode freely, as GPT4Tools did.")] = False,
        json_out: Annotated[bool, typer.Option(
            "--json", help="Print one JSON object: SR_t, SR_act, SR_args, SR, IoU (fractions) and n.")] = False,
    ) -> None:
        """Score tool use exactly as GPT4Tools' evaluator: predictions joined to GT by id."""
        from ibllm_agent.evaluation.runner import load_gt, predict_tools, score_tools

        try:
            gt = load_gt(data)

            def run(generator: Any) -> list[dict[str, Any]]:
                bar, update = _progress(len(gt))
                with bar:
                    return predict_tools(generator, gt, data.parent, batch_size=batch_size,
                                         max_new_tokens=max_new_tokens, guided=guided, progress=update)

            predictions = _predictions(data, pred, model, save_pred, run)
            report = score_tools(gt, predictions, by=by)
        except IbllmError as exc:
            _fail(exc)
        if json_out:
            typer.echo(json.dumps(report))
            return
        from ibllm_agent.evaluation.runner import format_tools_report

        typer.echo(format_tools_report(report))

    @eval_app.command("mme")
    def mme_command(
        data: Annotated[Path, typer.Option(
            "--data", help="MME file: JSON list of {id, image, question, answer (Yes/No), category}.")],
        pred: PredOpt = None,
        model: ModelOpt = None,
        save_pred: SavePredOpt = None,
        batch_size: BatchOpt = 8,
        json_out: Annotated[bool, typer.Option(
            "--json", help="Print one JSON object: accuracy, accuracy_plus, n, images, total_score, categories.")] = False,
    ) -> None:
        """Score MME-style yes/no answers: accuracy, and accuracy+ (images whose two questions are both right)."""
        from ibllm_agent.evaluation.runner import load_mme, predict_mme, score_mme

        try:
            items = load_mme(data)

            def run(generator: Any) -> list[dict[str, Any]]:
                bar, update = _progress(len(items))
                with bar:
                    return predict_mme(generator, items, data.parent, batch_size=batch_size, progress=update)

            predictions = _predictions(data, pred, model, save_pred, run)
            report = score_mme(items, predictions)
        except IbllmError as exc:
            _fail(exc)
        if json_out:
            typer.echo(json.dumps(report))
            return
        typer.echo(f"accuracy       {100 * report['accuracy']:6.2f} %")
        typer.echo(f"accuracy+      {100 * report['accuracy_plus']:6.2f} %")
        typer.echo(f"questions      {report['n']:6d}   images {report['images']}")
        for name, c in report["categories"].items():
            typer.echo(f"  {name:20s} acc {100 * c['accuracy']:6.2f}  acc+ {100 * c['accuracy_plus']:6.2f}  "
                       f"score {c['score']:7.2f}")
        typer.echo(f"total score    {report['total_score']:.2f}")
