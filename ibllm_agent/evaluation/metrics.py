"""GPT4Tools' tool-use metrics and MME's yes/no metrics, as pure functions.

Tool use (``eval/evaluate_result.py`` of GPT4Tools 643faa8, spec §3.4). Per sample:

- the prediction is the model's continuation, ``.strip()``-ped as a whole; steps are read with the
  unanchored, case-sensitive regexes ``Thought: Do I need to use a tool\\? (.*)``, ``Action: (.*)``,
  ``Action Input: (.*)`` and ``AI: (.*)`` (``.`` stops at a newline; each capture stripped);
- a *tool sample* is one whose GT output contains both ``Action:`` and ``Action Input:``:
  GT thoughts are truncated to the number of GT actions; a predicted trailing ``No`` thought is dropped
  when there is exactly one more thought than actions; thoughts, actions and arguments are compared
  position by position over the longer list (positions past the shorter one score 0).
  Arguments: both sides split on ``,``; a different piece count scores 0; a GT piece containing
  ``.png`` needs a predicted piece containing ``.png`` (any name) or the whole call scores 0; other
  pieces score pycocoevalcap's smoothed BLEU-1; a call scores the mean of its pieces.
  SR = 1 iff SR_t ≥ 1, SR_act ≥ 1 and SR_args ≥ 0.5. IoU = Σ flag·present / max(Σ max(flag, present), 1)
  over the concatenated thought/action/argument flags, ``present`` marking GT positions;
- a *no-tool sample*: thought flags over all thoughts; SR_t is their mean, forced to 0 when the first
  predicted thought is not ``No`` or no ``AI: `` line was written; SR_act = SR_args = SR = 1 iff
  SR_t ≥ 1, else 0; IoU from the thought flags before the forcing.

One deliberate difference: where upstream takes the mean of an empty flag list (a tool sample whose GT
and prediction both hold no thought line) and gets NaN, we score 0.

MME (``calculation.py`` of the MME benchmark): an answer is lowercased; exactly ``yes``/``no`` is taken
as is, otherwise ``yes`` (then ``no``) anywhere in its first four characters decides, else ``other``
(always wrong). accuracy = right answers / questions; accuracy+ = images whose questions (two per
image in MME) are all right / images; MME's score per category = 100·(accuracy + accuracy+).
"""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass

THOUGHT_RE = re.compile(r"Thought: Do I need to use a tool\? (.*)")
ACTION_RE = re.compile(r"Action: (.*)")
ACTION_INPUT_RE = re.compile(r"Action Input: (.*)")
AI_RE = re.compile(r"AI: (.*)")

# pycocoevalcap BleuScorer's smoothing constants: "small" guards divisions, "tiny" keeps 0 at 0.
_SMALL = 1e-9
_TINY = 1e-15
METRIC_KEYS = ("SR_t", "SR_act", "SR_args", "SR", "IoU")


def bleu1(reference: str, candidate: str) -> float:
    """BLEU-1 of ``candidate`` against one ``reference`` exactly as pycocoevalcap's ``Bleu(n=1)``.

    Whitespace tokens, case-sensitive; clipped unigram precision ``(correct + 1e-15) / (h + 1e-9)``;
    length ratio ``(h + 1e-15) / (r + 1e-9)`` and, when it is below 1, the brevity penalty
    ``exp(1 - 1/ratio)``. So an exact match scores 1 - 2e-9, not 1.
    """
    ref, hyp = reference.split(), candidate.split()
    ref_counts = Counter(ref)
    correct = sum(min(n, ref_counts[w]) for w, n in Counter(hyp).items())
    score = (correct + _TINY) / (len(hyp) + _SMALL)
    ratio = (len(hyp) + _TINY) / (len(ref) + _SMALL)
    if ratio < 1:
        score *= math.exp(1 - 1 / ratio)
    return score


def _captures(pattern: re.Pattern[str], text: str) -> list[str]:
    return [c.strip() for c in pattern.findall(text)]


def position_flags(gt: Sequence[str], pred: Sequence[str]) -> tuple[list[float], list[float]]:
    """Exact-match flags over ``max(len)`` positions (0 past the shorter list) and GT-presence flags."""
    n = max(len(gt), len(pred))
    flags = [float(g == p) for g, p in zip(gt, pred)] + [0.0] * (n - min(len(gt), len(pred)))
    return flags, [1.0] * len(gt) + [0.0] * (n - len(gt))


def call_args_score(gt: str, pred: str) -> float:
    """Score of one call's ``Action Input`` against the GT one (see the module doc)."""
    gt_pieces, pred_pieces = gt.split(","), pred.split(",")
    if len(gt_pieces) != len(pred_pieces):
        return 0.0
    scores = []
    for g, p in zip(gt_pieces, pred_pieces):
        if ".png" in g:
            if ".png" not in p:
                return 0.0
            scores.append(1.0)
        else:
            scores.append(bleu1(g, p))
    return sum(scores) / len(scores)


def args_flags(gt: Sequence[str], pred: Sequence[str]) -> tuple[list[float], list[float]]:
    """Per-position argument scores over ``max(len)`` positions and GT-presence flags."""
    n = max(len(gt), len(pred))
    flags = [call_args_score(g, p) for g, p in zip(gt, pred)] + [0.0] * (n - min(len(gt), len(pred)))
    return flags, [1.0] * len(gt) + [0.0] * (n - len(gt))


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def _iou(flags: Sequence[float], present: Sequence[float]) -> float:
    inter = sum(f * p for f, p in zip(flags, present))
    union = max(sum(max(f, p) for f, p in zip(flags, present)), 1.0)
    return inter / union


@dataclass(frozen=True)
class SampleScore:
    """The five metrics of one sample (fractions in [0, 1]) and whether it was a tool sample."""

    SR_t: float
    SR_act: float
    SR_args: float
    SR: float
    IoU: float
    tool: bool

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def is_tool_sample(gt_output: str) -> bool:
    """GPT4Tools' test: the GT output holds both ``Action:`` and ``Action Input:``."""
    return "Action:" in gt_output and "Action Input:" in gt_output


def score_sample(gt_output: str, prediction: str) -> SampleScore:
    """Score one prediction (the model's continuation) against the GT output."""
    pred = prediction.strip()
    pred_thoughts = _captures(THOUGHT_RE, pred)
    gt_thoughts = _captures(THOUGHT_RE, gt_output)
    if is_tool_sample(gt_output):
        gt_actions = _captures(ACTION_RE, gt_output)
        gt_args = _captures(ACTION_INPUT_RE, gt_output)
        gt_thoughts = gt_thoughts[: len(gt_actions)]
        pred_actions = _captures(ACTION_RE, pred)
        pred_args = _captures(ACTION_INPUT_RE, pred)
        # The step after the last tool call ("... No" then "AI: ...") is not an error.
        if len(pred_thoughts) == len(pred_actions) + 1 and pred_thoughts[-1] == "No":
            pred_thoughts = pred_thoughts[:-1]
        t_flags, t_gt = position_flags(gt_thoughts, pred_thoughts)
        a_flags, a_gt = position_flags(gt_actions, pred_actions)
        g_flags, g_gt = args_flags(gt_args, pred_args)
        sr_t, sr_act, sr_args = _mean(t_flags), _mean(a_flags), _mean(g_flags)
        sr = float(sr_t >= 1.0 and sr_act >= 1.0 and sr_args >= 0.5)
        iou = _iou(t_flags + a_flags + g_flags, t_gt + a_gt + g_gt)
        return SampleScore(sr_t, sr_act, sr_args, sr, iou, tool=True)
    t_flags, t_gt = position_flags(gt_thoughts, pred_thoughts)
    sr_t = _mean(t_flags)
    if not pred_thoughts or pred_thoughts[0] != "No" or not AI_RE.search(pred):
        sr_t = 0.0
    ok = float(sr_t >= 1.0)
    return SampleScore(sr_t, ok, ok, ok, _iou(t_flags, t_gt), tool=False)


def aggregate(scores: Iterable[SampleScore]) -> dict[str, float]:
    """Mean of each metric over the samples, plus ``n`` (0 samples → every metric 0.0)."""
    scores = list(scores)
    out: dict[str, float] = {k: _mean([getattr(s, k) for s in scores]) for k in METRIC_KEYS}
    out["n"] = len(scores)
    return out


# -- MME -----------------------------------------------------------------------------------------------
def mme_label(answer: str) -> str:
    """``yes``, ``no`` or ``other`` from a free-form answer, by MME's rule (see the module doc)."""
    text = answer.strip().lower()
    if text in ("yes", "no"):
        return text
    head = text[:4]
    if "yes" in head:
        return "yes"
    if "no" in head:
        return "no"
    return "other"


def mme_scores(items: Sequence[tuple[str, str, str]]) -> dict[str, float]:
    """``items``: ``(image_key, gt "yes"/"no", answer)``. Returns accuracy, accuracy+, score, counts."""
    by_image: dict[str, list[bool]] = {}
    right = 0
    for image, gt, answer in items:
        ok = mme_label(answer) == gt.strip().lower()
        right += ok
        by_image.setdefault(image, []).append(ok)
    acc = right / len(items) if items else 0.0
    acc_plus = sum(all(v) for v in by_image.values()) / len(by_image) if by_image else 0.0
    return {
        "accuracy": acc,
        "accuracy_plus": acc_plus,
        "score": 100.0 * (acc + acc_plus),
        "questions": len(items),
        "images": len(by_image),
    }


def mme_report(items: Sequence[Mapping[str, str]]) -> dict[str, object]:
    """MME metrics overall and per category. ``items``: dicts with ``image``, ``answer`` (GT), ``output``
    (the model's answer) and optional ``category``. Images are keyed per category, like MME's
    per-task files. ``total_score`` is MME's sum of the category scores."""
    cats: dict[str, list[tuple[str, str, str]]] = {}
    for it in items:
        cat = str(it.get("category") or "all")
        cats.setdefault(cat, []).append((f"{cat}/{it['image']}", str(it["answer"]), str(it["output"])))
    per = {c: mme_scores(v) for c, v in sorted(cats.items())}
    overall = mme_scores([t for v in cats.values() for t in v])
    return {
        "accuracy": overall["accuracy"],
        "accuracy_plus": overall["accuracy_plus"],
        "n": overall["questions"],
        "images": overall["images"],
        "total_score": sum(float(p["score"]) for p in per.values()),
        "categories": per,
    }
