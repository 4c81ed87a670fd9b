"""The vision tools under their GPT4Tools names, ``default_tools`` and ``tool_status``.

Each tool reads workspace files (paths already resolved inside the thread workspace by the agent or
the ``tool`` command), writes its result as a new workspace file and answers with its name, as
GPT4Tools did. Heavy models come from the agent's ``ModelPool`` (``backends.use_models``).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from ibllm_agent.errors import ToolInputError
from ibllm_agent.tools.backends import ToolKit, use_models
from ibllm_agent.tools.images import ToolOptions, open_image, require_text, save_image, workspace_name

__all__ = ["ANY_TO_IMAGE", "TOOL_REQUIREMENTS", "ToolStatus", "default_tools", "tool_status"]

ANY_TO_IMAGE = "Generate Image From Any Modality"
ANY_TO_IMAGE_DESCRIPTION = (
    "useful when you want to generate a new image from one or more files of any kind (image, audio, video,"
    " point cloud, depth, thermal, IMU) or their mix. like: draw what this sound looks like, or generate an"
    " image from this audio and this photo. The input to this tool should be a comma separated string:"
    " the file names (each optionally followed by :weight), then an optional text description of the image"
)
_GENERATOR = "generator"  # requirement: the multimodal chat model

# name -> what it needs: backend keys of backends.BACKENDS, "generator", or "package:NAME".
TOOL_REQUIREMENTS: dict[str, tuple[str, ...]] = {
    "Get Photo Description": (_GENERATOR,),
    "Answer Question About The Image": (_GENERATOR,),
    "Detect the Give Object": ("groundingdino",),
    "Segment the Image": ("sam",),
    "Segment the given object": ("groundingdino", "sam"),
    "Remove Something From The Photo": ("groundingdino", "sam", "sd_inpainting"),
    "Replace Something From The Photo": ("groundingdino", "sam", "sd_inpainting"),
    "Instruct Image Using Text": ("instruct_pix2pix",),
    "Generate Image From User Input Text": ("sd_text2image",),
    "Edge Detection On Image": ("package:cv2",),
    ANY_TO_IMAGE: ("imagebind", "sd21_unclip"),
    # the audio/video experts as tools (tools/speech.py, tools/video.py)
    "Transcribe Speech From Audio": ("whisper",),
    "Detect Objects In Video": ("groundingdino", "package:av"),
}


# -- tool bodies ---------------------------------------------------------------------------------------
def _detect(kit: ToolKit, detector: Any, image: Any, obj: str) -> list[Any]:
    o = kit.options
    return detector.detect([image], [obj], box_threshold=o.box_threshold, text_threshold=o.text_threshold)[0]


def _not_found(obj: str, image_path: str, what: str) -> str:
    return f"no {obj} found in {workspace_name(image_path)} (box threshold {what}); nothing was changed"


def detect_object(kit: ToolKit, image_path: str, object: str) -> str:
    from ibllm_agent.tools.detection import draw_detections, format_detections

    obj = require_text(object, "object text")
    image = open_image(image_path, kit.options)
    with use_models(kit, "groundingdino") as (detector,):
        dets = _detect(kit, detector, image, obj)
    name = save_image(draw_detections(image, dets))
    found = format_detections(dets) if dets else f"no {obj} found (box threshold {kit.options.box_threshold})"
    return f"{name}\n{found}"


def segment_object(kit: ToolKit, image_path: str, object: str) -> str:
    from ibllm_agent.tools.segmentation import box_masks, overlay_masks

    obj = require_text(object, "object text")
    image = open_image(image_path, kit.options)
    with use_models(kit, "groundingdino", "sam") as (detector, sam):
        dets = _detect(kit, detector, image, obj)
        if not dets:
            return _not_found(obj, image_path, str(kit.options.box_threshold))
        masks = box_masks(sam, image, [d.box for d in dets])
    return save_image(overlay_masks(image, masks))


def segment_image(kit: ToolKit, image_path: str) -> str:
    from ibllm_agent.tools.segmentation import automatic_masks, overlay_masks

    image = open_image(image_path, kit.options)
    with use_models(kit, "sam") as (sam,):
        masks = automatic_masks(sam, image, kit.options.sam_points_per_side)
    if not masks:
        return f"no segments found in {workspace_name(image_path)}"
    return save_image(overlay_masks(image, masks))


def _edit(kit: ToolKit, image_path: str, obj: str, prompt: str) -> str:
    from ibllm_agent.tools.editing import dilate, inpaint
    from ibllm_agent.tools.segmentation import box_masks

    image = open_image(image_path, kit.options)
    with use_models(kit, "groundingdino", "sam", "sd_inpainting") as (detector, sam, pipe):
        dets = _detect(kit, detector, image, obj)
        if not dets:
            return _not_found(obj, image_path, str(kit.options.box_threshold))
        mask = dilate(box_masks(sam, image, [d.box for d in dets]), kit.options.mask_dilation)
        out = inpaint(pipe, image, mask, prompt, kit.options)
    return save_image(out)


def remove_object(kit: ToolKit, image_path: str, object: str) -> str:
    from ibllm_agent.tools.editing import REMOVE_PROMPT

    return _edit(kit, image_path, require_text(object, "object to remove"), REMOVE_PROMPT)


def replace_object(kit: ToolKit, image_path: str, object: str, replacement: str = "") -> str:
    obj = require_text(object, "object to replace")
    return _edit(kit, image_path, obj, require_text(replacement, "object to replace it with"))


def instruct_image(kit: ToolKit, image_path: str, text: str) -> str:
    from ibllm_agent.tools.editing import instruct

    instruction = require_text(text, "instruction")
    image = open_image(image_path, kit.options)
    with use_models(kit, "instruct_pix2pix") as (pipe,):
        return save_image(instruct(pipe, image, instruction, kit.options))


def generate_image(kit: ToolKit, text: str) -> str:
    from ibllm_agent.tools.generation import text_to_image

    prompt = require_text(text, "image description")
    with use_models(kit, "sd_text2image") as (pipe,):
        return save_image(text_to_image(pipe, prompt, kit.options))


def edge_detection(kit: ToolKit, image_path: str) -> str:
    from ibllm_agent.tools.conditions import canny

    return save_image(canny(open_image(image_path, kit.options)))


def describe_photo(kit: ToolKit, image_path: str) -> str:
    from ibllm_agent.tools.understanding import CAPTION_PROMPT, ask

    open_image(image_path, kit.options)  # the same checks as every image tool
    return ask(kit.generator, image_path, CAPTION_PROMPT)


def answer_question(kit: ToolKit, image_path: str, question: str = "") -> str:
    from ibllm_agent.tools.understanding import ask

    q = require_text(question, "question")
    open_image(image_path, kit.options)
    return ask(kit.generator, image_path, q)


def _media_items(text: str) -> tuple[list[Any], str]:
    """``"image/a.png, audio/b.wav:0.5, a dog"`` → ([Media, Media], "a dog"): leading items naming
    workspace files are media (modality from their folder), the rest is the prompt."""
    from ibllm_agent.agent.registry import current_context
    from ibllm_agent.agent.workspace import FOLDERS
    from ibllm_agent.errors import WorkspaceFileNotFoundError
    from ibllm_agent.types import Media

    by_folder = {folder: modality for modality, (folder, _) in FOLDERS.items()}
    ws = current_context().workspace
    items = [p.strip() for p in text.split(",")]
    media: list[Any] = []
    while items:
        name, _, weight = items[0].rpartition(":") if ":" in items[0] else (items[0], "", "")
        if not PurePosixPath(name).suffix:
            break
        try:
            path = ws.resolve(name)
            w = float(weight) if weight else 1.0
        except WorkspaceFileNotFoundError:
            if media:  # a later item that is not a file starts the prompt
                break
            raise
        except ValueError:
            raise ToolInputError(f"bad weight {weight!r} for {name}: write name:0.5") from None
        modality = by_folder.get(PurePosixPath(ws.name_of(path)).parts[0])
        if modality is None:
            raise ToolInputError(f"{name} is not a media file (image, audio, video, point cloud, depth, ...)")
        media.append(Media(modality, str(path), weight=w, name=ws.name_of(path)))
        items.pop(0)
    if not media:
        raise ToolInputError("name at least one workspace file (e.g. image/ab12cd34.png) before the description")
    return media, ", ".join(i for i in items if i)


def any_to_image(kit: ToolKit, input: str) -> str:
    from ibllm_agent.tools.generation import any_to_image as generate
    from ibllm_agent.tools.generation import imagebind_embeddings, mix_embeddings

    media, prompt = _media_items(require_text(input, "input"))
    with use_models(kit, "imagebind", "sd21_unclip") as (encoder, pipe):
        emb = imagebind_embeddings(encoder, media)
        mix = mix_embeddings(emb, [m.weight for m in media], kit.cache)
        return save_image(generate(pipe, mix, prompt, kit.options))


_BODIES: dict[str, Callable[..., str]] = {
    "Get Photo Description": describe_photo,
    "Answer Question About The Image": answer_question,
    "Detect the Give Object": detect_object,
    "Segment the Image": segment_image,
    "Segment the given object": segment_object,
    "Remove Something From The Photo": remove_object,
    "Replace Something From The Photo": replace_object,
    "Instruct Image Using Text": instruct_image,
    "Generate Image From User Input Text": generate_image,
    "Edge Detection On Image": edge_detection,
}


def _speech_tool(kit: ToolKit) -> Any:
    from ibllm_agent.tools.speech import speech_tool

    return speech_tool(loader=kit.loader("whisper"))


def _video_tool(kit: ToolKit) -> Any:
    from ibllm_agent.tools.video import VideoSettings, video_tool

    o = kit.options
    return video_tool(VideoSettings(box_threshold=o.box_threshold, text_threshold=o.text_threshold),
                      loader=kit.loader("groundingdino"))


# Tools built by their own modules (content + artifact, their own settings).
_EXPERT_TOOLS: dict[str, Callable[[ToolKit], Any]] = {
    "Transcribe Speech From Audio": _speech_tool,
    "Detect Objects In Video": _video_tool,
}


# -- status and construction ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ToolStatus:
    """Whether a tool can run here and, if not, what is missing (weights entries, packages, model)."""

    name: str
    available: bool
    missing: tuple[str, ...]


def _missing(kit: ToolKit, name: str) -> list[str]:
    out: list[str] = []
    for need in TOOL_REQUIREMENTS[name]:
        if need == _GENERATOR:
            if kit.generator is None:
                out.append("a multimodal chat model (answered by the agent's own model)")
        elif need.startswith("package:"):
            pkg = need.split(":", 1)[1]
            if importlib.util.find_spec(pkg) is None:
                out.append(f"package {pkg}")
        else:
            out.extend(m for m in kit.missing(need) if m not in out)
    return out


def tool_status(settings: Any = None, *, generator: Any = None,
                loaders: Mapping[str, Callable[[str], Any]] | None = None,
                with_chat_model: bool = False) -> list[ToolStatus]:
    """One ``ToolStatus`` per vision tool, in ``TOOL_REQUIREMENTS`` order. ``with_chat_model``: count
    the description/VQA tools as available (in an agent the chat model answers them)."""
    kit = ToolKit(settings=settings, generator=generator if generator is not None or not with_chat_model
                  else True, loaders=dict(loaders or {}))
    rows = []
    for name in TOOL_REQUIREMENTS:
        missing = tuple(_missing(kit, name))
        rows.append(ToolStatus(name, not missing, missing))
    return rows


def _bind(kit: ToolKit, body: Callable[..., str]) -> Callable[..., str]:
    def run(**kwargs: Any) -> str:
        return body(kit, **kwargs)

    return run


def default_tools(
    settings: Any = None,
    *,
    generator: Any = None,
    cache: Any = None,
    options: ToolOptions | None = None,
    loaders: Mapping[str, Callable[[str], Any]] | None = None,
    available_only: bool = False,
    description_variant: str = "runtime",
) -> list[Any]:
    """The vision tools as LangChain tools (GPT4Tools names and descriptions, pydantic schemas).

    Args:
        settings: ``Settings`` (weights dir, device dtype); ``None`` = ``get_settings()`` at load time.
        generator: the multimodal ``TextGenerator`` that answers the description / VQA tools.
        cache: a ``VisualCache`` for cache-enhanced any-to-image.
        options: ``ToolOptions`` (thresholds, diffusion steps and sizes, seed, progress bar).
        loaders: ``{backend key: loader(device)}`` overrides (``tools.tiny.tiny_loaders()``).
        available_only: only the tools whose weights, packages and model are present here.
        description_variant: ``"runtime"`` (GPT4Tools demo) or ``"training"`` descriptions.
    """
    from langchain_core.tools import StructuredTool
    from pydantic import Field, create_model

    from ibllm_agent.agent.registry import gpt4tools_tool

    kit = ToolKit(settings=settings, options=options or ToolOptions(), generator=generator, cache=cache,
                  loaders=dict(loaders or {}))
    tools = []
    for name in TOOL_REQUIREMENTS:
        if available_only and _missing(kit, name):
            continue
        if name in _EXPERT_TOOLS:
            tools.append(_EXPERT_TOOLS[name](kit))
            continue
        if name == ANY_TO_IMAGE:
            schema = create_model("GenerateImageFromAnyModalityInput",
                                  input=(str, Field(description="file names, then an optional description")))
            tools.append(StructuredTool(func=_bind(kit, any_to_image), name=ANY_TO_IMAGE,
                                        description=ANY_TO_IMAGE_DESCRIPTION, args_schema=schema,
                                        metadata={"ibllm_path_fields": ()}))
            continue
        tools.append(gpt4tools_tool(name, _bind(kit, _BODIES[name]), description_variant=description_variant))
    return tools
