"""Review widget: a segmentation against a reference, in the TP/FP/FN colours of MIF-Net.

The user picks the prediction (a cells layer; its nuclei layer comes with it) and the
reference: any labels in the viewer (a 0/1/2 class map, a cells/nuclei pair, the user's
own corrected layers) or a file opened with "Open reference file…" (a dataset mask PNG
or a ``*_cells.tif`` written by napari-wbc). :func:`napari_wbc.core.review.review` runs in
a ``thread_worker``; the result is the layer ``"<image> review"`` (true-positive
cytoplasm yellow, nucleus blue, false positive green, false negative red, agreement on
background transparent), the six metrics for cell, cytoplasm and nucleus, and the per-cell
match columns (status, IoU, NCR predicted and reference) joined into the cells layer's
features, so the measurement table can be sorted by IoU. Missed reference cells have no
predicted cell; the "missed cells" list moves the view to them. The widget follows the
review layer's metadata, so the correction tool's updates after each edit show here too.
The review layer is faint (the stain shows through) and the controls scroll when the dock
is short.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import ComboBox, Container, FloatSpinBox, Label, PushButton
from napari.layers import Labels
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import Qt
from qtpy.QtWidgets import (
    QAbstractItemView,
    QFileDialog,
    QHeaderView,
    QSizePolicy,
    QTableWidget,
    QTableWidgetItem,
)

from ..core.io import InputError
from ..core.review import legend_text
from ._layers import (
    features_of,
    keep_columns,
    labels_of,
    partner,
    scroll_form,
    show_review,
    side_by_side,
    split_name,
)

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

REGIONS = ("cell", "cytoplasm", "nucleus")
HEADERS = ("Precision", "Dice", "mIoU", "ME", "FPR", "FNR")  # core.metrics.METRICS, as in the papers
TIPS = {
    "prediction": "the segmentation to review: a cells layer (its nuclei layer comes with it)",
    "reference": "what it should be: a 0/1/2 class map, or another cells layer with its nuclei",
    "open": "open a reference: a dataset mask (0 background, 1 cytoplasm, 2 nucleus) or a *_cells.tif "
    "written by napari-wbc (with its *_nuclei.tif)",
    "min_iou": "a predicted and a reference cell match when their IoU reaches this",
    "run": "colour every pixel by agreement, compute the metrics and match the cells",
    "missed": "reference cells no predicted cell matches: pick one to go there",
}


def legend_html() -> str:
    """The review colours as coloured squares with short names, two to a line (the full
    meaning is the legend's tooltip, :func:`napari_wbc.core.review.legend_text`)."""
    from ..core.review import COLORS, FN, FP, TP_CYTOPLASM, TP_NUCLEUS

    short = {
        TP_CYTOPLASM: "TP cytoplasm",
        TP_NUCLEUS: "TP nucleus",
        FP: "false positive",
        FN: "false negative",
    }
    items = [
        f'<span style="color:#{r:02x}{g:02x}{b:02x}">&#9632;</span> {short[code]}'
        for code, (r, g, b) in COLORS.items()
    ]
    return "<br>".join("&nbsp;&nbsp;".join(items[i : i + 2]) for i in range(0, len(items), 2))


def _metrics_table() -> QTableWidget:
    """Regions as rows, the six metrics as columns, all visible without scrolling."""
    table = QTableWidget(len(REGIONS), len(HEADERS))
    table.setHorizontalHeaderLabels(HEADERS)
    table.setVerticalHeaderLabels(REGIONS)
    table.setEditTriggers(QAbstractItemView.EditTrigger.NoEditTriggers)
    table.setToolTip("percent; ME: misclassification error, FPR/FNR: false positive/negative rate")
    table.horizontalHeader().setSectionResizeMode(QHeaderView.ResizeMode.Stretch)
    table.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    table.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    table.setFixedHeight(
        table.verticalHeader().length()
        + table.horizontalHeader().sizeHint().height()
        + 2 * table.frameWidth()
    )
    return table


@thread_worker(ignore_errors=True)  # errors become notifications in the widget
def _review_job(pred, ref, min_iou: float, features, pixel_size):
    """The review, the reference as a LabelSet, and fresh measurements of a (cells, nuclei) prediction."""
    from ..core.edit import remeasure
    from ..core.review import as_labels, review

    ref = as_labels(ref)
    table = remeasure(features, *pred, pixel_size) if isinstance(pred, tuple) else None
    return review(pred, ref, min_iou), ref, table


class ReviewWidget(Container):
    """Review a prediction against a reference: colours, metrics, matched/missed/extra cells."""

    def __init__(self, viewer: napari.viewer.Viewer):
        super().__init__()
        self._viewer = viewer
        self.worker = None
        self._layer: Labels | None = None  # the review layer shown
        self._syncing = False
        self.prediction = ComboBox(label="prediction", choices=self._pred_layers, tooltip=TIPS["prediction"])
        self.reference = ComboBox(label="reference", choices=self._ref_layers, tooltip=TIPS["reference"])
        self.open_button = PushButton(text="Open…", tooltip=TIPS["open"])
        self.min_iou = FloatSpinBox(
            label="match IoU", value=0.5, min=0.05, max=1.0, step=0.05, tooltip=TIPS["min_iou"]
        )
        self.run_button = PushButton(text="Review", tooltip=TIPS["run"])
        self.legend = Label(value=legend_html(), tooltip=legend_text())
        self.summary = Label(value="")
        self.missed = ComboBox(label="missed cells", choices=[], tooltip=TIPS["missed"])
        self.status = Label(value="")
        self.form = scroll_form(
            self,
            [
                self.prediction,
                side_by_side(self.reference, self.open_button, labels=True),
                side_by_side(self.min_iou, self.run_button, labels=True),
                self.status,
                self.legend,
                self.summary,
                self.missed,
            ],
        )
        for label in (self.status, self.summary):
            label.native.setWordWrap(True)  # long layer names must not widen the dock
        self.metrics = _metrics_table()
        self.form.native.layout().insertWidget(self.form.index(self.summary) + 1, self.metrics)
        self.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        self.run_button.changed.connect(self.run)
        self.open_button.changed.connect(self._ask_open)
        self.missed.changed.connect(self._go_to_missed)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered, events.renamed):
            emitter.connect(self._refresh_layers)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._follow_active()

    # -- which layers ----------------------------------------------------------------------

    def _label_layers(self) -> list[Labels]:
        """Labels layers a user would pick: not review or drawing layers, not nuclei beside their cells."""
        layers = self._viewer.layers
        out = []
        for layer in layers:
            if not isinstance(layer, Labels) or {"review_of", "drawing_for"} & set(layer.metadata):
                continue
            parts = split_name(layer.name)
            if parts and parts[2] == "nuclei" and partner(layers, layer, "cells") is not None:
                continue
            out.append(layer)
        return out

    def _pred_layers(self, _widget=None):
        return [(layer.name, layer) for layer in self._label_layers()]

    def _ref_layers(self, _widget=None):
        return [(layer.name, layer) for layer in self._label_layers() if layer != self.prediction.value]

    def _refresh_layers(self, _event=None) -> None:
        self.prediction.reset_choices()
        self.reference.reset_choices()
        if self._layer is not None and self._layer not in list(self._viewer.layers):
            self._bind(None)

    def _follow_active(self, _event=None) -> None:
        active = self._viewer.layers.selection.active
        self.prediction.reset_choices()
        if active in self._label_layers() and self.worker is None and "source_layer" in active.metadata:
            self.prediction.value = active  # a segmentation result: the usual thing to review
        self.reference.reset_choices()

    # -- reference files -------------------------------------------------------------------

    def open_reference(self, path: str | Path) -> Labels:
        """Add the labels in ``path`` as layers and pick them as the reference."""
        from ..core.compare import read_labels

        path = Path(path)
        labels = read_labels(path)  # InputError with what is wrong
        like = self.prediction.value
        align = {} if like is None else {"scale": like.scale, "translate": like.translate}
        if path.name.endswith("_cells.tif"):
            stem = path.name[: -len("_cells.tif")]
            self._viewer.add_labels(labels.nuclei, name=f"{stem}_nuclei", visible=False, **align)
            layer = self._viewer.add_labels(labels.cells, name=f"{stem}_cells", visible=False, **align)
            layer.contour = 1
        else:
            layer = self._viewer.add_labels(
                labels.classes, name=f"{path.stem} reference", visible=False, **align
            )
        layer.metadata = {**layer.metadata, "source": str(path)}
        self.reference.reset_choices()
        self.reference.value = layer
        return layer

    def _ask_open(self, _value=None) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self.native, "Open a reference", "", "Labels (*.png *_cells.tif);;All files (*)"
        )
        if not path:
            return
        try:
            self.open_reference(path)
        except InputError as err:
            show_error(str(err))

    # -- running ---------------------------------------------------------------------------

    def run(self, _value=None):
        """Start the review of the chosen layers; returns the worker (None if nothing started)."""
        if self.worker is not None:
            return None
        layers = self._viewer.layers
        pred_layer, ref_layer = self.prediction.value, self.reference.value
        try:
            if pred_layer is None or ref_layer is None:
                raise InputError(
                    "pick a prediction and a reference (run Segment white cells, open a reference file)"
                )
            pred, ref = labels_of(layers, pred_layer), labels_of(layers, ref_layer)
            pred_shape, ref_shape = (
                np.shape(pred[0] if isinstance(pred, tuple) else pred),
                np.shape(ref[0] if isinstance(ref, tuple) else ref),
            )
            if pred_shape != ref_shape:
                raise InputError(
                    f"{pred_layer.name!r} {pred_shape} and {ref_layer.name!r} {ref_shape} "
                    "differ in size; pick the reference of this image"
                )
        except InputError as err:
            show_error(str(err))
            return None
        target = partner(layers, pred_layer, "cells") or pred_layer
        min_iou = float(self.min_iou.value)
        worker = _review_job(pred, ref, min_iou, features_of(target), target.metadata.get("pixel_size"))
        worker.returned.connect(lambda out: self._show(target, ref_layer.name, min_iou, *out))
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.run_button.enabled = False
        self.status.value = f"reviewing {target.name} against {ref_layer.name}"
        worker.start()
        return worker

    def _on_error(self, err: Exception) -> None:
        log.error("review failed", exc_info=err)
        show_error(f"review failed: {err}")
        self.status.value = "failed"

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled = True

    def _show(self, target, ref_name, min_iou, result, ref_labels, table) -> None:
        try:
            reference = {"reference": ref_name, "ref_labels": ref_labels, "min_iou": min_iou}
            if table is not None:
                keep_columns(table, features_of(target), {"edited": False})
            layer = show_review(self._viewer, target, result, reference, table)
        except Exception as err:  # a slot must not raise
            self._on_error(err)
            return
        self._bind(layer)
        self._show_measurements(target)

    def _show_measurements(self, cells) -> None:
        if "label" not in cells.features.columns:
            return
        try:
            _, table = self._viewer.window.add_plugin_dock_widget("napari-wbc", "Cell measurements")
        except Exception as err:  # e.g. no window: the layer has the columns anyway
            log.info("measurement table not docked: %s", err)
            return
        table.show_layer(cells)

    # -- showing a review ------------------------------------------------------------------

    def _bind(self, layer) -> None:
        if self._layer is not None:
            self._layer.events.metadata.disconnect(self.refresh)
        self._layer = layer
        if layer is not None:
            layer.events.metadata.connect(self.refresh)
        self.refresh()

    def refresh(self, _event=None) -> None:
        """Show the metrics, counts and missed cells of the bound review layer."""
        meta = {} if self._layer is None else self._layer.metadata
        metrics = meta.get("metrics")
        for row, region in enumerate(REGIONS):
            for col, key in enumerate(("precision", "dice", "miou", "me", "fpr", "fnr")):
                text = "" if metrics is None else f"{100 * metrics[region][key]:.2f}"
                self.metrics.setItem(row, col, QTableWidgetItem(text))
        if metrics is None:
            self.summary.value = self.status.value = ""
            self._set_missed([])
            return
        c, summary = meta["counts"], meta["summary"]
        mean = summary["mean_iou_matched"]
        self.summary.value = (
            f"cells: {c['matched']} matched, {c['missed']} missed, {c['extra']} extra "
            f"({c['ref_cells']} in the reference)" + ("" if np.isnan(mean) else f"; mean IoU {mean:.2f}")
        )
        matches = meta["matches"]
        missed = matches[matches["status"] == "missed"]
        self._set_missed(
            [
                (
                    f"reference cell {int(r.ref_label)} (best IoU {r.iou:.2f})",
                    (r.ref_centroid_y, r.ref_centroid_x),
                )
                for r in missed.itertuples()
            ]
        )
        self.status.value = f"{self._layer.name}: {meta['review_of']} against {meta['reference']}"

    def _set_missed(self, choices) -> None:
        self._syncing = True
        try:
            self.missed.choices = [
                (f"{len(choices)} missed: pick one to go there" if choices else "none", None),
                *choices,
            ]
            self.missed.value = None
            self.missed.enabled = bool(choices)
        finally:
            self._syncing = False

    def _go_to_missed(self, centroid=None) -> None:
        if self._syncing or centroid is None or self._layer is None:
            return
        world = self._layer.data_to_world(centroid)
        self._viewer.scene.camera.center = tuple(float(v) for v in world)
