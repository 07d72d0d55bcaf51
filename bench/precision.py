"""The segmentation network's memory layout and arithmetic: time and what changes in the cells.

1. The network alone on one 1024 x 1024 tile (a slide's default working tile): float32 with
   the old contiguous layout, float32 channels-last (what ``load_model`` now gives a semantic
   network), bfloat16 channels-last (``--precision bf16``; the default on a CUDA GPU).
2. The bccd test fields end to end (``core.inference.segment``, auto scale) in float32 and
   in bfloat16: time per field, class-map pixels that differ, fields whose cell count
   differs, and Dice of the cell and nucleus masks against the reference for each.

3. With ``--cpu-reference N`` on a GPU: the first N fields in float32 on the CPU too (the
   reference path), and the class-map pixels the GPU's float32 and bfloat16 change.

Usage: python bench/precision.py [--fields 73] [--device cpu] [--repeats 3] [--cpu-reference 0]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else float(2 * (a & b).sum() / total)


def main() -> None:
    import torch

    from napari_wbc.core.dataset import list_pairs, load_pair
    from napari_wbc.core.device import pick_device
    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.options import Options
    from napari_wbc.models import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--fields", type=int, default=73)
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=3, help="timed passes over the tile per layout")
    p.add_argument("--cpu-reference", type=int, default=0, help="fields also segmented on the CPU")
    args = p.parse_args()
    device = pick_device(args.device)
    net, spec = load_model(device=device)
    print(
        f"model {spec.name}, device {device}, torch {torch.__version__} with {torch.get_num_threads()} "
        f"threads, {platform.processor() or platform.machine()}"
    )

    def sync():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    x = torch.randn(1, 3, 1024, 1024, device=device)
    print("\n| network alone, one 1024^2 tile | s per tile | Mpx/s |\n|---|---|---|")
    for name, layout, bf16 in (
        ("float32, contiguous (before)", torch.contiguous_format, False),
        ("float32, channels-last (now)", torch.channels_last, False),
        ("bfloat16, channels-last", torch.channels_last, True),
    ):
        net.to(memory_format=layout)
        xx = x.contiguous(memory_format=layout)
        with torch.inference_mode(), torch.autocast(torch.device(device).type, torch.bfloat16, enabled=bf16):
            net(xx)  # warm-up
            sync()
            times = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                net(xx)
                sync()
                times.append(time.perf_counter() - t)
        s = statistics.median(times)
        print(f"| {name} | {s:.3f} | {1.048576 / s:.2f} |", flush=True)
    net.to(memory_format=torch.channels_last)

    pairs = list_pairs(DATASETS / "bccd", "test")[: args.fields]
    seconds = {"fp32": [], "bf16": []}
    scores = {"fp32": [], "bf16": []}
    differ, counts_differ = [], 0
    run(segment(load_pair(pairs[0])[0], net, spec, Options(device=device)))  # warm-up
    for pair in pairs:
        image, ref = load_pair(pair)
        got = {}
        for precision in ("fp32", "bf16"):
            t = time.perf_counter()
            got[precision] = run(segment(image, net, spec, Options(device=device, precision=precision)))
            sync()
            seconds[precision].append(time.perf_counter() - t)
            c = got[precision].classes
            scores[precision].append((dice(c > 0, ref > 0), dice(c == 2, ref == 2)))
        differ.append(float(np.mean(got["fp32"].classes != got["bf16"].classes)))
        counts_differ += int(got["fp32"].cells.max() != got["bf16"].cells.max())
    print(
        f"\n{len(pairs)} bccd test fields end to end, auto scale: class-map pixels that differ "
        f"median {100 * statistics.median(differ):.3f}%, max {100 * max(differ):.3f}%; "
        f"fields whose cell count differs: {counts_differ}"
    )
    print("\n| precision | s per field (median) | Dice cell % | Dice nucleus % |\n|---|---|---|---|")
    for precision in ("fp32", "bf16"):
        d = np.mean(scores[precision], 0) * 100
        print(f"| {precision} | {statistics.median(seconds[precision]):.3f} | {d[0]:.2f} | {d[1]:.2f} |")
    if args.cpu_reference and device != "cpu":
        cpu_net, _ = load_model(device="cpu")
        changed = {"fp32": [], "bf16": []}
        for pair in pairs[: args.cpu_reference]:
            image, _ = load_pair(pair)
            ref = run(segment(image, cpu_net, spec, Options(device="cpu", precision="fp32"))).classes
            for precision in changed:
                got = run(segment(image, net, spec, Options(device=device, precision=precision))).classes
                changed[precision].append(float(np.mean(got != ref)))
        print(f"\nagainst the CPU's float32 (the reference), {len(changed['fp32'])} fields:")
        for precision, v in changed.items():
            print(
                f"  {device} {precision}: class-map pixels that differ, median {100 * np.median(v):.4f}%, "
                f"max {100 * max(v):.4f}%"
            )


if __name__ == "__main__":
    main()
