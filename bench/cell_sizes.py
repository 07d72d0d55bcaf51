"""How big each white-cell type is, and what of that the cell-type classifier is told.

Per dataset and type: the equivalent diameter (px) of the reference cells in fields that
hold one white cell (a dataset's fields share one magnification, so within a dataset px
compare), and, from a classifier run's examples, the size cue the classifier gets
(``core.celltypes.size_cue``: the cell's width in its field's red-cell diameters,
``core.ruler``) and the share of cells whose field has that ruler. For bccd, the ruler
against the red cells' VOC boxes (those not cut by the frame; the boxes are drawn loosely).

Usage: python bench/cell_sizes.py [RUN_OUT]   (RUN_OUT: a ``napari-wbc train --model celltype``
       output folder with examples_train.npz; without it, the diameters and the bccd ruler only)
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
    print(
        "| dataset | type | cells | diameter px, median (IQR) | fields with a ruler % "
        "| width in red cells, median (IQR) |"
    )
    print("|---|---|---|---|---|---|")
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
            c = np.array(cues.get((name, kind), [])).reshape(-1, 2)
            known = np.exp(c[c[:, 1] > 0, 0])
            share = f"{100 * len(known) / len(c):.0f}" if len(c) else "–"
            cue = (
                f"{np.median(known):.2f} ({np.percentile(known, 25):.2f}-{np.percentile(known, 75):.2f})"
                if len(known)
                else "–"
            )
            q = np.percentile(w, [25, 75])
            diameter = f"{np.median(w):.0f} ({q[0]:.0f}-{q[1]:.0f})"
            print(f"| {name} | {kind} | {len(w)} | {diameter} | {share} | {cue} |")
    bccd_ruler()


def bccd_ruler() -> None:
    from napari_wbc.core.celltype_data import red_cell_box_sides
    from napari_wbc.core.dataset import list_pairs, load_pair
    from napari_wbc.core.ruler import red_cell_diameter

    root, ratios, fields = DATASETS / "bccd", [], 0
    for pair in list_pairs(root, "test"):
        image, label = load_pair(pair)
        boxes = red_cell_box_sides(root, pair.stem, label.shape)
        fields += 1
        got = red_cell_diameter(image, label > 0)
        if got is not None and len(boxes) >= 4:
            ratios.append(got / np.median(boxes))
    q = np.percentile(ratios, [25, 75])
    print(
        f"\nbccd test: a ruler on {len(ratios)} of {fields} fields; ruler / median red-cell box "
        f"{np.median(ratios):.2f} (IQR {q[0]:.2f}-{q[1]:.2f})"
    )


if __name__ == "__main__":
    main()
