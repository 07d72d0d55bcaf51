"""Results of a tiled slide run: global ids, pyramidal label TIFFs, the cell table and counts.

Cell ids are the rank of each cell's first pixel in raster order over the slide, so they
do not depend on how the slide was tiled or in which order tiles were done. Labels are
painted tile record by tile record into chunked zarr stores, then written as pyramidal
OME-TIFFs; memory holds one tile record and one row per cell.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from .batch import write_csv
from .measure import count_summary, measure_cells

LABEL_TILE = 256


def global_ids(firsts: list[np.ndarray]) -> list[np.ndarray]:
    """Per tile, the slide-wide id of each of its cells: 1 + rank of the first pixel (y, x)."""
    everything = np.concatenate(firsts) if firsts else np.zeros((0, 2), np.int64)
    order = np.lexsort((everything[:, 1], everything[:, 0]))
    ids = np.empty(len(everything), np.uint32)
    ids[order] = np.arange(1, len(everything) + 1, dtype=np.uint32)
    return np.split(ids, np.cumsum([len(f) for f in firsts])[:-1])


def _table(z, lut: np.ndarray, shape: tuple[int, int]) -> pd.DataFrame:
    table = pd.DataFrame({key[6:]: z[key] for key in z.files if key.startswith("table:")})
    if not np.array_equal(table["label"].to_numpy(), np.arange(1, len(lut))):
        raise RuntimeError("a tile's cell table does not match its labels")
    bbox = z["bbox"]
    table["label"] = lut[1:].astype(np.int64)
    table["touches_border"] = (
        (bbox[:, 0] == 0) | (bbox[:, 1] == 0) | (bbox[:, 2] == shape[0]) | (bbox[:, 3] == shape[1])
    )
    return table


def write_results(work: Path, out: Path, name: str, grid, plan: dict, spec, skipped: int):
    """Assemble the tile records in ``work`` into the files of a :class:`SlideResult`."""
    import zarr

    from .pyramid import write_pyramid_tiff
    from .wholeslide import SlideResult

    shape = tuple(plan["shape"])
    px = plan["pixel_size"]
    files = [work / "cells" / f"{i}.npz" for i in range(len(grid))]
    firsts = []
    for f in files:
        with np.load(f) as z:
            firsts.append(z["first"])
    ids = global_ids(firsts)
    stores = {
        kind: zarr.create_array(
            store=str(work / f"{kind}.zarr"),
            shape=shape,
            dtype=np.uint32,
            chunks=(LABEL_TILE, LABEL_TILE),
            fill_value=0,
            overwrite=True,
        )
        for kind in ("cells", "nuclei")
    }
    tables = []
    for f, tile_ids in zip(files, ids, strict=True):
        if not len(tile_ids):
            continue
        lut = np.concatenate([[0], tile_ids]).astype(np.uint32)
        with np.load(f) as z:
            y, x = (int(v) for v in z["origin"])
            for kind, store in stores.items():
                local = z[kind]
                region = store[y : y + local.shape[0], x : x + local.shape[1]]
                painted = local > 0
                region[painted] = lut[local[painted]]
                store[y : y + local.shape[0], x : x + local.shape[1]] = region
            tables.append(_table(z, lut, shape))
    empty = measure_cells(np.zeros((1, 1), np.uint32), np.zeros((1, 1), np.uint32), px)
    table = pd.concat(tables, ignore_index=True) if tables else empty
    table = table.sort_values("label", ignore_index=True)
    if px:
        table["centroid_y_um"] = table["centroid_y"] * px
        table["centroid_x_um"] = table["centroid_x"] * px

    def labels(store):
        def region(y0, x0, y1, x1):
            block = store[y0:y1, x0:x1]
            return block if block.any() else None

        return region

    paths = {kind: out / f"{name}_{kind}.tif" for kind in stores}
    for kind, store in stores.items():
        write_pyramid_tiff(
            paths[kind], labels(store), shape, np.uint32, tile=LABEL_TILE, pixel_size=px, downsample="nearest"
        )
    table_path, summary_path = out / f"{name}_cells.csv", out / f"{name}_summary.csv"
    write_csv(table_path, table)
    counts = count_summary(table)
    write_csv(
        summary_path,
        pd.DataFrame(
            [
                {
                    "file": name,
                    **counts,
                    "pixel_size_um": px,
                    "model": spec.name,
                    "tiles": len(grid),
                    "skipped_tiles": skipped,
                    "scale": plan["scale"],
                }
            ]
        ),
    )
    return SlideResult(
        paths["cells"],
        paths["nuclei"],
        table_path,
        summary_path,
        counts,
        len(grid),
        skipped,
        px,
        plan["scale"],
    )
