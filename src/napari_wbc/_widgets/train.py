"""Train widget: fine-tune a model on training folders in a background thread.

The folders are the ones "Save as training data" writes (or any dataset folder with
images/ and labels/), optionally mixed with the base datasets. :func:`napari_wbc.core.train.train`
runs in a ``thread_worker`` from the chosen weights, with its ``progress`` callback relayed
to the progress bar and a live loss / validation-Dice plot, and its ``cancelled`` callback
tied to Cancel. It trains into a staging folder beside the models; only a finished run
becomes a model: a new versioned folder ``<architecture>-ft-YYYYmmdd-HHMMSS`` in
:func:`napari_wbc.models.user_model_dir`, its ``config.json`` saying what it was tuned
from (name and sha256), on what and for how long. Cancel discards the run. Existing
weights, shipped or trained, are never written to. When the model is there, every docked
widget's choices are refreshed, so the Segment widget offers it.
"""

from __future__ import annotations

import logging
import threading
import time
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
from ._plot import LossPlot

if TYPE_CHECKING:
    import napari

log = logging.getLogger(__name__)

TIPS = {
    "folders": "training folders (from 'Save as training data', or datasets with images/ and labels/), "
    "separated by ';'",
    "base": "also train on the base datasets, so the model keeps what it knew",
    "base_folder": "a dataset folder, or a folder of them (e.g. the datasets the model was trained on)",
    "init": "the weights to start from (never overwritten)",
    "name": "name of the new model; empty: <architecture>-ft-<date>-<time>",
    "steps": "training steps (one batch each)",
    "val_every": "validate every this many steps (on the folders' val split, when they have one)",
    "cancel": "stop after the current step; nothing is saved",
}


class _Relay(QObject):
    """Carries progress from the training thread to the widget (a queued Qt signal)."""

    step = Signal(int, int, object)


def dataset_folders(text: str, base: Path | None = None) -> list[Path]:
    """The training folders in ``text`` (';'-separated), then the dataset folders in ``base``; each once."""
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
        try:
            if not list_pairs(folder, "train"):
                raise InputError(f"{folder} has no training pairs yet")
        except FileNotFoundError as err:
            raise InputError(str(err)) from err
    return folders


def _finish(staging: Path, final: Path, init: str, init_dir: Path, history: dict) -> Path:
    """Turn a finished run into a model folder that says where it came from."""
    import datetime
    import json
    import os

    from ..models import sha256

    (staging / "checkpoint.pt").unlink(missing_ok=True)
    config = json.loads((staging / "config.json").read_text())
    base = config.pop("trained", None)
    config["fine_tuned"] = {
        "from": init,
        "from_sha256": sha256(init_dir / "model.safetensors"),
        "base_training": base,
        "data": history["data"],
        "steps": history.get("steps"),
        "best": history.get("best"),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    (staging / "config.json").write_text(json.dumps(config, indent=2))
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, final)  # the model appears whole, or not at all
    return final


@thread_worker(ignore_errors=True)  # errors become notifications
def _train_job(folders, staging, final, config, device, init, relay, stop):
    import shutil

    from ..core.train import train
    from ..models import resolve_weights

    init_dir = resolve_weights(init)
    try:
        history = train(
            folders,
            staging,
            config,
            device=device,
            init_weights=init_dir,
            progress=lambda step, total, info: relay.step.emit(step, total, dict(info)),
            cancelled=stop.is_set,
        )
        if stop.is_set() and history.get("steps", 0) < config.max_steps:
            return None
        return _finish(staging, final, init, init_dir, history)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


class TrainWidget(Container):
    """Fine-tune a model on training folders; the result is a new, versioned model."""

    def __init__(self, viewer: napari.viewer.Viewer):
        from ..core.device import available_devices
        from ..models import available_weights

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
        self.init = ComboBox(
            label="start from", choices=lambda _w: sorted(available_weights()), tooltip=TIPS["init"]
        )
        if DEFAULT_MODEL in self.init.choices:
            self.init.value = DEFAULT_MODEL
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
        self.extend(
            [
                self.folders,
                self.add_button,
                self.base,
                self.base_folder,
                self.init,
                self.model_name,
                self.steps,
                self.batch_size,
                self.patch,
                self.lr,
                self.val_every,
                self.device,
                self.run_button,
                self.cancel_button,
                self.progress_bar,
                self.status,
            ]
        )
        self.plot = LossPlot()
        self.native.layout().addWidget(self.plot)

        self.add_button.changed.connect(self._ask_folder)
        self.run_button.changed.connect(self.run)
        self.cancel_button.changed.connect(self.cancel)

    def _ask_folder(self, _value=None) -> None:
        folder = QFileDialog.getExistingDirectory(self.native, "Training folder")
        if folder:
            self.folders.value = "; ".join([t for t in (self.folders.value.strip(),) if t] + [folder])

    def _new_name(self, init_dir: Path) -> str:
        from ..models import read_spec

        stamp = time.strftime("%Y%m%d-%H%M%S")
        name = self.model_name.value.strip() or f"{read_spec(init_dir).name}-ft-{stamp}"
        if name != Path(name).name or name.startswith("."):
            raise InputError(f"{name!r} is not a valid model name (no '/' and no leading '.')")
        return name

    def run(self, _value=None):
        """Start fine-tuning; returns the worker (None if nothing started)."""
        from ..core.device import pick_device
        from ..core.train import TrainConfig
        from ..models import MissingWeightsError, available_weights, resolve_weights, user_model_dir

        if self.worker is not None:
            return None
        try:
            folders = dataset_folders(self.folders.value, self.base_folder.value if self.base.value else None)
            if self.base.value and self.base_folder.value is None:
                raise InputError("choose the base datasets folder, or untick 'mix with base datasets'")
            init = self.init.value
            init_dir = resolve_weights(init)
            name = self._new_name(init_dir)
            final = user_model_dir() / name
            if name in available_weights() or final.exists():
                raise InputError(f"a model called {name!r} exists already; choose another name")
            device = pick_device(self.device.value)
        except (InputError, MissingWeightsError) as err:
            show_error(str(err))
            return None
        config = TrainConfig(
            batch_size=int(self.batch_size.value),
            patch=int(self.patch.value),
            lr=float(self.lr.value),
            max_steps=int(self.steps.value),
            val_every=int(self.val_every.value),
        )
        staging = user_model_dir().parent / "training" / name
        self._stop.clear()
        worker = _train_job(folders, staging, final, config, device, init, self._relay, self._stop)
        worker.returned.connect(self._on_done)
        worker.errored.connect(self._on_error)
        worker.finished.connect(self._on_finished)
        self.worker = worker
        self.plot.clear(config.max_steps)
        self.progress_bar.max, self.progress_bar.value = config.max_steps, 0
        self.run_button.enabled, self.cancel_button.enabled = False, True
        self.status.value = f"fine-tuning {init} into {name} on {device}"
        worker.start()
        return worker

    def cancel(self, _value=None) -> None:
        if self.worker is not None:
            self._stop.set()
            self.status.value = "cancelling after the current step"

    def _on_progress(self, step: int, total: int, info: dict) -> None:
        self.progress_bar.max, self.progress_bar.value = total, step
        dice = info.get("dice_cell") if "dice_nucleus" in info else None  # no val split: no Dice
        self.plot.add(step, info.get("loss"), dice)
        if not self._stop.is_set():
            self.status.value = f"step {step}/{total}, loss {info.get('loss', float('nan')):.4f}"

    def _on_done(self, folder) -> None:
        if folder is None:
            self.status.value = "cancelled; no new model"
            show_info("fine-tuning cancelled; nothing was saved")
            return
        self.status.value = f"new model {folder.name}"
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
        log.error("fine-tuning failed", exc_info=err)
        show_error(f"fine-tuning failed: {err}")
        self.status.value = "failed"

    def _on_finished(self) -> None:
        self.worker = None
        self.run_button.enabled, self.cancel_button.enabled = True, False
