"""Peak memory of a tiled whole-slide run at 10,000 and 50,000 px a side: it should not grow.

Default layout ("sparse"): both slides are bare glass with the same nine bccd *test*
fields, each centred in a tile of the engine's default grid (1024 px). Both slides thus
hold the same cells and make the network do the same work; only the area, the number of
tiles skipped at low resolution and the size of the results differ. Each slide is
written tile by tile (``bench/synthetic_slides.py``) in one child process and segmented
with the shipped model through ``core.wholeslide.segment_slide`` in another, so each peak
(VmHWM, the process's own high-water mark) is that step's alone.

``--format png`` writes the sparse slide as one PNG instead: a plain image file bigger than
``core.slide.SLIDE_PIXELS`` goes through the same tiled engine (decoded whole, once, then
read tile by tile), so its peak is the decoded image plus one tile's work.

The "mosaic" layout is the earlier benchmark: bccd fields on a grid with strips of glass.

Usage: python bench/slide_memory.py [--sizes 10000 50000] [--per-side 3] [--device cpu]
       python bench/slide_memory.py --format png --sizes 9000
       python bench/slide_memory.py --layout mosaic --sizes 2560 4480 --tile 512
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
    from napari_wbc.core.options import Options
    from napari_wbc.core.slide import build_mosaic_slide
    from napari_wbc.core.wholeslide import segment_slide
    from napari_wbc.models import load_model

    device = pick_device(device)
    net, spec = load_model(device=device)
    images = [read_image(p.image).data for p in list_pairs(DATASETS / "bccd", "test")[:fields]]
    rows, cols = max(1, round((size + gap) / (480 + gap))), max(1, round((size + gap) / (640 + gap)))
    with tempfile.TemporaryDirectory(prefix="slide-bench-") as tmp:
        t0 = time.perf_counter()
        path = build_mosaic_slide(
            Path(tmp) / "slide.ome.tif", images, grid=(rows, cols), gap=gap, pixel_size=spec.pixel_size
        )
        t1 = time.perf_counter()
        after_build = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = run(segment_slide(path, Path(tmp) / "out", net, spec, Options(device=device, tile=tile)))
        t2 = time.perf_counter()
        from napari_wbc.core.slide import open_slide

        with open_slide(path) as slide:
            shape = slide.shape
    return {
        "slide_px": f"{shape[1]}x{shape[0]}",
        "megapixels": round(shape[0] * shape[1] / 1e6, 1),
        "build_s": round(t1 - t0, 1),
        "segment_s": round(t2 - t1, 1),
        "tiles": result.tiles,
        "skipped": result.skipped,
        "cells": result.counts["white_cells"],
        "peak_rss_build_mb": round(after_build),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }


def peak_mb() -> int:
    """This process's own peak RSS (VmHWM), in MB."""
    line = next(x for x in open("/proc/self/status") if x.startswith("VmHWM"))
    return int(line.split()[1]) // 1024


def sparse_name(size: int, fmt: str) -> str:
    return f"sparse{size}." + {"tiff": "ome.tif", "png": "png"}[fmt]


def build_sparse(size: int, per_side: int, folder: Path, fmt: str = "tiff") -> dict:
    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic_slides import bccd_fields, tile_centred_slide

    images = [image for image, _ in bccd_fields("test", per_side * per_side)]
    t0 = time.perf_counter()
    slide = tile_centred_slide(size, images, per_side=per_side)
    if fmt == "png":  # one plain image file, written whole (what a camera or an export gives)
        from PIL import Image

        path = folder / sparse_name(size, fmt)
        Image.fromarray(slide.region(0, 0, size, size)).save(path, compress_level=1)
    else:
        path = slide.write(folder / sparse_name(size, fmt))
    return {
        "build_s": round(time.perf_counter() - t0, 1),
        "file_mb": round(path.stat().st_size / 2**20, 1),
        "peak_rss_build_mb": peak_mb(),
    }


def segment_sparse(size: int, folder: Path, device: str, tile: int | None, fmt: str = "tiff") -> dict:
    import pandas as pd

    from napari_wbc.core.device import pick_device
    from napari_wbc.core.inference import run
    from napari_wbc.core.options import Options
    from napari_wbc.core.wholeslide import segment_slide
    from napari_wbc.models import load_model

    device = pick_device(device)
    net, spec = load_model(device=device)
    before = peak_mb()
    t0 = time.perf_counter()
    options = Options(device=device, tile=tile)
    result = run(segment_slide(folder / sparse_name(size, fmt), folder / f"out{size}", net, spec, options))
    seconds = time.perf_counter() - t0
    table = pd.read_csv(result.table)
    return {
        "slide_px": f"{size}x{size}",
        "megapixels": round(size * size / 1e6),
        "tiles": result.tiles,
        "skipped": result.skipped,
        "classified": result.tiles - result.skipped,
        "cells": result.counts["white_cells"],
        "cell_px": int(table["cell_area_px"].sum()),
        "segment_s": round(seconds, 1),
        "peak_rss_model_loaded_mb": before,
        "peak_rss_mb": peak_mb(),
    }


def child(args) -> None:
    if args.layout == "mosaic":
        print(json.dumps(one_size(args.child, args.tile or 512, args.gap, args.device, args.fields)))
    elif args.step == "build":
        print(json.dumps(build_sparse(args.child, args.per_side, Path(args.folder), args.format)))
    else:
        print(json.dumps(segment_sparse(args.child, Path(args.folder), args.device, args.tile, args.format)))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--layout", choices=["sparse", "mosaic"], default="sparse")
    p.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=None,
        help="slide sides, px (default: 10000 50000; mosaic: 2048 4096)",
    )
    p.add_argument("--tile", type=int, default=None, help="tile side (default: the engine's; mosaic: 512)")
    p.add_argument("--per-side", type=int, default=3, help="sparse: fields per side (3: nine fields)")
    p.add_argument("--gap", type=int, default=1280, help="mosaic: px of empty glass between fields")
    p.add_argument("--fields", type=int, default=12, help="mosaic: distinct bccd test fields to repeat")
    p.add_argument(
        "--format",
        choices=["tiff", "png"],
        default="tiff",
        help="sparse: a pyramidal OME-TIFF, or one PNG (read whole, then tiled like a slide)",
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--step", default=None, help=argparse.SUPPRESS)
    p.add_argument("--folder", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args)
        return
    sizes = args.sizes or ([10000, 50000] if args.layout == "sparse" else [2048, 4096])
    rows = []

    def run_child(size: int, *extra: str) -> dict:
        cmd = [
            sys.executable,
            __file__,
            "--child",
            str(size),
            "--layout",
            args.layout,
            "--gap",
            str(args.gap),
            "--fields",
            str(args.fields),
            "--per-side",
            str(args.per_side),
            "--device",
            args.device,
            "--format",
            args.format,
            *(["--tile", str(args.tile)] if args.tile else []),
            *extra,
        ]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        return json.loads(out.strip().splitlines()[-1])

    for size in sizes:
        if args.layout == "mosaic":
            rows.append(run_child(size))
        else:
            with tempfile.TemporaryDirectory(prefix="slide-memory-") as tmp:
                built = run_child(size, "--step", "build", "--folder", tmp)
                rows.append({**run_child(size, "--step", "segment", "--folder", tmp), **built})
        print(json.dumps(rows[-1]), flush=True)
    keys = list(rows[0])
    print("\n| " + " | ".join(keys) + " |\n|" + "---|" * len(keys))
    for row in rows:
        print("| " + " | ".join(str(row[k]) for k in keys) + " |")
    if len(rows) > 1 and "peak_rss_mb" in rows[0]:
        ratio = rows[-1]["peak_rss_mb"] / rows[0]["peak_rss_mb"]
        print(f"\npeak RSS {sizes[-1]} px / {sizes[0]} px: {ratio:.3f}")


if __name__ == "__main__":
    main()
