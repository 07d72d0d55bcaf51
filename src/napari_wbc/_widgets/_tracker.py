"""Keep a cells layer's measurements, counts and review in step with its edits.

An :class:`EditTracker` watches a cells layer and its nuclei layer: paint events (napari's
brush, fill and eraser, and the correction buttons, which write through ``data_setitem``)
and refreshes (undo, redo). A burst of changes gives one sync, after a short delay (and
none when the pixels did not change); replacing a layer's data (a new segmentation)
starts the count of edited cells afresh. A sync: nucleus
pixels that left their cell are dropped (or given the id of the cell they now lie in),
then a ``thread_worker`` re-measures the cells, re-reviews them when the layer has a
review, and finds which cells changed since the last sync. The cells whose ids remain keep
their type, their review (as :mod:`~napari_wbc.core.verification` records it: status,
suggested type, reviewer, time) and the classifier's confidence and probabilities, whether
or not the Cell gallery is open; a new cell (a split's new piece) is "suggested", untyped
(:func:`napari_wbc.core.edit.carried_columns`). Only one worker runs at a
time; changes made meanwhile start one more sync when it ends.
"""

from __future__ import annotations

import numpy as np
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error
from qtpy.QtCore import QTimer

from ._layers import features_of, image_name, keep_columns, partner, set_features, show_review

SYNC_DELAY_MS = 150


def write_changes(layer, new: np.ndarray) -> None:
    """Write only the changed pixels into a labels layer, as one undoable step of its history."""
    changed = np.asarray(layer.data) != new
    if changed.any():
        layer.data_setitem(np.nonzero(changed), new[changed])


@thread_worker(ignore_errors=True)  # errors become notifications
def _sync_job(before, cells, nuclei, features, pixel_size, reference):
    """Edited ids since ``before``, fresh measurements, the review if there is a reference."""
    from ..core.edit import check_invariants, edited_cells, remeasure
    from ..core.review import review

    edited = edited_cells(*before, cells, nuclei)
    table = remeasure(features, cells, nuclei, pixel_size)
    result = None
    if reference and reference["ref_labels"].cells.shape == cells.shape:
        result = review((cells, nuclei), reference["ref_labels"], reference["min_iou"])
    return edited, table, result, check_invariants(cells, nuclei)


class EditTracker:
    """Measurements that follow the edits of one cells layer; ``edited`` holds the changed ids."""

    def __init__(self, viewer, parent, on_status=None):
        self._viewer = viewer
        self.cells = self.nuclei = None
        self.edited: set[int] = set()
        self.worker = None
        self._before = None  # (cells, nuclei) as last measured
        self._pending = False
        self._stale = False  # measure even if the pixels did not change
        self._on_status = on_status or (lambda text: None)
        self._timer = QTimer(parent, singleShot=True, interval=SYNC_DELAY_MS)
        self._timer.timeout.connect(self.sync)

    def bind(self, cells) -> None:
        """Follow ``cells`` (and its nuclei layer); None stops following."""
        for old in (self.cells, self.nuclei):
            if old is not None:
                old.events.paint.disconnect(self.schedule)
                old.events.set_data.disconnect(self.schedule)
                old.events.data.disconnect(self._restart)
        self.cells = cells
        self.nuclei = None if cells is None else partner(self._viewer.layers, cells, "nuclei")
        self._before, self.edited = None, set()
        if cells is None:
            return
        self._before = self._current()
        self.edited = set((cells.metadata or {}).get("edited", []))
        for layer in (cells, self.nuclei):
            layer.events.paint.connect(self.schedule)
            layer.events.set_data.connect(self.schedule)
            layer.events.data.connect(self._restart)
        if features_of(cells) is None:
            self.sync()

    def _current(self) -> tuple[np.ndarray, np.ndarray]:
        return np.array(self.cells.data, np.uint32), np.array(self.nuclei.data, np.uint32)

    def _restart(self, _event=None) -> None:
        """New data (e.g. segmented again): nothing is edited yet."""
        self._before, self.edited, self._stale = self._current(), set(), True
        self.cells.metadata = {**self.cells.metadata, "edited": []}
        self.schedule()

    def schedule(self, _event=None) -> None:
        self._timer.start()

    def sync(self):
        """Clip nuclei to their cells, then re-measure (and re-review) in a worker; returns it."""
        from ..core.edit import clip_nuclei

        if self.cells is None:
            return None
        if self.worker is not None:
            self._pending = True
            return None
        layer = self.cells
        cells, nuclei = self._current()
        unchanged = all(map(np.array_equal, self._before, (cells, nuclei)))
        if unchanged and not self._stale and features_of(layer) is not None:
            return None  # a refresh without a change
        self._stale = False
        clipped = clip_nuclei(cells, nuclei)
        if not np.array_equal(clipped, nuclei):
            write_changes(self.nuclei, clipped)  # a paint event: one more sync, with nothing to fix
            nuclei = clipped
        name = f"{image_name(layer)} review"
        review = self._viewer.layers[name].metadata if name in self._viewer.layers else {}
        reference = review if review.get("review_of") == layer.name else None
        worker = _sync_job(
            self._before,
            cells,
            nuclei,
            features_of(layer),
            (layer.metadata or {}).get("pixel_size"),
            reference,
        )
        worker.returned.connect(lambda out: self._synced(layer, (cells, nuclei), reference, *out))
        worker.errored.connect(lambda err: show_error(f"could not update the measurements: {err}"))
        worker.finished.connect(self._finished)
        self.worker = worker
        worker.start()
        return worker

    def _synced(self, layer, state, reference, edited, table, result, problems) -> None:
        from ..core.edit import carried_columns

        if layer != self.cells:
            return
        self._before = state
        self.edited |= set(edited)
        layer.metadata = {**layer.metadata, "edited": sorted(self.edited)}
        current = features_of(layer)
        keep_columns(table, current, carried_columns(current))  # types, reviews given while the worker ran
        table["edited"] = table["label"].isin(self.edited)
        if result is not None:
            keys = ("reference", "ref_labels", "min_iou")
            show_review(self._viewer, layer, result, {k: reference[k] for k in keys}, table)
        else:
            set_features(layer, table)
        self._on_status("; ".join(problems) or f"{len(table)} cells, {len(self.edited)} edited")

    def _finished(self) -> None:
        self.worker = None
        if self._pending:
            self._pending = False
            self.sync()

    def edited_now(self) -> set[int]:
        """``edited`` plus the cells changed since the last sync (which may still be running)."""
        from ..core.edit import edited_cells

        if self.cells is None or self._before is None:
            return set(self.edited)
        return self.edited | set(
            edited_cells(*self._before, np.asarray(self.cells.data), np.asarray(self.nuclei.data))
        )

    @property
    def busy(self) -> bool:
        """A sync is waiting or running."""
        return self.worker is not None or self._timer.isActive() or self._pending
