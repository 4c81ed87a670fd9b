"""Prompt rendering: LangChain messages + call options → one ``Call`` (prompt, prefill, media,
sampling, tools), in the model's template and, with tools bound, the GPT4Tools ReAct protocol.

Functions over the chat model's settings (``chat`` below is a ``ChatImageBindLLM``; only its fields,
its model's ``prompt_template``/``context_length``/``count_tokens`` and its remembered expert
findings are used); no LangChain model class and no generation here. Not free of I/O: sorting the
messages (``Conversation.build``) reads their attachments through ``ibllm_agent.content`` and runs
the experts and captioner (remembered per attachment, see ``findings``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage, ToolMessage

from ibllm_agent import protocol as P
from ibllm_agent.chat.findings import Remembered
from ibllm_agent.content import MessageContent, message_text, split_message
from ibllm_agent.errors import ConfigError, ContentBlockError
from ibllm_agent.experts import block_context, run_experts, with_context
from ibllm_agent.prompts import format_chat, format_prompt
from ibllm_agent.step_grammar import StepGuide
from ibllm_agent.types import CacheSettings, Media, Sampling

if TYPE_CHECKING:
    from ibllm_agent.chat.model import ChatImageBindLLM

__all__ = [
    "SAMPLING_KWARGS", "Call", "Conversation", "announce", "cache_settings", "fit", "named", "render", "retry",
]

log = logging.getLogger(__name__)

# Tokens the chat model accepts as per-call kwargs (invoke(..., **kwargs) / bind(**kwargs)).
SAMPLING_KWARGS = ("max_new_tokens", "max_tokens", "temperature", "top_p", "seed")
# LangChain-internal kwargs that may reach _generate and carry nothing for us.
_IGNORED_KWARGS = ("parallel_tool_calls", "strict", "ls_structured_output_format")


@dataclass
class Call:
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


def fit(model: Any, call: Call) -> Call:
    """Generate at most what is left of the context window (the model itself raises
    ContextLengthError when the prompt alone does not fit)."""
    room = model.context_length - model.count_tokens(call.prompt)
    if 0 < room < call.sampling.max_new_tokens:
        call.sampling = replace(call.sampling, max_new_tokens=room)
    return call


def retry(model: Any, call: Call, failed: list[P.ScratchStep], raw_text: str, error: str | None) -> Call:
    """The call again, with the invalid step and its error as the latest scratchpad step."""
    failed.append(P.ScratchStep(raw_text, f"Error: {error or 'the step could not be parsed'}"))
    assert call.with_steps is not None
    return fit(model, replace(call, prompt=call.with_steps(failed), sampling=replace(call.sampling)))


def render(
    chat: ChatImageBindLLM, messages: list[BaseMessage], stop: list[str] | None, kwargs: dict[str, Any]
) -> Call:
    """The call ``messages`` + per-call ``kwargs`` make (not yet fitted to the context window)."""
    kwargs = dict(kwargs)
    tools = [P.tool_spec(t) for t in (kwargs.pop("tools", None) or [])]
    choice = P.tool_choice_name(kwargs.pop("tool_choice", None))
    weights = {**chat.modality_weights, **(kwargs.pop("modality_weights", None) or {})}
    cache = cache_settings(chat, kwargs.pop("cache", None))
    use_experts = bool(kwargs.pop("experts", True))
    guided = bool(kwargs.pop("guided", chat.guided))
    files = kwargs.pop("files", None)
    sampling_kw = {k: kwargs.pop(k) for k in SAMPLING_KWARGS if k in kwargs}
    for key in list(kwargs):
        if key.startswith("ls_") or key in _IGNORED_KWARGS:
            kwargs.pop(key)
    if kwargs:
        raise ConfigError(
            f"unknown ChatImageBindLLM call option(s) {sorted(kwargs)}; known: tools, tool_choice, "
            f"modality_weights, cache, experts, guided, files, {', '.join(SAMPLING_KWARGS)}"
        )
    if choice == "none" and not tools:
        choice = None

    convo = Conversation.build(chat, messages, weights, use_experts)
    stops = list(P.STOP_SEQUENCES) if tools else []
    if not tools and convo.past:
        stops.append("\nHuman:")  # a single-turn model must not write the next human turn
    stops += [s for s in (chat.stop or []) + list(stop or []) if s and s not in stops]
    max_new = int(sampling_kw.get("max_new_tokens", sampling_kw.get("max_tokens", chat.max_new_tokens)))
    sampling = Sampling(
        max_new_tokens=max_new,
        temperature=float(sampling_kw.get("temperature", chat.temperature)),
        top_p=float(sampling_kw.get("top_p", chat.top_p)),
        stop=tuple(stops),
        seed=sampling_kw.get("seed", chat.seed),
    )
    template = chat.model.prompt_template
    if not tools:
        prompt = format_chat(convo.past_pairs(), convo.text, system=convo.system, template=template)
        return Call(prompt, "", convo.media, sampling, cache)

    used = [n for n in convo.used_tools if any(t.name == n for t in tools)]
    forced = [choice] if choice and any(t.name == choice for t in tools) else []
    query = "\n".join([convo.text, *(e.human for e in convo.past[-1:])])
    shown = P.select_tools(tools, query, chat.max_tools, required=forced + used)
    prefill = P.prefill_for(choice, shown if choice in ("any", "required") else tools)
    steps = convo.steps(tools)
    scratchpad = P.render_scratchpad(steps)

    def tool_prompt(history_text: str, extra: Sequence[P.ScratchStep] = ()) -> str:
        text = P.render_prompt(
            shown, convo.text, chat_history=history_text, scratchpad=scratchpad + P.render_scratchpad(extra),
            variant=chat.protocol, system=convo.system,
        )
        return format_prompt(text, None, template)

    if steps:
        # Long tool observations are cut (with a note) until this turn's prompt without history
        # fits the context with room to answer; the history policy then fills what is left.
        room = chat.model.context_length - max_new

        def fits(candidate: Sequence[P.ScratchStep]) -> bool:
            nonlocal scratchpad
            scratchpad = P.render_scratchpad(candidate)
            return chat.model.count_tokens(tool_prompt("") + prefill) <= room

        steps = P.fit_observations(steps, fits)
        scratchpad = P.render_scratchpad(steps)
    if chat.history == "last_exchange":
        items = convo.announcements or convo.past[-1:]
        history_text = P.render_history(items, "full")
    else:
        budget = chat.model.context_length - max_new - chat.model.count_tokens(tool_prompt("") + prefill)
        history_text = P.render_history(
            [*convo.past, *convo.announcements], "full",
            fits=lambda text: chat.model.count_tokens(text) <= budget,
        )
    # Templates end at the answer marker ("ASSISTANT:", "### Response:"); in training the answer
    # followed after a space (SentencePiece "▁Thought"), so a prefill gets that space too.
    def with_prefill(prompt: str) -> str:
        return prompt + (" " if prefill and prompt.endswith(":") else "") + prefill

    prompt = with_prefill(tool_prompt(history_text))
    if guided:  # file parameters take one of the given files, else of those the prompt names
        known = P.file_names(prompt) if files is None else [str(f) for f in files]
        sampling = replace(sampling, guide=StepGuide(shown, prefill, files=known))
    return Call(
        prompt, prefill, convo.media, sampling, cache, tools, shown,
        with_steps=lambda extra: with_prefill(tool_prompt(history_text, extra)),
    )


def cache_settings(chat: ChatImageBindLLM, value: Any) -> CacheSettings:
    """The chat model's cache knobs, overridden by a per-call ``cache=`` option."""
    base = CacheSettings(enabled=chat.cache_enabled, k=chat.cache_k, t=chat.cache_t, alpha=chat.cache_alpha)
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


def named(chat: ChatImageBindLLM, media: Media) -> Media:
    """``media`` with a workspace name (its own, ``media_namer``'s or a stable generated one)."""
    if media.name:
        return media
    name = chat.media_namer(media) if chat.media_namer else P.media_name(media.modality, media.source)
    return Media(modality=media.modality, source=media.source, weight=media.weight, name=name)


def announce(
    chat: ChatImageBindLLM, media: Sequence[Media], descriptions: Sequence[str | None]
) -> list[P.Exchange]:
    """GPT4Tools announcement exchanges for attachments (``Description:`` from the block's extras,
    the captioner, or a neutral default)."""
    out = []
    for i, m in enumerate(media):
        desc = descriptions[i] if i < len(descriptions) else None
        if not desc and chat.captioner is not None and m.modality in tuple(chat.captioner.modalities):
            try:
                desc = chat._findings.get(chat.captioner, m)
            except Exception:  # noqa: BLE001 - a caption is optional context
                desc = None
        human, ai = P.render_announcement(
            m.name or "", m.modality, desc or P.default_description(m.modality), chat.protocol
        )
        out.append(P.Exchange(human, ai))
    return out


@dataclass
class Conversation:
    """Messages sorted into what the protocol renders: system text, past exchanges, the current
    human turn (text + media + announcements) and the tool steps after it."""

    system: str | None
    past: list[P.Exchange]
    text: str
    media: list[Media]
    announcements: list[P.Exchange]
    tail: list[BaseMessage]

    @classmethod
    def build(cls, chat: ChatImageBindLLM, messages: Sequence[BaseMessage], weights: Mapping[str, float],
              use_experts: bool = True):
        """Sort ``messages``; context lines (experts' findings, or those carried in the blocks'
        ``extras["context"]``) go before each human text unless ``use_experts`` is False."""
        def split(msg: BaseMessage):
            return split_message(
                msg, modality_weights=weights, file_resolver=chat.file_resolver, policy=chat.content_policy
            )

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
                    attached = [named(chat, x) for x in content.media]
                    last_media = attached
                    past += announce(chat, attached, content.descriptions)
                pending = with_context(content.text, block_context(m.content)[0] if use_experts else [])
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
            media = [named(chat, x) for x in content.media]
            announcements = announce(chat, media, content.descriptions)
            lines, settled = block_context(rest[last_h].content)
            if use_experts and not settled:
                lines = run_experts([Remembered(chat._findings, e) for e in chat.experts], media)
            text = with_context(content.text, lines if use_experts else [])
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
