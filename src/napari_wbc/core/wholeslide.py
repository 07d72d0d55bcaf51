"""Segment a whole slide in tiles: a generator that yields per tile, resumes, and writes results.

``segment_slide`` runs the two passes of :mod:`.tiling` over a :class:`~.slide.Slide` and
writes, into ``out``: ``<name>_cells.tif`` and ``<name>_nuclei.tif`` (pyramidal uint32
OME-TIFF labels, nucleus = owning cell id), ``<name>_cells.csv`` (one row per cell, slide
px and um) and ``<name>_summary.csv`` (counts). Work in progress lives in
``out/.<name>.work`` (:class:`~.work_folder.WorkFolder`): the class map (chunked zarr, one
chunk per tile), a marker per classified tile and a file per tile's cells, so a stopped
run resumes where it was and several processes (``shard=(i, n)``) can share one slide.
Memory stays that of a few tiles. The four result files appear together
(:mod:`.slide_output`): a set without its summary is incomplete, and the next run of the
slide completes or clears it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Generator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .batch import write_atomic
from .inference import (
    Progress,
    bfloat16,
    brighten,
    exposure_gain,
    predict_batch,
    scale_for_cells,
    working_scale,
)
from .io import InputError
from .options import Options
from .pipeline import Busy, ClassifiedTiles, ahead
from .postprocess import DEFAULT_CELL_DIAMETER_PX
from .slide import Slide, open_slide
from .tiling import (
    LOOK_CELL_PX,
    MIN_NUCLEUS,
    NUCLEUS_PURPLE,
    NUCLEUS_WINDOW,
    TileCells,
    TileGrid,
    WorkGrid,
    cells_in_tile,
    finish_margin,
    network_context,
    nucleus_size,
)
from .work_folder import WorkFolder

log = logging.getLogger(__name__)
# default tile side in working px: the network's activations for one tile take ~1.5 GB
WORK_TILE = 1024
PROBE_WINDOW, PROBE_WINDOWS = 1024, 6  # slide px; windows looked at to measure the cells' width
UNTIL = ("plan", "classified", "cells", "results")  # where segment_slide(until=...) stops


@dataclass
class SlideResult:
    cells: Path
    nuclei: Path
    table: Path
    summary: Path
    counts: dict
    tiles: int
    skipped: int
    pixel_size: float | None
    scale: float
    # busy seconds of this run per stage (threads add up): "scale" (exposure and the cells'
    # width), "read" (tiles read, skip looks, resampling), "network", "cells" (separated,
    # typed, measured; waiting for tiles left out), "results" (label pyramids and tables)
    seconds: dict = field(default_factory=dict)


def slide_exposure_gain(slide: Slide, samples: int = 4, side: int = 256) -> float:
    """:func:`~.inference.exposure_gain` of a whole slide, from its coarsest pyramid level
    when that is small, else from ``samples`` x ``samples`` windows spread over level 0,
    so that every tile of an under-exposed slide is brightened by the same factor."""
    coarsest = int(np.argmax(slide.downsamples))
    h, w = slide.levels[coarsest].shape
    if h * w <= 2048 * 2048:
        return exposure_gain(slide.read(0, 0, h, w, coarsest))
    h, w = slide.shape
    ys = np.linspace(0, max(0, h - side), samples).astype(int)
    xs = np.linspace(0, max(0, w - side), samples).astype(int)
    return exposure_gain(np.concatenate([slide.read(y, x, y + side, x + side) for y in ys for x in xs], 1))


def look_nucleus_size(slide: Slide, box, cell_width: float, gain: float = 1.0) -> float:
    """:func:`.tiling.nucleus_size` of a low-resolution look at ``box`` (level-0 px) of a slide
    whose typical white cell is ``cell_width`` px wide: ``LOOK_CELL_PX`` px or more across a
    cell, read from the coarsest pyramid level that allows it."""
    look = brighten(slide.look(*box, max(1.0, cell_width / LOOK_CELL_PX)), gain)
    if look.size == 0:
        return 0.0
    ds = ((box[2] - box[0]) / look.shape[0] + (box[3] - box[1]) / look.shape[1]) / 2
    return nucleus_size(look, cell_width / ds)


def slide_cell_width(
    slide: Slide,
    net,
    spec,
    device: str = "cpu",
    gain: float = 1.0,
    pixel_size: float | None = None,
    precision: str = "auto",
) -> float | None:
    """How wide the slide's white cells are (px), measured as :func:`.inference.segment`
    measures a field's: the network at the slide's own scale, then
    :func:`~.inference.typical_cell_width`. A slide of up to ``PROBE_WINDOW``^2 x 2 px is
    looked at whole (so a field and the same pixels as a slide get the same scale); a larger
    one in up to ``PROBE_WINDOWS`` windows of that side that show a nucleus
    (:func:`look_nucleus_size`, cells taken as wide as ``pixel_size`` makes a typical one; if
    no window shows one, those with any nucleus stain), spread over it (the median of their
    widths). None when no white cell is found."""
    from .inference import network_classes, typical_cell_width

    h, w = slide.shape
    if h * w <= 2 * PROBE_WINDOW**2:
        boxes = [(0, 0, h, w)]
    else:
        side = min(PROBE_WINDOW, h, w)
        ys = np.linspace(0, h - side, max(1, min(8, h // side))).astype(int)
        xs = np.linspace(0, w - side, max(1, min(8, w // side))).astype(int)
        boxes = [(y, x, y + side, x + side) for y in ys for x in xs]
        nominal = DEFAULT_CELL_DIAMETER_PX / working_scale(spec, pixel_size)
        sizes = [look_nucleus_size(slide, b, nominal, gain) for b in boxes]
        boxes = [b for b, s in zip(boxes, sizes, strict=True) if s >= MIN_NUCLEUS] or [
            b for b, s in zip(boxes, sizes, strict=True) if s > 0
        ]
        boxes = (
            [boxes[i] for i in np.unique(np.linspace(0, len(boxes) - 1, PROBE_WINDOWS).astype(int))]
            if boxes
            else []
        )
    widths = []
    for box in boxes:
        image = brighten(slide.read(*box), gain)
        width = typical_cell_width(network_classes(net, spec, image, device, precision=precision))
        if width is not None:
            widths.append(width)
    return float(np.median(widths)) if widths else None


def _slide_scale(work: WorkFolder, slide: Slide, net, spec, px, gain: float, options: Options) -> float:
    """The network's scale for the slide, as a field's (:func:`.inference.scale_for_cells` of
    :func:`slide_cell_width`), or the pixel size's without ``auto_scale``. Measured once per
    work folder (``scale.json``), so every process of a run uses the same."""
    if not options.auto_scale:
        return working_scale(spec, px)
    bf16 = bfloat16(options.precision, options.device)
    key = [spec.to_json(), list(slide.shape), gain, px] + (["bf16"] if bf16 else [])
    key = hashlib.sha256(json.dumps(key, sort_keys=True).encode())
    key = key.hexdigest()[:16]
    path = work.scale_file
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("key") == key:
            return float(stored["scale"])
    width = slide_cell_width(slide, net, spec, options.device, gain, px, options.precision)
    scale = scale_for_cells(width, spec, px)
    work.path.mkdir(parents=True, exist_ok=True)
    write_atomic(path, lambda p: p.write_text(json.dumps({"key": key, "width": width, "scale": scale})))
    return scale


def _digest(net) -> str:
    """A short hash of a network's weights (what makes two runs of one architecture differ)."""
    h = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        h.update(name.encode())
        h.update(tensor.detach().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _plan(slide: Slide, spec, px, tile, halo, skip_empty, scale: float, gain: float) -> dict:
    diameter = None if scale == 1.0 else DEFAULT_CELL_DIAMETER_PX / scale  # as core.inference.segment
    if halo is None:  # the widest white cell (20 um) and the margin around it
        halo = int(2 * DEFAULT_CELL_DIAMETER_PX / scale) + finish_margin(diameter)
    if tile is None:  # about WORK_TILE working px, in slide px
        tile = max(256, round(WORK_TILE / scale / 64) * 64)
    tile = (tile, tile) if isinstance(tile, int) else tuple(tile)
    model = hashlib.sha256(json.dumps(spec.to_json(), sort_keys=True).encode()).hexdigest()[:16]
    return {
        "shape": list(slide.shape),
        "tile": list(tile),
        "halo": int(halo),
        "scale": scale,
        "cell_diameter": diameter,
        "context": network_context(spec),
        "pixel_size": px,
        "model": spec.name,
        "model_hash": model,
        "skip_empty": bool(skip_empty),
        "skip": {
            "purple": list(NUCLEUS_PURPLE),
            "window": NUCLEUS_WINDOW,
            "min_nucleus": MIN_NUCLEUS,
            "look_cell_px": LOOK_CELL_PX,
        },
        "gain": gain,
        "version": 3,
    }


def _open_work(work: WorkFolder, plan: dict, shard: tuple[int, int]):
    import zarr

    stored = work.plan()
    if stored is not None and stored != plan:
        if shard[1] > 1:
            raise InputError(f"{work.path} holds a run with other settings; delete it to start over")
        log.warning("%s holds a run with other settings: starting over", work.path)
        shutil.rmtree(work.path)
    work.create()
    if not work.plan_file.exists():
        write_atomic(work.plan_file, lambda p: p.write_text(json.dumps(plan, indent=1)))
    return zarr.open_array(
        str(work.classes),
        mode="a",
        shape=tuple(plan["shape"]),
        chunks=tuple(plan["tile"]),
        dtype=np.uint8,
        fill_value=0,
    )


def _save_cells(path: Path, record: TileCells, table: pd.DataFrame) -> None:
    arrays = {
        "origin": np.array(record.origin),
        "cells": record.cells,
        "nuclei": record.nuclei,
        "first": record.first,
        "bbox": record.bbox,
    }
    # text columns (cell types) as fixed-width strings: the file loads without pickle
    arrays.update(
        {
            f"table:{c}": table[c].to_numpy().astype(str) if table[c].dtype == object else table[c].to_numpy()
            for c in table.columns
        }
    )

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez_compressed(f, **arrays)

    write_atomic(path, write)


def segment_slide(
    slide: Slide | str | Path,
    out: str | Path,
    net,
    spec,
    options: Options | None = None,
    *,
    name: str | None = None,
    shard: tuple[int, int] = (0, 1),
    poll: float = 2.0,
    keep_work: bool = False,
    until: str = "results",
    classifier=None,
) -> Generator[Progress, None, SlideResult | None]:
    """Segment a slide tile by tile into ``out``; yields ``(done, total, message)`` per tile.

    ``options`` (:class:`~.options.Options`; None: the defaults) says how the pixels are
    segmented: the device, tiles, halo, batch size, skipping empty tiles, the pixel size and
    auto-scale; the field-only ones (a single-cell crop, the most megapixels) do not apply to
    a slide. ``options.pixel_size`` (um/px) overrides the file's; it gives the measurements
    in um. The network sees the slide at the scale a field with the same cells gets
    (:func:`_slide_scale`: the cells' width, measured once), so a cell's outline, areas and
    NCR do not depend on the pixel size or on tiling; without ``options.auto_scale`` the
    slide is resampled to the network's working pixel size. ``name`` (default: the slide's)
    names the outputs and the work folder.

    ``shard=(i, n)``: this process does every n-th tile from the i-th, and shard 0 writes
    the results once all are done (waiting for the others, looking every ``poll`` s); the
    others return None. Results do not depend on ``options.tile``, ``options.batch_size`` or
    ``shard``. ``keep_work`` keeps the work folder once the results are written.

    ``until`` stops this shard early, never waiting for the others (a scheduler that runs
    the steps in order, as :mod:`.distributed` does, uses it): "plan" after setting up the
    work folder, "classified" after its tiles' class maps, "cells" after its tiles' cells;
    these return None. "results" (the default) goes on to the end.

    ``classifier`` ((net, spec), :func:`.celltypes.load_classifier`) types every cell as on
    fields, from the slide's pixels around it.
    """
    if until not in UNTIL:
        raise ValueError(f"until must be one of {UNTIL}, not {until!r}")
    if not isinstance(slide, Slide):
        with open_slide(slide) as opened:
            return (
                yield from segment_slide(
                    opened,
                    out,
                    net,
                    spec,
                    options,
                    name=name,
                    shard=shard,
                    poll=poll,
                    keep_work=keep_work,
                    until=until,
                    classifier=classifier,
                )
            )
    options = Options() if options is None else options
    device = options.device
    from ..models import pad_multiple
    from ..models.registry import list_models

    if spec.context is None:
        semantic = ", ".join(list_models("semantic"))
        raise InputError(
            f"{spec.name} detects cells field by field and cannot stitch tiles exactly; "
            f"segment whole slides with a semantic model ({semantic})"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    name = name or slide.name
    px = options.pixel_size or slide.pixel_size
    if px is None and spec.pixel_size is not None:
        log.warning("%s: no pixel size; areas in px only", name)
    work = WorkFolder(out, name)
    from .slide_output import recover_results

    recover_results(work, out, name)  # finish (or clear) what a killed run was publishing
    busy = Busy()
    with busy("scale"):
        gain = round(slide_exposure_gain(slide), 4)
        scale = _slide_scale(work, slide, net, spec, px, gain, options)
    plan = _plan(slide, spec, px, options.tile, options.halo, options.skip_empty, scale, gain)
    # the classifier's weights too: a rerun with other weights of the same spec types afresh
    plan["typing"] = (
        None if classifier is None else {**classifier[1].to_json(), "weights": _digest(classifier[0])}
    )
    plan["align"] = pad_multiple(net)
    if bfloat16(options.precision, device):  # bfloat16 class maps differ a little: not mixed with float32
        plan["bf16"] = True
    store = _open_work(work, plan, shard)
    if until == "plan":
        return None
    grid = TileGrid(slide.shape, tuple(plan["tile"]), plan["halo"])
    wgrid = WorkGrid(slide.shape, plan["scale"], plan["context"], plan["align"])
    mine = [i for i in range(len(grid)) if i % shard[1] == shard[0]]
    total = {"classified": len(mine), "cells": 2 * len(mine)}.get(until, 2 * len(mine) + (shard[0] == 0))
    done = 0

    # pass 1: class map per tile core; tiles are read and resampled a batch ahead of the
    # network (a thread), and the cells of each tile whose neighbourhood is classified are
    # separated, typed and measured by other threads while the network goes on
    todo = [i for i in mine if not work.is_classified(i)]
    done += len(mine) - len(todo)
    cell_width = DEFAULT_CELL_DIAMETER_PX / plan["scale"]  # slide px, what the look is scaled to
    gain = plan["gain"]
    if gain != 1.0 and todo:
        yield done, total, f"under-exposed slide: tiles brightened {gain:.2f}x for the network"

    def network_input():
        """("skipped", i) per tile with no nucleus near it, ("batch", [(i, window, image)...])
        per batch of tiles of one working shape, read, brightened and resampled."""
        batch: list[tuple[int, tuple, np.ndarray]] = []
        for i in todo:
            core = grid.core(i)
            with busy("read"):
                empty = options.skip_empty and (
                    look_nucleus_size(slide, grid.expand(core, grid.halo), cell_width, gain) < MIN_NUCLEUS
                )
            if empty:
                yield "skipped", i
                continue
            with busy("read"):
                window = wgrid.window(core)
                source = wgrid.source(window)
                image = wgrid.to_work(brighten(slide.read(*source), gain), source, window)
            if batch and image.shape != batch[0][2].shape:
                yield "batch", batch
                batch = []
            batch.append((i, window, image))
            if len(batch) >= options.batch_size:
                yield "batch", batch
                batch = []
        if batch:
            yield "batch", batch

    def separate(i: int) -> None:
        """Pass 2 of tile ``i``: its cells (from the stored class map), types and measurements."""
        path = work.cells(i)
        if path.exists():
            return
        classified.wait(i)  # whether the tile was skipped is known once it is classified
        with busy("cells"):
            record = TileCells()
            if work.how_classified(i) != "skipped":
                record = cells_in_tile(classified.read, grid, i, cell_diameter=plan["cell_diameter"])
            types = probs = None
            if classifier is not None and len(record.first):
                types, probs = _classify(record, slide, gain, classifier, device)
            table = _measure(record, px, types, probs)
            _save_cells(path, record, table)

    threads = options.cell_threads() if until != "classified" else 0
    # one process does every tile: a tile's cells need not wait for the end of pass 1
    overlap = threads > 0 and shard[1] == 1
    classified = ClassifiedTiles(store, grid, [i for i in range(len(grid)) if work.is_classified(i)], busy)
    pool = ThreadPoolExecutor(threads, thread_name_prefix="cells") if threads else None
    pending: dict = {}  # tile -> its pass-2 future, in tile order
    try:
        if overlap:
            pending = {i: pool.submit(separate, i) for i in mine}
        for kind, item in ahead(network_input()):
            if kind == "skipped":
                work.mark(item, "skipped")
                classified.add(item)
                done += 1
                yield done, total, f"tile {item + 1}/{len(grid)}: no nuclei, skipped"
                continue
            with busy("network"):
                probs = predict_batch(
                    net, spec, [image for _, _, image in item], device, precision=options.precision
                )
            for (i, window, _), prob in zip(item, probs, strict=True):
                core = grid.core(i)
                with busy("network"):
                    store[core[0] : core[2], core[1] : core[3]] = wgrid.to_slide(prob, window, core)
                work.mark(i, "network")
                classified.add(i)
                done += 1
                yield done, total, f"tile {i + 1}/{len(grid)}: classified"
            while pending and next(iter(pending.values())).done():  # cells ready, in tile order
                i = next(iter(pending))
                pending.pop(i).result()
                done += 1
                yield done, total, f"tile {i + 1}/{len(grid)}: cells separated"
        if until == "classified":
            return None
        yield from _wait(
            lambda: all(work.is_classified(i) for i in range(len(grid))),
            poll,
            done,
            total,
            "waiting for other workers to classify their tiles",
        )
        # pass 2: the cells of every tile not yet done
        if not overlap:
            classified.add(*range(len(grid)))
            pending = {i: pool.submit(separate, i) if pool else None for i in mine}
        for i, future in pending.items():
            future.result() if future is not None else separate(i)
            done += 1
            yield done, total, f"tile {i + 1}/{len(grid)}: cells separated"
        pending = {}
    finally:
        classified.stop()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    if shard[0] != 0 or until == "cells":
        return None
    yield from _wait(
        lambda: all(work.cells(i).exists() for i in range(len(grid))),
        poll,
        done,
        total,
        "waiting for other workers to separate cells",
    )
    from .slide_output import write_results

    skipped = sum(work.how_classified(i) == "skipped" for i in range(len(grid)))
    with busy("results"):
        result = write_results(work, out, name, grid, plan, spec, skipped, source=slide.path)
    result.seconds = busy.seconds()
    yield total, total, "done"
    if not keep_work:
        shutil.rmtree(work.path, ignore_errors=True)
    return result


def _wait(ready, poll: float, done: int, total: int, message: str):
    while not ready():
        yield done, total, message
        time.sleep(poll)


def _classify(record: TileCells, slide: Slide, gain: float, classifier, device: str):
    """The classifier's types of a tile's cells, from the slide's pixels around them (with
    room for the crop's context)."""
    from .celltypes import classify_cells

    h, w = record.cells.shape
    m = int(np.ceil(max(h, w) * float(classifier[1].extra.get("context", 1.5)) / 2))
    y0, x0 = max(0, record.origin[0] - m), max(0, record.origin[1] - m)
    y1, x1 = min(slide.shape[0], record.origin[0] + h + m), min(slide.shape[1], record.origin[1] + w + m)
    image = brighten(slide.read(y0, x0, y1, x1), gain)
    return classify_cells(
        *classifier,
        image,
        record.cells,
        record.nuclei,
        device,
        origin=(record.origin[0] - y0, record.origin[1] - x0),
    )


def _measure(record: TileCells, px: float | None, types=None, probs=None) -> pd.DataFrame:
    from .measure import measure_cells

    if not len(record.first):
        return measure_cells(np.zeros((1, 1), np.uint32), np.zeros((1, 1), np.uint32), px)
    return measure_cells(
        record.cells,
        record.nuclei,
        px,
        offset=tuple(float(v) for v in record.origin),
        types=types,
        type_probs=probs,
    )
