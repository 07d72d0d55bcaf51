"""The Segment widget's whole-slide half (mixed into :class:`.segment.SegmentWidget`).

A whole slide (an image layer the napari WBC reader opened from a slide file: its
``metadata["slide"]`` holds the path) is segmented tile by tile from the file by
:func:`napari_wbc.core.wholeslide.segment_slide`, never read whole, its cells typed by the
classifier chosen in "cell types" (the shipped one or a fine-tuned one): the progress bar
moves per tile, Cancel stops between tiles, and a run on the same output folder resumes
the tiles a stopped run finished. While it runs the class map fills in, tile by tile, as
a low-resolution labels layer ``"<image> preview"``; at the end the written pyramidal
label TIFFs open lazily as the multiscale ``"<image> cells"`` and ``"<image> nuclei"``
layers, with the written cell table as the cells layer's features.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

import numpy as np
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info

from ..core.io import InputError
from ..core.options import Options
from ..core.work_folder import WorkFolder
from ..models import MissingWeightsError

log = logging.getLogger(__name__)

PREVIEW_COLORS = {0: "transparent", 1: "#f0c020", 2: "#8020ff", None: "transparent"}


def slide_path(layer) -> Path | None:
    """The slide file behind an image layer, if it is a whole slide (opened by the napari WBC reader)."""
    if not isinstance(layer, Image):
        return None
    path = (layer.metadata or {}).get("slide")
    if path:
        return Path(path)
    source = getattr(layer.source, "path", None)
    if layer.multiscale and source:
        from ..core.slide import is_slide

        if is_slide(source):
            return Path(source)
    return None


class SegmentationError(Exception):
    """A RuntimeError (torch's usual error type) raised in the worker, passed on as such.

    The thread worker takes a RuntimeError from its generator for "worker deleted" and
    then emits neither ``errored`` nor ``finished``, which would leave the widget waiting.
    """


@thread_worker(ignore_errors=True)
def _slide_job(*args, **kwargs):
    """A whole slide, tile by tile (see ._slide_run.slide_job)."""
    from ._slide_run import slide_job

    try:
        return (yield from slide_job(*args, **kwargs))
    except RuntimeError as err:
        raise SegmentationError(str(err)) from err


class SlideSegmentMixin:
    """Slide runs for the Segment widget; it provides ``_viewer``, ``model``, ``device``,
    ``pixel_size``, ``flip_average``, ``output``, ``status``, ``_typing`` (the "cell types"
    choice: the shipped or a fine-tuned classifier), the run/cancel buttons and the shared
    slots (``_on_progress``, ``_on_error``, ``_on_aborted``, ``_on_finished``, ``_guarded``,
    ``_show_measurements``)."""

    _auto_output: Path | None = None  # the output folder the widget filled in itself
    _preview = None  # the ClassPreview of a running slide

    def _on_image_changed(self, _value=None) -> None:
        """Show the output folder for a slide, with its default unless the user chose one."""
        from ..core.slide import slide_name

        path = slide_path(self.image.value)
        self.output.visible = path is not None
        self.single_cell.visible = path is None  # a slide is never a single-cell crop
        if path is None:
            return
        from ._slide_run import default_output

        current = Path(self.output.value) if self.output.value else None
        if current in (None, Path("."), self._auto_output):
            self._auto_output = default_output(path, slide_name(path))
            self.output.value = self._auto_output

    def _run_slide(self, layer):
        from ..core.device import pick_device
        from ..core.slide import slide_name
        from ..models import resolve_weights
        from ._slide_run import ClassPreview

        path = slide_path(layer)
        name = slide_name(path)
        try:
            if not path.is_file():
                raise InputError(f"the slide file of {layer.name!r} is gone: {path}")
            model = self.model.value
            resolve_weights(model)
            typing, classifier_weights, typed_by = self._typing()
            device = pick_device(self.device.value)
            out = Path(self.output.value) if self.output.value else None
            if out is None or out == Path("."):
                raise InputError("choose an output folder for the slide's results")
        except (InputError, MissingWeightsError) as err:
            show_error(str(err))
            return None
        pixel_size = float(self.pixel_size.value) if self.pixel_size.value > 0 else None
        options = Options(pixel_size=pixel_size, device=device, precision=self.precision.value)
        work = WorkFolder(out, name)
        resuming = work.path.is_dir()
        self._cancel = threading.Event()
        self._preview = ClassPreview(tuple(layer.level_shapes[0][:2]), work)
        worker = _slide_job(
            str(path),
            out,
            name,
            model,
            options,
            self._preview,
            self._cancel,
            flip_average=self.flip_average.value,
            typing=typing,
            classifier_weights=classifier_weights,
        )
        worker.yielded.connect(lambda step: self._on_slide_progress(layer, step))
        worker.returned.connect(lambda res: self._show_slide_result(layer, model, out, res, typed_by))
        worker.errored.connect(self._on_error)
        # tiles classified after the last progress event (e.g. when cancelled) still show
        worker.finished.connect(lambda: self._flush_preview(layer))
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._pbar = progress(total=1, desc=f"segmenting {layer.name}")
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        verb = "resuming" if resuming else "segmenting"
        self._say(f"{verb} {layer.name} tile by tile on {device}", out)
        worker.start()
        return worker

    def _on_slide_progress(self, layer, step) -> None:
        self._on_progress(step)
        self._flush_preview(layer)

    def _flush_preview(self, layer) -> None:
        preview = self._preview
        if preview is not None and preview.dirty:
            preview.dirty = False
            try:
                self._show_preview(layer, preview)
            except Exception as err:  # a slot must not raise; the run goes on
                log.warning("could not show the slide preview: %s", err)

    def _show_preview(self, layer, preview) -> None:
        """The class map so far, every ``factor``-th pixel, over the slide."""
        from napari.utils.colormaps import DirectLabelColormap

        name = f"{layer.name} preview"
        layers = self._viewer.layers
        align = {
            "scale": tuple(np.asarray(layer.scale) * preview.factor),
            "translate": layer.translate,
            "units": layer.units,
        }
        if name in layers and isinstance(layers[name], Labels) and not layers[name].multiscale:
            target = layers[name]
            target.data = preview.data  # the same array, painted further: shown again
            for key, value in align.items():
                setattr(target, key, value)
        else:
            target = self._viewer.add_labels(preview.data, name=name, opacity=0.5, **align)
            target.colormap = DirectLabelColormap(color_dict=PREVIEW_COLORS)
            target.editable = False
        target.metadata = {**target.metadata, "source_layer": layer.name, "preview_factor": preview.factor}

    def _show_slide_result(self, layer, model, out: Path, returned, typed_by=None) -> None:
        if returned is None:
            self._on_aborted()
            self._say(f"cancelled; finished tiles kept in {out.name}: Segment resumes", out)
            return
        result, table = returned
        self._guarded(
            layer,
            f" (results in {out})",
            self._update_slide_layers,
            layer,
            model,
            out,
            result,
            table,
            typed_by,
        )

    def _upsert_multiscale(self, name: str, levels: list, like, **style) -> Labels:
        """Point the labels layer ``name`` at ``levels`` (lazy, multiscale), or add it with ``style``."""
        layers = self._viewer.layers
        align = {"scale": like.scale, "translate": like.translate, "units": like.units}
        multiscale = len(levels) > 1
        data = levels if multiscale else levels[0]
        if name in layers and isinstance(layers[name], Labels) and layers[name].multiscale == multiscale:
            target = layers[name]  # keep the user's display settings
            target.data = data
            for key, value in align.items():
                setattr(target, key, value)
            return target
        index = None
        if name in layers:  # a labels layer of a field segmentation: replaced
            index = layers.index(name)
            layers.remove(name)
        target = self._viewer.add_labels(data, name=name, multiscale=multiscale, **align)
        for key, value in style.items():
            setattr(target, key, value)
        if index is not None:
            layers.move(layers.index(target), index)
        return target

    def _update_slide_layers(self, layer, model, out: Path, result, table, typed_by=None) -> None:
        from .._slide_layers import label_levels
        from ._layers import CELLS_STYLE, NUCLEI_STYLE, set_features

        meta = {
            "source_layer": layer.name,
            "source": (layer.metadata or {}).get("source"),
            "model": model,
            "pixel_size": result.pixel_size,
            "output": str(out),
            "files": {
                "cells": str(result.cells),
                "nuclei": str(result.nuclei),
                "table": str(result.table),
                "summary": str(result.summary),
            },
            **(typed_by or {}),  # the classifier that typed the cells, as for a field
        }
        nuclei = self._upsert_multiscale(
            f"{layer.name} nuclei", label_levels(result.nuclei), layer, **NUCLEI_STYLE
        )
        cells = self._upsert_multiscale(
            f"{layer.name} cells", label_levels(result.cells), layer, **CELLS_STYLE
        )
        cells.editable = nuclei.editable = False  # lazy views of the written files
        set_features(cells, table)
        cells.metadata = {**cells.metadata, **meta}
        nuclei.metadata = {**nuclei.metadata, **meta}
        preview = f"{layer.name} preview"
        if preview in self._viewer.layers:
            self._viewer.layers.remove(preview)
        if self._preview is not None:  # the results replace the preview for good
            self._preview.dirty = False
        counts = cells.metadata["counts"]
        self._say(
            f"{counts['white_cells']} white cells ({counts['complete_cells']} complete) in "
            f"{result.tiles} tiles; saved in {out.name}",
            out,
        )
        show_info(f"{layer.name}: {counts['white_cells']} white cells; results written to {out}")
        self._show_measurements(cells)

    def _say(self, message: str, out: Path) -> None:
        """A short status line (the dock stays narrow); the output folder in full as its tooltip."""
        self.status.value = message
        self.status.tooltip = f"results: {out}"
