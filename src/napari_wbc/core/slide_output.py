"""Results of a tiled slide run: global ids, pyramidal label TIFFs, the cell table and counts.

Cell ids are the rank of each cell's first pixel in raster order over the slide, so they
do not depend on how the slide was tiled or in which order tiles were done. Labels are
painted tile record by tile record into chunked zarr stores, then written as pyramidal
OME-TIFFs; memory holds one tile record and one row per cell.

The results appear all together or not at all: they are written into the work folder's
staging folder, marked complete (:attr:`~.work_folder.WorkFolder.ready`), then renamed
into the output folder, ``<name>_summary.csv`` last, so a set without its summary
is incomplete. A run killed while publishing is finished by the next run of the slide
(:func:`recover_results`, which also clears what a run killed while writing left); runs of
one slide take turns on the lock file ``.<name>.lock`` in the output folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .batch import write_atomic, write_csv
from .measure import count_summary, measure_cells
from .work_folder import WorkFolder

LABEL_TILE = 256
# the result files, in the order they are renamed into place: the summary marks a complete set
RESULT_FILES = {"nuclei": "nuclei.tif", "table": "cells.csv", "cells": "cells.tif", "summary": "summary.csv"}
# .pyramid-* folders that older versions left in the output folder are removed once this old (s)
STALE_PYRAMID_S = 3600.0


def result_paths(out: Path, name: str) -> dict[str, Path]:
    """The files of a slide's results, in the order they are published."""
    return {kind: Path(out) / f"{name}_{suffix}" for kind, suffix in RESULT_FILES.items()}


@contextlib.contextmanager
def results_lock(out: Path, name: str):
    """One run at a time writes or recovers a slide's results (an OS lock: a killed holder
    frees it). The lock file stays in ``out``: removing it would let two runs hold it."""
    from filelock import FileLock

    with FileLock(Path(out) / f".{name}.lock"):
        yield


def recover_results(work: WorkFolder, out: Path, name: str) -> None:
    """Finish publishing what a killed run had complete, or remove what it had half-written;
    clear temporaries of older versions. Every run of a slide starts with this."""
    with results_lock(out, name):
        _recover(work, Path(out), name)


def _recover(work: WorkFolder, out: Path, name: str) -> None:
    staging = work.staging
    if work.ready.exists():
        _publish(staging, out, name)
    elif staging.exists():  # killed while writing: nothing of it was published
        shutil.rmtree(staging)
    for path in result_paths(out, name).values():  # older versions wrote beside the results
        path.with_name(f".{path.name}.tmp").unlink(missing_ok=True)
    now = time.time()
    for folder in out.glob(".pyramid-*"):
        if folder.is_dir() and not folder.is_symlink() and now - _last_change(folder) > STALE_PYRAMID_S:
            shutil.rmtree(folder, ignore_errors=True)


def _last_change(folder: Path) -> float:
    """The latest modification time of a folder and everything in it (now, while it changes)."""
    try:
        times = [folder.stat().st_mtime]
        for parent, dirs, files in os.walk(folder):
            times += [os.stat(os.path.join(parent, f)).st_mtime for f in dirs + files]
    except OSError:  # a file went away: someone is working in it
        return time.time()
    return max(times)


def _publish(staging: Path, out: Path, name: str) -> None:
    """Rename the staged results into ``out`` (again, after a kill: the staged files left)."""
    paths = result_paths(out, name)
    if (staging / paths["summary"].name).exists():
        paths["summary"].unlink(missing_ok=True)  # the old set is incomplete from here on
    for path in paths.values():
        if (staging / path.name).exists():
            os.replace(staging / path.name, path)
    shutil.rmtree(staging)


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


def write_results(work: WorkFolder, out: Path, name: str, grid, plan: dict, spec, skipped: int, source=None):
    """Assemble the tile records in ``work`` into the files of a :class:`SlideResult` and
    publish them in ``out``, all together; ``source`` (the slide's file) goes in the summary."""
    from .wholeslide import SlideResult

    paths = result_paths(out, name)
    with results_lock(out, name):
        _recover(work, out, name)
        staging = work.staging
        staging.mkdir()
        try:
            counts = _write_staged(work, name, grid, plan, spec, skipped, source)
            write_atomic(work.ready, lambda p: p.write_text(json.dumps(sorted(os.listdir(staging)))))
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _publish(staging, out, name)
    return SlideResult(
        paths["cells"],
        paths["nuclei"],
        paths["table"],
        paths["summary"],
        counts,
        len(grid),
        skipped,
        plan["pixel_size"],
        plan["scale"],
    )


def _write_staged(work: WorkFolder, name: str, grid, plan: dict, spec, skipped: int, source) -> dict:
    """Write the result files into the work folder's staging folder; the counts."""
    import zarr

    from .pyramid import write_pyramid_tiff

    shape = tuple(plan["shape"])
    px = plan["pixel_size"]
    files = [work.cells(i) for i in range(len(grid))]
    firsts = []
    for f in files:
        with np.load(f) as z:
            firsts.append(z["first"])
    ids = global_ids(firsts)
    stores = {
        kind: zarr.create_array(
            store=str(work.labels(kind)),
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

    paths = result_paths(work.staging, name)
    for kind, store in stores.items():
        write_pyramid_tiff(
            paths[kind], labels(store), shape, np.uint32, tile=LABEL_TILE, pixel_size=px, downsample="nearest"
        )
    write_csv(paths["table"], table)
    counts = count_summary(table)
    write_csv(
        paths["summary"],
        pd.DataFrame(
            [
                {
                    "file": str(source or name),
                    "output": name,
                    **counts,
                    "pixel_size_um": px,
                    "model": spec.name,
                    "typing": (plan.get("typing") or {}).get("name", "none"),
                    "tiles": len(grid),
                    "skipped_tiles": skipped,
                    "scale": plan["scale"],
                }
            ]
        ),
    )
    return counts
