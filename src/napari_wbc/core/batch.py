"""Segment many image files: the engine behind ``napari-wbc segment``.

Per input ``<stem>``: ``<stem>_cells.tif`` (uint32 cell instances), ``<stem>_nuclei.tif``
(uint32, nucleus = owning cell id), ``<stem>_cells.csv`` (measurements); and one
``summary.csv`` with a row per input. Every file is written to a temporary name and
renamed, so a killed run never leaves a half-written file. A bad input is reported and
skipped; the others still get done.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from .io import READABLE, InputError, read_image

log = logging.getLogger(__name__)


def expand_inputs(inputs) -> list[Path]:
    """Files as given, and the readable images inside any folder (sorted)."""
    files = []
    for item in map(Path, inputs):
        if item.is_dir():
            files += sorted(p for p in item.iterdir() if p.suffix.lower() in READABLE)
        else:
            files.append(item)
    return files


def write_atomic(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_labels_tiff(path: Path, labels: np.ndarray, pixel_size: float | None = None) -> None:
    import tifffile

    kwargs = {}
    if pixel_size:
        kwargs = {"resolution": (1e4 / pixel_size, 1e4 / pixel_size), "resolutionunit": "CENTIMETER"}
    write_atomic(path, lambda p: tifffile.imwrite(p, labels.astype(np.uint32), compression="zlib", **kwargs))


def write_csv(path: Path, table: pd.DataFrame) -> None:
    write_atomic(path, lambda p: table.to_csv(p, index=False))


def segment_files(
    inputs,
    out,
    model=None,
    weights=None,
    device="auto",
    pixel_size=None,
    flip_average=False,
    single_cell=False,
    typing="classifier",
    classifier_weights=None,
    on_done=None,
    on_error=None,
) -> int:
    """Segment every input into ``out``; return the number of inputs that failed.
    ``flip_average``: see :func:`napari_wbc.models.load_model`; ``single_cell``: see
    :func:`.inference.segment`; ``typing``: see :func:`.celltypes.load_classifier`."""
    from ..models import load_model
    from .celltypes import load_classifier, typing_name
    from .device import pick_device
    from .inference import run, segment
    from .measure import count_summary, measure_cells

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    device = pick_device(device)
    net, spec = load_model(model, weights, device, flip_average)
    classifier = load_classifier(typing, device, classifier_weights)
    rows, failures = [], 0
    for path in expand_inputs(inputs):
        try:
            smear = read_image(path)
        except InputError as err:
            failures += 1
            if on_error:
                on_error(path, str(err))
            log.warning("%s", err)
            continue
        px = pixel_size or smear.pixel_size
        result = run(
            segment(smear.data, net, spec, device, px, single_cell=single_cell, classifier=classifier)
        )
        types = None if typing == "none" else result.types
        table = measure_cells(result.cells, result.nuclei, px, types=types, type_probs=result.type_probs)
        stem = path.stem
        write_labels_tiff(out / f"{stem}_cells.tif", result.cells, px)
        write_labels_tiff(out / f"{stem}_nuclei.tif", result.nuclei, px)
        write_csv(out / f"{stem}_cells.csv", table)
        counts = count_summary(table)
        rows.append(
            {
                "file": str(path),
                **counts,
                "pixel_size_um": px,
                "model": spec.name,
                "typing": typing_name(typing, classifier, spec),
                "notes": "; ".join(smear.notes),
            }
        )
        if on_done:
            on_done(path.name)
    if rows:
        write_csv(out / "summary.csv", pd.DataFrame(rows))
    return failures
