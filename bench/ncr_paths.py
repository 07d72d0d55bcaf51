"""One cell's NCR and areas through every path a user may take: a field with no pixel size,
with 0.1 and 0.07 um/px, and its copies on the sample slide (File > Open Sample > Sample
slide), tiled.

Usage: python bench/ncr_paths.py [--field PATH] [--device cpu]
Prints a Markdown table of every cell of the field (and each slide copy matched to it by
position within its field), with NCR, cell and nucleus area in px.
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd

GRID, GAP = (5, 6), 160  # the sample slide's layout (core.slide.build_sample_slide)
SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_wbc" / "sample_data" / "BloodImage_00034.jpg"


def main() -> None:
    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.io import read_image
    from napari_wbc.core.measure import measure_cells
    from napari_wbc.core.options import Options
    from napari_wbc.core.slide import build_sample_slide
    from napari_wbc.core.wholeslide import segment_slide
    from napari_wbc.models import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--field", default=str(SAMPLE))
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    net, spec = load_model(device=args.device)
    options = Options(device=args.device)
    image = read_image(args.field).data
    rows = []
    for px in (None, 0.1, 0.07):
        result = run(segment(image, net, spec, replace(options, pixel_size=px)))
        table = measure_cells(result.cells, result.nuclei)
        rows += [
            {"path": f"field, pixel size {px or 'none'}", "scale": round(result.scale, 3), **r}
            for r in table.to_dict("records")
        ]
    field = pd.DataFrame(rows)
    with tempfile.TemporaryDirectory() as tmp:
        slide = build_sample_slide(Path(tmp) / "sample.ome.tif", grid=GRID, gap=GAP)
        result = run(segment_slide(slide, Path(tmp) / "out", net, spec, options))
        copies = pd.read_csv(result.table)
    h, w = image.shape[:2]
    fields = sorted(SAMPLE.parent.glob("*.jpg"))
    mine = fields.index(Path(args.field)) if Path(args.field) in fields else None
    print("| path | network scale | cell (field centroid y, x) | NCR | cell px | nucleus px |")
    print("|---|---|---|---|---|---|")
    first = field[field["path"] == field["path"].iloc[0]]
    for _, cell in first.iterrows():
        where = f"{cell['centroid_y']:.0f}, {cell['centroid_x']:.0f}"
        for _, r in field[
            np.hypot(field["centroid_y"] - cell["centroid_y"], field["centroid_x"] - cell["centroid_x"]) < 5
        ].iterrows():
            print(
                f"| {r['path']} | {r['scale']} | {where} | {r['ncr']:.3f} | {r['cell_area_px']} "
                f"| {r['nucleus_area_px']} |"
            )
        # its copies on the slide: field n of the grid is fields[n % 2], flipped by (n // 2) % 4
        # (core.slide.build_mosaic_slide); the cell nearest where the copy's centroid falls
        found = []
        for n in range(GRID[0] * GRID[1]) if mine is not None else []:
            if n % len(fields) != mine:
                continue
            i, j, turn = n // GRID[1], n % GRID[1], (n // len(fields)) % 4
            y = GAP + i * (h + GAP) + (h - 1 - cell["centroid_y"] if turn & 1 else cell["centroid_y"])
            x = GAP + j * (w + GAP) + (w - 1 - cell["centroid_x"] if turn & 2 else cell["centroid_x"])
            d = np.hypot(copies["centroid_y"] - y, copies["centroid_x"] - x)
            if d.min() < 10:
                found.append(copies.loc[d.idxmin()])
        near = pd.DataFrame(found)
        ncr = near["ncr"].to_numpy() if len(near) else []
        if len(ncr):
            areas = f"{near['cell_area_px'].min()}-{near['cell_area_px'].max()}"
            nuclei = f"{near['nucleus_area_px'].min()}-{near['nucleus_area_px'].max()}"
            print(
                f"| sample slide, {len(ncr)} copies (flipped fields) | {result.scale:.3f} | {where} "
                f"| {ncr.min():.3f}-{ncr.max():.3f} | {areas} | {nuclei} |"
            )
    print(f"\nfield {args.field} ({w}x{h} px)")


if __name__ == "__main__":
    main()
