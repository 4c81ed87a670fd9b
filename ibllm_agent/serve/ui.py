"""The Gradio chat (``ibllm-agent ui``): the agent in a browser.

Uploads for image / audio / video / point cloud, a fusion-weight slider per modality, visual-cache
and sampling controls, streamed answers, tool calls and the files tools made (images inline). The
thread id lives in the browser's local storage and the conversation in the agent's memory, so a
reloaded page shows the same conversation (and a restarted UI too, with the default SQLite memory).

A turn runs in its own thread with its settings (``turns.turn_settings``) while the page's handler
streams the events to the chat, so settings never leak between turns or users.
"""

from __future__ import annotations

import queue
import re
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ibllm_agent.serve.turns import turn_settings

__all__ = ["build_ui", "history_messages"]

POINT_TYPES = [".ply", ".pcd", ".xyz", ".pts", ".npy"]
_FILE_NAME = re.compile(r"\b(?:image|audio|video|point|depth|thermal|imu)/[0-9a-f]{8}\.[A-Za-z0-9]{1,8}\b")
_SHOWN = {"image", "audio", "video"}


def _text(content: Any) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content or [] if isinstance(b, dict) and b.get("type") == "text")


def _file_message(ws: Any, name: str) -> dict[str, Any] | None:
    """A chat message showing workspace file ``name`` (images, audio and video inline)."""
    try:
        path = ws.resolve(name)
    except Exception:  # noqa: BLE001 - a file named in text that is not there is just text
        return None
    if name.split("/", 1)[0] not in _SHOWN:
        return {"role": "assistant", "content": f"(file {name})"}
    return {"role": "assistant", "content": {"path": str(path)}}


def history_messages(agent: Any, thread_id: str) -> list[dict[str, Any]]:
    """The thread's messages (from the agent's memory) as Gradio chat messages."""
    ws = agent.workspace.thread(thread_id)
    out: list[dict[str, Any]] = []
    for m in agent.history(thread_id):
        kind = getattr(m, "type", "")
        if kind == "human":
            text = _text(m.content)
            if text:
                out.append({"role": "user", "content": text})
            if isinstance(m.content, list):
                for b in m.content:
                    name = (b.get("extras") or {}).get("name") if isinstance(b, dict) else None
                    msg = _file_message(ws, name) if name else None
                    if msg is not None:
                        out.append({**msg, "role": "user"})
        elif kind == "ai":
            for c in m.tool_calls:
                out.append({"role": "assistant", "content": f"{c['name']}: {c['args']}",
                            "metadata": {"title": f"🔧 {c['name']}"}})
            text = _text(m.content)
            if text and not m.tool_calls:
                out.append({"role": "assistant", "content": text})
        elif kind == "tool":
            text = _text(m.content)
            out.append({"role": "assistant", "content": text, "metadata": {"title": f"📎 {m.name} result"}})
            out += [msg for n in _FILE_NAME.findall(text) if (msg := _file_message(ws, n)) is not None]
    return out


def _run_turn(agent: Any, thread_id: str, text: str, attachments: list, settings: dict) -> queue.SimpleQueue:
    """Start a turn in a thread; its events (and finally ``None`` or an exception) arrive on the queue."""
    events: queue.SimpleQueue = queue.SimpleQueue()

    def work() -> None:
        try:
            with turn_settings(**settings):
                for event in agent.stream_turn(thread_id, text, attachments):
                    events.put(event)
        except BaseException as exc:  # noqa: BLE001 - shown in the chat
            events.put(exc)
        finally:
            events.put(None)

    threading.Thread(target=work, name="ibllm-ui-turn", daemon=True).start()
    return events


def build_ui(agent: Any, *, title: str = "ImageBind-LLM agent") -> Any:
    """The Gradio ``Blocks`` app over ``agent`` (from ``build_agent(...,
    middleware=[TurnSettingsMiddleware()])``, so the page's settings reach the model)."""
    import gradio as gr

    lock = threading.Lock()  # one turn per thread id at a time (two tabs of one browser share it)
    running: set[str] = set()

    def on_load(thread_id: str | None) -> tuple[str, list, str]:
        thread_id = thread_id or uuid.uuid4().hex[:12]
        return thread_id, history_messages(agent, thread_id), f"thread `{thread_id}`"

    def new_thread() -> tuple[str, list, str]:
        thread_id = uuid.uuid4().hex[:12]
        return thread_id, [], f"thread `{thread_id}`"

    def send(text, image, audio, video, point, w_image, w_audio, w_video, w_point, cache_on, cache_k, cache_t,
             cache_alpha, temperature, top_p, max_new_tokens, thread_id, history) -> Iterator[tuple]:
        history = list(history or [])
        text = (text or "").strip()
        uploads = [(p, m) for p, m in ((image, "image"), (audio, "audio"), (video, "video"), (point, "point")) if p]
        if not text and not uploads:
            yield history, text, image, audio, video, point
            return
        thread_id = thread_id or uuid.uuid4().hex[:12]
        with lock:
            if thread_id in running:
                history.append({"role": "assistant", "content": "A turn of this thread is still running."})
                yield history, text, image, audio, video, point
                return
            running.add(thread_id)
        try:
            history.append({"role": "user", "content": text or "(attachment)"})
            history += [{"role": "user", "content": {"path": str(p)}} for p, m in uploads if m in _SHOWN]
            history += [{"role": "user", "content": f"(point cloud {Path(p).name})"} for p, m in uploads if m == "point"]
            yield history, "", None, None, None, None
            settings = {
                "temperature": float(temperature), "top_p": float(top_p), "max_new_tokens": int(max_new_tokens),
                "modality_weights": {"image": float(w_image), "audio": float(w_audio), "video": float(w_video),
                                     "point": float(w_point)},
                "cache": {"enabled": bool(cache_on), "k": int(cache_k), "t": float(cache_t), "alpha": float(cache_alpha)},
            }
            events = _run_turn(agent, thread_id, text, [(Path(p), m) for p, m in uploads], settings)
            answer: dict[str, Any] | None = None
            ws = agent.workspace.thread(thread_id)
            while (event := events.get()) is not None:
                if isinstance(event, BaseException):
                    history.append({"role": "assistant", "content": f"Error: {event}"})
                elif event.kind == "token":
                    if answer is None:
                        answer = {"role": "assistant", "content": ""}
                        history.append(answer)
                    answer["content"] += event.text
                elif event.kind == "tool_call":
                    answer = None
                    history.append({"role": "assistant", "content": f"{event.name}: {event.args}",
                                    "metadata": {"title": f"🔧 {event.name or 'invalid step'}"}})
                elif event.kind == "tool_result":
                    answer = None
                    history.append({"role": "assistant", "content": event.text,
                                    "metadata": {"title": f"📎 {event.name} result"}})
                    history += [m for n in _FILE_NAME.findall(event.text) if (m := _file_message(ws, n))]
                yield history, "", None, None, None, None
        finally:
            with lock:
                running.discard(thread_id)

    with gr.Blocks(title=title) as demo:
        thread = gr.BrowserState("", storage_key="ibllm-agent-thread")
        with gr.Row():
            gr.Markdown(f"## {title}")
            thread_label = gr.Markdown(elem_id="thread-id")
            new = gr.Button("New thread", elem_id="new-thread", scale=0)
        with gr.Row():
            with gr.Column(scale=3):
                chat = gr.Chatbot(elem_id="chat", height=520)
                text = gr.Textbox(placeholder="Ask about your media…", show_label=False, elem_id="question",
                                  lines=2)
                send_btn = gr.Button("Send", variant="primary", elem_id="send")
                with gr.Row():
                    image = gr.Image(type="filepath", label="Image", elem_id="upload-image", height=160)
                    audio = gr.Audio(type="filepath", label="Audio", elem_id="upload-audio")
                    video = gr.Video(label="Video", elem_id="upload-video", height=160)
                    point = gr.File(label="Point cloud", file_types=POINT_TYPES, type="filepath",
                                    elem_id="upload-point")
            with gr.Column(scale=1):
                with gr.Accordion("Modality weights", open=True):
                    w_image = gr.Slider(0, 1, 1.0, step=0.05, label="image")
                    w_audio = gr.Slider(0, 1, 1.0, step=0.05, label="audio")
                    w_video = gr.Slider(0, 1, 1.0, step=0.05, label="video")
                    w_point = gr.Slider(0, 1, 1.0, step=0.05, label="point cloud")
                with gr.Accordion("Visual cache", open=False):
                    cache_on = gr.Checkbox(True, label="enhance with the cache (when the model has one)")
                    cache_k = gr.Slider(1, 64, 10, step=1, label="k")
                    cache_t = gr.Slider(1, 100, 20, step=1, label="t")
                    cache_alpha = gr.Slider(0, 1, 0.5, step=0.05, label="alpha")
                with gr.Accordion("Sampling", open=False):
                    temperature = gr.Slider(0, 2, 0.1, step=0.05, label="temperature")
                    top_p = gr.Slider(0.05, 1, 0.75, step=0.05, label="top p")
                    max_new_tokens = gr.Slider(1, 1024, 256, step=1, label="max new tokens")

        inputs = [text, image, audio, video, point, w_image, w_audio, w_video, w_point, cache_on, cache_k, cache_t,
                  cache_alpha, temperature, top_p, max_new_tokens, thread, chat]
        outputs = [chat, text, image, audio, video, point]
        send_btn.click(send, inputs, outputs)
        text.submit(send, inputs, outputs)
        new.click(new_thread, None, [thread, chat, thread_label])
        demo.load(on_load, [thread], [thread, chat, thread_label])
    return demo
