"""Every vision tool end to end on generated images with tiny random-init backends: GPT4Tools comma
parsing, new workspace files of the right size, boxes where the tiny detector put them, Canny edges
where a rectangle is drawn, any-to-image embedding mix, and typed input errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ibllm_agent.tools import ToolOptions, default_tools
from ibllm_agent.tools.tiny import tiny_loaders
from PIL import Image, ImageDraw

from ibllm_agent.agent.models import ModelPool
from ibllm_agent.agent.workspace import ThreadWorkspace
from ibllm_agent.cli.tool import invoke_tool
from ibllm_agent.errors import (
    ConfigError,
    MissingWeightError,
    ToolArgumentError,
    ToolInputError,
    WorkspaceFileNotFoundError,
)
from ibllm_agent.testing import ScriptedGenerator

OPTIONS = ToolOptions(box_threshold=0.0, text_threshold=0.0, steps=2, diffusion_size=64, unclip_size=64, seed=0,
                      progress=False, sam_points_per_side=4)


class Spy:
    """Wraps a pipeline/model: records call kwargs, passes everything through."""

    def __init__(self, inner):
        self.inner, self.calls = inner, []

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        return self.inner(**kwargs)


@pytest.fixture(scope="module")
def models():
    built = {key: load("cpu") for key, load in tiny_loaders(seed=0).items()}
    for key in ("sd_inpainting", "instruct_pix2pix", "sd_text2image", "sd21_unclip"):
        built[key] = Spy(built[key])
    return built


@pytest.fixture
def ws(tmp_path):
    return ThreadWorkspace(tmp_path / "thread", "t")


def put(ws, img: Image.Image, name="image/test1234.png") -> str:
    path = ws.root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return name


def scene(size=(96, 64)) -> Image.Image:
    img = Image.new("RGB", size, (30, 30, 30))
    ImageDraw.Draw(img).rectangle((20, 16, 60, 48), fill=(230, 230, 230))
    return img


def run(models, ws, name, raw, generator=None, options=OPTIONS):
    loaders = {k: (lambda device, m=m: m) for k, m in models.items()}
    tools = {t.name: t for t in default_tools(generator=generator, options=options, loaders=loaders)}
    return invoke_tool(tools[name], raw, ws, ModelPool(device="cpu"))


def test_edge_detection_finds_the_rectangle_border(models, ws):
    name = put(ws, scene())
    obs, files = run(models, ws, "Edge Detection On Image", name)
    assert files == [obs] and obs.startswith("image/")
    edges = np.asarray(Image.open(ws.resolve(obs)))[:, :, 0]
    assert edges.shape == (64, 96)
    ys, xs = np.nonzero(edges)
    assert xs.min() >= 18 and xs.max() <= 62 and ys.min() >= 14 and ys.max() <= 50  # only at the border
    assert edges[16:49, 19:22].any() and edges[16:49, 59:62].any()  # left and right sides found
    assert not edges[24:40, 30:50].any()  # flat inside: no edges


def test_detect_draws_the_boxes_the_detector_returned(models, ws):
    name = put(ws, scene())
    obs, files = run(models, ws, "Detect the Give Object", f"{name}, a red square")
    first, *lines = obs.splitlines()
    assert files == [first]
    expected = models["groundingdino"].detect([scene()], ["a red square"], 0.0, 0.0)[0]
    assert lines == [f"{d.label} {d.score:.2f} " + " ".join(str(round(v)) for v in d.box) for d in expected]
    out = Image.open(ws.resolve(first)).convert("RGB")
    assert out.size == (96, 64)
    for d in expected:  # the left edge of every box is drawn in the label's colour (red: one label)
        x1, y1, x2, y2 = d.box
        if x2 - x1 > 4 and y2 - y1 > 4:
            assert out.getpixel((int(x1) + 1, int((y1 + y2) / 2))) == (255, 0, 0)


def test_detect_rejects_empty_object_and_oversized_images(models, ws):
    name = put(ws, scene())
    # An empty required field never reaches the tool: the Action Input itself is invalid.
    with pytest.raises(ToolArgumentError, match="required argument 'object' is empty"):
        run(models, ws, "Detect the Give Object", f"{name}, ")
    with pytest.raises(ToolInputError, match="at most 0.0 MP"):
        run(models, ws, "Detect the Give Object", f"{name}, cat", options=ToolOptions(max_image_pixels=100))
    with pytest.raises(WorkspaceFileNotFoundError, match="image/nope0000.png"):
        run(models, ws, "Detect the Give Object", "image/nope0000.png, cat")
    (ws.root / "image" / "fake0000.png").write_text("not an image")
    with pytest.raises(ToolInputError, match="not an image"):
        run(models, ws, "Edge Detection On Image", "image/fake0000.png")


def test_segment_given_object_overlays_masks_at_input_size(models, ws):
    name = put(ws, scene())
    obs, files = run(models, ws, "Segment the given object", f"{name}, square")
    assert files == [obs]
    out = np.asarray(Image.open(ws.resolve(obs)).convert("RGB"))
    assert out.shape == (64, 96, 3) and (out != np.asarray(scene())).any()


def test_segment_image_gives_an_overlay_or_says_none_found(models, ws):
    name = put(ws, scene())
    obs, files = run(models, ws, "Segment the Image", name)
    if files:
        assert files == [obs] and Image.open(ws.resolve(obs)).size == (96, 64)
    else:
        assert obs == f"no segments found in {name}"


def test_remove_and_replace_inpaint_and_restore_the_size(models, ws):
    name = put(ws, scene())
    pipe = models["sd_inpainting"]
    pipe.calls.clear()
    obs, files = run(models, ws, "Remove Something From The Photo", f"{name}, the square, please")
    assert files == [obs] and Image.open(ws.resolve(obs)).size == (96, 64)
    call = pipe.calls[-1]
    assert call["prompt"] == "background" and call["num_inference_steps"] == 2
    assert call["image"].size == (64, 64) and call["mask_image"].size == (64, 64)
    # Replace: exactly image, object, replacement; the remainder (commas included) is the replacement.
    obs, files = run(models, ws, "Replace Something From The Photo", f"{name}, square, a red ball, striped")
    assert files == [obs] and pipe.calls[-1]["prompt"] == "a red ball, striped"
    with pytest.raises(ToolArgumentError, match="required argument 'replacement' is empty"):
        run(models, ws, "Replace Something From The Photo", f"{name}, square, ")


def test_instruct_pix2pix_keeps_the_input_size(models, ws):
    name = put(ws, scene())
    obs, files = run(models, ws, "Instruct Image Using Text", f"{name}, make it look like a painting, please")
    assert files == [obs] and Image.open(ws.resolve(obs)).size == (96, 64)
    call = models["instruct_pix2pix"].calls[-1]
    assert call["prompt"] == "make it look like a painting, please" and call["image_guidance_scale"] == 1.2


def test_text_to_image_uses_the_gpt4tools_prompts(models, ws):
    obs, files = run(models, ws, "Generate Image From User Input Text", "a cat, sitting")
    assert files == [obs] and Image.open(ws.resolve(obs)).size == (64, 64)
    call = models["sd_text2image"].calls[-1]
    assert call["prompt"] == "a cat, sitting, best quality, extremely detailed"
    assert call["negative_prompt"].startswith("longbody, lowres")


def test_any_to_image_conditions_unclip_on_the_weighted_imagebind_mix(models, ws):
    from ibllm_agent.tools.generation import imagebind_embeddings

    from ibllm_agent.types import Media

    a = put(ws, scene(), "image/aaaa0000.png")
    b = put(ws, Image.new("RGB", (64, 64), (0, 90, 200)), "image/bbbb0000.png")
    obs, files = run(models, ws, "Generate Image From Any Modality", f"{a}, {b}:3, a beach, at dawn")
    assert files == [obs] and Image.open(ws.resolve(obs)).size == (64, 64)
    call = models["sd21_unclip"].calls[-1]
    assert call["prompt"] == "a beach, at dawn"
    emb = imagebind_embeddings(models["imagebind"], [Media("image", str(ws.resolve(n))) for n in (a, b)])
    torch.testing.assert_close(call["image_embeds"][0], 0.25 * emb[0] + 0.75 * emb[1])
    with pytest.raises(ToolInputError, match="at least one workspace file"):
        run(models, ws, "Generate Image From Any Modality", "just a prompt")


def test_mix_embeddings_cache_keeps_the_norm_and_point_scale():
    from ibllm_agent.tools.generation import POINT_SCALE, mix_embeddings

    from ibllm_agent.cache import VisualCache

    e = torch.tensor([[3.0, 0.0, 0.0, 0.0], [0.0, 4.0, 0.0, 0.0]])
    torch.testing.assert_close(mix_embeddings(e, [1, 1]), torch.tensor([1.5, 2.0, 0.0, 0.0]))
    cache = VisualCache.from_features(np.eye(4, dtype=np.float32)[2:3].repeat(3, axis=0))
    out = mix_embeddings(e, [1, 1], cache)
    assert float(out.norm()) == pytest.approx(2.5, rel=1e-5)  # ‖mix‖ kept
    assert float(out[2]) > 0  # pulled toward the cached direction
    with pytest.raises(ToolInputError, match="positive sum"):
        mix_embeddings(e, [0, 0])
    assert POINT_SCALE == 5.0


def test_description_and_vqa_are_answered_by_the_multimodal_model(models, ws):
    name = put(ws, scene())
    gen = ScriptedGenerator(["a white  square\non gray.", "one"])
    obs, files = run(models, ws, "Get Photo Description", name, generator=gen)
    assert obs == "a white square on gray." and files == []
    prompt, media, sampling = gen.calls[0]
    assert "Describe this image in one sentence." in prompt and sampling.temperature == 0.0
    assert [(m.modality, m.source) for m in media] == [("image", str(ws.resolve(name)))]
    obs, _ = run(models, ws, "Answer Question About The Image", f"{name}, how many squares, roughly?",
                 generator=gen)
    assert obs == "one" and "how many squares, roughly?" in gen.calls[1][0]
    with pytest.raises(ConfigError, match="multimodal chat model"):
        run(models, ws, "Get Photo Description", name)


def test_missing_weights_name_the_download_entry(ws):
    name = put(ws, scene())
    tools = {t.name: t for t in default_tools(options=OPTIONS)}
    with pytest.raises(MissingWeightError, match="ibllm-agent download groundingdino_swint_ogc"):
        invoke_tool(tools["Detect the Give Object"], f"{name}, cat", ws, ModelPool(device="cpu"))
    with pytest.raises(MissingWeightError, match="ibllm-agent download sd15"):
        invoke_tool(tools["Generate Image From User Input Text"], "a cat", ws, ModelPool(device="cpu"))


def test_status_lists_what_each_tool_misses(tmp_path):
    from ibllm_agent.tools import tool_status

    from ibllm_agent.config import get_settings

    rows = {r.name: r for r in tool_status(get_settings(weights_dir=tmp_path))}
    assert rows["Edge Detection On Image"].available
    assert rows["Remove Something From The Photo"].missing == (
        "weights groundingdino_swint_ogc", "weights sam_vit_h or sam_vit_l or sam_vit_b", "weights sd_inpainting")
    assert not rows["Get Photo Description"].available
    sam = tmp_path / "sam" / "sam_vit_b_01ec64.pth"
    sam.parent.mkdir()
    sam.write_bytes(b"x")
    rows = {r.name: r for r in tool_status(get_settings(weights_dir=tmp_path), generator=ScriptedGenerator())}
    assert rows["Segment the Image"].available and rows["Get Photo Description"].available
    names = [t.name for t in default_tools(get_settings(weights_dir=tmp_path), available_only=True)]
    assert names == ["Segment the Image", "Edge Detection On Image"]


def test_diffusion_shows_progress_unless_disabled(models, ws, capsys):
    from dataclasses import replace

    run(models, ws, "Generate Image From User Input Text", "a cat", options=replace(OPTIONS, progress=True))
    assert "text to image" in capsys.readouterr().err  # diffusers' bar, named after the tool
    run(models, ws, "Generate Image From User Input Text", "a cat")
    assert "text to image" not in capsys.readouterr().err
