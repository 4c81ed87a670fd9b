"""Per-tool latency of the vision tools on CPU with the tiny random-init backends.

Run:  python benchmarks/tools.py                         # 3 timed calls per tool, 2 diffusion steps
      python benchmarks/tools.py --repeats 5 --steps 4 --size 128 --threads 1

Each tool runs through the same path as in the agent (comma-split Action Input, workspace path
resolution, model pool, new workspace file) on a generated 256x192 scene. The first call per tool
(model build + warm-up) is reported separately from the median of the timed calls. Tiny backends
measure the tools' own overhead (image I/O, pre/post-processing, pipeline plumbing), not the cost of
the real checkpoints.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

CALLS = {
    "Edge Detection On Image": "{img}",
    "Detect the Give Object": "{img}, a white square",
    "Segment the given object": "{img}, square",
    "Segment the Image": "{img}",
    "Remove Something From The Photo": "{img}, the square",
    "Replace Something From The Photo": "{img}, square, a red ball",
    "Instruct Image Using Text": "{img}, make it look like a painting",
    "Generate Image From User Input Text": "a cat on a sofa",
    "Generate Image From Any Modality": "{img}, {img2}:0.5, a beach",
    "Get Photo Description": "{img}",
    "Answer Question About The Image": "{img}, what is in the picture?",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=3, help="timed calls per tool (median reported)")
    p.add_argument("--steps", type=int, default=2, help="diffusion steps")
    p.add_argument("--size", type=int, default=64, help="diffusion canvas side (inpainting, SD, unCLIP)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--only", nargs="*", default=None, help="tool names to run (default: all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch
    from ibllm_agent.tools import ToolOptions, default_tools
    from ibllm_agent.tools.tiny import tiny_loaders
    from PIL import Image, ImageDraw

    from ibllm_agent.agent.models import ModelPool
    from ibllm_agent.agent.workspace import ThreadWorkspace
    from ibllm_agent.cli.tool import invoke_tool
    from ibllm_agent.testing import ScriptedGenerator

    if args.threads:
        torch.set_num_threads(args.threads)
    options = ToolOptions(box_threshold=0.0, text_threshold=0.0, steps=args.steps, diffusion_size=args.size,
                          unclip_size=args.size, seed=0, progress=False, sam_points_per_side=8)
    gen = ScriptedGenerator(["a white square on a dark background."], repeat_last=True)
    tools = {t.name: t for t in default_tools(generator=gen, options=options, loaders=tiny_loaders())}
    with tempfile.TemporaryDirectory() as tmp:
        ws = ThreadWorkspace(Path(tmp), "bench")
        (ws.root / "image").mkdir(parents=True)
        scene = Image.new("RGB", (256, 192), (30, 30, 30))
        ImageDraw.Draw(scene).rectangle((64, 48, 192, 144), fill=(230, 230, 230))
        scene.save(ws.root / "image/scene000.png")
        Image.new("RGB", (256, 192), (0, 90, 200)).save(ws.root / "image/blue0000.png")
        pool = ModelPool(device="cpu")
        rows = []
        for name, raw in CALLS.items():
            if args.only and name not in args.only:
                continue
            action = raw.format(img="image/scene000.png", img2="image/blue0000.png")
            t0 = time.perf_counter()
            invoke_tool(tools[name], action, ws, pool)
            first = time.perf_counter() - t0
            times = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                invoke_tool(tools[name], action, ws, pool)
                times.append(time.perf_counter() - t0)
            rows.append((name, first, statistics.median(times), min(times)))
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, diffusion steps {args.steps}, "
          f"canvas {args.size}px, scene 256x192, tiny backends (random init)")
    print(f"{'tool':<40} {'first call (s)':>15} {'median (ms)':>12} {'min (ms)':>10}")
    for name, first, med, best in rows:
        print(f"{name:<40} {first:>15.2f} {med * 1e3:>12.1f} {best * 1e3:>10.1f}")


if __name__ == "__main__":
    main()
