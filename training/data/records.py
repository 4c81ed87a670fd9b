"""Raw records with their origin (``file:line``) from TSV, JSON (a list), JSONL and WebDataset shards.

Every reader yields ``Record(value, where)`` and never raises for a single bad record: a record it
cannot parse is yielded as ``Record(None, where, error)`` so the caller's ``on_error`` policy decides
(skip and count, or fail fast with ``DataError`` naming the file and line).
"""

from __future__ import annotations

import csv
import glob
import json
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ibllm_agent.cache.sources import IMAGE_EXTS
from ibllm_agent.errors import IbllmError


class DataError(IbllmError, ValueError):
    """A training data file or record is unusable; the message names ``file:line`` and the reason."""


@dataclass
class Record:
    value: Any
    where: str  # "path:line" (JSON/TSV) or "shard.tar:key" (WebDataset)
    error: str | None = None


@dataclass(frozen=True)
class TarMember:
    """An image inside a WebDataset shard, read lazily by offset (no re-scan of the archive)."""

    shard: Path
    name: str
    offset: int
    size: int

    def read(self) -> bytes:
        with open(self.shard, "rb") as fh:
            fh.seek(self.offset)
            return fh.read(self.size)


def expand(paths: list[str]) -> list[Path]:
    """Globs and plain paths -> existing files, in the given order (globs sorted)."""
    out: list[Path] = []
    for raw in paths:
        if any(ch in raw for ch in "*?[") and not Path(raw).exists():
            matches = sorted(glob.glob(raw, recursive=True))
            if not matches:
                raise DataError(f"data pattern {raw!r} matches no files")
            out.extend(Path(m) for m in matches)
            continue
        p = Path(raw).expanduser()
        if not p.is_file():
            raise DataError(f"data file not found: {raw}")
        out.append(p)
    if not out:
        raise DataError("no data files given (set `data` in the config or pass --data FILE)")
    return out


def read_tsv(path: Path) -> Iterator[Record]:
    """``url<TAB>caption`` with a header line naming the columns (the reference's pandas read)."""
    with open(path, encoding="utf-8", newline="") as fh:
        rows = csv.reader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows, None)
        if header is None:
            return
        cols = [h.strip() for h in header]
        if "url" not in cols or "caption" not in cols:
            yield Record(None, f"{path}:1", f"TSV header must name the columns url and caption, got {cols}")
            return
        iu, ic = cols.index("url"), cols.index("caption")
        for lineno, row in enumerate(rows, start=2):
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(cols):
                yield Record(None, f"{path}:{lineno}", f"expected {len(cols)} tab-separated columns, got {len(row)}")
                continue
            yield Record({"url": row[iu], "caption": row[ic]}, f"{path}:{lineno}")


def read_json(path: Path) -> Iterator[Record]:
    """A JSON list of objects (line of each element's start) or JSON Lines (one object per line).
    A ``{"annotations": [...]}`` object (MiniGPT-4's ``filter_cap.json``) yields its list."""
    text = path.read_text(encoding="utf-8")
    start = len(text) - len(text.lstrip())
    if text[start:start + 1] == "[" or (text[start:start + 1] == "{" and _single_object(text)):
        yield from _json_list(path, text)
        return
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield Record(json.loads(line), f"{path}:{lineno}")
        except json.JSONDecodeError as exc:
            yield Record(None, f"{path}:{lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})")


def _single_object(text: str) -> bool:
    try:
        return isinstance(json.loads(text), dict)
    except json.JSONDecodeError:
        return False


def _json_list(path: Path, text: str) -> Iterator[Record]:
    dec = json.JSONDecoder()
    try:
        whole = json.loads(text)
    except json.JSONDecodeError as exc:
        yield Record(None, f"{path}:{exc.lineno}", f"invalid JSON: {exc.msg} (column {exc.colno})")
        return
    if isinstance(whole, dict):
        items = whole.get("annotations")
        if not isinstance(items, list):
            yield Record(None, f"{path}:1", "a JSON object file must hold an 'annotations' list")
            return
        key = text.index('"annotations"')
        i = text.index("[", key)
    else:
        i = text.index("[")
    # Walk the list with raw_decode to know where each element starts (its line number).
    i += 1
    line = text.count("\n", 0, i) + 1
    pos = i
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text) or text[i] == "]":
            return
        line += text.count("\n", pos, i)
        pos = i
        value, i = dec.raw_decode(text, i)
        yield Record(value, f"{path}:{line}")


def read_webdataset(path: Path) -> Iterator[Record]:
    """img2dataset shards: ``<key>.jpg`` (or another image ext) + ``<key>.txt`` caption (+ json)."""
    groups: dict[str, dict[str, Any]] = {}
    order: list[str] = []
    try:
        with tarfile.open(path, "r:") as tf:
            for m in tf:
                if not m.isfile():
                    continue
                key, _, ext = m.name.partition(".")
                if key not in groups:
                    groups[key] = {}
                    order.append(key)
                ext = "." + ext.lower()
                if ext in IMAGE_EXTS:
                    groups[key]["image"] = TarMember(path, m.name, m.offset_data, m.size)
                elif ext == ".txt":
                    groups[key]["caption"] = tf.extractfile(m).read().decode("utf-8", errors="replace")
    except (tarfile.TarError, OSError, EOFError) as exc:
        yield Record(None, f"{path}", f"unreadable WebDataset shard: {exc}")
    for key in order:
        g = groups[key]
        where = f"{path}:{key}"
        if "image" not in g or "caption" not in g:
            yield Record(None, where, "shard sample needs an image member and a .txt caption")
            continue
        yield Record({"url": g["image"], "caption": g["caption"]}, where)


def read_records(path: Path) -> Iterator[Record]:
    suffix = path.suffix.lower()
    if suffix in (".tsv", ".csv", ".txt"):
        return read_tsv(path)
    if suffix in (".json", ".jsonl"):
        return read_json(path)
    if suffix == ".tar":
        return read_webdataset(path)
    raise DataError(f"{path}: unsupported data file type {suffix!r} (expected .tsv, .json, .jsonl or .tar)")
