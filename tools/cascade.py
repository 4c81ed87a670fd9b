"""The detection cascade (ImageBind-LLM paper §3.3.3): after the model answers about an image, ground
the answer's noun phrases with the open-vocabulary detector, and return the annotated image and which
nouns were found.

Noun phrases are extracted offline, never with a network call: with an installed spaCy English
pipeline (``en_core_web_sm``/``md``/``lg``/``trf``) its ``noun_chunks``; otherwise a documented rule:
a noun phrase starts after a determiner, number or possessive ("a", "the", "two", "his", ...) and runs
to the next punctuation mark or closed-class word (verbs "is/are/has" and common caption verbs
"shows/sits/holds/...", prepositions, conjunctions, pronouns, adverbs), at most four words; a later "-ing" word ends it ("a man riding" → "man"). It finds
the object phrases of caption-like answers ("A man is riding a brown horse next to the river." →
man, brown horse, river) but misses bare plurals without a determiner ("dogs are playing").
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ibllm_agent.tools.detection import Detection
    from PIL import Image

__all__ = ["CascadeResult", "extract_nouns", "ground_answer", "rule_based_nouns"]

_STARTERS = set(
    "a an the this that these those some any several many few each every another one two three four five six "
    "seven eight nine ten his her their its my your our".split()
)
_BREAKERS = set(
    "is are was were be been being am has have had do does did can could will would may might should must "
    "in on at of with without to from by near next under over behind above below beside between into onto "
    "through across around against along among toward towards inside outside up down off out "
    "and or but nor so yet while which who whom whose that where when as than "
    "it he she they we you i me him them us there here "
    "very also too quite rather just only not no "
    # Verbs that follow a subject in captions ("a cat sits", "the image shows ...").
    "shows show depicts depict sits sit stands stand lies lie holds hold wears wear contains contain features "
    "includes include looks look appears appear seems seem runs run walks walk plays play eats eat rides ride "
    "flies fly sleeps sleep jumps jump hangs hang rests rest carries carry".split()
)
_SPACY_MODELS = ("en_core_web_sm", "en_core_web_md", "en_core_web_lg", "en_core_web_trf")
_MAX_WORDS = 4


def rule_based_nouns(text: str) -> list[str]:
    """Noun phrases by the documented fallback rule (module docstring), unique, in order."""
    phrases: list[str] = []
    for clause in re.split(r"[.,;:!?()\"\n]+", text.lower()):
        words = re.findall(r"[a-z][a-z'-]*", clause)
        i = 0
        while i < len(words):
            if words[i] not in _STARTERS:
                i += 1
                continue
            run: list[str] = []
            j = i + 1
            while j < len(words) and words[j] not in _BREAKERS and words[j] not in _STARTERS:
                if run and words[j].endswith("ing"):
                    break
                run.append(words[j])
                j += 1
            if run:
                phrase = " ".join(run[-_MAX_WORDS:])
                if phrase not in phrases:
                    phrases.append(phrase)
            i = j
    return phrases


@lru_cache(maxsize=1)
def _spacy_pipeline() -> Any:
    """An installed spaCy English pipeline, or None (spacy.load of a package name reads local files)."""
    try:
        import spacy
    except ImportError:
        return None
    for name in _SPACY_MODELS:
        try:
            return spacy.load(name)
        except OSError:  # not installed
            continue
    return None


def extract_nouns(text: str) -> list[str]:
    """Noun phrases of ``text``: spaCy ``noun_chunks`` when a pipeline is installed, else the rule."""
    nlp = _spacy_pipeline()
    if nlp is None:
        return rule_based_nouns(text)
    phrases: list[str] = []
    for chunk in nlp(text).noun_chunks:
        words = [t.text.lower() for t in chunk if t.pos_ not in ("DET", "PRON", "NUM") and not t.is_punct]
        phrase = " ".join(words)
        if phrase and phrase not in phrases:
            phrases.append(phrase)
    return phrases


@dataclass
class CascadeResult:
    """Nouns of the answer, the detections grouped by noun, and the annotated image."""

    nouns: list[str]
    found: dict[str, list[Detection]] = field(default_factory=dict)
    image: Image.Image | None = None

    @property
    def missing(self) -> list[str]:
        return [n for n in self.nouns if n not in self.found]

    def summary(self) -> str:
        """``found: man (1), brown horse (2); not found: river`` (or that no nouns were found)."""
        if not self.nouns:
            return "no nouns to ground in the answer"
        parts = []
        if self.found:
            parts.append("found: " + ", ".join(f"{n} ({len(d)})" for n, d in self.found.items()))
        if self.missing:
            parts.append("not found: " + ", ".join(self.missing))
        return "; ".join(parts)


def ground_answer(detector: Any, image: Image.Image, answer: str, *, box_threshold: float = 0.3,
                  text_threshold: float = 0.25,
                  extractor: Callable[[str], Sequence[str]] = extract_nouns) -> CascadeResult:
    """Detect every noun phrase of ``answer`` in ``image`` (one detector call) and draw the boxes."""
    from ibllm_agent.tools.detection import draw_detections

    nouns = list(extractor(answer))
    if not nouns:
        return CascadeResult(nouns=[], image=image.copy())
    dets = detector.detect([image], nouns, box_threshold=box_threshold, text_threshold=text_threshold)[0]
    found: dict[str, list[Detection]] = {}
    for d in dets:
        found.setdefault(d.label, []).append(d)
    ordered = {n: found[n] for n in nouns if n in found}
    return CascadeResult(nouns=nouns, found=ordered, image=draw_detections(image, dets))


def ground_turn(agent: Any, result: Any, *, loaders: Any = None, options: Any = None) -> dict[str, Any] | None:
    """The cascade on a finished agent turn: the answer's nouns in the turn's image (else the thread's
    newest image), through the agent's model pool. The annotated image is saved in the thread
    workspace when something was found. ``None`` when the thread has no image.

    Returns ``{"image", "nouns", "found": {noun: [[x1, y1, x2, y2, score], ...]}, "missing", "file",
    "summary"}``.
    """
    from ibllm_agent.agent.registry import _CONTEXT, ToolContext
    from ibllm_agent.tools.backends import ToolKit, use_models
    from ibllm_agent.tools.images import ToolOptions, open_image, save_image

    ws = agent.workspace.thread(result.thread_id)
    images = [n for n in result.attachments if n.startswith("image/")]
    if not images:
        images = sorted((n for n in ws.files() if n.startswith("image/")), key=lambda n: ws.resolve(n).stat().st_mtime)
    if not images:
        return None
    kit = ToolKit(options=options or ToolOptions(), loaders=dict(loaders or {}))
    image = open_image(ws.resolve(images[-1]), kit.options)
    token = _CONTEXT.set(ToolContext(thread_id=result.thread_id, workspace=ws, pool=agent.pool))
    try:
        with use_models(kit, "groundingdino") as (detector,):
            res = ground_answer(detector, image, result.answer, box_threshold=kit.options.box_threshold,
                                text_threshold=kit.options.text_threshold)
        file = save_image(res.image) if res.found else None
    finally:
        _CONTEXT.reset(token)
    return {
        "image": images[-1],
        "nouns": res.nouns,
        "found": {n: [[round(v) for v in d.box] + [round(d.score, 3)] for d in ds] for n, ds in res.found.items()},
        "missing": res.missing,
        "file": file,
        "summary": res.summary(),
    }
