"""Segmenting a whole slide from the Segment widget: the worker's job and its live preview.

The job drives :func:`napari_wbc.core.wholeslide.segment_slide` (the generator the CLI
drains) in a thread: one step per tile, a cancel flag checked between steps (the work
folder then holds every finished tile, and the next run on the same output folder
resumes from there). Cell ids are only assigned once every tile is done, so what can be
shown while it runs is the class map: after each tile, :class:`ClassPreview` copies the
newly classified tile cores from the run's work folder (its class map and tile markers,
:class:`~napari_wbc.core.work_folder.WorkFolder`) into a small in-memory map, every
``factor``-th pixel, which the widget shows as a labels layer over the slide until the
cells and nuclei arrive.
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path

import numpy as np

from .._paths import user_data_dir
from ..core.options import Options
from ..core.work_folder import WorkFolder

PREVIEW_SIDE = 2048  # px; the preview class map is at most this big a side (4 MB, redrawn per tile)


def default_output(slide: str | Path, name: str) -> Path:
    """``<name>_wbc`` beside the slide, or in the user data folder when that is not writable."""
    folder = Path(slide).parent
    if os.access(folder, os.W_OK):
        return folder / f"{name}_wbc"
    return user_data_dir() / "slides" / f"{name}_wbc"


class ClassPreview:
    """A low-resolution copy of a running slide's class map (0 glass, 1 cytoplasm, 2 nucleus).

    The worker thread paints into ``data``; ``dirty`` tells the GUI thread to show it again.
    """

    def __init__(self, shape: tuple[int, int], work: WorkFolder, max_side: int = PREVIEW_SIDE):
        self.factor = max(1, math.ceil(max(shape) / max_side))
        f = self.factor
        self.data = np.zeros((-(-shape[0] // f), -(-shape[1] // f)), np.uint8)
        self.work = work
        self.painted = 0  # tiles painted
        self.dirty = False
        self._seen: set[int] = set()
        self._store = self._grid = None

    def update(self) -> bool:
        """Copy tiles classified since the last call; True when something was painted."""
        from ..core.tiling import TileGrid

        new = [i for i in self.work.classified_tiles() if i not in self._seen]
        if not new:
            return False
        if self._grid is None:
            import zarr

            plan = self.work.plan()
            self._grid = TileGrid(tuple(plan["shape"]), tuple(plan["tile"]), plan["halo"])
            self._store = zarr.open_array(str(self.work.classes), mode="r")
        f, painted = self.factor, False
        for i in new:
            how = self.work.how_classified(i)
            if not how:  # being written by another process: next time
                continue
            self._seen.add(i)
            if how == "skipped":
                continue
            y0, x0, y1, x1 = self._grid.core(i)
            y0, x0 = -(-y0 // f) * f, -(-x0 // f) * f  # on the preview's grid of every f-th px
            block = np.asarray(self._store[y0:y1:f, x0:x1:f])
            self.data[y0 // f : y0 // f + block.shape[0], x0 // f : x0 // f + block.shape[1]] = block
            self.painted += 1
            painted = True
        if painted:
            self.dirty = True
        return painted


def slide_job(
    slide: str,
    out: Path,
    name: str,
    model: str,
    options: Options,
    preview: ClassPreview | None,
    cancel: threading.Event,
    flip_average: bool = False,
    typing: str = "classifier",
    classifier_weights: str | None = None,
):
    """Generator for a thread worker: yields ``(done, total, message)``; returns
    ``(SlideResult, cell table)``, or None when cancelled. ``options``: how the slide is
    segmented (its device, pixel size...); ``classifier_weights``: a fine-tuned classifier's
    folder (None: the shipped one), as the CLI's ``--classifier-weights``."""
    import pandas as pd

    from ..core.celltypes import load_classifier
    from ..core.wholeslide import segment_slide
    from ..models import load_model

    yield 0, 1, "loading the model"
    net, spec = load_model(model, device=options.device, flip_average=flip_average)
    classifier = load_classifier(typing, options.device, classifier_weights)
    if cancel.is_set():
        return None
    steps = segment_slide(slide, out, net, spec, options, name=name, classifier=classifier)
    try:
        while True:
            try:
                step = next(steps)
            except StopIteration as stop:
                result = stop.value
                break
            if preview is not None:
                preview.update()
            yield step
            if cancel.is_set():
                return None
    finally:
        steps.close()  # a stopped run closes the slide; its finished tiles stay in the work folder
    table = pd.read_csv(result.table)
    return result, table
