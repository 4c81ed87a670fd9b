"""``ChatImageBindLLM``: ImageBind-LLM (or any ``TextGenerator``) as a LangChain chat model."""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from langchain_core.utils.json import parse_partial_json
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from ibllm_agent import protocol as P
from ibllm_agent.content import FetchLimits, MessageContent, message_text, split_message
from ibllm_agent.errors import ConfigError, ContentBlockError, ToolArgumentError
from ibllm_agent.experts import run_experts, with_context
from ibllm_agent.prompts import format_chat, format_prompt
from ibllm_agent.step_stream import StepStream, StopCutter
from ibllm_agent.types import CacheSettings, Media, Sampling, TextGenerator

log = logging.getLogger(__name__)

# Tokens the chat model accepts as per-call kwargs (invoke(..., **kwargs) / bind(**kwargs)).
_SAMPLING_KWARGS = ("max_new_tokens", "max_tokens", "temperature", "top_p", "seed")
# LangChain-internal kwargs that may reach _generate and carry nothing for us.
_IGNORED_KWARGS = ("parallel_tool_calls", "strict", "ls_structured_output_format")

# Guards _CALL_LOCKS (never held while a model loads; loaded models are shared through
# ibllm_agent.loading.load_shared, which locks per model key).
_MODELS_LOCK = threading.Lock()

# One lock per generator object: LangChain's batch/abatch call the model from several threads, and a
# torch model with a KV/prefix cache is not safe to run concurrently (nor faster on one device).
# Reentrant so a stream consumer may call the same model from its own thread.
_CALL_LOCKS: dict[int, threading.RLock] = {}


def _call_lock(model: Any) -> threading.RLock:
    with _MODELS_LOCK:
        return _CALL_LOCKS.setdefault(id(model), threading.RLock())


def _attach_cache(model: Any, cache_dir: str) -> Any:
    """``model`` with a media stage using the ``VisualCache`` folder ``cache_dir`` (same weights, shared;
    the given model is not changed): its media encodings become cache-enhanced."""
    if not callable(getattr(model, "with_cache", None)):
        raise ConfigError(
            f"cache_dir={cache_dir!r} needs a model with a visual cache (a MultimodalLLM from "
            f"ibllm_agent.load_model); {type(model).__name__} has none"
        )
    from ibllm_agent.cache import VisualCache

    return model.with_cache(VisualCache.load(cache_dir))


def _load_model(
    preset: str | None,
    model_dir: str | None,
    device: str | None,
    dtype: str | None,
    overrides: dict[str, Any],
    cache_dir: str | None = None,
) -> Any:
    """The shared ``MultimodalLLM`` for these settings (``ibllm_agent.loading.load_shared``: one per
    name/folder, device, dtype, cache and overrides; device/dtype by the Settings rules)."""
    from pathlib import Path

    from ibllm_agent.loading import load_shared

    name = preset if preset is not None else Path(str(model_dir))  # a Path is always a folder
    return load_shared(name, device, dtype, cache_dir=cache_dir, overrides=overrides)


@dataclass
class _Call:
    """Everything one model call needs, rendered from the messages and the call's kwargs."""

    prompt: str  # final text given to the generator (template-wrapped, prefill included)
    prefill: str  # text forced at the start of the answer (part of the raw text)
    media: list[Media]
    sampling: Sampling
    cache: CacheSettings | None
    tools: list[P.ToolSpec] = field(default_factory=list)  # every bound tool (parsing matches these)
    shown: list[P.ToolSpec] = field(default_factory=list)  # the ≤ max_tools tools in the prompt
    # prompt with extra scratchpad steps appended (used to feed an invalid step back as an error)
    with_steps: Callable[[list[P.ScratchStep]], str] | None = None

    @property
    def tool_mode(self) -> bool:
        return bool(self.tools)


class ChatImageBindLLM(BaseChatModel):
    """ImageBind-LLM as a LangChain chat model: media in messages, GPT4Tools-style tool calls.

    Setup:
        Install ``ibllm-agent`` and get weights (``ibllm-agent download`` / ``convert``), or use the
        random ``tiny`` preset to try the plumbing::

            from ibllm_agent import ChatImageBindLLM

            llm = ChatImageBindLLM(preset="tiny")                # random tiny model (tests, demos)
            llm = ChatImageBindLLM(model_dir="weights/ibllm-7b")  # a saved/converted model folder
            llm = ChatImageBindLLM(model=my_generator)            # any ibllm_agent.types.TextGenerator

        Models loaded from ``preset``/``model_dir`` are shared between instances with the same
        ``preset``/``model_dir``/``device``/``dtype``/``model_kwargs`` (preset config overrides, e.g.
        ``model_kwargs={"context_length": 2048}``: the GPT4Tools prompt alone is ~700 tokens).
        ``max_new_tokens`` is lowered to what is left of the context window.

    Key init args — generation:
        max_new_tokens (512), temperature (0.1; 0 = greedy), top_p (0.75), seed, stop (extra stop
        strings). All can be overridden per call: ``llm.invoke(msgs, temperature=0)``.

    Key init args — media:
        modality_weights: fusion weight per modality, e.g. ``{"image": 1, "audio": 0.5}`` (per call
        too). cache_dir: a ``VisualCache`` folder (``ibllm-agent cache build``) loaded onto the model,
        after which media encodings are cache-enhanced by default. cache_enabled / cache_k / cache_t /
        cache_alpha: visual-cache enhancement knobs passed to
        the model as ``CacheSettings`` (used when the model has a cache; per call:
        ``cache={"k": 5, "t": 20, "alpha": 0.5, "enabled": False}``). file_resolver: ``file_id -> source``
        for ``file_id`` blocks. fetch_timeout / fetch_max_bytes: limits for ``http(s)`` URLs.
        experts: ``Expert`` objects run on attachments; each finding becomes a context line such as
        ``(recognized text: …)`` under the message text (see ``ibllm_agent.experts``). Findings (and
        captions) are remembered per attachment content, so later agent steps do not rerun them.

    Key init args — tools (GPT4Tools protocol):
        protocol: ``"training"`` (the prompt the GPT4Tools LoRA was trained on, default) or ``"demo"``.
        max_tools: at most this many tools (most relevant to the input first) are shown in the prompt
        (default 5; GPT4Tools trained on 2–5). history: ``"last_exchange"`` (GPT4Tools: only the last
        exchange / the image announcements) or ``"full"`` (every exchange that fits the context).
        media_namer: ``Media -> name`` used to announce attachments without ``Media.name``
        (default: a stable ``image/<sha1[:8]>.png``); it is called on every model call for every
        unnamed attachment of the thread, so make it idempotent (e.g. name files by content hash).
        A block can also carry its name: ``extras={"name": "image/ab12cd34.png"}``.
        captioner: an ``Expert`` whose finding is the ``Description:`` of an announcement (else the
        block's ``extras["description"]``, else ``An attached image.``). system_messages:
        ``"prepend"`` (before the PREFIX) or ``"ignore"``. invalid_retries (0): how many times an
        invalid step (unknown tool, unparseable, arguments that do not fit) is fed back to the model
        as ``Observation: Error: …`` and regenerated before it is returned as ``invalid_tool_calls``
        (LangChain's ``handle_parsing_errors``; useful under a bare ``create_agent``, which ends a run
        on a message without ``tool_calls``). Usage then sums all attempts. ``build_agent`` keeps this
        at 0 and answers invalid steps at the graph level instead (``build_agent(invalid_retries=2)``),
        so each attempt stays visible in the thread.

    Invoke:
        .. code-block:: python

            llm.invoke("Write a haiku about the sea.").content
            llm.invoke([("system", "Be brief."), ("human", "Hi!")])

        Without tools the messages are folded into the model's own template (``model.prompt_template``;
        Alpaca for ImageBind-LLM): the newest human text is the instruction, earlier turns the input.

    Stream:
        .. code-block:: python

            for chunk in llm.stream("Tell me a story."):
                print(chunk.text, end="")

        The last chunk has ``chunk_position="last"`` and ``usage_metadata``. With tools bound, the
        ``Thought:`` line streams as ``additional_kwargs["reasoning_content"]``, the text after ``AI:``
        as content, and one complete ``tool_call_chunk`` is emitted when the ``Action Input:`` line is
        complete. ``ainvoke``/``astream`` run the blocking model in a worker thread.

    Tool calling:
        .. code-block:: python

            from langchain.agents import create_agent

            llm_tools = llm.bind_tools([get_photo_description, answer_question], tool_choice=None)
            msg = llm_tools.invoke("Describe image/ab12cd34.png")
            msg.tool_calls   # [{"name": "Get Photo Description", "args": {"image_path": "image/ab12cd34.png"},
                             #   "id": "call_…", "type": "tool_call"}]
            agent = create_agent(llm, tools=[...], checkpointer=InMemorySaver())

        The model sees the GPT4Tools ReAct prompt (``> Name: description`` lines, ``[names]``, the
        history and ``Observation:`` lines rendered from ToolMessages) wrapped in its template. Its
        ``Action Input`` is mapped onto the tool's schema with GPT4Tools' comma rule (the remainder
        joins the last field; a one-parameter tool gets the whole string); tool names match
        case-insensitively and fuzzily. Unknown tools and unparseable steps become
        ``invalid_tool_calls`` (never exceptions; when streamed, LangChain's chunk aggregation drops
        their ``error``, so it is also in ``additional_kwargs["tool_call_errors"][call_id]``);
        ``AI: …`` becomes the answer. The raw model text is
        kept in ``response_metadata["raw_text"]`` and replayed byte-exact on the next step.
        ``tool_choice``: ``"any"``/``"required"``/a tool name prefill ``Thought: Do I need to use a
        tool? Yes`` / ``Action: …``; ``"none"`` prefills the ``No`` thought and ``AI:``.

    Media:
        Attach media as content blocks (see ``ibllm_agent.content``): v1 ``image``/``audio``/``video``/
        ``file`` blocks with ``url`` (http(s), ``file://``, a local path or a data URI), ``base64`` +
        ``mime_type`` or ``file_id``; OpenAI ``image_url`` data URIs; point clouds, depth, thermal and
        IMU as ``file`` blocks with a mime type, an extension or ``extras={"modality": …}``::

            llm.invoke([HumanMessage(content=[
                {"type": "text", "text": "What is this?"},
                {"type": "image", "url": "photo.jpg"},
                {"type": "audio", "base64": b64_wav, "mime_type": "audio/wav"},
                {"type": "file", "url": "chair.ply"},
            ])], modality_weights={"image": 1.0, "audio": 0.5})

        The newest human message's attachments (or, when it has none, the latest earlier ones) reach
        the model as ``Media`` items; the model fuses them into one visual query. With tools bound,
        each is also announced GPT4Tools-style (``Human: Provide an image named image/….png.
        Description: … Understand the image using tools.`` / ``AI: Received.``).

    Usage:
        ``AIMessage.usage_metadata`` holds input/output/total token counts.
    """

    model: Any = Field(default=None, exclude=True)
    """A ``TextGenerator`` (e.g. ``ImageBindLLM``); built from ``preset``/``model_dir`` when absent."""
    preset: str | None = None
    model_dir: str | None = None
    device: str | None = None
    dtype: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    """Config overrides for a ``preset`` (e.g. ``{"context_length": 2048}``)."""

    max_new_tokens: int = 512
    temperature: float = 0.1
    top_p: float = 0.75
    seed: int | None = None
    stop: list[str] | None = None

    protocol: Literal["training", "demo"] = "training"
    max_tools: int = 5
    history: Literal["last_exchange", "full"] = "last_exchange"
    system_messages: Literal["prepend", "ignore"] = "prepend"
    invalid_retries: int = 0
    experts: list[Any] = Field(default_factory=list)
    captioner: Any = None
    media_namer: Callable[[Media], str] | None = None
    file_resolver: Callable[[str], Any] | None = None
    modality_weights: dict[str, float] = Field(default_factory=dict)

    cache_dir: str | None = None
    cache_enabled: bool = True
    cache_k: int = 10
    cache_t: float = 20.0
    cache_alpha: float = 0.5

    fetch_timeout: float = 10.0
    fetch_max_bytes: int = 64 * 1024 * 1024

    # (expert id, modality, source key) -> finding: experts and the captioner run once per
    # attachment, not on every model call (an agent turn calls the model once per step, and every call
    # re-reads the thread's attachments).
    _findings: OrderedDict = PrivateAttr(default_factory=OrderedDict)
    _findings_lock: Any = PrivateAttr(default_factory=threading.Lock)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, values: Any) -> Any:
        # LangChain's cross-provider name for the generation budget.
        if isinstance(values, dict) and "max_tokens" in values:
            values = dict(values)
            max_tokens = values.pop("max_tokens")
            if max_tokens is not None:
                values.setdefault("max_new_tokens", max_tokens)
        return values

    def __init__(self, **data: Any):
        # Typed errors for bad settings (pydantic would wrap them in a ValidationError).
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise ConfigError(f"invalid ChatImageBindLLM settings: {exc}") from None
        if self.model is None:
            if self.preset is None and self.model_dir is None:
                raise ConfigError("ChatImageBindLLM needs model=<TextGenerator>, preset=... or model_dir=...")
            if self.preset is not None and self.model_dir is not None:
                raise ConfigError("ChatImageBindLLM takes preset or model_dir, not both")
            self.model = _load_model(
                self.preset, self.model_dir, self.device, self.dtype, dict(self.model_kwargs), self.cache_dir
            )
        elif self.cache_dir is not None:
            self.model = _attach_cache(self.model, self.cache_dir)
        if not isinstance(self.model, TextGenerator):
            raise ConfigError(
                f"model must implement ibllm_agent.types.TextGenerator (generate, stream, count_tokens, "
                f"prompt_template, context_length); got {type(self.model).__name__}"
            )
        if self.max_new_tokens < 1:
            raise ConfigError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.invalid_retries < 0:
            raise ConfigError(f"invalid_retries must be >= 0, got {self.invalid_retries}")

    # -- LangChain metadata ------------------------------------------------------------------------
    @property
    def _llm_type(self) -> str:
        return "imagebind-llm"

    @property
    def model_name(self) -> str:
        """A display name: the preset, the folder name or the generator's class name."""
        if self.preset:
            return f"imagebind-llm-{self.preset}"
        if self.model_dir:
            return str(self.model_dir).rstrip("/").rsplit("/", 1)[-1]
        return type(self.model).__name__

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "prompt_template": getattr(self.model, "prompt_template", None),
            "protocol": self.protocol,
            "max_tools": self.max_tools,
            "history": self.history,
            "max_new_tokens": self.max_new_tokens,
            "temperature": self.temperature,
            "top_p": self.top_p,
        }

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: Any) -> dict[str, Any]:
        params: dict[str, Any] = {
            "ls_provider": "ibllm",
            # A per-call `model` is reported for tracing (LangChain convention); generation itself
            # cannot switch models per call and rejects it in _prepare.
            "ls_model_name": kwargs["model"] if isinstance(kwargs.get("model"), str) else self.model_name,
            "ls_model_type": "chat",
            "ls_temperature": kwargs.get("temperature", self.temperature),
            "ls_max_tokens": kwargs.get("max_new_tokens", kwargs.get("max_tokens", self.max_new_tokens)),
        }
        if stop or self.stop:
            params["ls_stop"] = list(stop or self.stop or [])
        return params

    # -- tools -------------------------------------------------------------------------------------
    def bind_tools(
        self,
        tools: Sequence[dict[str, Any] | type | Callable[..., Any] | Any],
        *,
        tool_choice: str | dict | bool | None = None,
        **kwargs: Any,
    ) -> Runnable[LanguageModelInput, AIMessage]:
        """Bind tools (any form ``convert_to_openai_tool`` takes) for the GPT4Tools protocol.

        ``tool_choice``: ``None``/``"auto"`` (the model decides), ``"any"``/``"required"``/``True``
        (a tool must be called), a tool name or ``{"type": "function", "function": {"name": …}}``
        (that tool), ``"none"`` (answer without tools).
        """
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is not None:
            choice = P.tool_choice_name(tool_choice)
            names = [t["function"]["name"] for t in formatted]
            if choice not in ("auto", "any", "required", "none") and choice not in names:
                raise ConfigError(f"tool_choice {choice!r} is not one of the bound tools {names}")
            kwargs["tool_choice"] = choice
        return self.bind(tools=formatted, **kwargs)

    # -- rendering ---------------------------------------------------------------------------------
    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        return self._fit(self._render(messages, stop, kwargs))

    def _fit(self, call: _Call) -> _Call:
        """Generate at most what is left of the context window (the model itself raises
        ContextLengthError when the prompt alone does not fit)."""
        room = self.model.context_length - self.model.count_tokens(call.prompt)
        if 0 < room < call.sampling.max_new_tokens:
            call.sampling = replace(call.sampling, max_new_tokens=room)
        return call

    def _retry(self, call: _Call, failed: list[P.ScratchStep], raw_text: str, error: str | None) -> _Call:
        """The call again, with the invalid step and its error as the latest scratchpad step."""
        failed.append(P.ScratchStep(raw_text, f"Error: {error or 'the step could not be parsed'}"))
        assert call.with_steps is not None
        return self._fit(replace(call, prompt=call.with_steps(failed), sampling=replace(call.sampling)))

    def _render(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> _Call:
        kwargs = dict(kwargs)
        tools = [P.tool_spec(t) for t in (kwargs.pop("tools", None) or [])]
        choice = P.tool_choice_name(kwargs.pop("tool_choice", None))
        weights = {**self.modality_weights, **(kwargs.pop("modality_weights", None) or {})}
        cache = self._cache_settings(kwargs.pop("cache", None))
        sampling_kw = {k: kwargs.pop(k) for k in _SAMPLING_KWARGS if k in kwargs}
        for key in list(kwargs):
            if key.startswith("ls_") or key in _IGNORED_KWARGS:
                kwargs.pop(key)
        if kwargs:
            raise ConfigError(
                f"unknown ChatImageBindLLM call option(s) {sorted(kwargs)}; known: tools, tool_choice, "
                f"modality_weights, cache, {', '.join(_SAMPLING_KWARGS)}"
            )
        if choice == "none" and not tools:
            choice = None

        convo = _Conversation.build(self, messages, weights)
        stops = list(P.STOP_SEQUENCES) if tools else []
        if not tools and convo.past:
            stops.append("\nHuman:")  # a single-turn model must not write the next human turn
        stops += [s for s in (self.stop or []) + list(stop or []) if s and s not in stops]
        max_new = int(sampling_kw.get("max_new_tokens", sampling_kw.get("max_tokens", self.max_new_tokens)))
        sampling = Sampling(
            max_new_tokens=max_new,
            temperature=float(sampling_kw.get("temperature", self.temperature)),
            top_p=float(sampling_kw.get("top_p", self.top_p)),
            stop=tuple(stops),
            seed=sampling_kw.get("seed", self.seed),
        )
        template = self.model.prompt_template
        if not tools:
            prompt = format_chat(convo.past_pairs(), convo.text, system=convo.system, template=template)
            return _Call(prompt, "", convo.media, sampling, cache)

        used = [n for n in convo.used_tools if any(t.name == n for t in tools)]
        forced = [choice] if choice and any(t.name == choice for t in tools) else []
        query = "\n".join([convo.text, *(e.human for e in convo.past[-1:])])
        shown = P.select_tools(tools, query, self.max_tools, required=forced + used)
        prefill = P.prefill_for(choice, shown if choice in ("any", "required") else tools)
        scratchpad = P.render_scratchpad(convo.steps(tools))

        def render(history_text: str, extra: Sequence[P.ScratchStep] = ()) -> str:
            text = P.render_prompt(
                shown, convo.text, chat_history=history_text, scratchpad=scratchpad + P.render_scratchpad(extra),
                variant=self.protocol, system=convo.system,
            )
            return format_prompt(text, None, template)

        if self.history == "last_exchange":
            items = convo.announcements or convo.past[-1:]
            history_text = P.render_history(items, "full")
        else:
            budget = self.model.context_length - max_new - self.model.count_tokens(render("") + prefill)
            history_text = P.render_history(
                [*convo.past, *convo.announcements], "full",
                fits=lambda text: self.model.count_tokens(text) <= budget,
            )
        # Templates end at the answer marker ("ASSISTANT:", "### Response:"); in training the answer
        # followed after a space (SentencePiece "▁Thought"), so a prefill gets that space too.
        def with_prefill(prompt: str) -> str:
            return prompt + (" " if prefill and prompt.endswith(":") else "") + prefill

        return _Call(
            with_prefill(render(history_text)), prefill, convo.media, sampling, cache, tools, shown,
            with_steps=lambda extra: with_prefill(render(history_text, extra)),
        )

    def _cache_settings(self, value: Any) -> CacheSettings:
        base = CacheSettings(enabled=self.cache_enabled, k=self.cache_k, t=self.cache_t, alpha=self.cache_alpha)
        if value is None:
            return base
        if isinstance(value, CacheSettings):
            return value
        if value is False:
            return CacheSettings(enabled=False, k=base.k, t=base.t, alpha=base.alpha)
        if isinstance(value, Mapping):
            unknown = set(value) - {"enabled", "k", "t", "alpha"}
            if unknown:
                raise ConfigError(f"unknown cache setting(s) {sorted(unknown)}; known: enabled, k, t, alpha")
            try:
                return CacheSettings(
                    enabled=bool(value.get("enabled", base.enabled)),
                    k=int(value.get("k", base.k)),
                    t=float(value.get("t", base.t)),
                    alpha=float(value.get("alpha", base.alpha)),
                )
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"cache settings {dict(value)!r}: {exc}") from None
        raise ConfigError(f"cache must be a dict, CacheSettings or False, got {type(value).__name__}")

    # -- output -> message -------------------------------------------------------------------------
    def _step_message_fields(self, call: _Call, raw_text: str) -> dict[str, Any]:
        """content / tool_calls / invalid_tool_calls / reasoning for a finished step."""
        if not call.tool_mode:
            return {"content": raw_text.strip(), "tool_calls": [], "invalid_tool_calls": [], "reasoning": None}
        step = P.parse_step(raw_text)
        out: dict[str, Any] = {"content": "", "tool_calls": [], "invalid_tool_calls": [], "reasoning": step.thought}
        if step.kind == "final":
            out["content"] = step.answer or ""
            return out
        call_id = f"call_{uuid.uuid4().hex}"
        error = step.error
        if step.kind == "action":
            names = [t.name for t in call.tools]
            name = P.match_tool_name(step.action or "", names)
            if name is None:
                error = f"unknown tool {step.action!r}; the bound tools are {names}"
            else:
                spec = next(t for t in call.tools if t.name == name)
                try:
                    args = P.map_arguments(step.action_input or "", spec)
                except ToolArgumentError as exc:
                    error = str(exc)
                else:
                    out["tool_calls"] = [{"name": name, "args": args, "id": call_id, "type": "tool_call"}]
                    return out
        out["invalid_tool_calls"] = [
            {
                "name": step.action or None,
                "args": _invalid_args(step),
                "id": call_id,
                "error": error,
                "type": "invalid_tool_call",
            }
        ]
        return out

    def _metadata(self, call: _Call, raw_text: str, finish: str, retries: int = 0) -> dict[str, Any]:
        meta = {
            "model_name": self.model_name,
            "raw_text": raw_text,
            "finish_reason": finish,
            "tools_shown": [t.name for t in call.shown],
        }
        if retries:
            meta["invalid_retries"] = retries  # invalid steps fed back and regenerated
        return meta

    # -- media helpers ----------------------------------------------------------------------------
    def _named(self, media: Media) -> Media:
        """``media`` with a workspace name (its own, ``media_namer``'s or a stable generated one)."""
        if media.name:
            return media
        name = self.media_namer(media) if self.media_namer else P.media_name(media.modality, media.source)
        return Media(modality=media.modality, source=media.source, weight=media.weight, name=name)

    def _announce(
        self, media: Sequence[Media], descriptions: Sequence[str | None]
    ) -> list[P.Exchange]:
        """GPT4Tools announcement exchanges for attachments (``Description:`` from the block's extras,
        the captioner, or a neutral default)."""
        out = []
        for i, m in enumerate(media):
            desc = descriptions[i] if i < len(descriptions) else None
            if not desc and self.captioner is not None and m.modality in tuple(self.captioner.modalities):
                try:
                    desc = self._finding(self.captioner, m)
                except Exception:  # noqa: BLE001 - a caption is optional context
                    desc = None
            human, ai = P.render_announcement(
                m.name or "", m.modality, desc or P.default_description(m.modality), self.protocol
            )
            out.append(P.Exchange(human, ai))
        return out

    def _finding(self, expert: Any, media: Media) -> str | None:
        """``expert(media)``, remembered per attachment content (the last 256 findings)."""
        key = _source_key(media.source)
        if key is None:
            return expert(media)
        key = (id(expert), media.modality, key)
        with self._findings_lock:
            if key in self._findings:
                self._findings.move_to_end(key)
                return self._findings[key]
        value = expert(media)  # an exception is not remembered: the next call tries again
        with self._findings_lock:
            self._findings[key] = value
            while len(self._findings) > 256:
                self._findings.popitem(last=False)
        return value

    # -- LangChain entry points --------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        call = self._prepare(messages, stop, kwargs)
        failed: list[P.ScratchStep] = []
        prompt_tokens = completion_tokens = 0
        while True:
            with _call_lock(self.model):
                gen = self.model.generate(call.prompt, call.media, sampling=call.sampling, cache=call.cache)
            text, cut = P.cut_at_stop(gen.text, call.sampling.stop)
            raw_text = call.prefill + text
            fields = self._step_message_fields(call, raw_text)
            prompt_tokens += gen.prompt_tokens or self.model.count_tokens(call.prompt)
            completion_tokens += gen.completion_tokens or self.model.count_tokens(text)
            if not fields["invalid_tool_calls"] or len(failed) >= self.invalid_retries:
                break
            call = self._retry(call, failed, raw_text, fields["invalid_tool_calls"][0]["error"])
        reasoning = fields.pop("reasoning")
        message = AIMessage(
            **fields,
            additional_kwargs={"reasoning_content": reasoning} if reasoning else {},
            response_metadata=self._metadata(call, raw_text, "stop" if cut else gen.finish_reason, len(failed)),
            usage_metadata={
                "input_tokens": prompt_tokens,
                "output_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        )
        return ChatResult(generations=[ChatGeneration(message=message)])

    def _iter_chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        call = self._prepare(messages, stop, kwargs)
        failed: list[P.ScratchStep] = []
        prompt_tokens = completion_tokens = 0
        while True:
            # While a retry is still possible, hold this attempt's chunks back until the step is
            # decided: an answer (content) or a valid tool call goes out; an invalid step is dropped
            # and fed back as an error observation.
            gate = _Gate(self, call, hold=call.tool_mode and len(failed) < self.invalid_retries)
            cutter = StopCutter(call.sampling.stop)
            parser = StepStream(call.prefill, call.tool_mode)
            pieces: list[str] = []

            with _call_lock(self.model):
                stream = self.model.stream(call.prompt, call.media, sampling=call.sampling, cache=call.cache)
                try:
                    for piece in stream:
                        safe = cutter.feed(piece)
                        pieces.append(safe)
                        yield from gate.emit(parser.feed(safe))
                        if cutter.stopped or gate.invalid_error is not None:
                            break
                finally:
                    close = getattr(stream, "close", None)
                    if close is not None:
                        close()  # stop the model's decoding loop when we stop early (stop string, consumer)
            if gate.invalid_error is None:
                tail = cutter.flush()
                pieces.append(tail)
                yield from gate.emit(parser.feed(tail) + parser.finish())
            text = "".join(pieces)
            raw_text = call.prefill + text
            prompt_tokens += self.model.count_tokens(call.prompt)
            completion_tokens += self.model.count_tokens(text)
            if gate.invalid_error is None:
                yield from gate.release()  # never decided (e.g. empty output): release as is
                break
            call = self._retry(call, failed, gate.invalid_raw, gate.invalid_error)
        yield ChatGenerationChunk(
            message=AIMessageChunk(
                content="",
                chunk_position="last",
                response_metadata=self._metadata(call, raw_text, "stop" if cutter.stopped else "eos", len(failed)),
                usage_metadata={
                    "input_tokens": prompt_tokens,
                    "output_tokens": completion_tokens,
                    "total_tokens": prompt_tokens + completion_tokens,
                },
            )
        )

    def _event_chunks(self, kind: str, value: Any, fields: dict[str, Any] | None) -> Iterator[ChatGenerationChunk]:
        """Message chunks for one stream event (``fields``: the parsed step of a ``"step"`` event)."""
        if kind == "content":
            yield ChatGenerationChunk(message=AIMessageChunk(content=value))
        elif kind == "reasoning":
            yield ChatGenerationChunk(message=AIMessageChunk(content="", additional_kwargs={"reasoning_content": value}))
        elif kind == "step" and fields is not None:
            for tc in fields["tool_calls"]:
                chunk = {"name": tc["name"], "args": json.dumps(tc["args"]), "id": tc["id"], "index": 0}
                yield ChatGenerationChunk(message=AIMessageChunk(content="", tool_call_chunks=[chunk]))
            for tc in fields["invalid_tool_calls"]:
                chunk = {"name": tc["name"], "args": tc["args"], "id": tc["id"], "index": 0}
                # Aggregating chunks rebuilds invalid_tool_calls with error=None (LangChain re-parses
                # tool_call_chunks), so the reason travels in additional_kwargs, keyed by call id.
                yield ChatGenerationChunk(message=AIMessageChunk(
                    content="", tool_call_chunks=[chunk],
                    additional_kwargs={"tool_call_errors": {tc["id"]: tc["error"]}},
                ))
            if fields["content"]:
                yield ChatGenerationChunk(message=AIMessageChunk(content=fields["content"]))

    def _stream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> Iterator[ChatGenerationChunk]:
        for chunk in self._iter_chunks(messages, stop, kwargs):
            if run_manager:
                run_manager.on_llm_new_token(chunk.text, chunk=chunk)
            yield chunk

    async def _agenerate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        # The model is blocking (torch); run it in a worker thread so the event loop keeps serving.
        return await asyncio.to_thread(self._generate, messages, stop, None, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        done = object()
        cancelled = threading.Event()

        def produce() -> None:
            try:
                for chunk in self._iter_chunks(messages, stop, kwargs):
                    if cancelled.is_set():
                        break
                    loop.call_soon_threadsafe(queue.put_nowait, chunk)
            except BaseException as exc:  # noqa: BLE001 - re-raised in the consumer
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, done)

        worker = loop.run_in_executor(None, produce)
        try:
            while True:
                item = await queue.get()
                if item is done:
                    break
                if isinstance(item, BaseException):
                    raise item
                if run_manager:
                    await run_manager.on_llm_new_token(item.text, chunk=item)
                yield item
        finally:
            cancelled.set()
            await worker


def _source_key(source: Any) -> tuple | None:
    """What identifies an attachment's content for remembering expert findings: a file's path, size
    and modification time, or a digest of bytes; ``None`` (do not remember) for other objects."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return ("bytes", hashlib.sha1(bytes(source)).hexdigest())
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source).removeprefix("file://")
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return ("file", os.path.abspath(path), st.st_size, st.st_mtime_ns)
    return None


class _Remembered:
    """An expert whose findings the chat model remembers per attachment (see ``_finding``)."""

    def __init__(self, chat: ChatImageBindLLM, expert: Any):
        self.chat, self.expert = chat, expert
        self.name, self.modalities = expert.name, expert.modalities

    def __call__(self, media: Media) -> str | None:
        return self.chat._finding(self.expert, media)


def _invalid_args(step: P.ParsedStep) -> str:
    """``args`` of an invalid call: the Action Input, else the raw step text.

    Never empty and never a JSON object: LangChain re-parses streamed tool-call chunks and would turn
    an empty or JSON-object ``args`` back into a (wrong) valid call.
    """
    candidate = step.action_input or ""
    if candidate:
        try:
            parsed = parse_partial_json(candidate)
        except ValueError:
            return candidate
        if not isinstance(parsed, dict):
            return candidate
    return step.raw or "<empty output>"


@dataclass
class _Conversation:
    """Messages sorted into what the protocol renders: system text, past exchanges, the current
    human turn (text + media + announcements) and the tool steps after it."""

    system: str | None
    past: list[P.Exchange]
    text: str
    media: list[Media]
    announcements: list[P.Exchange]
    tail: list[BaseMessage]

    @classmethod
    def build(cls, chat: ChatImageBindLLM, messages: Sequence[BaseMessage], weights: Mapping[str, float]):
        limits = FetchLimits(timeout=chat.fetch_timeout, max_bytes=chat.fetch_max_bytes)

        def split(msg: BaseMessage):
            return split_message(msg, modality_weights=weights, file_resolver=chat.file_resolver, limits=limits)

        systems = [message_text(m) for m in messages if isinstance(m, SystemMessage)]
        system = "\n\n".join(s for s in systems if s) if chat.system_messages == "prepend" else ""
        rest = [m for m in messages if not isinstance(m, SystemMessage)]
        last_h = max((i for i, m in enumerate(rest) if isinstance(m, HumanMessage)), default=-1)

        past: list[P.Exchange] = []
        last_media: list[Media] = []
        pending: str | None = None
        for m in rest[: max(last_h, 0)]:
            if isinstance(m, HumanMessage):
                if pending is not None:
                    past.append(P.Exchange(pending))
                try:
                    content = split(m)
                except ContentBlockError as exc:
                    # An old attachment that is gone (deleted file, dead URL) must not break the thread:
                    # keep its text, drop the attachment.
                    log.warning("dropping an attachment of an earlier message: %s", exc)
                    content = MessageContent(message_text(m))
                if content.media:
                    named = [chat._named(x) for x in content.media]
                    last_media = named
                    past += chat._announce(named, content.descriptions)
                pending = content.text
            elif isinstance(m, AIMessage) and not m.tool_calls and not m.invalid_tool_calls:
                answer = message_text(m)
                if pending is not None and answer:
                    past.append(P.Exchange(pending, answer))
                    pending = None
        if pending is not None:
            past.append(P.Exchange(pending))

        text, media, announcements = "", [], []
        if last_h >= 0:
            content = split(rest[last_h])
            media = [chat._named(x) for x in content.media]
            announcements = chat._announce(media, content.descriptions)
            text = with_context(content.text, run_experts([_Remembered(chat, e) for e in chat.experts], media))
        return cls(system or None, past, text, media or last_media, announcements, rest[last_h + 1 :])

    def past_pairs(self) -> list[tuple[str, str]]:
        """(human, ai) pairs for the plain-chat template (announcements and unanswered turns left out:
        the plain model receives the media themselves)."""
        return [(e.human, e.ai) for e in self.past if e.ai is not None and e.ai != "Received."]

    @property
    def used_tools(self) -> list[str]:
        names = []
        for m in self.tail:
            if isinstance(m, AIMessage):
                names += [tc["name"] for tc in m.tool_calls] + [tc.get("name") or "" for tc in m.invalid_tool_calls]
        return [n for n in names if n]

    def steps(self, tools: Sequence[P.ToolSpec]) -> list[P.ScratchStep]:
        """The current turn's tool steps: raw model text (byte-exact) or a canonical rendering, each
        with the text of its ToolMessage(s) as the observation."""
        observations = {m.tool_call_id: message_text(m) for m in self.tail if isinstance(m, ToolMessage)}
        by_name = {t.name: t for t in tools}
        steps: list[P.ScratchStep] = []
        for m in self.tail:
            if not isinstance(m, AIMessage):
                continue
            calls = [*m.tool_calls, *m.invalid_tool_calls]
            if not calls:
                continue
            raw = (m.response_metadata or {}).get("raw_text")
            if raw is not None:
                obs = "\n".join(observations.get(c.get("id"), "") for c in calls)
                steps.append(P.ScratchStep(raw, obs))
                continue
            for c in calls:
                args = c.get("args")
                if isinstance(args, dict):
                    action_input = P.render_action_input(args, by_name.get(c["name"]))
                else:
                    action_input = str(args or "")
                steps.append(
                    P.ScratchStep(P.render_step_text(c.get("name") or "", action_input), observations.get(c.get("id"), ""))
                )
        return steps




class _Gate:
    """Holds one attempt's stream chunks back while a retry is still possible.

    The step is decided by the first answer text (content) or parsed step: an answer or a valid tool
    call releases what was held and lets the rest through; an invalid step sets ``invalid_error`` and
    the attempt is dropped (fed back to the model as an error observation).
    """

    def __init__(self, chat: ChatImageBindLLM, call: _Call, hold: bool):
        self.chat, self.call, self.hold = chat, call, hold
        self.held: list[ChatGenerationChunk] = []
        self.invalid_error: str | None = None
        self.invalid_raw = ""  # the invalid step's text (prefill included), replayed in the retry

    def emit(self, events: list[tuple[str, Any]]) -> Iterator[ChatGenerationChunk]:
        for kind, value in events:
            fields = self.chat._step_message_fields(self.call, value) if kind == "step" else None
            if self.hold and fields is not None and fields["invalid_tool_calls"]:
                self.invalid_error = fields["invalid_tool_calls"][0]["error"] or "invalid step"
                self.invalid_raw = value
                return
            chunks = list(self.chat._event_chunks(kind, value, fields))
            if self.hold and (kind == "content" or fields is not None):
                self.hold = False
                yield from self.release()
            if self.hold:
                self.held.extend(chunks)
            else:
                yield from chunks

    def release(self) -> Iterator[ChatGenerationChunk]:
        held, self.held = self.held, []
        yield from held
