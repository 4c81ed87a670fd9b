"""Data formats -> ``Example``s (prompt text, answer text, optional image), one per assistant turn.

- ``tsv`` / ``webdataset``: image-text pairs; the prompt is the reference's fixed instruction
  "Generate caption of this image" (no input), the answer the caption (a list: one picked per record,
  deterministically from the record's origin).
- ``alpaca`` (Alpaca, GPT4LLM, Alpaca-GPT4): ``{instruction, input, output}``; the input template when
  ``input`` is non-empty. The instruction is rendered as text (the reference's 1-tuple bug is not kept).
- ``llava``: ``{image, conversations: [{from: human|gpt, value}]}``: EVERY human/gpt pair is an example
  (the reference kept only the first); ``<image>`` is removed from the text.
- ``sharegpt``: ``{conversations: [{from: system|human|user|gpt|assistant|chatgpt, value}]}``; text only.
- ``minigpt4``: ``{image_id, caption}`` (cc_sbu_align ``filter_cap.json``); image ``image/<id>.jpg``
  under the image root; one of MiniGPT-4's detail instructions, picked per image id.
- ``gpt4tools``: ``{instruction, input, output}`` where the instruction is the whole GPT4Tools prompt; the
  first image it names (``image/abcdefgh.png``) that exists under the image root is the visual input,
  otherwise the text-only placeholder. The output is stripped (GPT4Tools ``train.py``).

Multi-turn rendering matches inference (``ChatImageBindLLM`` renders chats with
``prompts.format_chat``): turn k's prompt holds turns 1..k-1 as "Previous conversation" and its loss
covers answer k only, so every assistant turn is trained exactly as the model will be prompted.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ibllm_agent.prompts import format_chat, format_prompt
from ibllm_agent.training.data.records import DataError, TarMember

CAPTION_INSTRUCTION = "Generate caption of this image"
# MiniGPT-4's stage-2 detail instructions (its alignment prompts, without the <Img> wrapper).
DETAIL_INSTRUCTIONS = (
    "Describe this image in detail.",
    "Take a look at this image and describe what you notice.",
    "Please provide a detailed description of the picture.",
    "Could you describe the contents of this image for me?",
)
_IMAGE_TAG = re.compile(r"\s*<image>\s*")
_NAMED_IMAGE = re.compile(r"(?<![\w/.-])((?:[\w-]+/)*[\w-]+\.(?:png|jpg|jpeg))\b", re.IGNORECASE)
ImageRef = Path | TarMember


@dataclass
class Example:
    prompt: str  # fully templated prompt text (BOS added by the tokenizer step)
    answer: str  # target text (EOS added by the tokenizer step)
    image: ImageRef | None
    where: str
    image_missing: bool = False  # named an image that does not exist (counted; placeholder used)


class RecordError(ValueError):
    """One record does not fit its format (becomes a ``DataError`` with file:line upstream)."""


def _text(rec: dict, key: str, *, required: bool = True) -> str:
    v = rec.get(key)
    if v is None and not required:
        return ""
    if not isinstance(v, str):
        raise RecordError(f"field {key!r} must be a string, got {type(v).__name__}")
    return v


def _pick(options: list, where: str) -> Any:
    """Deterministic choice from the record's origin (same example every epoch and on every rank)."""
    digest = hashlib.sha256(where.encode()).digest()
    return options[int.from_bytes(digest[:4], "little") % len(options)]


def _resolve(root: Path, name: str) -> Path | None:
    """An absolute path as given; a relative one under ``root`` only if it stays inside ``root`` (a
    ``../`` name in model-written text never reaches outside the data's image folder). None if absent."""
    p = Path(name)
    try:
        cand = p.resolve() if p.is_absolute() else (root / p).resolve()
        if not p.is_absolute() and not cand.is_relative_to(root.resolve()):
            return None
    except OSError:
        return None
    return cand if cand.is_file() else None


def caption_pair(rec: dict, where: str, root: Path, template: str) -> list[Example]:
    url, caption = rec.get("url"), rec.get("caption")
    if isinstance(caption, list):
        caption = [c for c in caption if isinstance(c, str) and c.strip()]
        if not caption:
            raise RecordError("caption list is empty")
        caption = _pick(caption, where)
    if not isinstance(caption, str) or not caption.strip():
        raise RecordError("caption is missing or empty")
    prompt = format_prompt(CAPTION_INSTRUCTION, None, template)
    if isinstance(url, TarMember):
        return [Example(prompt, caption, url, where)]
    if not isinstance(url, str) or not url.strip():
        raise RecordError("url (image path) is missing")
    path = _resolve(root, url)
    return [Example(prompt, caption, path, where, image_missing=path is None)]


def alpaca(rec: dict, where: str, root: Path, template: str) -> list[Example]:
    instruction, inp, out = _text(rec, "instruction"), _text(rec, "input", required=False), _text(rec, "output")
    if not instruction.strip() or not out.strip():
        raise RecordError("instruction and output must be non-empty")
    return [Example(format_prompt(instruction, inp or None, template), out, None, where)]


_HUMAN = ("human", "user")
_GPT = ("gpt", "assistant", "chatgpt", "bard", "bing")


def _turns(rec: dict) -> tuple[str | None, list[tuple[str, str]]]:
    conv = rec.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise RecordError("'conversations' must be a non-empty list")
    system, pairs, pending = None, [], None
    for i, msg in enumerate(conv):
        if not isinstance(msg, dict) or not isinstance(msg.get("value"), str):
            raise RecordError(f"conversation turn {i} must be an object with a string 'value'")
        role = str(msg.get("from", msg.get("role", ""))).lower()
        text = _IMAGE_TAG.sub(" ", msg["value"]).strip() if "<image>" in msg["value"] else msg["value"]
        if role == "system":
            system = text
        elif role in _HUMAN:
            if pending is not None:
                raise RecordError(f"turn {i}: two human turns in a row")
            pending = text
        elif role in _GPT:
            if pending is None:
                if not pairs:
                    continue  # ShareGPT exports sometimes open with the assistant: nothing to learn from
                raise RecordError(f"turn {i}: two assistant turns in a row")
            pairs.append((pending, text))
            pending = None
        else:
            raise RecordError(f"turn {i}: unknown speaker {role!r}")
    if not pairs:
        raise RecordError("conversation has no human/assistant pair")
    return system, pairs


def _expand(system: str | None, pairs: list[tuple[str, str]], image, where: str, template: str,
            missing: bool = False) -> list[Example]:
    out = []
    for k, (human, answer) in enumerate(pairs):
        prompt = format_chat(pairs[:k], human, system=system, template=template)
        out.append(Example(prompt, answer, image, f"{where}#turn{k + 1}", image_missing=missing))
    return out


def llava(rec: dict, where: str, root: Path, template: str) -> list[Example]:
    system, pairs = _turns(rec)
    image, missing = None, False
    if rec.get("image") is not None:
        name = rec["image"]
        if not isinstance(name, str) or not name:
            raise RecordError("'image' must be a file name")
        image = _resolve(root, name)
        missing = image is None
    return _expand(system, pairs, image, where, template, missing)


def sharegpt(rec: dict, where: str, root: Path, template: str) -> list[Example]:
    system, pairs = _turns(rec)
    return _expand(system, pairs, None, where, template)


def minigpt4(rec: dict, where: str, root: Path, template: str) -> list[Example]:
    image_id, caption = rec.get("image_id"), _text(rec, "caption")
    if not isinstance(image_id, (str, int)) or str(image_id) == "":
        raise RecordError("'image_id' is missing")
    if not caption.strip():
        raise RecordError("caption is empty")
    image_id = str(image_id)
    path = None
    for name in (f"image/{image_id}.jpg", f"{image_id}.jpg", f"image/{image_id}.png", f"{image_id}.png"):
        path = _resolve(root, name)
        if path is not None:
            break
    prompt = format_prompt(_pick(list(DETAIL_INSTRUCTIONS), image_id), None, template)
    return [Example(prompt, caption, path, where, image_missing=path is None)]


def gpt4tools(rec: dict, where: str, root: Path, template: str) -> list[Example]:
    instruction, inp, out = _text(rec, "instruction"), _text(rec, "input", required=False), _text(rec, "output")
    if not instruction.strip() or not out.strip():
        raise RecordError("instruction and output must be non-empty")
    names = _NAMED_IMAGE.findall(instruction)
    image = next((p for n in names if (p := _resolve(root, n)) is not None), None)
    return [Example(format_prompt(instruction, inp or None, template), out.strip(), image, where,
                    image_missing=bool(names) and image is None)]


FORMATS: dict[str, Callable[[dict, str, Path, str], list[Example]]] = {
    "tsv": caption_pair, "webdataset": caption_pair, "alpaca": alpaca, "llava": llava,
    "sharegpt": sharegpt, "minigpt4": minigpt4, "gpt4tools": gpt4tools,
}


def detect_format(path: Path, first: Any) -> str:
    """Format from the file type and the first record's keys."""
    suffix = path.suffix.lower()
    if suffix == ".tar":
        return "webdataset"
    if suffix in (".tsv", ".csv", ".txt"):
        return "tsv"
    if not isinstance(first, dict):
        raise DataError(f"{path}: cannot detect the data format (first record is not an object); set data_format")
    if "conversations" in first:
        return "llava" if "image" in first else "sharegpt"
    if "image_id" in first and "caption" in first:
        return "minigpt4"
    if {"instruction", "output"} <= set(first):
        ins = first.get("instruction")
        return "gpt4tools" if isinstance(ins, str) and "GPT4Tools" in ins else "alpaca"
    raise DataError(f"{path}: cannot detect the data format from keys {sorted(first)}; set data_format")
