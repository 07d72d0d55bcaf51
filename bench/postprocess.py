"""Whole-image versus object-local post-processing (class map -> cells and nuclei, issue #13).

Times ``tests/postprocess_reference.py`` (today's whole-image code, verbatim) against
``core.postprocess.instances_from_classes`` (object-local) on bccd *test* label maps:

bccd 1x      the 73 fields as they are (cells ~100 px across: the network's working scale)
bccd 2x      the same upscaled 2x (nearest), with ``cell_diameter=200``
sparse       a ``--size`` px square of background holding 9 fields' labels, spread out (a
             slide's tiles: white cells cover well under 1% of the area)
dense        3x3 fields side by side (cells on the border and across the seams)

Both must give identical labels (checked); one run each, so the timings are noisy.
Prints a Markdown table: megapixels of class map per second, and the speed-up.

Usage: python bench/postprocess.py [--size 8192] [--only "bccd 1x" sparse]
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
sys.path.insert(0, str(ROOT / "tests"))


def bccd_test_labels() -> list[np.ndarray]:
    from PIL import Image

    with open(DATASETS / "bccd" / "split.csv") as f:
        stems = [r["stem"] for r in csv.DictReader(f) if r["split"] == "test"]
    return [np.asarray(Image.open(DATASETS / "bccd" / "labels" / f"{s}.png")) for s in stems]


def cases(size: int) -> dict[str, tuple[list[np.ndarray], float | None]]:
    maps = bccd_test_labels()
    h, w = maps[0].shape
    sparse = np.zeros((size, size), np.uint8)
    for k, m in enumerate(maps[:9]):
        r, c = divmod(k, 3)
        y, x = (2 * r + 1) * size // 6 - h // 2, (2 * c + 1) * size // 6 - w // 2
        sparse[y : y + h, x : x + w] = m
    dense = np.block([[maps[3 * r + c] for c in range(3)] for r in range(3)])
    return {
        "bccd 1x": (maps, None),
        "bccd 2x": ([np.kron(m, np.ones((2, 2), np.uint8)) for m in maps], 200.0),
        "sparse": ([sparse], None),
        "dense": ([dense], None),
    }


def timed(fn, maps, diameter):
    t0 = time.perf_counter()
    out = [fn(m, cell_diameter=diameter) for m in maps]
    return time.perf_counter() - t0, out


def main() -> None:
    import postprocess_reference as reference

    from napari_wbc.core.postprocess import instances_from_classes

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=8192, help="side of the sparse image (px)")
    ap.add_argument("--only", nargs="+", help="cases to run (default: all)")
    args = ap.parse_args()
    rows = []
    instances_from_classes(np.zeros((64, 64), np.uint8))  # imports
    reference.instances_from_classes(np.zeros((64, 64), np.uint8))
    for name, (maps, diameter) in cases(args.size).items():
        if args.only and name not in args.only:
            continue
        mpx = sum(m.size for m in maps) / 1e6
        fg = sum(np.count_nonzero(m) for m in maps) / 1e6
        t_local, local = timed(instances_from_classes, maps, diameter)
        t_whole, whole = timed(reference.instances_from_classes, maps, diameter)
        same = all(
            np.array_equal(a, b)
            for lw, ww in zip(local, whole, strict=True)
            for a, b in zip(lw, ww, strict=True)
        )
        cells = sum(int(c.max()) for c, _ in local)
        shape = "x".join(map(str, maps[0].shape[::-1]))
        rows.append(
            f"| {name} | {len(maps)} x {shape} | {100 * fg / mpx:.2f}% | {cells} | {mpx / t_whole:.1f} | "
            f"{mpx / t_local:.1f} | {t_whole / t_local:.1f}x | {'yes' if same else 'NO'} |"
        )
        print(rows[-1], file=sys.stderr, flush=True)
    print(
        "| case | maps (W x H) | white-cell area | cells | whole-image Mpx/s | object-local Mpx/s "
        "| speed-up | identical |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
