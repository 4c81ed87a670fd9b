"""Evaluation: GPT4Tools tool-use metrics (SR_t, SR_act, SR_args, SR, IoU) and MME yes/no metrics.

``metrics`` holds the scoring rules as pure functions; ``runner`` reads files, runs a model over the
instructions (batched) and scores. ``ibllm-agent eval tools|mme`` is the command line.
"""

from ibllm_agent.evaluation.metrics import (
    METRIC_KEYS,
    SampleScore,
    aggregate,
    bleu1,
    mme_label,
    mme_report,
    score_sample,
)
from ibllm_agent.evaluation.runner import load_gt, load_predictions, score_tools

__all__ = [
    "METRIC_KEYS", "SampleScore", "aggregate", "bleu1", "load_gt", "load_predictions", "mme_label",
    "mme_report", "score_sample", "score_tools",
]
