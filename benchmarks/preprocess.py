"""Preprocessing throughput per modality on the golden media (``../shared/golden/media``).

Run:  python benchmarks/preprocess.py                      # shared/ beside the checkout
      python benchmarks/preprocess.py --shared /path/to/shared --repeats 5 --threads 2
      python benchmarks/preprocess.py --only image --batch 16  # just the image comparison

Images first, side by side with the reference loader (``benchmarks/reference_loaders.py``: ImageBind's
``load_and_transform_vision_data``, re-implemented): one image at a time (``media.load`` vs the
reference on a one-path list) and a batch (``media.load_batch`` vs the reference on the list), with
the outputs checked equal. Then every modality of ours alone:

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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_loaders.py beside this file

from PIL import Image

from ibllm_agent import media
from ibllm_agent.media.formats import extension_modality


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    default_shared = Path(os.environ.get("IBLLM_SHARED", Path(__file__).resolve().parents[2] / "shared"))
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shared", type=Path, default=default_shared, help="the shared/ folder (default: ../shared)")
    p.add_argument("--repeats", type=int, default=3, help="timed passes per modality (median reported)")
    p.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0 = leave as is)")
    p.add_argument("--only", nargs="*", default=None, help="modalities to run (default: all)")
    p.add_argument("--batch", type=int, default=16, help="images per batch in the image comparison")
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


def _median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compare_images(paths: list[Path], batch: int, repeats: int) -> None:
    """ours vs the reference loader: per image, and on a batch (golden images repeated)."""
    import torch

    from reference_loaders import load_and_transform_vision_data

    batch_paths = [paths[i % len(paths)] for i in range(batch)]
    ours, ref = media.load_batch(batch_paths, "image"), load_and_transform_vision_data(batch_paths)
    if not torch.equal(ours, ref):
        raise SystemExit(f"outputs differ from the reference (max abs {float((ours - ref).abs().max()):.3g})")
    print(f"image: ours vs reference loader, outputs bit-identical; {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'':<24} {'ours ms/img':>12} {'ref ms/img':>11} {'speed-up':>9}")
    for path in paths:
        with Image.open(path) as im:
            size = "x".join(map(str, im.size))
        t_ours = _median_seconds(lambda: media.load(path, "image"), repeats)
        t_ref = _median_seconds(lambda: load_and_transform_vision_data([path]), repeats)
        print(f"{'1 x ' + path.name + ' ' + size:<24.24} {t_ours * 1e3:>12.2f} {t_ref * 1e3:>11.2f} {t_ref / t_ours:>8.2f}x")
    t_ours = _median_seconds(lambda: media.load_batch(batch_paths, "image"), repeats)
    t_ref = _median_seconds(lambda: load_and_transform_vision_data(batch_paths), repeats)
    print(f"{f'batch of {batch}':<24} {t_ours * 1e3 / batch:>12.2f} {t_ref * 1e3 / batch:>11.2f} "
          f"{t_ref / t_ours:>8.2f}x")
    print()


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
    if "image" in order:
        compare_images(sets["image"][0], args.batch, args.repeats)
    print(f"{'modality':<9} {'items':>5} {'ms/item':>9} {'items/s':>9}  data")
    print("-" * 46)
    for modality in order:
        items, origin = sets[modality]
        seconds = bench(items, modality, args.repeats)
        per_item = seconds / len(items)
        print(f"{modality:<9} {len(items):>5} {per_item * 1e3:>9.2f} {1.0 / per_item:>9.1f}  {origin}")


if __name__ == "__main__":
    main()
