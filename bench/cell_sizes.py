"""How big each white-cell type is, and what of that the cell-type classifier is told.

Per dataset and type: the equivalent diameter (px) of the reference cells in fields that
hold one white cell (a dataset's fields share one magnification, so within a dataset px
compare), and, from a classifier run's examples, the size cue the classifier gets
(``core.celltypes.size_cue``: the cell's width at the segmenter's working scale, which
auto-scale sets from the field's own white cells).

Usage: python bench/cell_sizes.py [RUN_OUT]   (RUN_OUT: a ``napari-wbc train --model celltype``
       output folder with examples_train.npz; without it, the diameters only)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def main() -> None:
    from scipy import ndimage

    from napari_wbc.core.dataset import CELL_TYPES, image_cell_types, list_pairs, load_pair

    p = argparse.ArgumentParser()
    p.add_argument("run", nargs="?", type=Path, default=None)
    args = p.parse_args()
    cues: dict = {}
    if args.run is not None:
        with np.load(args.run / "examples_train.npz") as z:
            for target, source, size in zip(z["target"], z["source"], z["size"], strict=True):
                if target < len(CELL_TYPES) and ":ref:" in source:
                    cues.setdefault((source.split("/")[0], CELL_TYPES[target]), []).append(size)
    print("| dataset | type | cells | diameter px, median (IQR) | size cue, median (IQR) |")
    print("|---|---|---|---|---|")
    for name in ("zheng_d1", "zheng_d2", "bccd"):
        types = image_cell_types(DATASETS / name)
        widths: dict[str, list[float]] = {}
        for split in ("train", "val", "test"):
            for pair in list_pairs(DATASETS / name, split):
                if pair.stem not in types:
                    continue
                _, label = load_pair(pair)
                regions, n = ndimage.label(label > 0)
                if n == 1:
                    widths.setdefault(types[pair.stem], []).append(2 * np.sqrt((regions == 1).sum() / np.pi))
        for kind in CELL_TYPES:
            w = np.array(widths.get(kind, []))
            if not len(w):
                continue
            c = np.array(cues.get((name, kind), []))
            cue = (
                f"{np.median(c):.2f} ({np.percentile(c, 25):.2f}-{np.percentile(c, 75):.2f})"
                if len(c)
                else "–"
            )
            q = np.percentile(w, [25, 75])
            print(f"| {name} | {kind} | {len(w)} | {np.median(w):.0f} ({q[0]:.0f}-{q[1]:.0f}) | {cue} |")


if __name__ == "__main__":
    main()
