"""Helpers of the server tests: a uvicorn server on a free 127.0.0.1 port, test generators, media."""

from __future__ import annotations

import base64
import io
import socket
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ibllm_agent.types import CacheSettings, Generation, Media, Sampling


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def running_server(app: Any, **uvicorn_kwargs: Any) -> Iterator[Any]:
    """Serve ``app`` with uvicorn in a thread; yields the ``uvicorn.Server`` (``.base_url`` set)."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning",
                                           **uvicorn_kwargs))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    server.base_url = f"http://127.0.0.1:{port}"
    try:
        yield server
    finally:
        server.should_exit = True
        thread.join(30)


def client(server: Any, key: str = "unused", **kwargs: Any) -> Any:
    import openai

    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key, max_retries=0, timeout=60, **kwargs)


def png_bytes(size: tuple[int, int] = (32, 24), color: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


class SlowGenerator:
    """A ``TextGenerator`` that streams ``pieces`` words, one every ``delay`` seconds, counting how
    many it produced (so a test sees whether a cancelled generation really stopped)."""

    prompt_template = "raw"
    context_length = 4096

    def __init__(self, pieces: int = 400, delay: float = 0.02, gate: threading.Event | None = None):
        self.pieces, self.delay, self.gate = pieces, delay, gate
        self.produced = 0
        self.started = threading.Event()

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def stream(self, prompt: str, media: Sequence[Media] | None = None, *, sampling: Sampling | None = None,
               cache: CacheSettings | None = None) -> Iterator[str]:
        self.started.set()
        if self.gate is not None:
            self.gate.wait(30)
        budget = (sampling or Sampling()).max_new_tokens
        for i in range(min(self.pieces, budget)):
            time.sleep(self.delay)
            self.produced += 1
            yield f"w{i} "

    def generate(self, prompt: str, media: Sequence[Media] | None = None, *, sampling: Sampling | None = None,
                 cache: CacheSettings | None = None) -> Generation:
        text = "".join(self.stream(prompt, media, sampling=sampling, cache=cache))
        return Generation(text=text, prompt_tokens=self.count_tokens(prompt), completion_tokens=self.count_tokens(text))


def paint_tool():
    """A tool that writes a small blue PNG into the thread's workspace (a stand-in for an image tool)."""
    from langchain_core.tools import tool

    from ibllm_agent.agent import current_context

    @tool("Paint Picture")
    def paint(text: str) -> str:
        """Paint a picture of the text. The input is the text."""
        from PIL import Image

        name, path = current_context().workspace.new_file("image")
        Image.new("RGB", (16, 16), (0, 90, 200)).save(path, format="PNG")
        return f"Result saved as {name}"

    return paint
