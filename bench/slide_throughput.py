"""Whole-slide throughput, skipped tiles, and tiled-versus-untiled agreement on this machine.

dense       a mosaic of bccd *test* fields with no glass between them (every tile holds
            white cells): end-to-end megapixels per second of ``segment_slide`` (read,
            network, cells, measurements, label pyramids and tables), in this process and
            on a dask LocalCluster of ``--workers`` processes (one thread each).
realistic   a patch at the edge of a smear (``synthetic_slides.smear_edge_slide``): an
            ellipse of red-cell monolayer (quarters of bccd *train* fields without white
            cells) on glass, with white-cell fields at blood's density: the fraction of
            tiles skipped at low resolution, end-to-end MP/s, cells found in and outside
            the placed fields.
agreement   a mosaic of bccd test fields segmented whole (one network pass over the image,
            ``core.inference.segment``) and in tiles of three sizes: identical pixels of the
            cell and nucleus labels (after relabelling both in raster order), cell counts,
            IoU of matched cells, and how many cells the tile seams cut.

The slides are at 0.1 um/px, the network's working pixel size (no resampling); a slide
scanned at 0.25 um/px has 6.25 times as many working px per slide px.

Usage: python bench/slide_throughput.py [--only dense realistic agreement] [--workers 2]
       [--grid 3 3] [--size 4096] [--tiles 256 512 1024] [--agreement-grid 2 2] [--threads 0 1]
       [--precision auto|fp32|bf16] [--device cpu|cuda]

``--threads``: one dense and one realistic run per value, the cells of classified tiles
separated by that many threads beside the network (0: after it, in turn; -1: the default).
Each row also gives the busy seconds per stage (``SlideResult.seconds``: scale, read,
network, cells, results; threads add up).
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from napari_wbc.core.options import Options

sys.path.insert(0, str(Path(__file__).parent))
from synthetic_slides import (  # noqa: E402
    PIXEL_SIZE,
    bccd_fields,
    red_cell_quarters,
    smear_edge_slide,
)

SETTINGS = Options(device="cpu")  # the device and precision of every run (--device, --precision)


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def load():
    from napari_wbc.models import load_model

    return load_model(device=SETTINGS.device)


def mosaic(folder: Path, grid: tuple[int, int], name: str) -> Path:
    from napari_wbc.core.slide import build_mosaic_slide

    images = [image for image, _ in bccd_fields("test", grid[0] * grid[1])]
    return build_mosaic_slide(folder / f"{name}.ome.tif", images, grid=grid, pixel_size=PIXEL_SIZE)


def timed_run(
    path: Path, out: Path, tile: int | None = None, threads: int | None = None
) -> tuple[object, float, float]:
    from napari_wbc.core.inference import run
    from napari_wbc.core.wholeslide import segment_slide

    net, spec = load()
    t0, c0 = time.perf_counter(), cpu_s()
    options = replace(SETTINGS, tile=tile, threads=threads)
    result = run(segment_slide(path, out, net, spec, options))
    return result, time.perf_counter() - t0, cpu_s() - c0


def dense(folder: Path, grid: tuple[int, int], workers: int, threads: int | None = None) -> dict:
    from napari_wbc.core.slide import open_slide

    path = mosaic(folder, grid, "dense")
    with open_slide(path) as slide:
        h, w = slide.shape
    mp = h * w / 1e6
    result, wall, cpu = timed_run(path, folder / f"dense-single{threads}", threads=threads)
    row = {
        "slide_px": f"{w}x{h}",
        "megapixels": round(mp, 2),
        "cell_threads": Options(threads=threads).cell_threads(),
        "tiles": result.tiles,
        "skipped": result.skipped,
        "cells": result.counts["white_cells"],
        "single_s": round(wall, 1),
        "single_cpu_s": round(cpu, 1),
        "single_mp_s": round(mp / wall, 3),
        **{f"{k}_s": round(v, 1) for k, v in result.seconds.items()},
    }
    if workers:
        from distributed import Client, LocalCluster

        from napari_wbc.core.distributed import segment_slides
        from napari_wbc.core.inference import run

        t0 = time.perf_counter()
        with (
            LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            ) as cluster,
            Client(cluster) as client,
        ):
            client.run(load)  # workers start and load the model: not part of the slide's time
            t1 = time.perf_counter()
            (outcome,) = run(segment_slides([path], folder / "dense-dist", client, SETTINGS))
            t2 = time.perf_counter()
        assert outcome.error is None, outcome.error
        same = (folder / f"dense-single{threads}" / "dense_cells.csv").read_bytes() == (
            folder / "dense-dist" / "dense_cells.csv"
        ).read_bytes()
        row.update(
            {
                f"workers{workers}_s": round(t2 - t1, 1),
                f"workers{workers}_mp_s": round(mp / (t2 - t1), 3),
                "cluster_start_s": round(t1 - t0, 1),
                "same_csv": same,
            }
        )
    return row


def realistic(folder: Path, size: int, rbc_per_wbc: float, seed: int, threads: int | None = None) -> dict:
    from scipy import ndimage

    from napari_wbc.core.slide import open_slide
    from napari_wbc.core.tiling import TileGrid
    from napari_wbc.core.wholeslide import _plan

    quarters, rbc = red_cell_quarters("train")
    fields = bccd_fields("test")
    slide, info = smear_edge_slide(size, quarters, rbc, fields, rbc_per_wbc=rbc_per_wbc, seed=seed)
    t0 = time.perf_counter()
    path = slide.write(folder / "realistic.ome.tif")
    build = time.perf_counter() - t0
    result, wall, cpu = timed_run(path, folder / f"realistic-out{threads}", threads=threads)
    import pandas as pd

    _, spec = load()
    with open_slide(path) as opened:
        plan = _plan(opened, spec, PIXEL_SIZE, None, None, True, result.scale, 1.0)
    grid = TileGrid((size, size), tuple(plan["tile"]), plan["halo"])
    qh, qw = 240, 320
    glass_only = 0
    for i in range(len(grid)):
        y0, x0, y1, x1 = grid.expand(grid.core(i), grid.halo)
        red = slide.carpet[y0 // qh : (y1 - 1) // qh + 1, x0 // qw : (x1 - 1) // qw + 1].any()
        wbc = any(
            y < y1 and y + m.shape[0] > y0 and x < x1 and x + m.shape[1] > x0 for y, x, m in info["placed"]
        )
        glass_only += not (red or wbc)
    placed = sum(ndimage.label(m)[1] for _, _, m in info["placed"])
    table = pd.read_csv(result.table)
    inside = np.zeros(len(table), bool)
    for y, x, m in info["placed"]:
        inside |= (
            (table["centroid_y"] >= y)
            & (table["centroid_y"] < y + m.shape[0])
            & (table["centroid_x"] >= x)
            & (table["centroid_x"] < x + m.shape[1])
        ).to_numpy()
    mp = size * size / 1e6
    return {
        "slide_px": f"{size}x{size}",
        "megapixels": round(mp, 1),
        "cell_threads": Options(threads=threads).cell_threads(),
        "build_s": round(build, 1),
        "red_cell_area": info["carpet_fraction"],
        "red_cells": info["red_cells"],
        "white_cell_fields": info["wbc_fields"],
        "white_cells_placed": int(placed),
        "tiles": result.tiles,
        "skipped": result.skipped,
        "skipped_fraction": round(result.skipped / result.tiles, 3),
        "bare_glass_tiles": glass_only,
        "segment_s": round(wall, 1),
        "cpu_s": round(cpu, 1),
        "mp_s": round(mp / wall, 3),
        **{f"{k}_s": round(v, 1) for k, v in result.seconds.items()},
        "cells_found": result.counts["white_cells"],
        "cells_in_placed_fields": int(inside.sum()),
        "cells_elsewhere": int((~inside).sum()),
    }


def matched_iou(ref: np.ndarray, got: np.ndarray) -> np.ndarray:
    """Per reference cell, the IoU with the tiled cell it overlaps most (0 if none)."""
    n, m = int(ref.max()), int(got.max())
    both = (ref > 0) | (got > 0)
    pairs = np.bincount(ref[both].astype(np.int64) * (m + 1) + got[both], minlength=(n + 1) * (m + 1))
    inter = pairs.reshape(n + 1, m + 1)[1:, 1:]
    area_r = np.bincount(ref.ravel(), minlength=n + 1)[1:]
    area_g = np.bincount(got.ravel(), minlength=m + 1)[1:]
    best = inter.argmax(1) if m else np.zeros(n, int)
    i = inter[np.arange(n), best] if m else np.zeros(n)
    return i / (area_r + (area_g[best] if m else 0) - i)


def agreement(folder: Path, grid: tuple[int, int], tiles: list[int]) -> list[dict]:
    import tifffile

    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.slide import open_slide
    from napari_wbc.core.tiling import TileGrid, canonical_labels

    path = mosaic(folder, grid, "agree")
    with open_slide(path) as slide:
        image = slide.read(0, 0, *slide.shape)
    net, spec = load()
    t0 = time.perf_counter()
    ref = run(segment(image, net, spec, replace(SETTINGS, auto_scale=False)))
    whole_s = time.perf_counter() - t0
    cells = canonical_labels(ref.cells)
    nuclei = np.where(ref.nuclei > 0, cells, 0)
    n = int(cells.max())
    rows = []
    for tile in tiles:
        result, wall, _ = timed_run(path, folder / f"agree{tile}", tile=tile)
        got = tifffile.imread(result.cells)
        got_n = tifffile.imread(result.nuclei)
        iou = matched_iou(cells, got)
        g = TileGrid(cells.shape, (tile, tile), 0)
        ys, xs = np.nonzero(cells)
        owner = (ys // tile) * g.cols + xs // tile
        labels = cells[ys, xs]
        cut = sum(len(np.unique(owner[labels == k])) > 1 for k in range(1, n + 1))
        rows.append(
            {
                "image_px": f"{cells.shape[1]}x{cells.shape[0]}",
                "tile": tile,
                "tiles": result.tiles,
                "cells_untiled": n,
                "cells_tiled": int(got.max()),
                "cells_cut_by_seams": int(cut),
                "identical_cell_px": float(np.mean(got == cells)),
                "identical_nucleus_px": float(np.mean(got_n == nuclei)),
                "mean_iou": round(float(iou.mean()), 6),
                "min_iou": round(float(iou.min()), 6),
                "tiled_s": round(wall, 1),
                "untiled_s": round(whole_s, 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    keys = list(rows[0])
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(str(r.get(k, "")) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument(
        "--only",
        nargs="+",
        default=["dense", "realistic", "agreement"],
        choices=["dense", "realistic", "agreement"],
    )
    p.add_argument("--grid", type=int, nargs=2, default=[3, 3], help="dense: fields per column and row")
    p.add_argument("--workers", type=int, default=2, help="dense: LocalCluster workers (0: none)")
    p.add_argument("--size", type=int, default=4096, help="realistic: slide side, px")
    p.add_argument("--rbc-per-wbc", type=float, default=700.0, help="realistic: red cells per white cell")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiles", type=int, nargs="+", default=[256, 512, 1024], help="agreement: tile sides")
    p.add_argument("--agreement-grid", type=int, nargs=2, default=[2, 2])
    p.add_argument(
        "--threads",
        type=int,
        nargs="+",
        default=[-1],
        help="dense, realistic: cell-separating threads, one run each (0: after the network; -1: default)",
    )
    p.add_argument("--precision", default="auto", help="the network's arithmetic: auto, fp32 or bf16")
    p.add_argument("--device", default="cpu", help="cpu, cuda, auto...")
    args = p.parse_args()
    from napari_wbc.core.device import pick_device

    global SETTINGS
    SETTINGS = Options(device=pick_device(args.device), precision=args.precision)
    import torch

    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    with tempfile.TemporaryDirectory(prefix="slide-throughput-") as tmp:
        folder = Path(tmp)
        threads = [None if t < 0 else t for t in args.threads]
        for name, measure in (
            ("dense", lambda t, first: dense(folder, tuple(args.grid), args.workers if first else 0, t)),
            ("realistic", lambda t, first: realistic(folder, args.size, args.rbc_per_wbc, args.seed, t)),
        ):
            if name in args.only:
                rows = []
                for k, t in enumerate(threads):
                    rows.append(measure(t, k == 0))
                    print(json.dumps(rows[-1]), flush=True)
                print(f"\n{name}\n" + table(rows), flush=True)
        if "agreement" in args.only:
            rows = agreement(folder, tuple(args.agreement_grid), args.tiles)
            print("\nagreement\n" + table(rows), flush=True)


if __name__ == "__main__":
    main()
