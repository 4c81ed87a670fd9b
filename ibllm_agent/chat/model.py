"""``ChatImageBindLLM``: ImageBind-LLM (or any ``TextGenerator``) as a LangChain chat model.

The class docstring is the manual. Prompt rendering lives in ``rendering``, the model calls and the
invalid-step retry loop in ``attempts``, step → message mapping in ``messages``, stream parsing in
``step_stream``, expert memoisation in ``findings``, model loading in ``loading``; stop strings in
``ibllm_agent.stops``, the sync → async bridge in ``ibllm_agent.sync_bridge``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import aclosing
from typing import Any, Literal

from langchain_core.callbacks import AsyncCallbackManagerForLLMRun, CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel, LanguageModelInput
from langchain_core.messages import AIMessage, BaseMessage
from langchain_core.outputs import ChatGenerationChunk, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import Field, PrivateAttr, ValidationError, model_validator

from ibllm_agent import protocol as P
from ibllm_agent.chat import attempts
from ibllm_agent.chat.findings import Findings
from ibllm_agent.chat.loading import _attach_cache, _load_model
from ibllm_agent.chat.rendering import Call, fit, render
from ibllm_agent.content import ContentPolicy
from ibllm_agent.errors import ConfigError
from ibllm_agent.sync_bridge import iterate_in_thread, run_in_thread
from ibllm_agent.types import Media, TextGenerator

__all__ = ["ChatImageBindLLM"]


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
        for ``file_id`` blocks. content_policy: what messages may reference (``ContentPolicy.library()``
        by default: local files allowed, ``http(s)`` URLs to public hosts only, 10 s / 64 MiB;
        ``ContentPolicy.server()`` when the messages come from remote clients).
        experts: ``Expert`` objects run on attachments; each finding becomes a context line such as
        ``(recognized text: …)`` before the message text (see ``ibllm_agent.experts``; per call:
        ``experts=False``). Findings (and captions) are remembered per attachment content hash, so
        later agent steps do not rerun them; ``findings_store``: a ``FindingsStore`` (e.g. a JSON
        file) to share them across processes. Lines found in a block's ``extras["context"]`` (the
        agent puts them there) are used as they are.

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
        complete. ``ainvoke``/``astream`` run the blocking model in a worker thread that sees the
        caller's contextvars; an ``astream`` consumer that stops early (``break``, ``aclose``,
        cancellation) stops the model's decoding.

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

        guided (True; per call ``guided=False``): guided decoding of the step (``StepGuide``). The
        model still decides whether to call a tool and what to answer, but once it says ``Yes`` its
        ``Action`` is one of the shown tools (names scored whole, so the model's preference for every
        token of a name counts) and its ``Action Input`` fits the tool's JSON schema in GPT4Tools'
        comma form (typed values, no missing required value); a file parameter (a string named
        ``*_path``) takes one of the known files, scored whole like the names: those the prompt
        names, or per call ``files=[...]`` (``build_agent`` passes the thread's workspace files).
        On the shipped demo model the held-out SR (val_seen) is 0.913 decoded freely and 0.957
        guided, and ``tool_choice`` / structured output always yield a parseable call.

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
    """A ``TextGenerator`` (e.g. the ``MultimodalLLM`` of ``ibllm_agent.load_model``); built from
    ``preset``/``model_dir`` (through ``load_model``'s shared pool) when absent."""
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
    guided: bool = True
    experts: list[Any] = Field(default_factory=list)
    findings_store: Any = Field(default=None, exclude=True)
    captioner: Any = None
    media_namer: Callable[[Media], str] | None = None
    file_resolver: Callable[[str], Any] | None = None
    modality_weights: dict[str, float] = Field(default_factory=dict)

    cache_dir: str | None = None
    cache_enabled: bool = True
    cache_k: int = 10
    cache_t: float = 20.0
    cache_alpha: float = 0.5

    content_policy: ContentPolicy = Field(default_factory=ContentPolicy.library)

    # Experts and the captioner run once per attachment, not on every model call (an agent turn
    # calls the model once per step, and every call re-reads the thread's attachments).
    _findings: Findings = PrivateAttr(default_factory=Findings)

    @model_validator(mode="before")
    @classmethod
    def _aliases(cls, values: Any) -> Any:
        if isinstance(values, dict) and {"fetch_timeout", "fetch_max_bytes"} & set(values):
            raise ValueError("fetch_timeout/fetch_max_bytes are fields of content_policy=ContentPolicy(...)")
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
        if self.findings_store is not None:
            self._findings = Findings(self.findings_store)
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

    # -- rendering, output -> message (ibllm_agent.chat.rendering / .messages) --------------------
    def _prepare(self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]) -> Call:
        return fit(self.model, render(self, messages, stop, kwargs))

    def _finding(self, expert: Any, media: Media) -> str | None:
        """``expert(media)``, remembered per attachment content hash."""
        return self._findings.get(expert, media)

    # -- LangChain entry points --------------------------------------------------------------------
    def _generate(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: CallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> ChatResult:
        return attempts.generate(self, self._prepare(messages, stop, kwargs))

    def _iter_chunks(
        self, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
    ) -> Iterator[ChatGenerationChunk]:
        return attempts.stream(self, self._prepare(messages, stop, kwargs))

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
        return await run_in_thread(self._generate, messages, stop, None, **kwargs)

    async def _astream(
        self,
        messages: list[BaseMessage],
        stop: list[str] | None = None,
        run_manager: AsyncCallbackManagerForLLMRun | None = None,
        **kwargs: Any,
    ) -> AsyncIterator[ChatGenerationChunk]:
        # A consumer that stops early closes _iter_chunks in the worker, which closes the model's
        # stream: decoding stops (see ibllm_agent.sync_bridge).
        chunks = iterate_in_thread(lambda: self._iter_chunks(messages, stop, kwargs))
        async with aclosing(chunks):
            async for chunk in chunks:
                if run_manager:
                    await run_manager.on_llm_new_token(chunk.text, chunk=chunk)
                yield chunk
