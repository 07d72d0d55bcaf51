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
from pathlib import Path

import numpy as np
import pandas as pd

SAMPLE = Path(__file__).resolve().parents[1] / "src" / "napari_wbc" / "sample_data" / "BloodImage_00034.jpg"


def main() -> None:
    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.io import read_image
    from napari_wbc.core.measure import measure_cells
    from napari_wbc.core.slide import build_sample_slide
    from napari_wbc.core.wholeslide import segment_slide
    from napari_wbc.models import load_model

    p = argparse.ArgumentParser()
    p.add_argument("--field", default=str(SAMPLE))
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    net, spec = load_model(device=args.device)
    image = read_image(args.field).data
    rows = []
    for px in (None, 0.1, 0.07):
        result = run(segment(image, net, spec, args.device, px))
        table = measure_cells(result.cells, result.nuclei)
        rows += [{"path": f"field, pixel size {px or 'none'}", "scale": round(result.scale, 3), **r}
                 for r in table.to_dict("records")]
    field = pd.DataFrame(rows)
    with tempfile.TemporaryDirectory() as tmp:
        slide = build_sample_slide(Path(tmp) / "sample.ome.tif")
        result = run(segment_slide(slide, Path(tmp) / "out", net, spec, device=args.device))
        copies = pd.read_csv(result.table)
    h, w = image.shape[:2]
    print("| path | network scale | cell (field centroid y, x) | NCR | cell px | nucleus px |")
    print("|---|---|---|---|---|---|")
    first = field[field["path"] == field["path"].iloc[0]]
    for _, cell in first.iterrows():
        where = f"{cell['centroid_y']:.0f}, {cell['centroid_x']:.0f}"
        for _, r in field[np.hypot(field["centroid_y"] - cell["centroid_y"],
                                   field["centroid_x"] - cell["centroid_x"]) < 5].iterrows():
            print(f"| {r['path']} | {r['scale']} | {where} | {r['ncr']:.3f} | {r['cell_area_px']} "
                  f"| {r['nucleus_area_px']} |")
        # slide copies: the cells of about the same area (within 20%)
        near = copies[(copies["cell_area_px"] - cell["cell_area_px"]).abs() < 0.2 * cell["cell_area_px"]]
        ncr = near["ncr"].to_numpy()
        if len(ncr):
            areas = f"{near['cell_area_px'].min()}-{near['cell_area_px'].max()}"
            nuclei = f"{near['nucleus_area_px'].min()}-{near['nucleus_area_px'].max()}"
            print(f"| sample slide, {len(ncr)} copies (flipped fields) | {result.scale:.3f} | {where} "
                  f"| {ncr.min():.3f}-{ncr.max():.3f} | {areas} | {nuclei} |")
    print(f"\nfield {args.field} ({w}x{h} px)")


if __name__ == "__main__":
    main()
