"""Which tiles the slide engine skips at low resolution, and how safe that is.

The engine looks at each tile (core plus halo) at about ``LOOK_CELL_PX`` px per typical white
cell and skips it when :func:`napari_wbc.core.tiling.nucleus_size` (the equivalent diameter of
the nucleus stain in a window of 0.7 cell widths, in typical cell widths) is below
``MIN_NUCLEUS``. This checks that rule on data:

white cells  every field of zheng_d1, zheng_d2 and bccd (all splits), looked at as the engine
             would look at it as a slide: the scale it would choose (``scale_for_cells`` of the
             cells' width, from the ground-truth class map: within a few % of the network's),
             read from a single level (block means) and from a 2x pyramid, at two block
             phases; the field's score is the smallest of the four. Also every white cell
             alone: cut out onto its field's own glass colour (a lone cell in a tile), and
             cells cut by the field's edge (a tile at the slide's edge).
no white cell quarters of bccd fields (all splits) with no white cell within 30 px (mask or VOC
             box), with and without a VOC platelet box, at the engine's scale for bccd; the
             score is the largest of the four looks.
realistic    the smear-edge patch of bench/slide_throughput.py (red-cell monolayer of bccd
             train quarters on glass, white-cell fields at blood's density; 0.1 um/px): the
             scale from the engine's own probe (the network; ``--scale`` skips it), the
             engine's tile grid, and which tiles are skipped.

The old rule (any look px with (R + B) / 2 - G >= 30 at 8 px per cell) is shown beside.

Usage: python bench/tile_skip.py [--size 4096] [--seed 0] [--scale S] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from slide_throughput import table  # noqa: E402
from synthetic_slides import (  # noqa: E402
    DATASETS,
    PIXEL_SIZE,
    QUARTER,
    _voc_boxes,
    bccd_fields,
    red_cell_quarters,
    smear_edge_slide,
)

OLD_PURPLE, OLD_LOOK_CELL_PX = 30.0, 8.0


def scores(image: np.ndarray, cell_width: float) -> list[float]:
    """``look_nucleus_size`` of the whole image: single level and 2x pyramid, two block phases."""
    from napari_wbc.core.slide import Slide
    from napari_wbc.core.tiling import LOOK_CELL_PX
    from napari_wbc.core.wholeslide import look_nucleus_size

    h, w = image.shape[:2]
    half = int(max(1.0, cell_width / LOOK_CELL_PX) / 2)
    out = []
    for slide in (Slide.from_array(image), Slide.pyramid_of(image)):
        for o in sorted({0, half}):
            out.append(look_nucleus_size(slide, (o, o, h, w), cell_width))
    return out


def old_rule(image: np.ndarray, cell_width: float) -> bool:
    """The replaced rule: any px of the 8-px-per-cell look with (R + B) / 2 - G >= 30."""
    from napari_wbc.core.slide import Slide

    look = Slide.from_array(image).look(0, 0, *image.shape[:2], max(1.0, cell_width / OLD_LOOK_CELL_PX))
    a = look.astype(np.float32)
    return bool(((a[..., 0] + a[..., 2]) / 2 - a[..., 1] >= OLD_PURPLE).any())


def engine_cell_width(labels: np.ndarray) -> float:
    """Slide px per typical cell as the engine would set it: DEFAULT_CELL_DIAMETER_PX / scale."""
    from napari_wbc.core.inference import scale_for_cells, typical_cell_width
    from napari_wbc.core.postprocess import DEFAULT_CELL_DIAMETER_PX

    width = typical_cell_width(labels)
    scale = scale_for_cells(width, None, None) if width is not None else 1.0
    return DEFAULT_CELL_DIAMETER_PX / scale


def glass_colour(image: np.ndarray) -> np.ndarray:
    """The mean of the brightest 2% of the image (its glass or plasma)."""
    a = image.reshape(-1, 3).astype(np.float32)
    k = max(1, len(a) // 50)
    return a[np.argpartition(a.sum(1), -k)[-k:]].mean(0).round().astype(np.uint8)


def cut_outs(image: np.ndarray, labels: np.ndarray):
    """(cell alone on the field's glass, cut by the field's edge) for each white cell."""
    from scipy import ndimage

    glass = glass_colour(image)
    objects, _ = ndimage.label(labels > 0)
    for k, box in enumerate(ndimage.find_objects(objects), 1):
        mask = objects[box] == k
        if mask.sum() < 50:
            continue
        h, w = mask.shape
        edge = box[0].start == 0 or box[1].start == 0 or box[0].stop == labels.shape[0]
        edge = edge or box[1].stop == labels.shape[1]
        pad = max(h, w)
        canvas = np.empty((h + 2 * pad, w + 2 * pad, 3), np.uint8)
        canvas[:] = glass
        canvas[pad : pad + h, pad : pad + w][mask] = image[box][mask]
        yield canvas, edge


def read_dataset(name: str, datasets: Path = DATASETS):
    from PIL import Image

    from napari_wbc.core.io import read_image

    rows = (line.split(",") for line in (datasets / name / "split.csv").read_text().split()[1:])
    for stem, split in sorted(rows):
        (path,) = (datasets / name / "images").glob(f"{stem}.*")
        labels = np.array(Image.open(datasets / name / "labels" / f"{stem}.png"))
        yield stem, split, read_image(path).data[..., :3], labels


def white_cells(datasets: Path = DATASETS) -> tuple[list[dict], dict]:
    from napari_wbc.core.tiling import MIN_NUCLEUS

    rows, widths = [], {}
    for name in ("zheng_d1", "zheng_d2", "bccd"):
        fields, lone, edge, old, cw = [], [], [], [], []
        for stem, _, image, labels in read_dataset(name, datasets):
            if not (labels > 0).any():
                continue
            cell_width = engine_cell_width(labels)
            cw.append(cell_width)
            fields.append((min(scores(image, cell_width)), stem))
            old.append(old_rule(image, cell_width))
            for canvas, at_edge in cut_outs(image, labels):
                (edge if at_edge else lone).append((min(scores(canvas, cell_width)), stem))
        widths[name] = float(np.median(cw))
        row = {"dataset": name}
        for what, found in (("fields", fields), ("lone cells", lone), ("edge cells", edge)):
            kept = sum(s >= MIN_NUCLEUS for s, _ in found)
            row[f"{what} kept"] = f"{kept} / {len(found)}"
            row[f"{what} min score"] = "{:.3f} ({})".format(*min(found)) if found else "-"
        row["fields kept, old rule"] = f"{sum(old)} / {len(old)}"
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows, widths


def no_white_cells(cell_widths: list[float], datasets: Path = DATASETS) -> list[dict]:
    """bccd quarters without a white cell (all splits), with and without platelets, looked at
    as cells of each of ``cell_widths`` px (the smaller, the larger everything looks)."""
    from scipy import ndimage

    from napari_wbc.core.tiling import MIN_NUCLEUS

    qh, qw = QUARTER
    found = {(p, w): [] for p in (False, True) for w in cell_widths}
    old = {(p, w): [] for p in (False, True) for w in cell_widths}
    for stem, _, image, labels in read_dataset("bccd", datasets):
        xml = datasets / "bccd" / "annotations_voc" / f"{stem}.xml"
        if not xml.exists() or image.shape[:2] != (2 * qh, 2 * qw):
            continue
        white = ndimage.binary_dilation(labels > 0, iterations=30)
        platelets = np.zeros(labels.shape, bool)
        for name, (x0, y0, x1, y1) in _voc_boxes(xml):
            if name.upper() == "WBC":
                white[max(0, y0 - 30) : y1 + 30, max(0, x0 - 30) : x1 + 30] = True
            elif name.lower().startswith("platelet"):
                platelets[max(0, y0) : y1, max(0, x0) : x1] = True
        for y in (0, qh):
            for x in (0, qw):
                if white[y : y + qh, x : x + qw].any():
                    continue
                quarter = np.ascontiguousarray(image[y : y + qh, x : x + qw])
                p = bool(platelets[y : y + qh, x : x + qw].any())
                for w in cell_widths:
                    found[p, w].append((max(scores(quarter, w)), f"{stem} {y},{x}"))
                    old[p, w].append(old_rule(quarter, w))
    rows = []
    for (p, w), got in found.items():
        s = np.array([v for v, _ in got])
        top = max(got)
        row = {
            "bccd quarters": "with platelets" if p else "no platelet",
            "cell width px": round(w),
            "n": len(s),
            "max score": f"{top[0]:.3f} ({top[1]})",
            "99th pct": round(float(np.percentile(s, 99)), 3),
            "skipped": f"{np.mean(s < MIN_NUCLEUS):.1%}",
            "skipped, old rule": f"{1 - np.mean(old[p, w]):.1%}",
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def realistic(size: int, seed: int, scale: float | None) -> dict:
    from napari_wbc.core.inference import scale_for_cells
    from napari_wbc.core.postprocess import DEFAULT_CELL_DIAMETER_PX
    from napari_wbc.core.slide import open_slide
    from napari_wbc.core.tiling import MIN_NUCLEUS, TileGrid
    from napari_wbc.core.wholeslide import _plan, look_nucleus_size, slide_cell_width
    from napari_wbc.models import load_model

    net, spec = load_model(device="cpu")
    quarters, rbc = red_cell_quarters("train")
    slide, info = smear_edge_slide(size, quarters, rbc, bccd_fields("test"), seed=seed)
    with tempfile.TemporaryDirectory(prefix="tile-skip-") as tmp:
        path = slide.write(Path(tmp) / "realistic.ome.tif")
        with open_slide(path) as opened:
            t0 = time.perf_counter()
            width = None
            if scale is None:
                width = slide_cell_width(opened, net, spec, "cpu", 1.0, PIXEL_SIZE)
                scale = scale_for_cells(width, spec, PIXEL_SIZE)
            probe_s = time.perf_counter() - t0
            plan = _plan(opened, spec, PIXEL_SIZE, None, None, True, scale, 1.0)
            grid = TileGrid(opened.shape, tuple(plan["tile"]), plan["halo"])
            cell_width = DEFAULT_CELL_DIAMETER_PX / scale
            t0 = time.perf_counter()
            sizes = [
                look_nucleus_size(opened, grid.expand(grid.core(i), grid.halo), cell_width)
                for i in range(len(grid))
            ]
            look_s = time.perf_counter() - t0
            old = []
            for i in range(len(grid)):
                box = grid.expand(grid.core(i), grid.halo)
                a = opened.look(*box, max(1.0, cell_width / OLD_LOOK_CELL_PX)).astype(np.float32)
                old.append(bool(((a[..., 0] + a[..., 2]) / 2 - a[..., 1] >= OLD_PURPLE).any()))
    qh, qw = QUARTER
    wbc_tiles = glass_tiles = wbc_kept = 0
    others = [0.0]
    for i in range(len(grid)):
        y0, x0, y1, x1 = grid.expand(grid.core(i), grid.halo)
        red = slide.carpet[y0 // qh : (y1 - 1) // qh + 1, x0 // qw : (x1 - 1) // qw + 1].any()
        wbc = any((m[max(0, y0 - y) : y1 - y, max(0, x0 - x) : x1 - x]).any() for y, x, m in info["placed"])
        wbc_tiles += wbc
        wbc_kept += wbc and sizes[i] >= MIN_NUCLEUS
        glass_tiles += not (red or wbc)
        if not wbc:
            others.append(sizes[i])
    skipped = sum(s < MIN_NUCLEUS for s in sizes)
    row = {
        "slide": f"{size} x {size}, seed {seed}",
        "probe width px": None if width is None else round(width, 1),
        "scale": round(scale, 3),
        "tile / halo": f"{plan['tile'][0]} / {plan['halo']}",
        "tiles": len(grid),
        "bare-glass tiles": glass_tiles,
        "white-cell tiles kept": f"{wbc_kept} / {wbc_tiles}",
        "skipped": f"{skipped} ({skipped / len(grid):.0%})",
        "skipped, old rule": f"{len(grid) - sum(old)} ({1 - np.mean(old):.0%})",
        "max score, tiles without a white cell": round(max(others), 3),
        "probe s": round(probe_s, 1),
        "looks s": round(look_s, 2),
    }
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    from napari_wbc.core.tiling import LOOK_CELL_PX, MIN_NUCLEUS, NUCLEUS_PURPLE, NUCLEUS_WINDOW

    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=4096, help="realistic patch side, px")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--scale", type=float, default=None, help="the patch's scale (default: the engine's probe)"
    )
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    print(
        f"rule: stain {NUCLEUS_PURPLE}, window {NUCLEUS_WINDOW} cell, min nucleus {MIN_NUCLEUS} cell, "
        f"look >= {LOOK_CELL_PX} px per cell",
        flush=True,
    )
    wbc, widths = white_cells()
    # bccd at the scale the engine measures for its fields, and at 100 px (scale 1), as the
    # probe measured the realistic patch: everything looks 1.7 times larger
    quarters = no_white_cells([widths["bccd"], 100.0])
    patch = realistic(args.size, args.seed, args.scale)
    print("\nwhite cells kept (score = nucleus_size, the smallest of four looks)\n" + table(wbc))
    print("\nbccd quarters without a white cell (score: the largest of four looks)\n" + table(quarters))
    print("\nrealistic patch\n" + table([patch]))
    if args.json:
        args.json.write_text(
            json.dumps({"white_cells": wbc, "quarters": quarters, "realistic": patch}, indent=1)
        )


if __name__ == "__main__":
    main()
