"""Shared fixtures: keep napari's settings out of the home folder, sample data, notifications."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

# napari reads some folders when it is first imported, before any fixture runs: point them at
# a throw-away folder here, and at the test's own tmp_path in the autouse fixture below.
_SESSION_HOME = tempfile.mkdtemp(prefix="napari-wbc-tests-")
atexit.register(shutil.rmtree, _SESSION_HOME, ignore_errors=True)
for _var in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME", "XDG_DATA_HOME"):
    os.environ[_var] = os.path.join(_SESSION_HOME, _var.lower())
os.environ["NAPARI_WBC_HOME"] = os.path.join(_SESSION_HOME, "napari-wbc")  # no user-trained models

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
DATASETS = SHARED / "datasets"


@pytest.fixture(autouse=True)
def _private_folders(tmp_path_factory, monkeypatch):
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / "config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / "cache"))


@pytest.fixture
def notifications():
    """Every napari notification shown during the test, as (severity name, message)."""
    from napari.utils.notifications import notification_manager

    shown: list[tuple[str, str]] = []

    def record(notification):
        shown.append((str(notification.severity).lower(), str(notification.message)))

    notification_manager.notification_ready.connect(record)
    yield shown
    notification_manager.notification_ready.disconnect(record)


@pytest.fixture(scope="session")
def trained_model() -> str:
    """Name of the shipped default model; its weights must ship with the package."""
    from napari_wbc.models import DEFAULT_MODEL, available_weights

    assert DEFAULT_MODEL in available_weights(), "the default model's weights are missing"
    return DEFAULT_MODEL


@pytest.fixture(scope="session")
def datasets() -> Path:
    """../shared/datasets beside the checkout (CI has it): real smears with ground truth."""
    if not (DATASETS / "bccd").is_dir():
        pytest.fail(f"the datasets are missing: expected ../shared/datasets at {DATASETS}")
    return DATASETS


@pytest.fixture
def tiny_dataset(tmp_path, datasets):
    """Three zheng_d1 crops as a training folder: 001 and 002 train, 003 val."""
    src = datasets / "zheng_d1"
    root = tmp_path / "tiny"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rows = ["stem,split"]
    for stem, split in (("001", "train"), ("002", "train"), ("003", "val")):
        shutil.copy(src / "images" / f"{stem}.png", root / "images")
        shutil.copy(src / "labels" / f"{stem}.png", root / "labels")
        rows.append(f"{stem},{split}")
    (root / "split.csv").write_text("\n".join(rows) + "\n")
    return root
