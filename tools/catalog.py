"""The GPT4Tools tool inventory as data: exact names, descriptions and input fields.

A GPT4Tools-trained model emits tool names byte-for-byte (typos included: "Detect the Give Object",
lower-case "Segment the given object") and was fit to the descriptions it saw in its prompts, so
both are kept verbatim here:

- ``RUNTIME_DESCRIPTIONS``: what the GPT4Tools demo registers (``gpt4tools/tools.py``; 24 tools,
  trailing spaces included). The default description a registered tool carries.
- ``TRAINING_DESCRIPTIONS``: the ``TOOLS`` dict the training data was generated with (23 tools;
  "Generate Image Condition On Line Image" was never seen in training): derived from the runtime
  texts (the same words without the demo's trailing spaces). Use these for fidelity
  with the fine-tuned weights (``description_variant="training"`` in the registry).
- ``TRAINING_OUTPUT_FORMAT``: what the training data put in the ``Observation:`` for each tool
  (``image_path`` = the name of a new image, ``[output_from_..._tool]`` = a text result).
- ``INPUT_FIELDS``: how the single ``Action Input`` string splits into named arguments, in order
  (GPT4Tools comma semantics: the remainder after the leading fields joins into the last field).
- ``PROJECT_DESCRIPTIONS``: tools this project adds in the same style (the audio/video experts of
  the ImageBind-LLM paper); never seen by the GPT4Tools weights, text output. ``INPUT_DEFAULTS``:
  trailing fields a model may leave out (e.g. the language of ``Transcribe Speech From Audio``).

``tests/test_agent_catalog.py`` checks these tables against the shared reference JSON.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

__all__ = [
    "ALL_TOOL_NAMES",
    "INPUT_DEFAULTS",
    "INPUT_FIELDS",
    "PROJECT_DESCRIPTIONS",
    "RUNTIME_DESCRIPTIONS",
    "TOOL_NAMES",
    "TRAINING_DESCRIPTIONS",
    "TRAINING_OUTPUT_FORMAT",
    "ToolSpec",
    "catalog",
    "tool_spec",
]

# fmt: off
RUNTIME_DESCRIPTIONS: dict[str, str] = {
    'Instruct Image Using Text': (
        'useful when you want to the style of the image to be like the text. like: make it look'
        ' like a painting. or make it like a robot. The input to this tool should be a comma'
        ' separated string of two, representing the image_path and the text. '
    ),
    'Generate Image From User Input Text': (
        'useful when you want to generate an image from a user input text and save it to a file.'
        ' like: generate an image of an object or something, or generate an image that includes'
        ' some objects. The input to this tool should be a string, representing the text used to'
        ' generate image. '
    ),
    'Get Photo Description': (
        'useful when you want to know what is inside the photo. receives image_path as input. The'
        ' input to this tool should be a string, representing the image_path. '
    ),
    'Edge Detection On Image': (
        'useful when you want to detect the edge of the image. like: detect the edges of this'
        ' image, or canny detection on image, or perform edge detection on this image, or detect'
        ' the canny image of this image. The input to this tool should be a string, representing'
        ' the image_path'
    ),
    'Generate Image Condition On Canny Image': (
        'useful when you want to generate a new real image from both the user description and a'
        ' canny image. like: generate a real image of a object or something from this canny'
        ' image, or generate a new real image of a object or something from this edge image. The'
        ' input to this tool should be a comma separated string of two, representing the'
        ' image_path and the user description. '
    ),
    'Line Detection On Image': (
        'useful when you want to detect the straight line of the image. like: detect the straight'
        ' lines of this image, or straight line detection on image, or perform straight line'
        ' detection on this image, or detect the straight line image of this image. The input to'
        ' this tool should be a string, representing the image_path'
    ),
    'Generate Image Condition On Line Image': (
        'useful when you want to generate a new real image from both the user description and a'
        ' straight line image. like: generate a real image of a object or something from this'
        ' straight line image, or generate a new real image of a object or something from this'
        ' straight lines. The input to this tool should be a comma separated string of two,'
        ' representing the image_path and the user description. '
    ),
    'Hed Detection On Image': (
        'useful when you want to detect the soft hed boundary of the image. like: detect the soft'
        ' hed boundary of this image, or hed boundary detection on image, or perform hed boundary'
        ' detection on this image, or detect soft hed boundary image of this image. The input to'
        ' this tool should be a string, representing the image_path'
    ),
    'Generate Image Condition On Soft Hed Boundary Image': (
        'useful when you want to generate a new real image from both the user description and a'
        ' soft hed boundary image. like: generate a real image of a object or something from this'
        ' soft hed boundary image, or generate a new real image of a object or something from'
        ' this hed boundary. The input to this tool should be a comma separated string of two,'
        ' representing the image_path and the user description'
    ),
    'Sketch Detection On Image': (
        'useful when you want to generate a scribble of the image. like: generate a scribble of'
        ' this image, or generate a sketch from this image, detect the sketch from this image.'
        ' The input to this tool should be a string, representing the image_path'
    ),
    'Generate Image Condition On Sketch Image': (
        'useful when you want to generate a new real image from both the user description and a'
        ' scribble image or a sketch image. The input to this tool should be a comma separated'
        ' string of two, representing the image_path and the user description'
    ),
    'Pose Detection On Image': (
        'useful when you want to detect the human pose of the image. like: generate human poses'
        ' of this image, or generate a pose image from this image. The input to this tool should'
        ' be a string, representing the image_path'
    ),
    'Generate Image Condition On Pose Image': (
        'useful when you want to generate a new real image from both the user description and a'
        ' human pose image. like: generate a real image of a human from this human pose image, or'
        ' generate a new real image of a human from this pose. The input to this tool should be a'
        ' comma separated string of two, representing the image_path and the user description'
    ),
    'Generate Image Condition On Segmentations': (
        'useful when you want to generate a new real image from both the user description and'
        ' segmentations. like: generate a real image of a object or something from this'
        ' segmentation image, or generate a new real image of a object or something from these'
        ' segmentations. The input to this tool should be a comma separated string of two,'
        ' representing the image_path and the user description'
    ),
    'Predict Depth On Image': (
        'useful when you want to detect depth of the image. like: generate the depth from this'
        ' image, or detect the depth map on this image, or predict the depth for this image. The'
        ' input to this tool should be a string, representing the image_path'
    ),
    'Generate Image Condition On Depth': (
        'useful when you want to generate a new real image from both the user description and'
        ' depth image. like: generate a real image of a object or something from this depth'
        ' image, or generate a new real image of a object or something from the depth map. The'
        ' input to this tool should be a comma separated string of two, representing the'
        ' image_path and the user description'
    ),
    'Predict Normal Map On Image': (
        'useful when you want to detect norm map of the image. like: generate normal map from'
        ' this image, or predict normal map of this image. The input to this tool should be a'
        ' string, representing the image_path'
    ),
    'Generate Image Condition On Normal Map': (
        'useful when you want to generate a new real image from both the user description and'
        ' normal map. like: generate a real image of a object or something from this normal map,'
        ' or generate a new real image of a object or something from the normal map. The input to'
        ' this tool should be a comma separated string of two, representing the image_path and'
        ' the user description'
    ),
    'Answer Question About The Image': (
        'useful when you need an answer for a question based on an image. like: what is the'
        ' background color of the last image, how many cats in this figure, what is in this'
        ' figure. The input to this tool should be a comma separated string of two, representing'
        ' the image_path and the question'
    ),
    'Segment the Image': (
        'useful when you want to segment all the part of the image, but not segment a certain'
        ' object.like: segment all the object in this image, or generate segmentations on this'
        ' image, or segment the image,or perform segmentation on this image, or segment all the'
        ' object in this image.The input to this tool should be a string, representing the'
        ' image_path'
    ),
    'Detect the Give Object': (
        'useful when you only want to detect or find out given objects in the pictureThe input to'
        ' this tool should be a comma separated string of two, representing the image_path, the'
        ' text description of the object to be found'
    ),
    'Segment the given object': (
        'useful when you only want to segment the certain objects in the pictureaccording to the'
        ' given textlike: segment the cat,or can you segment an obeject for meThe input to this'
        ' tool should be a comma separated string of two, representing the image_path, the text'
        ' description of the object to be found'
    ),
    'Remove Something From The Photo': (
        'useful when you want to remove and object or something from the photo from its'
        ' description or location. The input to this tool should be a comma separated string of'
        ' two, representing the image_path and the object need to be removed. '
    ),
    'Replace Something From The Photo': (
        'useful when you want to replace an object from the object description or location with'
        ' another object from its description. The input to this tool should be a comma separated'
        ' string of three, representing the image_path, the object to be replaced, the object to'
        ' be replaced with '
    ),
}

# fmt: on

# The training data's ``TOOLS`` dict holds the same texts as the demo, minus the demo's trailing
# spaces, and lacks the one tool never seen in training. Derived, so the two cannot drift apart
# (tests/test_agent_catalog.py compares both with the reference JSON).
NOT_IN_TRAINING: tuple[str, ...] = ("Generate Image Condition On Line Image",)
TRAINING_DESCRIPTIONS: dict[str, str] = {
    name: text.rstrip() for name, text in RUNTIME_DESCRIPTIONS.items() if name not in NOT_IN_TRAINING
}

# Project tools in the GPT4Tools style (not part of the reference tables above).
PROJECT_DESCRIPTIONS: dict[str, str] = {
    'Transcribe Speech From Audio': (
        'useful when you want to know what is said or sung in an audio or a video. like: what does'
        ' the person say in this audio, or transcribe the speech of this recording, or what are the'
        ' lyrics of this song. The input to this tool should be a comma separated string of two,'
        ' representing the audio_path and the language code of the speech (empty to detect it)'
    ),
    'Detect Objects In Video': (
        'useful when you want to know which objects appear in a video and when. like: what objects'
        ' are in this video, or is there a dog in this clip, or when does the car appear. The input'
        ' to this tool should be a comma separated string of two, representing the video_path and'
        ' the names of the objects to look for, separated by commas (empty for common objects)'
    ),
}

# fmt: off
TRAINING_OUTPUT_FORMAT: dict[str, str] = {
    'Detect the Give Object': '[output_from_detection_tool]',
    'Segment the Image': 'image_path',
    'Get Photo Description': '[output_from_caption_tool]',
    'Generate Image From User Input Text': 'image_path',
    'Edge Detection On Image': 'image_path',
    'Generate Image Condition On Canny Image': 'image_path',
    'Predict Depth On Image': 'image_path',
    'Generate Image Condition On Depth': 'image_path',
    'Answer Question About The Image': '[output_from_vqa_tool]',
    'Instruct Image Using Text': 'image_path',
    'Sketch Detection On Image': 'image_path',
    'Generate Image Condition On Sketch Image': 'image_path',
    'Generate Image Condition On Segmentations': 'image_path',
    'Pose Detection On Image': 'image_path',
    'Generate Image Condition On Pose Image': 'image_path',
    'Hed Detection On Image': 'image_path',
    'Generate Image Condition On Soft Hed Boundary Image': 'image_path',
    'Predict Normal Map On Image': 'image_path',
    'Generate Image Condition On Normal Map': 'image_path',
    'Line Detection On Image': 'image_path',
    'Segment the given object': 'image_path',
    'Remove Something From The Photo': 'image_path',
    'Replace Something From The Photo': 'image_path',
}
# fmt: on

_IMAGE = ("image_path",)
_IMAGE_DESC = ("image_path", "description")

# Argument names per tool, in the order the comma-separated Action Input lists them. Names follow the
# descriptions ("representing the image_path and the question", ...). "image_path" fields are
# workspace file names: the runtime resolves them inside the thread's workspace before a tool runs.
INPUT_FIELDS: dict[str, tuple[str, ...]] = {
    "Instruct Image Using Text": ("image_path", "text"),
    "Generate Image From User Input Text": ("text",),
    "Get Photo Description": _IMAGE,
    "Edge Detection On Image": _IMAGE,
    "Generate Image Condition On Canny Image": _IMAGE_DESC,
    "Line Detection On Image": _IMAGE,
    "Generate Image Condition On Line Image": _IMAGE_DESC,
    "Hed Detection On Image": _IMAGE,
    "Generate Image Condition On Soft Hed Boundary Image": _IMAGE_DESC,
    "Sketch Detection On Image": _IMAGE,
    "Generate Image Condition On Sketch Image": _IMAGE_DESC,
    "Pose Detection On Image": _IMAGE,
    "Generate Image Condition On Pose Image": _IMAGE_DESC,
    "Generate Image Condition On Segmentations": _IMAGE_DESC,
    "Predict Depth On Image": _IMAGE,
    "Generate Image Condition On Depth": _IMAGE_DESC,
    "Predict Normal Map On Image": _IMAGE,
    "Generate Image Condition On Normal Map": _IMAGE_DESC,
    "Answer Question About The Image": ("image_path", "question"),
    "Segment the Image": _IMAGE,
    "Detect the Give Object": ("image_path", "object"),
    "Segment the given object": ("image_path", "object"),
    "Remove Something From The Photo": ("image_path", "object"),
    "Replace Something From The Photo": ("image_path", "object", "replacement"),
}

INPUT_FIELDS.update({
    "Transcribe Speech From Audio": ("audio_path", "language"),
    "Detect Objects In Video": ("video_path", "vocabulary"),
})

# Fields that may be left out of the Action Input, with the value they then take.
INPUT_DEFAULTS: dict[str, dict[str, str]] = {
    "Transcribe Speech From Audio": {"language": ""},
    "Detect Objects In Video": {"vocabulary": ""},
}

# The demo's registration order (runtime) is the canonical order of names.
TOOL_NAMES: tuple[str, ...] = tuple(RUNTIME_DESCRIPTIONS)
# Every name ``tool_spec`` knows: GPT4Tools' tools, then the project's.
ALL_TOOL_NAMES: tuple[str, ...] = TOOL_NAMES + tuple(PROJECT_DESCRIPTIONS)

DescriptionVariant = Literal["runtime", "training"]


@dataclass(frozen=True)
class ToolSpec:
    """One GPT4Tools tool: its exact name, both descriptions, input fields and output kind.

    ``output`` is ``"image"`` when the tool answers with the name of a new image file and ``"text"``
    when it answers with text (caption, VQA answer, detections), as in the training data.
    """

    name: str
    runtime_description: str
    training_description: str | None
    input_fields: tuple[str, ...]
    output: Literal["image", "text"]

    @property
    def seen_in_training(self) -> bool:
        return self.training_description is not None

    def description(self, variant: DescriptionVariant = "runtime") -> str:
        """The description for ``variant``; "training" falls back to runtime for unseen tools."""
        if variant == "training" and self.training_description is not None:
            return self.training_description
        if variant not in ("runtime", "training"):
            raise ValueError(f"unknown description variant {variant!r}; use 'runtime' or 'training'")
        return self.runtime_description


def tool_spec(name: str) -> ToolSpec:
    """The ``ToolSpec`` of GPT4Tools (or project) tool ``name`` (exact spelling); ``KeyError`` if unknown."""
    if name in PROJECT_DESCRIPTIONS:
        return ToolSpec(name, PROJECT_DESCRIPTIONS[name], None, INPUT_FIELDS[name], "text")
    if name not in RUNTIME_DESCRIPTIONS:
        raise KeyError(f"{name!r} is not a GPT4Tools tool; known: {', '.join(ALL_TOOL_NAMES)}")
    fmt = TRAINING_OUTPUT_FORMAT.get(name, "image_path")
    return ToolSpec(
        name=name,
        runtime_description=RUNTIME_DESCRIPTIONS[name],
        training_description=TRAINING_DESCRIPTIONS.get(name),
        input_fields=INPUT_FIELDS[name],
        output="image" if fmt == "image_path" else "text",
    )


def catalog() -> list[ToolSpec]:
    """All GPT4Tools tools, in the demo's registration order."""
    return [tool_spec(n) for n in TOOL_NAMES]
