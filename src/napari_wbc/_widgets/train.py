"""Train widget: fine-tune a model, or train an untrained one, in a background thread.

The folders are the ones "Save as training data" writes (or any dataset folder with
images/ and labels/), optionally mixed with the base datasets; for the cell-type
classifier also type corrections folders (:mod:`napari_wbc.core.corrections`). "start from"
lists every model with weights (segmenters and the cell-type classifier) and every
architecture without any, as "(not trained yet: trains from scratch)": the widget trains
those itself, with the paper's recipe filled in, and a line under the choice says plainly
what a run will do. :func:`napari_wbc.core.train.train` (segmenters) or
:func:`napari_wbc.core.train_classifier.train_classifier` runs in a ``thread_worker``,
with its ``progress`` callback relayed to the progress bar and a live loss / validation
plot, and its ``cancelled`` callback tied to Cancel.

Every run is validated: the user's training folders must have a val part (save as training
data keeps every 10th field for it, type corrections the 2nd, 12th, 22nd... field), else
the run is refused with what to do, so no untested model is listed next to the shipped one.
It trains into a staging folder beside the models; only a finished run becomes a model: a
new versioned folder ``<architecture>-ft-YYYYmmdd-HHMMSS`` (from scratch: the
architecture's name, when free) in :func:`napari_wbc.models.user_model_dir`, its
``config.json`` saying what it was tuned from (name and sha256), on what and for how long.
Cancel discards the run. Existing weights, shipped or trained, are never written to. When
the model is there, every docked widget's choices are refreshed, so the Segment widget
offers it (a classifier under "cell types"). The classifier's examples from the base
datasets are collected once (the default segmenter over their train and val images) and kept
in the user cache folder.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from magicgui.widgets import (
    CheckBox,
    ComboBox,
    Container,
    FileEdit,
    FloatSpinBox,
    Label,
    LineEdit,
    ProgressBar,
    PushButton,
    SpinBox,
)
from napari.qt.threading import thread_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtCore import QObject, Signal
from qtpy.QtWidgets import QFileDialog

from ..core.io import InputError
from ..models import DEFAULT_MODEL
from ._layers import OptionsPanel, scroll_form, side_by_side
from ._plot import LossPlot

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

TIPS = {
    "folders": "training folders (from 'Save as training data', or datasets with images/ and labels/; "
    "for the cell-type classifier also type corrections folders), separated by ';'",
    "base": "also train on the base datasets, so the model keeps what it knew",
    "base_folder": "a dataset folder, or a folder of them (e.g. the datasets the model was trained on)",
    "init": "the weights to start from (never overwritten), or an architecture to train from scratch",
    "name": "name of the new model; empty: <architecture>-ft-<date>-<time>",
    "steps": "training steps (one batch each)",
    "val_every": "validate every this many steps (on the folders' val split)",
    "cancel": "stop after the current step; nothing is saved",
}
# the widget's settings per kind of run: (steps, batch, patch, lr, validate every)
FINE_TUNE = (300, 4, 192, 1e-4, 100)
# the classifier: the measured recipe of docs/benchmarks.md ("Corrected cell types ...")
CLASSIFIER_FINE_TUNE = (200, 64, 64, 2e-4, 25)


@dataclass(frozen=True)
class Untrained:
    """An architecture without weights, picked in "start from": trained from scratch."""

    name: str


def init_choices(_widget=None) -> list[tuple[str, object]]:
    """(label, value) for "start from": every model with weights (segmenters, then cell
    classifiers), then every architecture without any (an :class:`Untrained`)."""
    from ..models import available_weights
    from .segment import model_choices

    trained = sorted(available_weights())
    classifiers = sorted(available_weights(classifiers=True))
    untrained = [name for label, name in model_choices() if label != name]  # as Segment lists them
    return (
        [(name, name) for name in trained]
        + [(f"{name} (cell-type classifier)", name) for name in classifiers]
        + [(f"{name} (not trained yet: trains from scratch)", Untrained(name)) for name in untrained]
    )


class _Relay(QObject):
    """Carries progress from the training thread to the widget (a queued Qt signal)."""

    step = Signal(int, int, object)


def dataset_folders(text: str, base: Path | None = None, classifier: bool = False) -> list[Path]:
    """The training folders in ``text`` (';'-separated), then the dataset folders in ``base``;
    each once. With ``classifier``, type corrections folders count too."""
    from ..core.corrections import is_corrections_folder, read_corrections
    from ..core.dataset import list_pairs

    folders = [Path(t.strip()).expanduser() for t in text.split(";") if t.strip()]
    if base is not None:
        base = Path(base)
        folders += (
            [base]
            if (base / "images").is_dir()
            else sorted(d for d in base.iterdir() if (d / "images").is_dir() and (d / "labels").is_dir())
        )
    folders = list({folder.resolve(): folder for folder in folders}.values())  # each once
    if not folders:
        raise InputError("add a training folder (Save as training data writes one)")
    for folder in folders:
        if classifier and is_corrections_folder(folder):
            if not read_corrections(folder, "train"):
                raise InputError(f"{folder} has no type corrections to train on yet")
            continue
        try:
            if not list_pairs(folder, "train"):
                raise InputError(f"{folder} has no training pairs yet")
        except FileNotFoundError as err:
            if not classifier:
                raise InputError(str(err)) from err
            raise InputError(f"{folder} is neither a type corrections folder nor a dataset folder") from err
    return folders


def check_validation(folders: list[Path], classifier: bool = False) -> None:
    """Refuse (InputError) when a run on the user's ``folders`` could not be validated on
    them: a model trained without a val split would be listed untested."""
    from ..core.corrections import is_corrections_folder, read_corrections
    from ..core.dataset import image_cell_types, list_pairs

    for folder in folders:
        if classifier and is_corrections_folder(folder):
            if not read_corrections(folder, "val"):
                fields = len({r.get("field") for r in read_corrections(folder)})
                raise InputError(
                    f"{folder.name}: its type corrections come from {fields} field(s), none kept for "
                    "validation, so the new classifier could not be checked; save the corrections of one "
                    "more field (the 2nd, 12th, 22nd... field saved is kept for validation)"
                )
        elif classifier and not image_cell_types(folder):
            raise InputError(
                f"{folder.name} gives no cell types (class_labels.csv or wbc_class_labels.csv): the "
                "classifier learns from type corrections folders or datasets with cell types"
            )
    if classifier:
        return
    if not any(list_pairs(folder, "val") for folder in folders):
        raise InputError(
            "the training folders have no val pairs, so the new model could not be validated and would "
            "be listed untested next to the shipped one; save at least 5 fields as training data (every "
            "10th field saved is kept for validation), or mark some pairs 'val' in split.csv"
        )


def _finish(staging: Path, final: Path, init: str | None, init_dir: Path | None, history: dict) -> Path:
    """Turn a finished run into a model folder that says where it came from."""
    import datetime
    import json
    import os

    from ..models import sha256

    (staging / "checkpoint.pt").unlink(missing_ok=True)
    for cache in staging.glob("examples_*.npz"):
        cache.unlink()
    config = json.loads((staging / "config.json").read_text())
    run = config.pop("trained", None)
    record = {
        "data": history["data"],
        "steps": history.get("steps"),
        "best": history.get("best"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    if init_dir is None:
        config["trained"] = {"from": "scratch", **record, "run": run}
    else:
        config["fine_tuned"] = {
            "from": init,
            "from_sha256": sha256(init_dir / "model.safetensors"),
            **record,
            **({"run": run} if run else {}),  # the classifier's own record of the run
        }
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)  # the model appears whole, or not at all
    return final


@thread_worker(ignore_errors=True)  # errors become notifications
def _train_job(folders, staging, final, config, device, init, relay, stop, classifier=False):
    import shutil

    from .._paths import user_cache_dir
    from ..core.train import train
    from ..core.train_classifier import train_classifier
    from ..models import resolve_weights

    init_dir = None if init is None else resolve_weights(init)

    def progress(step, total, info):
        relay.step.emit(step, total, dict(info))

    try:
        if classifier:
            history = train_classifier(
                folders,
                staging,
                config,
                device,
                init_weights=init_dir,
                progress=progress,
                cancelled=stop.is_set,
                cache=user_cache_dir() / "celltype-examples",
            )
        else:
            history = train(
                folders,
                staging,
                config,
                device=device,
                init_weights=init_dir,
                progress=progress,
                cancelled=stop.is_set,
            )
        if stop.is_set() and history.get("steps", 0) < config.max_steps:
            return None
        folder = _finish(staging, final, init, init_dir, history)
        kept = bool(init_dir is not None and (history.get("best") or {}).get("step") == 0)
        return {"folder": folder, "kept_start": kept, "classifier": classifier, "init": init}
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class TrainWidget(Container):
    """Fine-tune a model, or train an untrained one; the result is a new, versioned model."""

    def __init__(self, viewer: napari.viewer.Viewer):
        from ..core.device import available_devices

        super().__init__()
        self._viewer = viewer
        self.worker = None
        self._stop = threading.Event()
        self._relay = _Relay(self.native)
        self._relay.step.connect(self._on_progress)
        self.folders = LineEdit(label="training folders", tooltip=TIPS["folders"])
        self.add_button = PushButton(text="Add folder…")
        self.base = CheckBox(text="mix with base datasets", tooltip=TIPS["base"])
        self.base_folder = FileEdit(
            label="base datasets", mode="d", nullable=True, tooltip=TIPS["base_folder"]
        )
        self.init = ComboBox(label="start from", choices=init_choices, tooltip=TIPS["init"])
        if DEFAULT_MODEL in self.init.choices:
            self.init.value = DEFAULT_MODEL
        self.plan = Label(value="")
        self.plan.native.setWordWrap(True)
        self.model_name = LineEdit(label="new model", tooltip=TIPS["name"])
        self.steps = SpinBox(label="steps", value=300, min=1, max=1_000_000, tooltip=TIPS["steps"])
        self.batch_size = SpinBox(label="batch size", value=4, min=1, max=256)
        self.patch = SpinBox(label="patch (px)", value=192, min=32, max=1024, step=32)
        self.lr = FloatSpinBox(label="learning rate", value=1e-4, min=1e-6, max=1e-1, step=1e-5)
        self.val_every = SpinBox(
            label="validate every", value=100, min=1, max=1_000_000, tooltip=TIPS["val_every"]
        )
        self.device = ComboBox(label="device", choices=available_devices(), value="auto")
        self.run_button = PushButton(text="Fine-tune")
        self.cancel_button = PushButton(text="Cancel", enabled=False, tooltip=TIPS["cancel"])
        self.progress_bar = ProgressBar(label="progress", min=0, max=1, value=0)
        self.status = Label(value="")
        # the recipe's numbers are filled in per kind of run: folded, the dock stays short
        self.settings = OptionsPanel(
            [self.steps, self.batch_size, self.patch, self.lr, self.val_every, self.device],
            title="training settings",
        )
        self.form = scroll_form(
            self,
            [
                self.folders,
                self.add_button,
                self.base,
                self.base_folder,
                self.init,
                self.plan,
                self.model_name,
                self.settings,
                side_by_side(self.run_button, self.cancel_button),
                self.progress_bar,
                self.status,
            ],
        )
        self.plot = LossPlot()
        self.form.native.layout().addWidget(self.plot)  # scrolls with the form
        self._classifier_run = False

        self.add_button.changed.connect(self._ask_folder)
        self.init.changed.connect(self._on_init)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)
        self._on_init()

    def _architecture(self, init) -> str:
        from ..models import read_spec, resolve_weights

        return init.name if isinstance(init, Untrained) else read_spec(resolve_weights(init)).name

    def _on_init(self, _value=None) -> None:
        """Fill in the settings for the chosen start and say plainly what a run will do."""
        from ..core.train import TrainConfig, recipe
        from ..models import MissingWeightsError
        from ..models.registry import model_kind

        init = self.init.value
        try:
            arch = self._architecture(init)
        except MissingWeightsError as err:
            self.plan.value = str(err)
            return
        classifier = model_kind(arch) == "classifier"
        if isinstance(init, Untrained):
            paper = recipe(TrainConfig(model=arch))
            settings = (self.steps.value, paper.batch_size, paper.patch, paper.lr, FINE_TUNE[4])
            self.run_button.text = "Train from scratch"
            self.plan.value = (
                f"{arch} has no weights yet: Train trains it here from scratch on the training folders, "
                f"with its paper's recipe (lr {paper.lr:g}, batch {paper.batch_size}, {paper.patch} px "
                "patches), validating on their val split. A usable network takes thousands of steps, "
                "hours on a CPU (a GPU is much faster); a few hundred make a trial model only. The result "
                f"becomes the model '{arch}', which Segment offers."
            )
        elif classifier:
            settings = CLASSIFIER_FINE_TUNE
            self.run_button.text = "Fine-tune"
            self.plan.value = (
                f"fine-tunes the cell-type classifier {init} on type corrections folders (and datasets with "
                "cell types), validating on their val cells, into a new classifier; the start weights "
                "stay the result unless validation improves on them. Tick 'mix with base datasets': "
                "corrections alone gain most on the lab's own smears but make it forget the rest "
                "(measured in docs/benchmarks.md; the first mixed run collects the "
                "base examples once, about 30 min on 2 CPU cores). Segment offers the result under "
                "'cell types' (options); on the command line: "
                "`napari-wbc segment --classifier-weights FOLDER`."
            )
        else:
            settings = FINE_TUNE
            self.run_button.text = "Fine-tune"
            self.plan.value = (
                f"fine-tunes {init} on the training folders, validating on their val split, into a new "
                "model that Segment offers."
            )
        self.patch.visible = not classifier
        for box, value in zip(
            (self.steps, self.batch_size, self.patch, self.lr, self.val_every), settings, strict=True
        ):
            box.value = value

    def _ask_folder(self, _value=None) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Training folder")
        if folder:
            self.folders.value = "; ".join([t for t in (self.folders.value.strip(),) if t] + [folder])

    def _new_name(self, init, arch: str) -> str:
        from ..models import available_weights, user_model_dir

        stamp = time.strftime("%Y%m%d-%H%M%S")
        taken = {*available_weights(), *available_weights(classifiers=True)}
        default = f"{arch}-ft-{stamp}"
        if isinstance(init, Untrained):
            default = (
                arch if arch not in taken and not (user_model_dir() / arch).exists() else f"{arch}-{stamp}"
            )
        name = self.model_name.value.strip() or default
        if name != Path(name).name or name.startswith("."):
            raise InputError(f"{name!r} is not a valid model name (no '/' and no leading '.')")
        if name in taken or (user_model_dir() / name).exists():
            raise InputError(f"a model called {name!r} exists already; choose another name")
        return name

    def run(self, _value=None):
        """Start training; returns the worker (None if nothing started)."""
        from ..core.device import pick_device
        from ..core.train import TrainConfig, recipe
        from ..models import MissingWeightsError, user_model_dir
        from ..models.registry import model_kind

        if self.worker is not None:
            return None
        try:
            init = self.init.value
            if init is None:
                raise InputError("choose what to start from")
            arch = self._architecture(init)
            classifier = model_kind(arch) == "classifier"
            if self.base.value and self.base_folder.value is None:
                raise InputError("choose the base datasets folder, or untick 'mix with base datasets'")
            own = dataset_folders(self.folders.value, classifier=classifier)
            check_validation(own, classifier)
            folders = dataset_folders(
                self.folders.value, self.base_folder.value if self.base.value else None, classifier
            )
            name = self._new_name(init, arch)
            final = user_model_dir() / name
            device = pick_device(self.device.value)
        except (InputError, MissingWeightsError) as err:
            show_error(str(err))
            return None
        config = TrainConfig(
            model=arch,
            batch_size=int(self.batch_size.value),
            patch=int(self.patch.value),
            lr=float(self.lr.value),
            max_steps=int(self.steps.value),
            val_every=int(self.val_every.value),
            workers=0,  # no process forked from the GUI: the thread augments its own batches
        )
        if classifier:
            config = recipe(config)  # the classifier's augmentation and weight decay
        staging = user_model_dir().parent / "training" / name
        start = None if isinstance(init, Untrained) else init
        self._stop.clear()
        worker = _train_job(
            folders, staging, final, config, device, start, self._relay, self._stop, classifier
        )
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self._classifier_run = classifier
        self.plot.clear(config.max_steps)
        self.progress_bar.max, self.progress_bar.value = config.max_steps, 0
        self.run_button.enabled, self.cancel_button.enabled = False, True
        what = f"training {arch} from scratch" if start is None else f"fine-tuning {init}"
        self.status.value = f"{what} into {name} on {device}"
        worker.start()
        return worker

    def cancel(self, _value=None) -> None:
        if self.worker is not None:
            self._stop.set()
            self.status.value = "cancelling after the current step"

    def _on_progress(self, step: int, total: int, info: dict) -> None:
        if total == 0:  # the classifier collects its examples from the base datasets first
            what = ", ".join(f"{k} examples {100 * v:.0f}%" for k, v in info.items())
            self.status.value = f"{what} (once; then cached)"
            return
        self.progress_bar.max, self.progress_bar.value = total, step
        dice = info.get("dice_cell") if "dice_nucleus" in info else None  # no val split: no Dice
        self.plot.add(step, info.get("loss"), dice)
        if self._stop.is_set():
            return
        parts = [f"step {step}/{total}"]
        if info.get("loss") is not None:
            parts.append(f"loss {info['loss']:.4f}")
        if "accuracy" in info:
            parts.append(f"val accuracy {100 * info['accuracy']:.1f}%")
        self.status.value = ", ".join(parts)

    def _on_done(self, result) -> None:
        if result is None:
            self.status.value = "cancelled; no new model"
            show_info("fine-tuning cancelled; nothing was saved")
            return
        folder = result["folder"]
        self.status.value = f"new model {folder.name}"
        if result["kept_start"]:
            self.status.value += f" (no step beat {result['init']} on validation: it keeps its weights)"
        if result["classifier"]:
            show_info(
                f"new cell-type classifier {folder.name} in {folder.parent}; pick it in Segment white "
                f"cells (options: cell types), or use `napari-wbc segment --classifier-weights {folder}`"
            )
        else:
            show_info(f"new model {folder.name} in {folder.parent}; pick it in Segment white cells")
        self._refresh_model_lists()

    def _refresh_model_lists(self) -> None:
        """Let every docked widget rebuild its choices (napari does the same on layer changes)."""
        self.init.reset_choices()
        try:
            docked = list(self._viewer.window.dock_widgets.values())
        except Exception as err:  # no window (a headless viewer model)
            log.info("no docked widgets to refresh: %s", err)
            return
        for widget in docked:
            if hasattr(widget, "reset_choices"):
                widget.reset_choices()

    def _on_error(self, err: Exception) -> None:
        log.error("training failed", exc_info=err)
        show_error(f"training failed: {err}")
        self.status.value = "failed"

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
