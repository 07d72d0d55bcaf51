"""Segment widget: pick an RGB smear layer and a trained model, get cells, nuclei and a table.

The work is :func:`napari_wbc.core.inference.segment`, the same generator the CLI drains,
run in a ``thread_worker`` so the viewer stays responsive: each yielded step moves the
progress bars, Cancel asks the worker to stop at the next step. The result goes into two
labels layers, ``"<image> cells"`` and ``"<image> nuclei"`` (nucleus pixels carry their
cell's id), drawn as outlines over the stain (:data:`._layers.CELLS_STYLE`), which a second
run updates instead of duplicating (keeping the user's display settings). The cells layer
owns the measurements (``features``, one row per cell) and the counts
(``metadata["counts"]``); the measurement table widget is docked to show them. After an
image's first segmentation the view shows the whole image (the docks have narrowed the
canvas since it was opened); a later run keeps the user's view. Settings one rarely changes
(device, precision, pixel size, flip-average, single-cell crops, cell types) are folded under "options",
so that the widget stays short. "cell types" offers the shipped cell-type classifier and every
classifier fine-tuned since (the Train widget's, in :func:`napari_wbc.models.user_model_dir`,
by name), for a field or a whole slide alike; the one used is recorded in the cells layer's
metadata (``classifier``, ``classifier_sha256``), which the gallery's review and sign-off name.

A whole slide (an image layer opened from a slide file) runs tile by tile from the file
instead: see :mod:`._slide_segment`.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    ProgressBar,
    PushButton,
)
from napari.layers import Image, Labels
from napari.qt.threading import thread_worker
from napari.utils import progress
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import QEvent, QObject, QTimer
from qtpy.QtWidgets import QSizePolicy

from ..core.io import GRAYSCALE_WARNING, MAX_MEGAPIXELS, PIXEL_SIZE_RANGE, InputError, is_grayscale, to_rgb8
from ..core.options import PRECISIONS, Options
from ..models import DEFAULT_MODEL, MissingWeightsError
from ._layers import CELLS_STYLE, NUCLEI_STYLE, OptionsPanel, side_by_side, upsert_labels
from ._slide_segment import SegmentationError, SlideSegmentMixin, slide_path

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

PLUGIN = "napari-wbc"
MEASURE_WIDGET = "Cell measurements"  # display name in napari.yaml
FIT_SETTLE_MS = 3000  # after the first result the view follows the canvas this long (docks settling)

TIPS = {
    "image": "RGB smear field to segment",
    "model": "trained network (shipped, or trained in the Fine-tune a model widget or `napari-wbc train`)",
    "device": "where the network runs; auto picks a GPU when there is one",
    "precision": "the network's arithmetic: bf16 (bfloat16) is about twice as fast on a GPU and on a CPU "
    "with AVX512-BF16, outlines within a fraction of a percent of fp32's; auto: bf16 on a CUDA GPU, "
    "fp32 elsewhere",
    "pixel_size": "micrometres per pixel; 0 = take it from the file, else unknown. "
    "With a pixel size the image is resampled to the model's scale and "
    "areas are also given in um^2",
    "flip_average": "average the network over the four flips of the image: four times the time, "
    "smoother and slightly more accurate outlines (models that classify pixels)",
    "single_cell": "the image is a single-cell crop (a CellaVision-style gallery image): keep only the "
    "cell at its centre, not the neighbours cut by its edge",
    "typing": "how each cell gets its type: the cell-type classifier (five types, 'unidentified' when "
    "unsure, and objects that are no white cell left out of the count), shipped or one you "
    "fine-tuned (Fine-tune a model), the segmentation model's own types (wcsegnet, once trained), "
    "or off",
    "run": "segment the chosen image (results replace an earlier run on the same image)",
    "cancel": "stop the segmentation after the current step",
    "output": "folder for a slide's results (label TIFFs, cell table); a stopped run in it resumes",
}


def _rgb_field(layer) -> tuple[np.ndarray, list[str]]:
    """The layer's pixels as (H, W, 3) uint8, or an InputError that says what to do."""
    if layer is None:
        raise InputError("open a smear image first (File > Open, or File > Open Sample > napari WBC)")
    if not isinstance(layer, Image):
        raise InputError(f"layer {layer.name!r} is not an image layer; pick an RGB smear image")
    if layer.multiscale:
        raise InputError(
            f"layer {layer.name!r} is a multi-resolution image that was not opened from a "
            "slide file; open the slide with File > Open and the napari WBC reader"
        )
    if not layer.rgb or layer.ndim != 2:
        raise InputError(
            f"layer {layer.name!r} is not a single RGB colour image (data shape "
            f"{tuple(layer.data.shape)}); white cells are found by their stain colour. Pick an RGB "
            "layer, or open the file with File > Open and the napari WBC reader, which converts "
            "grayscale and RGBA files"
        )
    notes: list[str] = []
    return to_rgb8(np.asarray(layer.data), notes), notes


@dataclass(frozen=True)
class TunedClassifier:
    """A fine-tuned cell-type classifier, as "cell types" offers it: its name and folder."""

    name: str
    folder: str


def typing_choices(_widget=None) -> list[tuple[str, object]]:
    """(label, value) for "cell types": the shipped classifier ("classifier"), every
    fine-tuned classifier (a :class:`TunedClassifier`), the model's own types, off."""
    from ..core.celltypes import CLASSIFIER
    from ..models import available_weights

    tuned = sorted(available_weights(classifiers=True).items())
    return [
        ("cell-type classifier (shipped)", "classifier"),
        *(
            (f"{name} (fine-tuned)", TunedClassifier(name, str(folder)))
            for name, folder in tuned
            if name != CLASSIFIER
        ),
        ("the model's own (wcsegnet)", "model"),
        ("off", "none"),
    ]


def typing_of(choice) -> tuple[str, str | None, str | None]:
    """``(typing, classifier weights folder or None, classifier name or None)`` of a "cell
    types" choice (:func:`typing_choices`)."""
    from ..core.celltypes import CLASSIFIER

    if isinstance(choice, TunedClassifier):
        return "classifier", choice.folder, choice.name
    return choice, None, CLASSIFIER if choice == "classifier" else None


@thread_worker(ignore_errors=True)  # errors are shown as notifications by the widget
def _segment_job(
    image: np.ndarray,
    model: str,
    options: Options,
    flip_average: bool = False,
    typing: str = "classifier",
    classifier_weights: str | None = None,
):
    """Load the models, segment, type, measure: yields (done, total, message), returns
    (result, table). ``options``: how the field is segmented (its device, pixel size...);
    ``classifier_weights``: a fine-tuned classifier's folder (None: the shipped one)."""
    from ..core.celltypes import load_classifier
    from ..core.inference import segment
    from ..core.measure import measure_cells
    from ..models import load_model

    try:
        yield 0, 3, "loading the model"
        net, spec = load_model(model, device=options.device, flip_average=flip_average)
        classifier = load_classifier(typing, options.device, classifier_weights)
        result = yield from segment(image, net, spec, options, classifier=classifier)
        types = None if typing == "none" else result.types
        table = measure_cells(
            result.cells, result.nuclei, options.pixel_size, types=types, type_probs=result.type_probs
        )
    except RuntimeError as err:
        raise SegmentationError(str(err)) from err
    return result, table


def model_choices(_widget=None) -> list[tuple[str, str]]:
    """(label, name) for every model with weights, then every architecture without any,
    marked so; picking one of those says how to train it."""
    from ..models import available_weights, list_models

    trained = sorted(available_weights())
    return [(name, name) for name in trained] + [
        (f"{name} (not trained yet)", name)
        for name in list_models()
        if not any(t == name or t.startswith(f"{name}-") for t in trained)
    ]


class _RefreshOnOpen(QObject):
    """Rebuilds a combo box's choices as the user opens it (e.g. models trained meanwhile)."""

    def __init__(self, combo):
        super().__init__(combo.native)
        self._combo = combo
        combo.native.installEventFilter(self)

    def eventFilter(self, _obj, event) -> bool:  # noqa: N802 (Qt's name)
        if event.type() == QEvent.Type.MouseButtonPress:
            self._combo.reset_choices()
        return False


class SegmentWidget(SlideSegmentMixin, Container):
    """Segment white blood cells in an RGB smear layer."""

    def __init__(self, viewer: napari.viewer.Viewer):
        from ..core.device import available_devices
        from ..models import available_weights

        super().__init__()
        self._viewer = viewer
        self.worker = None  # the running GeneratorWorker, if any
        self._pbar = None
        models = sorted(available_weights())
        self.image = ComboBox(label="image", choices=self._image_layers, tooltip=TIPS["image"])
        # a callable: models trained while the widget is open appear on the next refresh
        self.model = ComboBox(label="model", choices=model_choices, tooltip=TIPS["model"])
        if DEFAULT_MODEL in models:
            self.model.value = DEFAULT_MODEL
        self._model_refresh = _RefreshOnOpen(self.model)
        self.device = ComboBox(
            label="device", choices=available_devices(), value="auto", tooltip=TIPS["device"]
        )
        self.precision = ComboBox(
            label="precision", choices=PRECISIONS, value="auto", tooltip=TIPS["precision"]
        )
        self.pixel_size = FloatSpinBox(
            label="pixel size (µm/px)",
            value=0.0,
            min=0.0,
            max=PIXEL_SIZE_RANGE[1],
            step=0.01,
            tooltip=TIPS["pixel_size"],
        )
        self.flip_average = CheckBox(
            text="flip-average (4x slower)", value=False, tooltip=TIPS["flip_average"]
        )
        self.single_cell = CheckBox(
            text="single-cell crop (centre cell only)", value=False, tooltip=TIPS["single_cell"]
        )
        # a callable: classifiers fine-tuned while the widget is open appear on the next refresh
        self.typing = ComboBox(
            label="cell types", value="classifier", tooltip=TIPS["typing"], choices=typing_choices
        )
        self._typing_refresh = _RefreshOnOpen(self.typing)
        self.output = FileEdit(label="output folder", mode="d", tooltip=TIPS["output"], visible=False)
        self._cancel = threading.Event()  # asks a slide run to stop between tiles
        self.run_button = PushButton(text="Segment", tooltip=TIPS["run"])
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip=TIPS["cancel"])
        self.progress_bar = ProgressBar(min=0, max=3, value=0, tooltip="progress of the run")
        self.status = Label(
            value="" if models else "no trained model found: train one in the Fine-tune a model widget"
        )
        self.status.native.setWordWrap(True)  # long messages must not widen the dock
        self.settings = OptionsPanel(
            [self.device, self.precision, self.pixel_size, self.flip_average, self.single_cell, self.typing],
            tooltip="device, precision, pixel size, flip-average, single-cell crops, cell types",
        )
        # compact by folding the options away (not by scrolling): the count in the status stays in view
        self.extend(
            [
                self.image,
                self.model,
                self.settings,
                self.output,
                side_by_side(self.run_button, self.cancel_button),
                self.progress_bar,
                self.status,
            ]
        )

        # take only the height the controls need, so a dock below (the table) gets the rest
        self.native.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Maximum)

        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self.image.changed.connect(self._on_image_changed)
        events = viewer.layers.events
        for emitter in (events.inserted, events.removed, events.reordered, events.renamed):
            emitter.connect(self._refresh_images)
        viewer.layers.selection.events.active.connect(self._follow_active)
        self._on_image_changed()

    def _image_layers(self, _widget=None) -> list[tuple[str, Image]]:
        return [(layer.name, layer) for layer in self._viewer.layers if isinstance(layer, Image)]

    def _refresh_images(self, _event=None) -> None:
        self.image.reset_choices()

    def _follow_active(self, _event=None) -> None:
        """The image the user last clicked in the layer list is the one to segment."""
        active = self._viewer.layers.selection.active
        if isinstance(active, Image) and self.worker is None:
            self.image.reset_choices()
            self.image.value = active

    # -- running ---------------------------------------------------------------------------

    def _pixel_size(self, layer) -> float | None:
        if self.pixel_size.value > 0:
            return float(self.pixel_size.value)
        return (layer.metadata or {}).get("pixel_size") or None

    def run(self, _value=None):
        """Start segmenting the chosen image; returns the worker (None if nothing started)."""
        from ..core.device import pick_device
        from ..models import resolve_weights

        if self.worker is not None:
            return None
        layer = self.image.value
        if slide_path(layer) is not None:
            return self._run_slide(layer)
        try:
            image, notes = _rgb_field(layer)
            model = self.model.value
            resolve_weights(model)  # a clear message when there is no trained model
            typing, classifier_weights, typed_by = self._typing()
            device = pick_device(self.device.value)
        except (InputError, MissingWeightsError) as err:
            show_error(str(err))
            return None
        if notes:
            show_info(f"{layer.name}: " + "; ".join(notes))
        if is_grayscale(image):  # the network tells white cells by their stain colour
            show_warning(f"{layer.name}: {GRAYSCALE_WARNING}")
        pixel_size = self._pixel_size(layer)
        options = Options(
            pixel_size=pixel_size,
            device=device,
            precision=self.precision.value,
            single_cell=self.single_cell.value,
            max_megapixels=MAX_MEGAPIXELS,
        )
        worker = _segment_job(image, model, options, self.flip_average.value, typing, classifier_weights)
        worker.yielded.connect(self._on_progress)
        worker.returned.connect(lambda out: self._show_result(layer, model, pixel_size, *out, typed_by))
        worker.errored.connect(self._on_error)
        worker.aborted.connect(self._on_aborted)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._pbar = progress(total=3, desc=f"segmenting {layer.name}")
        self.run_button.enabled = False
        self.cancel_button.enabled = True
        self.status.value = f"segmenting {layer.name} on {device}"
        worker.start()
        return worker

    def _typing(self) -> tuple[str, str | None, dict]:
        """``(typing, fine-tuned classifier weights folder or None, typed_by)`` of "cell types";
        ``typed_by`` (``classifier``, ``classifier_sha256``) goes into the cells layer's metadata:
        the gallery's sign-off names the classifier that typed the cells. MissingWeightsError
        for a fine-tuned classifier deleted since the list was made."""
        from ..models import resolve_weights, weights_sha256

        typing, weights, classifier = typing_of(self.typing.value)
        if weights is not None:
            resolve_weights(None, weights)
        sha = weights_sha256(classifier, weights) if classifier else None
        return typing, weights, {"classifier": classifier, "classifier_sha256": sha}

    def cancel(self, _value=None) -> None:
        if self.worker is not None:
            self.status.value = "cancelling after the current step"
            if self._preview is not None:  # a slide run: it stops between tiles and keeps them
                self._cancel.set()
            else:
                self.worker.quit()

    def _on_progress(self, step) -> None:
        done, total, message = step
        self.progress_bar.max = total
        self.progress_bar.value = done
        self.status.value = message
        pbar = self._pbar  # napari's progress may process events, even `finished`, while updating
        if pbar is not None:
            pbar.total = total
            pbar.set_description(message)
            pbar.update(done - pbar.n)

    def _on_error(self, err: Exception) -> None:
        if isinstance(err, InputError | MissingWeightsError):
            show_error(str(err))
        else:
            log.error("segmentation failed", exc_info=err)
            show_error(f"segmentation failed: {err}")
        self.status.value = "failed"

    def _on_aborted(self) -> None:
        self.status.value = "cancelled"
        show_info("segmentation cancelled")

    def _on_finished(self) -> None:
        self.worker = None
        self._preview = None
        if self._pbar is not None:
            self._pbar.close()
            self._pbar = None
        self.run_button.enabled = True
        self.cancel_button.enabled = False

    # -- results ---------------------------------------------------------------------------

    def _show_result(self, layer, model, pixel_size, result, table, typed_by=None) -> None:
        self._guarded(layer, "", self._update_layers, layer, model, pixel_size, result, table, typed_by)

    def _guarded(self, layer, where: str, show, *args) -> None:
        """``show(*args)`` in a slot, which must not raise: a failure is said once (``where``
        tells where the results are kept), with the details in the log."""
        try:
            show(*args)
        except Exception as err:
            log.error("could not show the segmentation", exc_info=err)
            show_error(f"could not show the segmentation of {layer.name!r}{where}: {err}")
            self.status.value = "failed"

    def _update_layers(self, layer, model, pixel_size, result, table, typed_by=None) -> None:
        from ..core.measure import count_summary, describe_counts

        counts = count_summary(table)
        features = table.assign(index=table["label"])  # napari maps label -> row by `index`
        first = f"{layer.name} cells" not in self._viewer.layers
        # a layer there already keeps the user's display settings (e.g. filled: contour 0)
        nuclei = upsert_labels(self._viewer, f"{layer.name} nuclei", result.nuclei, layer, **NUCLEI_STYLE)
        cells = upsert_labels(self._viewer, f"{layer.name} cells", result.cells, layer, **CELLS_STYLE)
        cells.features = features
        meta = {
            "counts": counts,
            "source_layer": layer.name,
            "source": (layer.metadata or {}).get("source"),
            "model": model,
            "pixel_size": pixel_size,
            **(typed_by or {}),
        }
        cells.metadata = {**cells.metadata, **meta}
        nuclei.metadata = {**nuclei.metadata, "source_layer": layer.name, "model": model}
        self.status.value = describe_counts(counts)
        self._show_measurements(cells)
        if first:
            self._fit(layer)

    def _fit(self, layer) -> None:
        """Show the whole of ``layer``: now, and again as the docks settle (the table docked
        with the first result narrows the canvas), until the user moves the view.

        Only after an image's first segmentation: a later run keeps the view the user chose.
        """
        viewer = self._viewer
        camera = viewer.camera
        viewer.reset_view(layers=[layer])
        fitted = [(tuple(camera.center), camera.zoom)]

        def refit(_event=None) -> None:
            if (tuple(camera.center), camera.zoom) != fitted[0] or layer not in viewer.layers:
                return  # the user moved the view: theirs from now on
            viewer.reset_view(layers=[layer])
            fitted[0] = (tuple(camera.center), camera.zoom)

        viewer.canvas.events.size.connect(refit)
        QTimer.singleShot(FIT_SETTLE_MS, lambda: viewer.canvas.events.size.disconnect(refit))

    def _show_measurements(self, cells: Labels) -> None:
        try:
            _, table = self._viewer.window.add_plugin_dock_widget(PLUGIN, MEASURE_WIDGET)
        except Exception as err:  # e.g. no window (headless viewer model): the layer still has it all
            log.info("measurement table not docked: %s", err)
            return
        table.show_layer(cells)
