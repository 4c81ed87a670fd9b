"""Examples -> token ids + labels (loss only on answers), the training ``Dataset`` and its collate.

Tokenisation (reference §7, without its truncation quirk on the prompt boundary):
    prompt_ids = encode(prompt, BOS)            full = encode(prompt + answer, BOS, EOS)
    labels     = full with its first n positions ignored (``IGNORE_INDEX``), n = the common prefix of
                 prompt_ids and full (SentencePiece may merge across the boundary; such a token is
                 then trained, never a prompt-only one)
    both truncated to ``max_words``; examples whose answer is truncated away entirely are dropped and
    counted. Padding (in ``collate``) is on the right: ids ``PAD_INPUT`` (0, never attended to by a
    real token under the causal mask), labels ``IGNORE_INDEX``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from ibllm_agent.training.data.formats import FORMATS, Example, RecordError, detect_format
from ibllm_agent.training.data.records import DataError, Record, TarMember, expand, read_records

IGNORE_INDEX = -100
PAD_INPUT = 0
MAX_LISTED = 20
# Formats whose answers describe the image: an example whose image is missing is dropped. GPT4Tools and
# text formats fall back to the text-only placeholder instead.
NEEDS_IMAGE = ("tsv", "webdataset", "llava", "minigpt4")


@dataclass
class DataReport:
    """What loading the data did (also written to the run folder as data_report.json)."""

    files: list[str] = field(default_factory=list)
    formats: dict[str, str] = field(default_factory=dict)
    records: int = 0
    examples: int = 0
    skipped_records: int = 0
    errors: list[str] = field(default_factory=list)  # first MAX_LISTED "file:line: reason"
    missing_images: int = 0
    missing_examples: list[str] = field(default_factory=list)
    dropped_no_target: int = 0
    truncated: int = 0

    def note_error(self, where: str, reason: str) -> None:
        self.skipped_records += 1
        if len(self.errors) < MAX_LISTED:
            self.errors.append(f"{where}: {reason}")

    def summary(self) -> str:
        return (f"{self.examples} examples from {self.records} records in {len(self.files)} file(s); "
                f"skipped {self.skipped_records} malformed record(s), {self.missing_images} missing image(s), "
                f"{self.dropped_no_target} example(s) whose answer lies beyond max_words; "
                f"{self.truncated} truncated")


def load_examples(paths: Sequence[str], data_format: str = "auto", image_root: str | None = None,
                  template: str = "alpaca", on_error: str = "skip",
                  report: DataReport | None = None) -> tuple[list[Example], DataReport]:
    """Read every file into ``Example``s. ``on_error='fail'``: the first malformed record raises
    ``DataError`` naming ``file:line``; ``'skip'``: it is counted and listed in the report."""
    report = report or DataReport()
    examples: list[Example] = []
    for path in expand(list(paths)):
        report.files.append(str(path))
        root = Path(image_root) if image_root else path.parent
        fmt = None if data_format == "auto" else data_format
        for rec in read_records(path):
            report.records += 1
            if rec.error is not None:
                _fail_or_count(report, rec, rec.error, on_error)
                continue
            if fmt is None:
                fmt = detect_format(path, rec.value)
            report.formats[str(path)] = fmt
            try:
                if not isinstance(rec.value, dict):
                    raise RecordError(f"record must be an object, got {type(rec.value).__name__}")
                made = FORMATS[fmt](rec.value, rec.where, root, template)
            except RecordError as exc:
                _fail_or_count(report, rec, str(exc), on_error)
                continue
            for ex in made:
                if ex.image_missing:
                    report.missing_images += 1
                    if len(report.missing_examples) < MAX_LISTED:
                        report.missing_examples.append(ex.where)
                    if fmt in NEEDS_IMAGE:
                        continue
                examples.append(ex)
    report.examples = len(examples)
    return examples, report


def _fail_or_count(report: DataReport, rec: Record, reason: str, on_error: str) -> None:
    if on_error == "fail":
        raise DataError(f"{rec.where}: {reason}")
    report.note_error(rec.where, reason)


def tokenize_example(tokenizer: Any, ex: Example, max_words: int) -> tuple[list[int], list[int], bool]:
    """-> (ids, labels, truncated). ``labels`` has ``IGNORE_INDEX`` on prompt positions."""
    prompt_ids = tokenizer.encode(ex.prompt, bos=True, eos=False)
    full = tokenizer.encode(ex.prompt + ex.answer, bos=True, eos=True)
    n = 0
    for a, b in zip(prompt_ids, full):
        if a != b:
            break
        n += 1
    truncated = len(full) > max_words
    full = full[:max_words]
    labels = [IGNORE_INDEX] * min(n, len(full)) + full[n:]
    return full, labels, truncated


def content_key(ref: Path | TarMember | bytes) -> str:
    """sha256 of the image file's bytes: the feature store's key (same image, same feature)."""
    data = ref if isinstance(ref, bytes) else ref.read() if isinstance(ref, TarMember) else Path(ref).read_bytes()
    return hashlib.sha256(data).hexdigest()


def read_image_bytes(ref: Path | TarMember) -> bytes:
    return ref.read() if isinstance(ref, TarMember) else Path(ref).read_bytes()


class TrainDataset(Dataset):
    """Tokenised examples; each item also carries its visual input:

    - with a feature store: ``feature`` [D] fp32 looked up by the image's content hash;
    - on the fly: ``pixels`` [3, 224, 224] (the reference's random-resized-crop when ``augment``);
    - text-only rows: neither (the engine uses the zero-image placeholder feature).
    Examples with no answer token left after truncation are dropped at construction (counted).
    """

    def __init__(self, examples: list[Example], tokenizer: Any, max_words: int, *, store: Any = None,
                 augment: bool = False, report: DataReport | None = None):
        self.tokenizer, self.max_words, self.store, self.augment = tokenizer, max_words, store, augment
        self.report = report or DataReport()
        self.items: list[tuple[list[int], list[int], Example]] = []
        self._keys: dict[Any, str] = {}  # image ref -> content hash (memo, per worker process)
        self._transform = None
        for ex in examples:
            if ex.image is not None and store is not None:
                try:
                    key = self._keys[ex.image] = store.key_for(ex.image)
                except OSError:
                    key = None
                if key is None or key not in store:  # unreadable at encode time, or never encoded
                    self.report.missing_images += 1
                    if len(self.report.missing_examples) < MAX_LISTED:
                        self.report.missing_examples.append(f"{ex.where} (not in the feature store)")
                    continue
            ids, labels, truncated = tokenize_example(tokenizer, ex, max_words)
            if all(v == IGNORE_INDEX for v in labels):
                self.report.dropped_no_target += 1
                continue
            self.report.truncated += int(truncated)
            self.items.append((ids, labels, ex))

    def __len__(self) -> int:
        return len(self.items)

    def num_tokens(self, i: int) -> int:
        return len(self.items[i][0])

    def __getitem__(self, i: int) -> dict[str, Any]:
        ids, labels, ex = self.items[i]
        item: dict[str, Any] = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels), "where": ex.where}
        if ex.image is not None:
            if self.store is not None:
                key = self._keys.get(ex.image)
                if key is None:
                    key = self._keys[ex.image] = self.store.key_for(ex.image)
                item["feature"] = self.store.get(key, ex.where)
            else:
                item["pixels"] = self._pixels(ex.image)
        return item

    def _pixels(self, ref: Path | TarMember) -> torch.Tensor:
        from ibllm_agent import media

        data = read_image_bytes(ref)
        if not self.augment:
            return media.load(data, "image")
        import io

        from PIL import Image

        if self._transform is None:
            self._transform = media.image_train_transform()
        with Image.open(io.BytesIO(data)) as im:
            return self._transform(im.convert("RGB"))


def collate(items: list[dict[str, Any]]) -> dict[str, Any]:
    """Right-pad to the longest row. -> input_ids [B, T] long, labels [B, T] long (IGNORE_INDEX on
    padding), has_image [B] bool, features [B, D] (rows without an image are zeros) or None, pixels
    [N_img, 3, H, W] or None (rows of ``has_image`` in order)."""
    t = max(len(it["input_ids"]) for it in items)
    b = len(items)
    ids = torch.full((b, t), PAD_INPUT, dtype=torch.long)
    labels = torch.full((b, t), IGNORE_INDEX, dtype=torch.long)
    for r, it in enumerate(items):
        n = len(it["input_ids"])
        ids[r, :n] = it["input_ids"]
        labels[r, :n] = it["labels"]
    has_image = torch.tensor([("feature" in it) or ("pixels" in it) for it in items])
    feats = [it["feature"] for it in items if "feature" in it]
    features = None
    if feats:
        features = torch.zeros(b, feats[0].shape[-1])
        features[has_image] = torch.stack(feats).float()
    pix = [it["pixels"] for it in items if "pixels" in it]
    return {"input_ids": ids, "labels": labels, "n_tokens": sum(len(it["input_ids"]) for it in items), "has_image": has_image, "features": features,
            "pixels": torch.stack(pix) if pix else None, "where": [it["where"] for it in items]}
