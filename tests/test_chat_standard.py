"""LangChain's standard chat-model suites on ``ChatImageBindLLM(preset="demo")``: the shipped demo
model (``ibllm_agent/data/demo``, trained by ``training/demo.py`` on generic data only).

Nothing is marked xfail: tool calling (sync/async), ``tool_choice``, structured output, Unicode
arguments and the agent loop pass because the demo model learned the GPT4Tools protocol and generic
function calling from invented functions (``training/calls.py``; the suite's own names and prompts
are kept out of the data, ``tests/test_training_demo.py`` checks that), decoded as the chat model
always decodes a step: guided (``StepGuide``: the Action among the bound tools, the Action Input
in the tool's schema). Plumbing tests (init, invoke/stream/batch/async, usage metadata, message
histories, image/audio inputs reaching the model) run on the same model; the suites' sample-media
downloads are served locally generated files (tests run offline).

Tests the suites skip by themselves, from the flags below: test_init_from_env (no API key or env
settings: the model is local), test_serdes (not LangChain-serialisable: it holds a loaded torch
model), the model-override tests (one loaded model per instance), test_json_mode (no JSON mode: the
model speaks the GPT4Tools text protocol), the PDF tests (no PDF modality), test_anthropic_inputs
(not an Anthropic-format model) and the VCR benchmark (no HTTP API to record).
"""

from __future__ import annotations

import httpx
import pytest
from langchain_tests.integration_tests import ChatModelIntegrationTests
from langchain_tests.unit_tests import ChatModelUnitTests

from ibllm_agent.chat import ChatImageBindLLM

# The suites' async tests are plain `async def`; the langchain repos run them with asyncio_mode=auto.
pytestmark = pytest.mark.asyncio

PARAMS = {"preset": "demo", "max_new_tokens": 64, "seed": 0}


class _Capabilities:
    """What both suites are told about ChatImageBindLLM (shared by the unit and integration classes)."""

    @property
    def chat_model_class(self) -> type[ChatImageBindLLM]:
        return ChatImageBindLLM

    @property
    def chat_model_params(self) -> dict:
        return dict(PARAMS)

    @property
    def has_tool_calling(self) -> bool:
        return True

    @property
    def has_tool_choice(self) -> bool:
        return True

    @property
    def has_structured_output(self) -> bool:
        return True

    @property
    def supports_model_override(self) -> bool:
        # One loaded model per instance; a per-call `model=` cannot swap weights (it is rejected).
        return False

    @property
    def supports_json_mode(self) -> bool:
        # No JSON mode: structured output goes through the tool protocol (a guided, schema-fitted step).
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        # ImageBind has no document modality.
        return False


class TestChatImageBindLLMUnit(_Capabilities, ChatModelUnitTests):
    pass


def _sample_bytes(url: str) -> bytes:
    """Locally made stand-ins for the suite's sample downloads (a PNG photo, a WAV recording)."""
    import io

    import numpy as np

    if url.lower().endswith(".wav"):
        import soundfile

        buf = io.BytesIO()
        t = np.arange(16000) / 16000
        soundfile.write(buf, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000, format="WAV")
        return buf.getvalue()
    if url.lower().endswith(".png"):
        from PIL import Image

        buf = io.BytesIO()
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 96, 3), dtype=np.uint8)).save(buf, "PNG")
        return buf.getvalue()
    raise AssertionError(f"no local stand-in for {url}")


class TestChatImageBindLLMIntegration(_Capabilities, ChatModelIntegrationTests):
    @pytest.fixture(autouse=True)
    def _offline_sample_media(self, monkeypatch):
        """The suites download sample media (wikimedia, GitHub) with ``httpx.get``, and image-URL tests
        make the model fetch a URL itself. Tests run offline, so both are served locally generated
        files of the same kind; our real fetch path is tested against a loopback server in
        tests/test_content.py."""
        from ibllm_agent import content

        class _Response:
            def __init__(self, url: str):
                self.content = _sample_bytes(str(url))
                self.status_code = 200

        monkeypatch.setattr(httpx, "get", lambda url, *a, **k: _Response(url))
        monkeypatch.setattr(content, "safe_fetch", lambda url, **limits: _sample_bytes(url))
        content.FETCH_CACHE.clear()
        yield
        content.FETCH_CACHE.clear()  # no stand-in bodies cached under real URLs after the test


    @property
    def supports_image_inputs(self) -> bool:
        return True

    @property
    def supports_image_urls(self) -> bool:
        return True

    @property
    def supports_audio_inputs(self) -> bool:
        return True

    @property
    def supports_video_inputs(self) -> bool:
        return True

    @property
    def returns_usage_metadata(self) -> bool:
        return True

    @property
    def supports_image_tool_message(self) -> bool:
        return True

    @property
    def supported_usage_metadata_details(self) -> dict:
        return {"invoke": [], "stream": []}
