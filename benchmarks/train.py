"""Training benchmark on the tiny preset: every stage's throughput and peak memory, and stage-1 step time
with precomputed features vs encoding every image on every step (the reference's way), side by side.

    python benchmarks/train.py                 # CPU here; on a GPU the same recipes run in bf16
    python benchmarks/train.py --steps 20 --batch-size 8

Each measurement runs in its own subprocess so peak memory (CUDA: max allocated; CPU: peak RSS, which
includes the Python/torch runtime) belongs to that stage alone. tokens/s counts every input token (prompt
+ answer) over the training steps only (data loading, encoding, forward/backward, optimizer; not setup,
checkpoints or export).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the synthetic data makers shared with the tests


def make_data(root: Path) -> dict[str, Path]:
    from training_fixtures import make_alpaca, make_caption_tsv, make_images

    tsv = make_caption_tsv(root)
    alpaca = make_alpaca(root, n=10)
    images = make_images(root / "images")
    base = (REPO / "prompts" / "gpt4tools_train_prefix.txt").read_text()
    tools = [{"instruction": f"{base}\nHuman: Provide an image named images/{c}.png. Description: a {c} square. "
                             "Understand the image using tools.\nAI: Received.\n\nNew input: What color is it?\n",
              "input": "", "output": f"Thought: Do I need to use a tool? No\nAI: It is {c}."} for c in images]
    chat = [{"image": f"images/{c}.png", "conversations": [
        {"from": "human", "value": "<image>\nWhat is this?"}, {"from": "gpt", "value": f"A {c} square."},
        {"from": "human", "value": "Which color?"}, {"from": "gpt", "value": f"{c.capitalize()}."}]} for c in images]
    (root / "tools.json").write_text(json.dumps(tools))
    (root / "chat.json").write_text(json.dumps(chat))
    return {"tsv": tsv, "alpaca": alpaca, "tools": root / "tools.json", "chat": root / "chat.json", "root": root}


def child(spec: dict) -> None:
    """One measurement (in a subprocess): prints a JSON line."""
    import resource

    import torch
    from ibllm_agent.training import run

    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    r = run(spec["stage"], f"tiny_{spec['stage']}.yaml", **spec["overrides"])
    if torch.cuda.is_available():
        peak = torch.cuda.max_memory_allocated() / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps({"steps": r.steps, "tokens": r.tokens, "seconds": r.train_seconds,
                                  "peak_mib": peak, "examples": r.data.examples}))


def measure(spec: dict) -> dict:
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, __file__, "--child", json.dumps(spec)], capture_output=True, text=True,
                          env=env, cwd=REPO, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise SystemExit(f"measurement {spec['name']} failed:\n{proc.stderr[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workdir", type=Path, default=None)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads per run (default: torch's; 1 is fastest for the tiny model on shared cores)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(json.loads(args.child))
        return
    work = args.workdir or Path(tempfile.mkdtemp(prefix="ibllm_train_bench_"))
    data = make_data(work)
    from ibllm_agent.training import load_config
    from ibllm_agent.training.features import encode_data

    feats = work / "features"
    for key in ("tsv", "chat"):
        rep = encode_data(load_config(None, "tiny_pretrain.yaml",
                                      {"data": [str(data[key])], "features": str(feats), "progress": False}))
        print(f"encode step ({key}): {rep.summary()}")
    common = {"batch_size": args.batch_size, "max_steps": args.steps, "epochs": 100.0, "export": False,
              "resume": "never", "save_every": 10**6, "check_pretrained": False}
    specs = [
        {"name": "pretrain (features)", "stage": "pretrain",
         "overrides": {"data": [str(data["tsv"])], "features": str(feats)}},
        {"name": "pretrain (encode/step)", "stage": "pretrain", "overrides": {"data": [str(data["tsv"])]}},
        {"name": "finetune (alpaca)", "stage": "finetune", "overrides": {"data": [str(data["alpaca"])]}},
        {"name": "tools (gpt4tools)", "stage": "tools",
         "overrides": {"data": [str(data["tools"])], "image_root": str(data["root"]), "max_words": 1024}},
        {"name": "chat (llava, features)", "stage": "chat",
         "overrides": {"data": [str(data["chat"])], "features": str(feats)}},
    ]
    rows = []
    for spec in specs:
        spec["threads"] = args.threads
        spec["overrides"] = {**common, **spec["overrides"], "output_dir": str(work / "runs" / spec["name"].split()[0])}
        res = measure(spec)
        rows.append((spec["name"], res))
    import torch

    where = "cuda bf16" if torch.cuda.is_available() else f"cpu fp32, {args.threads or torch.get_num_threads()} thread(s)"
    print(f"\ntiny preset, {args.steps} steps x batch {args.batch_size} ({where})")
    print(f"{'stage':<26}{'tokens/s':>10}{'step ms':>10}{'peak MiB':>10}")
    for name, r in rows:
        print(f"{name:<26}{r['tokens'] / r['seconds']:>10.0f}{1000 * r['seconds'] / r['steps']:>10.1f}"
              f"{r['peak_mib']:>10.0f}")
    pre = dict(rows)
    a, b = pre["pretrain (features)"], pre["pretrain (encode/step)"]
    fa, fb = a["seconds"] / a["steps"], b["seconds"] / b["steps"]
    print(f"\nstage-1 step time: precomputed features {1000 * fa:.1f} ms | encoding every step {1000 * fb:.1f} ms "
          f"| {fb / fa:.1f}x (tiny ImageBind; ImageBind-huge widens the gap)")


if __name__ == "__main__":
    main()
