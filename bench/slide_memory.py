"""Peak memory of a tiled whole-slide run as the slide grows: it should stay flat.

For each size, a child process builds a synthetic slide (a pyramidal OME-TIFF written tile
by tile) from real bccd smear fields with strips of empty glass between them, segments it
with the shipped model through ``core.wholeslide.segment_slide``, and reports its own
peak RSS, the time for each step, and the counts. Each size runs in a fresh process so
that peaks do not mix.

Usage: python bench/slide_memory.py [--sizes 2048 4096] [--tile 512] [--gap 1280] [--device cpu]
       python bench/slide_memory.py --sizes 50000   # a real slide's size: hours on a CPU
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def one_size(size: int, tile: int, gap: int, device: str, fields: int) -> dict:
    import resource

    from napari_wbc.core.dataset import list_pairs
    from napari_wbc.core.device import pick_device
    from napari_wbc.core.inference import run
    from napari_wbc.core.io import read_image
    from napari_wbc.core.slide import build_mosaic_slide
    from napari_wbc.core.wholeslide import segment_slide
    from napari_wbc.models import load_model

    device = pick_device(device)
    net, spec = load_model(device=device)
    images = [read_image(p.image).data for p in list_pairs(DATASETS / "bccd", "test")[:fields]]
    rows, cols = max(1, round((size + gap) / (480 + gap))), max(1, round((size + gap) / (640 + gap)))
    with tempfile.TemporaryDirectory(prefix="slide-bench-") as tmp:
        t0 = time.perf_counter()
        path = build_mosaic_slide(Path(tmp) / "slide.ome.tif", images, grid=(rows, cols), gap=gap,
                                  pixel_size=spec.pixel_size)
        t1 = time.perf_counter()
        after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = run(segment_slide(path, Path(tmp) / "out", net, spec, tile=tile, device=device))
        t2 = time.perf_counter()
        from napari_wbc.core.slide import open_slide

        with open_slide(path) as slide:
            shape = slide.shape
    return {"slide_px": f"{shape[1]}x{shape[0]}", "megapixels": round(shape[0] * shape[1] / 1e6, 1),
            "build_s": round(t1 - t0, 1), "segment_s": round(t2 - t1, 1), "tiles": result.tiles,
            "skipped": result.skipped, "cells": result.counts["white_cells"],
            "peak_rss_build_mb": round(after_build),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", type=int, nargs="+", default=[2048, 4096])
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--gap", type=int, default=1280, help="px of empty glass between fields")
    p.add_argument("--fields", type=int, default=12, help="distinct bccd test fields to repeat")
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(one_size(args.child, args.tile, args.gap, args.device, args.fields)))
        return
    rows = []
    for size in args.sizes:
        cmd = [sys.executable, __file__, "--child", str(size), "--tile", str(args.tile),
               "--gap", str(args.gap), "--fields", str(args.fields), "--device", args.device]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
        print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")


if __name__ == "__main__":
    main()
