"""Preprocessing throughput per modality on the golden media (``../shared/golden/media``).

Run:  python benchmarks/preprocess.py                      # shared/ beside the checkout
      python benchmarks/preprocess.py --shared /path/to/shared --repeats 5 --threads 2

For every modality, each file is loaded once to warm up (imports, tokenizer vocab), then the whole
set is loaded ``--repeats`` times with ``ibllm_agent.media.load``; the median pass gives items/s.
Image/audio/video/point/text use the golden files (text: the golden captions). Depth, thermal and
IMU have no golden media, so they run on synthetic in-memory inputs of typical sizes (marked).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ibllm_agent import media
from ibllm_agent.media.formats import extension_modality


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_shared = Path(os.environ.get("IBLLM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=default_shared, help="the shared/ folder (default: ../shared)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per modality (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--only", nargs="*", default=None, help="modalities to run (default: all)")
    return p.parse_args(argv)


def synthetic_inputs() -> dict[str, list]:
    """Typical-size inputs for the modalities without golden media (encoded in memory)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    depth = io.BytesIO()
    Image.fromarray(rng.integers(300, 8000, (480, 640), dtype=np.uint16)).save(depth, "PNG")  # mm
    thermal = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (512, 640), dtype=np.uint8)).save(thermal, "PNG")
    imu = rng.normal(size=(2000, 6)).astype(np.float32)
    return {"depth": [depth.getvalue()], "thermal": [thermal.getvalue()], "imu": [imu]}


def collect(shared: Path) -> dict[str, tuple[list, str]]:
    golden = shared / "golden"
    if not golden.is_dir():
        raise SystemExit(f"golden data not found under {shared} (pass --shared)")
    sets: dict[str, tuple[list, str]] = {}
    for path in sorted((golden / "media").iterdir()):
        modality = extension_modality(path)
        if modality in ("image", "audio", "video", "point"):
            sets.setdefault(modality, ([], "golden"))[0].append(path)
    index = json.loads((golden / "index.json").read_text())
    sets["text"] = ([v["text"] for v in index.values() if "text" in v], "golden")
    for modality, items in synthetic_inputs().items():
        sets[modality] = (items, "synthetic")
    return sets


def bench(items: list, modality: str, repeats: int) -> float:
    """Median seconds for one pass over ``items``."""
    for item in items:
        media.load(item, modality)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            media.load(item, modality)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    sets = collect(args.shared)
    order = [m for m in ("image", "audio", "video", "text", "point", "depth", "thermal", "imu") if m in sets]
    if args.only:
        order = [m for m in order if m in args.only]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, repeats {args.repeats} (median pass)")
    print(f"{'modality':<9} {'items':>5} {'ms/item':>9} {'items/s':>9}  data")
    print("-" * 46)
    for modality in order:
        items, origin = sets[modality]
        seconds = bench(items, modality, args.repeats)
        per_item = seconds / len(items)
        print(f"{modality:<9} {len(items):>5} {per_item * 1e3:>9.2f} {1.0 / per_item:>9.1f}  {origin}")


if __name__ == "__main__":
    main()
