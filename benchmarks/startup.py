"""Start-up of `ibllm-agent run --model tiny`: import time, model build, first token, early errors.

    python benchmarks/startup.py [--repeats 3]

Each figure is the median wall time of fresh interpreters (subprocesses), so nothing is cached in
memory between runs (the OS file cache is warm after the first). Printed side by side:

- imports: `import ibllm_agent`, the CLI (`--help`, `--version`), and the heavy libraries a model
  run pulls in (torch, transformers, langchain/langgraph), from `python -X importtime`;
- a bad attachment reported by the checks `run` makes before loading anything (now) against the
  same error reached the old way, after building the agent and its model (before);
- `run --model tiny`: agent + tiny model built, time to the first streamed token, whole turn.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

PY = sys.executable


def wall(args: list[str], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(args, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def in_child(code: str, repeats: int) -> dict[str, float]:
    """Run ``code`` (which prints one JSON dict of seconds) in fresh interpreters; median per key."""
    runs = []
    for _ in range(repeats):
        out = subprocess.run([PY, "-c", code], capture_output=True, text=True, check=True).stdout
        runs.append(json.loads(out.strip().splitlines()[-1]))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def import_times(module: str) -> dict[str, float]:
    """Cumulative import time (s) of the top-level packages ``module`` pulls in."""
    err = subprocess.run([PY, "-X", "importtime", "-c", f"import {module}"], capture_output=True, text=True,
                         check=False).stderr
    totals: dict[str, float] = {}
    for line in err.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (p.strip() for p in line[len("import time:"):].split("|"))
        if name.isidentifier() or "." not in name.strip():
            top = name.strip()
            if top in ("torch", "transformers", "langchain", "langgraph", "langchain_core", "ibllm_agent", "typer"):
                totals[top] = max(totals.get(top, 0.0), int(cumulative) / 1e6)
    return totals


TURN = r"""
import json, time
t0 = time.perf_counter()
from ibllm_agent.agent import build_agent
t1 = time.perf_counter()
agent = build_agent("tiny", tools=[], memory="memory", workspace=WS)
t2 = time.perf_counter()
first = None
for ev in agent.stream_turn("t", "Describe the sea in one line."):
    if ev.kind == "token" and first is None:
        first = time.perf_counter()
t3 = time.perf_counter()
print(json.dumps({"import": t1 - t0, "build": t2 - t1, "first_token": (first or t3) - t2, "turn": t3 - t2}))
"""

OLD_ERROR = r"""
import json, time
t0 = time.perf_counter()
from ibllm_agent.agent import build_agent
from ibllm_agent.errors import IbllmError
agent = build_agent("tiny", tools=[], memory="memory", workspace=WS)
try:
    agent.attach("t", "/no/such/photo.png", "image")
except IbllmError:
    pass
print(json.dumps({"error": time.perf_counter() - t0}))
"""

NEW_ERROR = r"""
import json, sys, time
t0 = time.perf_counter()
from ibllm_agent.cli import main
sys.argv = ["ibllm-agent", "run", "hi", "--image", "/no/such/photo.png", "--model", "tiny", "--memory", "memory"]
try:
    main()
except SystemExit:
    pass
print(json.dumps({"error": time.perf_counter() - t0}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n = args.repeats
    ws = Path(tempfile.mkdtemp(prefix="ibllm-startup-"))
    prelude = f"WS = {str(ws)!r}\n"

    print(f"python {sys.version.split()[0]}, median of {n} fresh interpreters\n")
    print(f"{'what':<52}{'seconds':>10}")
    print(f"{'python -c pass (interpreter alone)':<52}{wall([PY, '-c', 'pass'], n):>10.2f}")
    print(f"{'import ibllm_agent':<52}{wall([PY, '-c', 'import ibllm_agent'], n):>10.2f}")
    print(f"{'ibllm-agent --version':<52}{wall([PY, '-m', 'ibllm_agent', '--version'], n):>10.2f}")
    print(f"{'ibllm-agent --help':<52}{wall([PY, '-m', 'ibllm_agent', '--help'], n):>10.2f}")

    print("\nimport time of what a model run pulls in (cumulative, one run):")
    for name, secs in sorted(import_times("ibllm_agent.agent.runtime, ibllm_agent.chat").items(), key=lambda kv: -kv[1]):
        print(f"  {name:<50}{secs:>10.2f}")

    old = in_child(prelude + OLD_ERROR, n)["error"]
    new = in_child(prelude + NEW_ERROR, n)["error"]
    print("\nmissing attachment reported        before (after model build)   now (checked first)")
    print(f"{'':<35}{old:>20.2f} s{new:>18.2f} s")

    turn = in_child(prelude + TURN, n)
    print("\nrun --model tiny (one turn, no tools)")
    for key, label in (("import", "import agent + LangChain"), ("build", "build agent + tiny model"),
                       ("first_token", "first streamed token"), ("turn", "whole turn")):
        print(f"  {label:<50}{turn[key]:>10.2f}")


if __name__ == "__main__":
    main()
