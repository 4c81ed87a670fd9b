"""Words about synthetic scenes: captions, question/answer pairs, multi-turn conversations.

Every answer is derived from the scene dict the media file was rendered from, so it is true of the
file. Question wordings are drawn from small template lists with an RNG.
"""

from __future__ import annotations

import random
from typing import Any

_NUM = {1: "one", 2: "two", 3: "three", 4: "four", 5: "five", 6: "six"}
_SOUND_NOUN = {"tone": "a steady tone", "chirp": "a chirp", "noise": "noise bursts", "speech": "a person speaking"}


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _join(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def object_phrase(obj: dict[str, Any]) -> str:
    return f"{obj['color']} {obj['shape']}"


def caption(scene: dict[str, Any]) -> str:
    """One sentence that describes the scene."""
    m = scene["modality"]
    if m == "image":
        things = _join([_a(object_phrase(o)) for o in scene["objects"]])
        return f"{things[0].upper()}{things[1:]} on a {scene['background']} background."
    if m == "video":
        return (f"{_a(scene['color'] + ' ' + scene['shape']).capitalize()} moves from {scene['direction']} "
                f"on a {scene['background']} background.")
    if m == "audio":
        return audio_description(scene)
    return f"A point cloud of {_a(scene['size'] + ' ' + scene['solid'])}."


def audio_description(scene: dict[str, Any]) -> str:
    kind = scene["sound"]
    if kind == "tone":
        return f"A steady {scene['pitch']}-pitched tone."
    if kind == "chirp":
        return f"A {scene['sweep']} chirp."
    if kind == "noise":
        n = scene["bursts"]
        return f"{_NUM[n].capitalize()} short burst{'s' if n > 1 else ''} of noise."
    return f"A person speaking in a {scene['voice']} voice."


def questions(scene: dict[str, Any], rng: random.Random) -> list[tuple[str, str]]:
    """All question/answer pairs the scene supports (wording drawn from ``rng``), in a fixed order."""
    m = scene["modality"]
    qa: list[tuple[str, str]] = []
    if m == "image":
        objs = scene["objects"]
        n = len(objs)
        qa.append((rng.choice(["How many shapes are in the image?", "How many objects can you see?",
                               "Count the shapes in this picture."]),
                   f"There {'is' if n == 1 else 'are'} {_NUM[n]} shape{'s' if n > 1 else ''}."))
        qa.append((rng.choice(["What color is the background?", "What is the background color?"]),
                   f"The background is {scene['background']}."))
        for o in objs:
            qa.append((rng.choice([f"What color is the {o['shape']}?", f"Which color does the {o['shape']} have?"]),
                       f"The {o['shape']} is {o['color']}."))
            qa.append((f"Where is the {object_phrase(o)}?", f"The {object_phrase(o)} is at the {o['position']}."))
        qa.append(("Describe the image.", caption(scene)))
    elif m == "video":
        qa.append((rng.choice(["In which direction does the shape move?", "Where is the object going?"]),
                   f"The {scene['shape']} moves from {scene['direction']}."))
        qa.append((rng.choice(["What shape is moving?", "What is moving in the video?"]),
                   f"{_a(scene['color'] + ' ' + scene['shape']).capitalize()} is moving."))
        qa.append(("Describe the video.", caption(scene)))
    elif m == "audio":
        kind = scene["sound"]
        qa.append((rng.choice(["What do you hear?", "What kind of sound is this?"]),
                   f"It is {_SOUND_NOUN[kind]}."))
        if kind == "tone":
            qa.append(("Is the pitch low, medium or high?", f"The pitch is {scene['pitch']}."))
        elif kind == "chirp":
            qa.append(("Is the pitch rising or falling?", f"The pitch is {scene['sweep']}."))
        elif kind == "noise":
            b = scene["bursts"]
            qa.append(("How many bursts of noise are there?", f"There {'is' if b == 1 else 'are'} {_NUM[b]}."))
        else:
            qa.append(("Is someone speaking?", "Yes, a person is speaking."))
        qa.append(("Describe the sound.", caption(scene)))
    else:
        qa.append((rng.choice(["What shape is this object?", "Which solid does this point cloud show?"]),
                   f"It is {_a(scene['solid'])}."))
        qa.append(("Is the object small or large?", f"The {scene['solid']} is {scene['size']}."))
        qa.append(("Describe the 3D object.", caption(scene)))
    return qa


def yes_no_pair(scene: dict[str, Any], rng: random.Random, shapes: tuple[str, ...]) -> list[tuple[str, str]]:
    """Two MME-style questions about an image scene: one answered ``Yes``, one ``No``."""
    present = rng.choice(scene["objects"])
    colors = {o["shape"]: o["color"] for o in scene["objects"]}
    absent = [s for s in shapes if s not in colors]
    if absent:
        wrong = f"{present['color']} {rng.choice(absent)}"
    else:  # every shape is there: ask for one in a colour it does not have
        wrong = f"{'white' if present['color'] != 'white' else 'black'} {present['shape']}"
    suffix = " Please answer yes or no."
    return [(f"Is there a {object_phrase(present)} in the image?{suffix}", "Yes"),
            (f"Is there a {wrong} in the image?{suffix}", "No")]


_GENERAL: list[tuple[str, str]] = [
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a square have?", "A square has four sides."),
    ("What do you get when you mix blue and yellow paint?", "You get green."),
    ("What do you get when you mix red and white paint?", "You get pink."),
    ("Name a shape with no corners.", "A circle has no corners."),
    ("Is a cube a 2D or a 3D shape?", "A cube is a 3D shape."),
    ("What is the opposite of rising?", "The opposite of rising is falling."),
    ("Say hello.", "Hello! How can I help you today?"),
    ("Thank you!", "You are welcome."),
    ("What can you do?", "I can answer questions and use tools to look at images, audio, video and 3D objects."),
]


def arithmetic(rng: random.Random) -> tuple[str, str]:
    a, b = rng.randint(2, 40), rng.randint(2, 40)
    op = rng.choice(["plus", "times", "minus"])
    val = a + b if op == "plus" else a * b if op == "times" else a - b
    return rng.choice([f"What is {a} {op} {b}?", f"Compute {a} {op} {b}."]), f"{a} {op} {b} is {val}."


def general_qa(rng: random.Random) -> tuple[str, str]:
    """A text-only question and its answer (arithmetic or a fixed fact)."""
    return arithmetic(rng) if rng.random() < 0.5 else rng.choice(_GENERAL)
