"""Write a whole synthetic data set: media files and every training/evaluation format.

Layout of ``OUT/`` (all paths inside the files are relative to ``OUT``)::

    image/*.png  video/*.mp4  audio/*.wav  point/*.npy      the media (train/val/test pools disjoint)
    image_text.tsv            url<TAB>caption (header line), train images   → stage-1 pretraining
    alpaca.json               {instruction, input, output}: captions as input + questions, text-only facts
    llava.json                {id, image, conversations}: multi-turn Q&A about train images (<image> in turn 1)
    llava_media.json          the same for audio/video/point, the file under the key "audio"/"video"/"point"
                              and no <image> tag (loaders that know only images read it as ShareGPT text)
    sharegpt.json             {id, conversations}: text-only multi-turn chats
    gpt4tools_train.json      {id, instruction, input, output, kind, modality, step, target, media}
    gpt4tools_val_seen.json   seen tools, held-out instruction wordings, unseen media
    gpt4tools_test_unseen.json  held-out tool names and unseen random functions
    mme_val.json              {id, image, question, answer, category}: MME-style yes/no pairs on val images
    manifest.json             the config, counts per file and split, sha256 of every file

Every item is drawn from ``random.Random(f"{seed}:{split}:{what}:{i}")``, so the same seed gives the same
bytes, and changing one count does not reshuffle the other parts.
"""

from __future__ import annotations

import hashlib
import json
import random
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ibllm_agent.training.synthetic import text as T
from ibllm_agent.training.synthetic import tooluse as U
from ibllm_agent.training.synthetic.functions import function_episode
from ibllm_agent.training.synthetic.media import EXTENSIONS, SCENES, SHAPES, render
from ibllm_agent.training.synthetic.tool_table import (
    DEFAULT_HELDOUT_TOOLS,
    EXPERT_DESCRIPTIONS,
    PREREQUISITE,
    all_tool_names,
)

from ibllm_agent.errors import ConfigError

SPLITS = ("train", "val", "test")
SPLIT_FILES = {"train": "gpt4tools_train.json", "val": "gpt4tools_val_seen.json", "test": "gpt4tools_test_unseen.json"}
_IMAGE_ONLY_GEN = "Generate Image From User Input Text"


@dataclass
class SyntheticConfig:
    """How much of what to generate. Counts of tool-use *episodes* (each gives 1–3 samples)."""

    seed: int = 0
    n_train: int = 400
    n_val: int = 60
    n_test: int = 60
    media_train: int = 16  # files per modality in the train pool
    media_eval: int = 6  # files per modality in each of the val and test pools
    # Extra train names per modality that tool-use episodes may attach *without* a rendered file (their
    # media entry says ``"rendered": false``): GPT4Tools' own training names have no file either, and a
    # model that sees only a few names memorises them instead of learning to copy the one it is given.
    names_train: int = 0
    n_chat: int = 200  # records in each of alpaca / llava / sharegpt
    heldout_tools: tuple[str, ...] = DEFAULT_HELDOUT_TOOLS
    # episode mix (relative weights) of the val split, and of the train split unless ``train_mix`` is set
    mix: dict[str, float] = field(default_factory=lambda: {
        "tool": 0.35, "chain": 0.1, "modality": 0.2, "no_tool": 0.15, "function": 0.2})
    # the train split's own mix (None: ``mix``): more practice on a kind without changing what val measures
    train_mix: dict[str, float] | None = None

    def check(self) -> None:
        unknown = [t for t in self.heldout_tools if t not in all_tool_names()]
        if unknown:
            raise ConfigError(f"unknown held-out tool(s) {unknown}; known: {all_tool_names()}")
        if min(self.n_train, self.n_val, self.n_test, self.n_chat, self.names_train) < 0 or \
                min(self.media_train, self.media_eval) < 1:
            raise ConfigError("counts must be >= 0 and media pools >= 1")
        for mix in (self.mix, self.train_mix):
            if mix is None:
                continue
            if not mix or any(w < 0 for w in mix.values()) or sum(mix.values()) <= 0:
                raise ConfigError(f"mix weights must be non-negative with a positive sum, got {mix}")
            bad = set(mix) - {"tool", "chain", "modality", "no_tool", "function"}
            if bad:
                raise ConfigError(f"unknown episode kind(s) in mix: {sorted(bad)}")


def _rng(cfg: SyntheticConfig, *parts: Any) -> random.Random:
    return random.Random(":".join(str(p) for p in (cfg.seed, *parts)))


def _unique_name(rng: random.Random, modality: str, used: set[str]) -> str:
    """GPT4Tools-style ``<modality>/<8 lowercase letters><ext>``, not in ``used`` (added to it)."""
    name = ""
    while not name or name in used:
        name = f"{modality}/" + "".join(rng.choice(string.ascii_lowercase) for _ in range(8)) + EXTENSIONS[modality]
    used.add(name)
    return name


def media_pools(cfg: SyntheticConfig) -> dict[str, dict[str, list[dict[str, Any]]]]:
    """split → modality → items ``{modality, name, scene, seed}`` with unique names across splits."""
    used: set[str] = set()
    pools: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for split in SPLITS:
        pools[split] = {}
        count = cfg.media_train if split == "train" else cfg.media_eval
        for modality in SCENES:
            items = []
            for j in range(count):
                rng = _rng(cfg, split, modality, j)
                scene = SCENES[modality](rng)
                name = _unique_name(rng, modality, used)
                items.append({"modality": modality, "name": name, "scene": scene, "seed": rng.randrange(2**31)})
            pools[split][modality] = items
    for modality in SCENES:  # unrendered train names (after the rendered ones: their draws stay put)
        for j in range(cfg.names_train):
            rng = _rng(cfg, "train", "name", modality, j)
            name = _unique_name(rng, modality, used)
            pools["train"][modality].append({"modality": modality, "name": name, "scene": SCENES[modality](rng),
                                             "seed": rng.randrange(2**31), "rendered": False})
    return pools


def _seen(cfg: SyntheticConfig) -> list[str]:
    return [t for t in all_tool_names() if t not in cfg.heldout_tools]


def _image_tools(names: list[str]) -> list[str]:
    return [n for n in names if n not in PREREQUISITE and n not in EXPERT_DESCRIPTIONS]


def _episode(cfg: SyntheticConfig, split: str, i: int, pools: dict[str, list[dict[str, Any]]]) -> U.Episode:
    rng = _rng(cfg, split, "episode", i)
    seen = _seen(cfg)
    pick = lambda modality: rng.choice(pools[modality])
    if split == "test":  # unseen tools: held-out GPT4Tools names (single or as chains) or new functions
        held = list(cfg.heldout_tools)
        if not held or rng.random() < 0.4:
            return function_episode(rng, "heldout", "val")
        tool = rng.choice(held)
        if tool in PREREQUISITE:
            return U.chain_episode(rng, pick("image"), tool, "train", seen + held)
        if tool in EXPERT_DESCRIPTIONS:
            modality = "audio" if tool == U.TRANSCRIBE else "video"
            ep = (U.audio_episode(rng, pick("audio"), "train", seen, False) if modality == "audio"
                  else U.video_episode(rng, pick("video"), "train", seen, "plain"))
            return ep
        return U.image_episode(rng, pick("image"), tool, "train", seen + held)
    mix = cfg.train_mix if split == "train" and cfg.train_mix is not None else cfg.mix
    kinds, weights = zip(*mix.items())
    kind = rng.choices(kinds, weights)[0]
    if kind == "function":
        return function_episode(rng, "train", split)
    if kind == "no_tool":
        item = pick(rng.choice(list(SCENES))) if rng.random() < 0.5 else None
        return U.no_tool_episode(rng, seen, item)
    if kind == "chain":
        gens = [g for g, first in PREREQUISITE.items() if g in seen and first in seen]
        if U.TRANSCRIBE in seen and _IMAGE_ONLY_GEN in seen:
            gens.append("speech")
        if gens:
            g = rng.choice(gens)
            if g == "speech":
                return U.speech_to_image_episode(rng, pick("audio"), seen)
            return U.chain_episode(rng, pick("image"), g, split, seen)
    if kind == "modality":
        choices = [("audio", "what"), ("video", "what"), ("video", "find"), ("image", "what"), ("image", "find")]
        choices = [c for c in choices if (c[0] != "audio" or U.TRANSCRIBE in seen)
                   and (c[0] != "video" or U.VIDEO_DETECT in seen)]
        modality, mode = rng.choice(choices)
        if modality == "audio":
            return U.audio_episode(rng, pick("audio"), split, seen, True)
        if modality == "video":
            return U.video_episode(rng, pick("video"), split, seen, mode)
        return U.image_modality_episode(rng, pick("image"), split, seen, mode)
    # single tool
    options = _image_tools(seen) + [t for t in (U.TRANSCRIBE, U.VIDEO_DETECT) if t in seen]
    tool = rng.choice(options)
    if tool == U.TRANSCRIBE:
        return U.audio_episode(rng, pick("audio"), split, seen, False)
    if tool == U.VIDEO_DETECT:
        return U.video_episode(rng, pick("video"), split, seen, "plain")
    return U.image_episode(rng, pick("image"), tool, split, seen)


def tool_samples(cfg: SyntheticConfig, split: str, pools: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    n = {"train": cfg.n_train, "val": cfg.n_val, "test": cfg.n_test}[split]
    out = []
    for i in range(n):
        for sample in U.episode_samples(_episode(cfg, split, i, pools)):
            out.append({"id": f"{split}-{i:05d}-{sample['step']}", **sample})
    return out


def chat_records(cfg: SyntheticConfig, pools: dict[str, list[dict[str, Any]]]) -> dict[str, list[dict[str, Any]]]:
    """Alpaca, LLaVA (+ other media) and ShareGPT records from the train pool."""
    alpaca, llava, llava_media, sharegpt = [], [], [], []
    modalities = list(SCENES)
    for i in range(cfg.n_chat):
        rng = _rng(cfg, "train", "chat", i)
        item = rng.choice(pools[rng.choice(modalities)])
        qa = T.questions(item["scene"], rng)
        q, a = rng.choice(qa)
        if rng.random() < 0.6:
            alpaca.append({"instruction": q, "input": T.caption(item["scene"]), "output": a})
        else:
            gq, ga = T.general_qa(rng)
            alpaca.append({"instruction": gq, "input": "", "output": ga})
        turns = rng.sample(qa, min(len(qa), rng.randint(1, 3)))
        conv = []
        for k, (tq, ta) in enumerate(turns):
            # LLaVA's "<image>" placeholder only where a LLaVA loader expects it (image records)
            tag = "<image>\n" if k == 0 and item["modality"] == "image" else ""
            conv.append({"from": "human", "value": f"{tag}{tq}"})
            conv.append({"from": "gpt", "value": ta})
        record = {"id": f"chat-{i:05d}", item["modality"]: item["name"], "conversations": conv}
        (llava if item["modality"] == "image" else llava_media).append(record)
        chat = []
        for _ in range(rng.randint(2, 3)):
            gq, ga = T.general_qa(rng)
            chat += [{"from": "human", "value": gq}, {"from": "gpt", "value": ga}]
        sharegpt.append({"id": f"sharegpt-{i:05d}", "conversations": chat})
    return {"alpaca.json": alpaca, "llava.json": llava, "llava_media.json": llava_media, "sharegpt.json": sharegpt}


def mme_records(cfg: SyntheticConfig, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for j, item in enumerate(items):
        rng = _rng(cfg, "val", "mme", j)
        for k, (q, a) in enumerate(T.yes_no_pair(item["scene"], rng, SHAPES)):
            out.append({"id": f"mme-{j:04d}-{k}", "image": item["name"], "question": q, "answer": a,
                        "category": "existence"})
    return out


def _dump(obj: Any) -> bytes:
    return (json.dumps(obj, ensure_ascii=False, indent=1) + "\n").encode("utf-8")


def generate(out_dir: str | Path, cfg: SyntheticConfig | None = None) -> dict[str, Any]:
    """Write the data set to ``out_dir`` (created; existing files with the same names are replaced).
    Returns the manifest."""
    cfg = cfg or SyntheticConfig()
    cfg.check()
    out = Path(out_dir)
    files: dict[str, bytes] = {}
    pools = media_pools(cfg)
    for split in SPLITS:
        for items in pools[split].values():
            for item in items:
                if item.get("rendered", True):
                    files[item["name"]] = render(item["scene"], item["seed"])
    tsv = ["url\tcaption"] + [f"{it['name']}\t{T.caption(it['scene'])}" for it in pools["train"]["image"]
                              if it.get("rendered", True)]
    files["image_text.tsv"] = ("\n".join(tsv) + "\n").encode("utf-8")
    rendered = {m: [it for it in items if it.get("rendered", True)] for m, items in pools["train"].items()}
    for name, records in chat_records(cfg, rendered).items():  # LLaVA-style records need the files
        files[name] = _dump(records)
    counts: dict[str, Any] = {}
    for split in SPLITS:
        samples = tool_samples(cfg, split, pools[split])
        files[SPLIT_FILES[split]] = _dump(samples)
        by_kind: dict[str, int] = {}
        for s in samples:
            by_kind[s["kind"]] = by_kind.get(s["kind"], 0) + 1
        counts[SPLIT_FILES[split]] = {"samples": len(samples), "by_kind": dict(sorted(by_kind.items()))}
    files["mme_val.json"] = _dump(mme_records(cfg, pools["val"]["image"]))
    manifest = {"config": asdict(cfg), "counts": counts,
                "files": {k: hashlib.sha256(v).hexdigest() for k, v in sorted(files.items())}}
    files["manifest.json"] = _dump(manifest)
    for rel, data in files.items():
        path = out / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return manifest
