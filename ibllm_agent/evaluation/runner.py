"""Evaluation runs: read GT/prediction files, run a model over GT instructions (batched), score.

GT files (GPT4Tools eval format, spec §3.1): a JSON list of ``{"id", "instruction", "input", "output"}``
(``instruction`` = the whole GPT4Tools prompt, ``output`` = the expected next assistant turn). Extra
keys are kept: ``media`` (``[{"modality", "path"}]``, paths relative to the GT file's folder) is given
to the model with the instruction, and any key can group a report (``--by modality``).

Prediction files: a JSON list of ``{"id", "output"}`` where ``output`` is the model's continuation
only (a list is read as its first element, like upstream). Predictions are joined to GT by ``id``;
ids absent from GT are ignored and a repeated id keeps its last prediction (upstream's gather step).

MME files: a JSON list of ``{"id", "image", "question", "answer": "Yes"|"No", "category"?}``.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from ibllm_agent.errors import EvalDataError
from ibllm_agent.evaluation.metrics import METRIC_KEYS, aggregate, mme_report, score_sample
from ibllm_agent.protocol import STOP_SEQUENCES
from ibllm_agent.types import Media, Sampling

_TOOL_KEYS = ("id", "instruction", "output")
_MME_KEYS = ("id", "image", "question", "answer")


def _read_list(path: Path, what: str) -> list[dict[str, Any]]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise EvalDataError(f"{what} file not found: {path}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EvalDataError(f"{what} file {path} is not valid JSON: {exc}") from None
    if not isinstance(data, list) or not all(isinstance(x, dict) for x in data):
        raise EvalDataError(f"{what} file {path} must hold a JSON list of objects")
    return data


def _check_keys(items: Sequence[Mapping[str, Any]], keys: Sequence[str], path: Path, what: str) -> None:
    for i, it in enumerate(items):
        missing = [k for k in keys if k not in it]
        if missing:
            raise EvalDataError(f"{what} file {path}: item {i} (id {it.get('id')!r}) lacks {missing}")
        if isinstance(it["id"], bool) or not isinstance(it["id"], (str, int)):
            raise EvalDataError(f"{what} file {path}: item {i} has id {it['id']!r}; ids must be strings or integers")


def load_gt(path: str | Path) -> list[dict[str, Any]]:
    """GT items of a GPT4Tools-format eval file (each needs ``id``, ``instruction``, ``output``)."""
    items = _read_list(Path(path), "ground-truth")
    _check_keys(items, _TOOL_KEYS, Path(path), "ground-truth")
    return items


def load_predictions(path: str | Path) -> dict[Any, str]:
    """``id -> output`` from a prediction file (last one wins for a repeated id)."""
    items = _read_list(Path(path), "prediction")
    _check_keys(items, ("id", "output"), Path(path), "prediction")
    out: dict[Any, str] = {}
    for it in items:
        o = it["output"]
        if isinstance(o, list):
            o = o[0] if o else ""
        if not isinstance(o, str):
            raise EvalDataError(f"prediction file {path}: output of id {it['id']!r} is not a string")
        out[it["id"]] = o
    return out


def score_tools(
    gt: Sequence[Mapping[str, Any]], predictions: Mapping[Any, str], by: str | None = None
) -> dict[str, Any]:
    """The five GPT4Tools metrics (and ``n``) over the predictions whose id is in ``gt``.

    ``by``: a GT key; adds ``"by_<key>"``: ``{value: {metrics, n}}`` over the samples that have it.
    """
    gt_by_id = {it["id"]: it for it in gt}
    scored = [(gt_by_id[i], score_sample(gt_by_id[i]["output"], p)) for i, p in predictions.items() if i in gt_by_id]
    report: dict[str, Any] = aggregate(s for _, s in scored)
    if by is not None:
        groups: dict[str, list] = {}
        for item, s in scored:
            if by in item and item[by] is not None:
                groups.setdefault(str(item[by]), []).append(s)
        report[f"by_{by}"] = {k: aggregate(v) for k, v in sorted(groups.items())}
    return report


def format_tools_report(report: Mapping[str, Any]) -> str:
    """Human-readable lines: the five metrics in percent, ``n``, then any group table."""
    lines = [f"{k:8s} {100 * report[k]:6.2f} %" for k in METRIC_KEYS] + [f"{'n':8s} {report['n']:6d}"]
    for key, groups in report.items():
        if key.startswith("by_"):
            lines.append(f"\n{key[3:]:24s} " + " ".join(f"{k:>7s}" for k in METRIC_KEYS) + "       n")
            for name, g in groups.items():
                lines.append(f"{name:24s} " + " ".join(f"{100 * g[k]:7.2f}" for k in METRIC_KEYS) + f" {g['n']:7d}")
    return "\n".join(lines)


# -- inference -----------------------------------------------------------------------------------------
def load_generator(spec: str) -> Any:
    """A ``TextGenerator`` from a ``--model`` value: ``tiny``, ``demo``, ``scripted:FILE.json`` or a
    saved model folder (the same forms ``ibllm-agent run`` takes); models load with
    ``ibllm_agent.load_model``."""
    if spec.startswith("scripted:"):
        from ibllm_agent.testing import load_scripted

        return load_scripted(spec)
    from ibllm_agent.loading import load_model

    # Names (tiny, demo) and folders, device/dtype by the Settings rules (IBLLM_DEVICE / IBLLM_DTYPE).
    return load_model(spec)


def _batched(generator: Any) -> bool:
    """Whether ``generator.generate`` decodes a list of prompts as one padded batch (the
    ``MultimodalLLM`` of ``load_model``)."""
    mm = sys.modules.get("ibllm_agent.multimodal")
    return mm is not None and isinstance(generator, mm.MultimodalLLM)


def item_media(item: Mapping[str, Any], root: Path) -> list[Media]:
    """The ``media`` entries of a GT item as ``Media`` (relative paths resolved under ``root``)."""
    out = []
    for m in item.get("media") or []:
        if not isinstance(m, Mapping) or "modality" not in m or "path" not in m:
            raise EvalDataError(f"item {item.get('id')!r}: each media entry needs 'modality' and 'path', got {m!r}")
        p = Path(m["path"])
        out.append(Media(modality=m["modality"], source=str(p if p.is_absolute() else root / p)))
    return out


def predict(
    generator: Any,
    prompts: Sequence[str],
    media: Sequence[list[Media]],
    *,
    batch_size: int = 8,
    max_new_tokens: int = 256,
    stop: Sequence[str] = STOP_SEQUENCES,
    guided: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[str]:
    """Greedy continuations of ``prompts`` (already template-wrapped), cut at ``stop``.

    A ``MultimodalLLM`` decodes ``batch_size`` prompts per padded batch (results equal single decoding);
    other generators are called once per prompt. ``guided``: each prompt's ``Action`` is chosen among
    the tool names its ``should be one of [...]`` list offers (``StepGuide.from_prompt``; the
    arguments stay free: GPT4Tools prompts carry no schemas).
    """
    from ibllm_agent.step_grammar import StepGuide

    sampling = Sampling(max_new_tokens=max_new_tokens, temperature=0.0, stop=tuple(stop))
    outs: list[str] = []
    for start in range(0, len(prompts), max(1, batch_size)):
        chunk = list(prompts[start : start + batch_size])
        chunk_media = [list(m) for m in media[start : start + batch_size]]
        guides = [StepGuide.from_prompt(p) if guided else None for p in chunk]
        if _batched(generator):
            gens = generator.generate(chunk, chunk_media if any(chunk_media) else None,
                                      sampling=replace(sampling, guide=tuple(guides) if guided else None))
            outs.extend(g.text for g in gens)
        else:
            outs.extend(generator.generate(p, m, sampling=replace(sampling, guide=g)).text
                        for p, m, g in zip(chunk, chunk_media, guides))
        if progress is not None:
            progress(len(chunk))
    return outs


def wrap(generator: Any, instruction: str, input_text: str | None = None) -> str:
    """The final prompt: the instruction wrapped in the template the generator was trained with."""
    from ibllm_agent.prompts import format_prompt

    return format_prompt(instruction, input_text or None, getattr(generator, "prompt_template", "raw"))


def predict_tools(
    generator: Any, gt: Sequence[Mapping[str, Any]], root: Path, **kwargs: Any
) -> list[dict[str, Any]]:
    """Run the model on every GT instruction; returns ``[{"id", "output"}]`` (continuations only)."""
    prompts = [wrap(generator, it["instruction"], it.get("input")) for it in gt]
    media = [item_media(it, root) for it in gt]
    outs = predict(generator, prompts, media, **kwargs)
    return [{"id": it["id"], "output": o} for it, o in zip(gt, outs)]


# -- MME -----------------------------------------------------------------------------------------------
def load_mme(path: str | Path) -> list[dict[str, Any]]:
    items = _read_list(Path(path), "MME")
    _check_keys(items, _MME_KEYS, Path(path), "MME")
    for it in items:
        if str(it["answer"]).strip().lower() not in ("yes", "no"):
            raise EvalDataError(f"MME file {path}: item {it['id']!r} answer must be Yes or No, got {it['answer']!r}")
    return items


def predict_mme(generator: Any, items: Sequence[Mapping[str, Any]], root: Path, **kwargs: Any) -> list[dict[str, Any]]:
    """Answer each MME question about its image (the image is given to the model as media)."""
    prompts = [wrap(generator, it["question"]) for it in items]
    media = []
    for it in items:
        p = Path(it["image"])
        media.append([Media(modality="image", source=str(p if p.is_absolute() else root / p))])
    kwargs.setdefault("stop", ())
    kwargs.setdefault("max_new_tokens", 16)
    outs = predict(generator, prompts, media, **kwargs)
    return [{"id": it["id"], "output": o} for it, o in zip(items, outs)]


def score_mme(items: Sequence[Mapping[str, Any]], predictions: Mapping[Any, str]) -> dict[str, Any]:
    """MME metrics over the items that have a prediction."""
    joined = [{**it, "output": predictions[it["id"]]} for it in items if it["id"] in predictions]
    return mme_report(joined)
