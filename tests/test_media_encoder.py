"""The media stage (``MediaEncoder``) and the stage boundary: ``ibllm_agent/model/`` sees tensors only."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ibllm_agent.errors import ConfigError
from ibllm_agent.media_encoder import MediaEncoder
from ibllm_agent.model import ImageBindLLM
from ibllm_agent.model.checkpoint import load_encoder
from ibllm_agent.multimodal import MultimodalLLM
from ibllm_agent.types import CacheSettings, Media, VisualFeatures

MODEL_DIR = Path(__file__).resolve().parents[1] / "ibllm_agent" / "model"
# The media stage and what joins it to the model: the model package must not depend on any of them.
FORBIDDEN = ("ibllm_agent.media", "ibllm_agent.cache", "ibllm_agent.media_encoder", "ibllm_agent.multimodal",
             "ibllm_agent.loading")


def _inputs():
    g = torch.Generator().manual_seed(0)
    img = torch.randn(3, 224, 224, generator=g)
    aud = torch.randn(3, 1, 128, 204, generator=g)  # 3 preprocessed fbank clips (media.load's item shape)
    pts = torch.randn(8192, 6, generator=g)  # xyz + rgb
    return [[Media("image", img, 1.0), Media("audio", aud, 0.5)], [], [Media("point", pts, 2.0)]]


@pytest.fixture(scope="module")
def stage() -> MediaEncoder:
    llm = ImageBindLLM.from_preset("tiny", seed=0)
    return MediaEncoder(load_encoder(llm.config, None, seed=0), text_only=llm.config.text_only)


# Values of ImageBindLLM.encode_media (the model-owned media path this stage replaced) for _inputs()
# on the tiny preset, seed 0: features[:, :6], per-row norm, per-row sum.
OLD_PLAIN = (
    [[-0.1094464510679245, 0.13462983071804047, -0.03395695611834526, -0.04081452637910843, -0.053365543484687805,
      -0.0022954659070819616],
     [-0.07670892775058746, 0.24207118153572083, -0.07106464356184006, -0.14677083492279053, -0.07557709515094757,
      0.002040764084085822],
     [-0.011478201486170292, 0.0830908864736557, 0.12930257618427277, -0.09538456797599792, -0.023205304518342018,
      0.102802574634552]],
    [0.7657270431518555, 0.9999990463256836, 0.9999995827674866],
    [0.02245297282934189, -0.330248087644577, 0.8650918006896973],
)
# The same with a VisualCache of 50 features from np.random.default_rng(0), CacheSettings(k=3, t=7, alpha=0.25).
OLD_CACHED = (
    [[-0.12403767555952072, 0.12435787916183472, -0.014056798070669174, -0.08736895024776459,
      0.0033804269041866064, -0.05121348425745964],
     [-0.07670892775058746, 0.24207118153572083, -0.07106464356184006, -0.14677083492279053, -0.07557709515094757,
      0.002040764084085822],
     [0.007020284421741962, 0.09745802730321884, 0.13225789368152618, -0.09770379215478897, -0.07939264923334122,
      0.06279726326465607]],
    [1.0, 0.9999990463256836, 1.0],
    [-0.1291261613368988, -0.330248087644577, 0.6465485692024231],
)


def _check(feats: torch.Tensor, old) -> None:
    head, norms, sums = (torch.tensor(v) for v in old)
    torch.testing.assert_close(feats[:, :6], head, rtol=1e-4, atol=2e-6)
    torch.testing.assert_close(feats.norm(dim=-1), norms, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(feats.sum(-1), sums, rtol=1e-4, atol=2e-5)


def test_encode_equals_the_old_model_owned_numerics(stage):
    out = stage.encode(_inputs())
    assert isinstance(out, VisualFeatures)
    assert out.features.dtype == torch.float32 and out.features.shape == (3, 64)
    assert out.active.tolist() == [True, True, True]  # zero_image: the text-only row is injected too
    _check(out.features, OLD_PLAIN)
    from ibllm_agent.cache import VisualCache

    cache = VisualCache.from_features(np.random.default_rng(0).standard_normal((50, 64)).astype(np.float32))
    cached = stage.with_cache(cache).encode(_inputs(), CacheSettings(k=3, t=7.0, alpha=0.25))
    _check(cached.features, OLD_CACHED)
    assert stage.cache is None and stage.with_cache(cache).encoder is stage.encoder  # shared, not copied


def test_embed_gives_raw_embeddings_and_fusion_is_the_reference_mix(stage):
    sample = _inputs()[0]
    raw = stage.embed(sample)  # [2, 64], not normalised
    assert raw.shape == (2, 64) and raw.dtype == torch.float32
    with torch.no_grad():
        direct = stage.encoder.encode("image", sample[0].source[None]).float()
    torch.testing.assert_close(raw[:1], direct, rtol=0, atol=0)
    w = torch.tensor([1.0, 0.5]) / (1.5 + 1e-6)
    expected = (w[:, None] * torch.nn.functional.normalize(raw, dim=-1)).sum(0)
    torch.testing.assert_close(stage.encode(sample).features[0], expected, rtol=1e-6, atol=1e-7)


def test_text_only_placeholder_policies(stage):
    zero = stage.encode_tensor("image", torch.zeros(1, 3, 224, 224))
    torch.testing.assert_close(stage.placeholder(), torch.nn.functional.normalize(zero, dim=-1)[0] / (1 + 1e-6))
    off = MediaEncoder(stage.encoder, text_only="off")
    feats = off.encode(None, batch_size=2)
    assert feats.active.tolist() == [False, False] and not feats.any_active
    assert float(feats.features.abs().max()) == 0.0
    with pytest.raises(ConfigError, match="text_only"):
        MediaEncoder(stage.encoder, text_only="blank")


def test_stage_device_and_dtype_reach_the_encoder_outputs_stay_fp32():
    enc = load_encoder(ImageBindLLM.from_preset("tiny", seed=0).config, None, seed=0)
    half = MediaEncoder(enc, device="cpu", dtype=torch.bfloat16)
    assert {p.dtype for p in enc.parameters()} == {torch.bfloat16}
    out = half.encode(_inputs()[:1])
    assert out.features.dtype == torch.float32 and out.features.device.type == "cpu"
    full = MediaEncoder(load_encoder(ImageBindLLM.from_preset("tiny", seed=0).config, None, seed=0))
    ref = full.encode(_inputs()[:1]).features
    assert not torch.equal(out.features, ref)  # really computed in bf16 ...
    torch.testing.assert_close(out.features, ref, rtol=0, atol=0.05)  # ... close to the fp32 result


def test_bad_parts_are_typed_errors(stage):
    with pytest.raises(ConfigError, match="encode"):
        MediaEncoder(object())
    with pytest.raises(ConfigError, match="enhance"):
        MediaEncoder(stage.encoder, cache=object())
    with pytest.raises(ConfigError, match="weights"):
        stage.encode([Media("image", torch.zeros(3, 224, 224), 0.0)])
    with pytest.raises(ConfigError, match="Media"):
        stage.encode([["not media"]])


def test_model_generates_from_features_as_from_media():
    """The model given the stage's features decodes exactly what the joined MultimodalLLM decodes."""
    llm = ImageBindLLM.from_preset("tiny", seed=7)
    g = torch.Generator().manual_seed(8)
    with torch.no_grad():
        for i in llm.config.layers:
            llm.lm.model.layers[i].self_attn.gate.copy_(torch.randn(1, llm.config.num_heads, 1, 1, generator=g) * 2)
        llm.lm.lm_head.weight.mul_(20)
    mm = MultimodalLLM.from_llm(llm)
    media = [Media("image", torch.linspace(-2, 2, 224).expand(3, 224, 224).clone())]
    via_media = mm.generate("Describe it.", media, temperature=0, max_new_tokens=8)
    feats = mm.encode(media)
    via_features = llm.generate("Describe it.", feats.features, active=feats.active, temperature=0, max_new_tokens=8)
    assert via_features.extras["token_ids"] == via_media.extras["token_ids"]
    plain = llm.generate("Describe it.", temperature=0, max_new_tokens=8)
    assert plain.extras["token_ids"] != via_media.extras["token_ids"]  # the features matter
    with pytest.raises(ConfigError, match="media stage"):
        llm.generate("Describe it.", media)  # the model takes tensors, not Media


# ---------------------------------------------------------------------- the stage boundary


def _forbidden_imports(source: str, filename: str = "<src>") -> list[str]:
    """Modules in FORBIDDEN (or below them) that ``source`` imports, at any depth of the file."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative to ibllm_agent.model
                parent = ["ibllm_agent", "model"][: max(0, 2 - (node.level - 1))]
                base = ".".join(parent + ([base] if base else []))
            names = [base] + [f"{base}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) == "import_module":
            names = [a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
        found += [n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN)]
    return found


def test_boundary_check_catches_each_import_form():
    for bad in ("import ibllm_agent.media", "from ibllm_agent import media", "from ibllm_agent.cache import VisualCache",
                "def f():\n    from ibllm_agent.media.image import load_image", "from .. import cache",
                "import importlib\nimportlib.import_module('ibllm_agent.media_encoder')"):
        assert _forbidden_imports(bad), bad
    assert not _forbidden_imports("from ibllm_agent.encoders import ImageBind\nfrom ibllm_agent.types import Media")


def test_model_package_imports_neither_media_nor_cache():
    files = sorted(MODEL_DIR.glob("*.py"))
    assert len(files) >= 10  # llm, generation, checkpoint, convert, ...
    offenders = {f.name: bad for f in files if (bad := _forbidden_imports(f.read_text(encoding="utf-8"), str(f)))}
    assert offenders == {}


@pytest.mark.slow  # a fresh interpreter imports torch + transformers (~10 s on a shared CPU)
def test_running_the_model_loads_neither_media_nor_cache():
    """Build, run and save a tiny model in a fresh interpreter: no media/cache module is ever imported."""
    code = (
        "import sys, tempfile, torch\n"
        "from ibllm_agent.model import ImageBindLLM\n"
        "from ibllm_agent.model.checkpoint import load_encoder\n"
        "m = ImageBindLLM.from_preset('tiny', seed=0)\n"
        "m(torch.tensor([[1, 5, 9]]), features=torch.randn(1, m.config.visual_dim))\n"
        "m.generate('hello', torch.randn(1, m.config.visual_dim), temperature=0, max_new_tokens=2)\n"
        "load_encoder(m.config, None, 0).encode('image', torch.zeros(1, 3, 224, 224))\n"
        "m.save_pretrained(tempfile.mkdtemp())\n"
        "bad = [n for n in sys.modules if n.split('.')[:2] in (['ibllm_agent', 'media'], ['ibllm_agent', 'cache'])"
        " or n in ('ibllm_agent.media_encoder', 'ibllm_agent.multimodal', 'ibllm_agent.loading')]\n"
        "print(sorted(bad))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False,
                          cwd=Path(__file__).resolve().parents[1])
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "[]"
