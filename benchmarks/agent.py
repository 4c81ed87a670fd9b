"""Agent overhead per model step: render + parse + dispatch + checkpoint vs a tiny-model step.

Run:  python benchmarks/agent.py                  # tiny random model, 3 turns x --repeats, ~1 min
      python benchmarks/agent.py --repeats 5 --new-tokens 32

A 3-turn conversation with tool steps (turn 1: an image attachment + a tool call + an answer, turn
2: a tool call + an answer, turn 3: an answer; 5 model steps, 2 tool calls) runs through
``build_agent`` with a SQLite checkpointer. The model is the real tiny ImageBind-LLM preset: each
step runs its ``generate`` on the actual rendered prompt (prefill + ``--new-tokens`` decoded tokens,
image encoded when attached), then returns the scripted step text so the conversation takes the same
path every time (``--new-tokens`` 64 by default: what the ``"tiny"`` chat model of ``build_agent`` allows
a step). Timed per model step (median over ``--repeats`` conversations):

  model       the tiny model's generate (what the overhead is compared with)
  render      ``ChatImageBindLLM`` turning messages into the prompt (chat.rendering render + fit)
  parse       cutting at stop strings and parsing the step into content / tool calls
  dispatch    the tool-call middleware (workspace path checks, context), minus the tool itself
  checkpoint  the LangGraph checkpointer (SQLite put / put_writes / get_tuple)
  turn        ``Agent.send`` bookkeeping: repair check, storing attachments, reading the result
  framework   the rest of the wall time: LangGraph / LangChain plumbing

"ours" = render + parse + dispatch + checkpoint + turn, as a share of the model step. Two columns,
one run: *before* = the checkpointer on a plain ``sqlite3`` connection (SQLite's defaults: rollback
journal, synchronous=FULL, several fsyncs per commit), *after* = ``open_memory`` (WAL journal,
synchronous=NORMAL).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared cores: sleeping OpenMP waiters
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

TIMES: dict[str, float] = defaultdict(float)


_STACK: list[str] = []  # categories of the timed calls in progress (this benchmark is one thread)


def timed(category: str, fn):
    """Wrap fn so its *exclusive* time goes to ``category``: time spent in a nested timed call
    (e.g. the checkpointer read inside ``Agent._result``) counts for the inner category only."""

    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        _STACK.append(category)
        try:
            return fn(*args, **kwargs)
        finally:
            _STACK.pop()
            elapsed = time.perf_counter() - t0
            TIMES[category] += elapsed
            TIMES[category + " calls"] += 1
            if _STACK:
                TIMES[_STACK[-1]] -= elapsed

    wrapper.__wrapped__ = fn
    return wrapper


class TimedTinyModel:
    """A TextGenerator: runs the real tiny model on the prompt, returns the scripted step text."""

    def __init__(self, real, new_tokens: int):
        self.real, self.new_tokens = real, new_tokens
        self.prompt_template, self.context_length = real.prompt_template, real.context_length
        self.script: list = []
        self.steps = 0

    def count_tokens(self, text: str) -> int:
        return self.real.count_tokens(text)

    def generate(self, prompt, media=None, *, sampling=None, cache=None):
        from dataclasses import replace

        from ibllm_agent.types import Generation, Sampling

        s = replace(sampling or Sampling(), max_new_tokens=self.new_tokens, stop=())
        gen = timed("model", self.real.generate)(prompt, media, sampling=s, cache=cache)
        self.steps += 1
        item = self.script.pop(0)
        text = item(prompt) if callable(item) else item
        return Generation(text=text, prompt_tokens=gen.prompt_tokens, completion_tokens=gen.completion_tokens,
                          finish_reason="stop")

    def stream(self, prompt, media=None, *, sampling=None, cache=None):
        yield self.generate(prompt, media, sampling=sampling, cache=cache).text


def tool_step(name: str, arg: str) -> str:
    return f"Thought: Do I need to use a tool? Yes\nAction: {name}\nAction Input: {arg}\nObservation:"


def answer(text: str) -> str:
    return f"Thought: Do I need to use a tool? No\nAI: {text}"


def announced(prompt: str) -> str:
    import re

    return re.findall(r"(image/[0-9a-f]{8}\.png)", prompt)[-1]


def instrument_code() -> None:
    """Time our functions where they are looked up (before the agent graph binds any of them)."""
    from ibllm_agent.agent.middleware import ToolGuardMiddleware
    from ibllm_agent.chat import attempts
    from ibllm_agent.chat import model as chat_model

    chat_model.render = timed("render", chat_model.render)
    chat_model.fit = timed("render", chat_model.fit)
    attempts.step_message_fields = timed("parse", attempts.step_message_fields)
    attempts.cut_at_stop = timed("parse", attempts.cut_at_stop)
    ToolGuardMiddleware.wrap_tool_call = timed("dispatch", ToolGuardMiddleware.wrap_tool_call)
    from ibllm_agent.agent.runtime import Agent

    Agent._start = timed("turn", Agent._start)
    Agent._result = timed("turn", Agent._result)
    Agent._input = timed("turn", Agent._input)


def instrument_saver(agent) -> None:
    saver = agent.memory.saver
    for name in ("put", "put_writes", "get_tuple"):
        setattr(saver, name, timed("checkpoint", getattr(saver, name)))


def conversation(agent, gen, image: Path, thread: str) -> float:
    seen: list[str] = []  # the workspace name turn 1 announced (later prompts may not repeat it)
    gen.script = [
        lambda p: tool_step("Get Photo Description", seen.append(announced(p)) or seen[0]),
        answer("I see a red square."),
        lambda p: tool_step("Get Photo Description", seen[0]),
        answer("It is still a red square."),
        answer("You're welcome."),
    ]
    stats = gen.real.llm.engine.stats  # MultimodalLLM: media stage + ImageBindLLM (.llm)
    gen.turns = []
    t0 = time.perf_counter()
    for text, attachments in (("What is in this picture?", [image]), ("Describe the image again", []),
                              ("Thanks!", [])):
        before = (stats.prefill_tokens_computed, stats.prefill_tokens_reused)
        agent.send(thread, text, attachments=attachments)
        gen.turns.append((stats.prefill_tokens_computed - before[0], stats.prefill_tokens_reused - before[1]))
    return time.perf_counter() - t0


def prefill_report(agent, gen, image: Path) -> None:
    """Prefill tokens per turn of one conversation, with the engine's prefix reuse on and off."""
    engine = gen.real.llm.engine
    rows = {}
    for label, on in (("no reuse", False), ("reuse", True)):
        engine.prefix_cache = on
        engine.clear_cache()
        conversation(agent, gen, image, f"prefill-{label}")
        rows[label] = list(gen.turns)
    engine.prefix_cache = True
    print("\nprefill tokens over a 3-turn conversation with tool steps (turn: steps; computed + reused):")
    total_off = sum(c + r for c, r in rows["no reuse"])
    for i, ((c0, _), (c1, r1)) in enumerate(zip(rows["no reuse"], rows["reuse"]), 1):
        print(f"  turn {i}: no reuse {c0:>6} computed | reuse {c1:>6} computed + {r1:>6} reused "
              f"({100 * r1 / max(c1 + r1, 1):.0f} % saved)")
    computed = sum(c for c, _ in rows["reuse"])
    print(f"  total : no reuse {total_off:>6} computed | reuse {computed:>6} computed "
          f"({100 * (1 - computed / total_off):.0f} % of the prefill saved; engine byte budget "
          f"{engine._cache.max_bytes >> 20} MiB, {len(engine._cache)} entries kept)")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="conversations (3 turns, 5 model steps each)")
    p.add_argument("--new-tokens", type=int, default=64,
                   help="tokens the tiny model decodes per step (64: the max_new_tokens of build_agent('tiny'))")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)

    import torch
    from PIL import Image

    from ibllm_agent.agent import build_agent, gpt4tools_tool
    from ibllm_agent.chat import ChatImageBindLLM

    if args.threads:
        torch.set_num_threads(args.threads)
    real = ChatImageBindLLM(preset="tiny").model
    gen = TimedTinyModel(real, args.new_tokens)

    def _describe(image_path: str) -> str:
        return "a red square"

    describe = timed("tool", _describe)
    describe.__name__ = "describe"

    tool = gpt4tools_tool("Get Photo Description", describe)
    instrument_code()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        image = Path(tmp) / "photo.png"
        Image.new("RGB", (320, 240), (220, 20, 20)).save(image)
        for label in ("before", "after"):
            db = Path(tmp) / f"{label}.sqlite"
            if label == "before":
                import sqlite3

                from langgraph.checkpoint.sqlite import SqliteSaver

                conn = sqlite3.connect(db, check_same_thread=False)
                memory = SqliteSaver(conn)
                memory.setup()
            else:
                memory = f"sqlite:///{db}"
            agent = build_agent(gen, [tool], memory=memory, workspace=Path(tmp) / f"ws-{label}")
            instrument_saver(agent)
            conversation(agent, gen, image, "warm-up")
            rows = []
            for i in range(args.repeats):
                TIMES.clear()
                gen.steps = 0
                wall = conversation(agent, gen, image, f"t{i}")
                rows.append({**TIMES, "wall": wall, "steps": gen.steps})
            if label == "after":
                prefill_report(agent, gen, image)
            agent.close()
            if label == "before":
                conn.close()
            results[label] = summarise(rows)

    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, load average {os.getloadavg()[0]:.1f}; "
          f"{args.repeats} conversations x 5 model steps, 2 tool calls (median per model step)")
    print(f"{'per model step':<16} {'before ms':>10} {'%':>7}   {'after ms':>9} {'%':>7}")
    for key in ("model", "render", "parse", "dispatch", "checkpoint", "turn", "ours", "framework"):
        b, a = results["before"], results["after"]
        print(f"{key:<16} {b[key]:>10.3f} {100 * b[key] / b['model']:>6.2f}%   {a[key]:>9.3f} "
              f"{100 * a[key] / a['model']:>6.2f}%")
    print(f"(checkpointer calls per model step: {results['after']['checkpoint calls']:.1f}; "
          "ours = render + parse + dispatch + checkpoint + turn; framework = LangGraph/LangChain)")


def summarise(rows: list[dict]) -> dict[str, float]:
    def med(key: str) -> float:
        return statistics.median(r.get(key, 0.0) / r["steps"] for r in rows) * 1e3

    out = {k: med(k) for k in ("model", "render", "parse", "dispatch", "checkpoint", "turn", "tool", "wall")}
    out["ours"] = sum(out[k] for k in ("render", "parse", "dispatch", "checkpoint", "turn"))
    out["framework"] = out["wall"] - out["model"] - out["ours"] - out["tool"]
    out["checkpoint calls"] = med("checkpoint calls") / 1e3
    return out


if __name__ == "__main__":
    main()
