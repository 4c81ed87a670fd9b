"""The demo recipe's LM stage: tokens/s of eager vs ``torch.compile`` and one process vs two, side by side.

    python benchmarks/demo_lm.py                  # 4 runs of 240 s each on the demo model's shapes
    python benchmarks/demo_lm.py --seconds 300 --threads 2

Every run trains a fresh demo-sized model (``DemoRecipe``: 4 layers, 128 wide, induction init, bf16
autocast) for the same wall-clock budget on the same pairs (a small seeded synthetic set rendered as the
recipe renders it, its own tokenizer) and reports optimiser steps and tokens/s over the whole budget
(compilation and process start-up included, as the recipe pays them) and the steady rate over the
budget's second half (what a longer run approaches). Each run is a subprocess of its own (clean
thread settings and compile caches per run).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

RUNS = [("eager, 1 process", {"compile": False, "processes": 1}),
        ("compiled, 1 process", {"compile": True, "processes": 1}),
        ("eager, 2 processes", {"compile": False, "processes": 2}),
        ("compiled, 2 processes", {"compile": True, "processes": 2})]


def prepare(work: Path) -> None:
    """Pairs and tokenizer, once for every run (``work/examples.pt``, ``work/tokenizer.model``)."""
    import torch
    from ibllm_agent.training import demo as D
    from ibllm_agent.training.calls import generate_calls
    from ibllm_agent.training.lm import encode_pairs
    from ibllm_agent.training.synthetic import SyntheticConfig, generate

    recipe = D.DemoRecipe()
    generate(work / "data", SyntheticConfig(seed=0, n_train=2000, n_chat=100, names_train=200))
    pairs = D.synthetic_pairs(work / "data", recipe) + D.call_pairs(generate_calls(500, 0))
    tok = D.train_tokenizer(pairs, work / "tokenizer.model", recipe.vocab_size, max_docs=4000,
                            pieces=D.description_pieces(pairs))
    examples = encode_pairs(tok, pairs, recipe.lm.max_len)
    torch.save([(e.ids, e.n_prompt) for e in examples], work / "examples.pt")


_LOG = re.compile(r"step\s+(\d+) .* ([\d,]+) tok/s\s+(\d+)s")


def _log(message: str) -> None:
    """``train_lm``'s progress line to stdout (rank 0 of a two-process run prints it too)."""
    print("LOG " + message, flush=True)


def steady_rate(lines: list[str], seconds: float) -> float:
    """Tokens/s between the first progress line past half the budget and the last one."""
    points = [(int(m[1]), float(m[2].replace(",", "")) * float(m[3]), float(m[3]))
              for m in (_LOG.search(ln) for ln in lines) if m]
    late = [p for p in points if p[2] >= seconds / 2]
    if len(late) < 2 or late[-1][2] <= late[0][2]:
        return float("nan")
    return (late[-1][1] - late[0][1]) / (late[-1][2] - late[0][2])


def child(spec: dict) -> None:
    import torch
    from ibllm_agent.training import demo as D
    from ibllm_agent.training.lm import Example, train_lm

    from ibllm_agent.model.tokenizer import SentencePieceTokenizer

    torch.set_num_threads(spec["threads"])
    work = Path(spec["work"])
    examples = [Example(tuple(ids), n) for ids, n in torch.load(work / "examples.pt", weights_only=True)]
    recipe = D.DemoRecipe()
    model = D.build_model(SentencePieceTokenizer(str(work / "tokenizer.model")), recipe)
    cfg = recipe.lm
    cfg.time_budget_s, cfg.log_every = spec["seconds"], 5
    for key, value in spec["config"].items():
        setattr(cfg, key, value)
    stats = train_lm(model, examples, cfg, log=_log)
    print("RESULT " + json.dumps({"steps": stats["steps"], "tokens_per_s": stats["tokens_per_s"]}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=240.0, help="wall-clock budget of each run")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="CPU threads in all (split between processes)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    with tempfile.TemporaryDirectory(prefix="ibllm_demo_lm_bench_") as tmp:
        work = Path(tmp)
        prepare(work)
        rows = []
        for name, config in RUNS:
            spec = {"work": str(work), "seconds": args.seconds, "threads": args.threads, "config": config}
            proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True,
                                  text=True, check=False)
            lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode or not lines:
                raise SystemExit(f"run '{name}' failed:\n{proc.stderr[-2000:]}")
            result = json.loads(lines[-1][len("RESULT "):])
            result["steady"] = steady_rate(proc.stdout.splitlines(), args.seconds)
            rows.append((name, result))
    base, base_steady = rows[0][1]["tokens_per_s"], rows[0][1]["steady"]
    print(f"demo LM stage, {args.seconds:.0f} s a run, {args.threads} threads in all")
    print(f"{'run':24s} {'steps':>6s} {'tokens/s':>9s} {'× eager':>8s} {'steady tokens/s':>16s} {'× eager':>8s}")
    for name, r in rows:
        print(f"{name:24s} {r['steps']:6d} {r['tokens_per_s']:9,.0f} {r['tokens_per_s'] / base:8.2f} "
              f"{r['steady']:16,.0f} {r['steady'] / base_steady:8.2f}")


if __name__ == "__main__":
    main()
