"""Deterministic, seeded synthetic data (installed as ``ibllm_agent.training.synthetic``).

Media with known content (coloured shapes, moving shapes, tones/chirps/noise/speech stand-ins, point-cloud
solids), captions, Alpaca Q&A, LLaVA/ShareGPT conversations, and GPT4Tools-format tool-use samples
(single tools, two-step chains, no-tool negatives, modality-decides-the-tool requests, random function
calling) with train / val-seen (held-out wordings) / test-unseen (held-out tools) splits.

    python -m ibllm_agent.training.synthetic OUT --seed 0 --n-train 400

See ``generate.py`` for the file layout.
"""

from ibllm_agent.training.synthetic.generate import SPLIT_FILES, SyntheticConfig, generate

__all__ = ["SPLIT_FILES", "SyntheticConfig", "generate"]
