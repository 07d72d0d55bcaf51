"""Bundled sample fields: present, attributed, readable, and registered with napari."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from napari_wbc import _sample_data
from napari_wbc._sample_data import SAMPLES, sample_path

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = resources.files("napari_wbc") / "napari.yaml"


@pytest.mark.parametrize("key", sorted(SAMPLES))
def test_sample_layer(key):
    path = sample_path(key)
    assert path.is_file() and path.suffix == ".jpg"
    assert path.stat().st_size < 100_000  # keep the repository small
    ((data, kwargs, kind),) = getattr(_sample_data, key)()
    assert kind == "image" and kwargs["rgb"] is True
    assert kwargs["name"] == path.stem
    assert data.shape == (480, 640, 3) and data.dtype == np.uint8
    with Image.open(path) as im:
        np.testing.assert_array_equal(data, np.asarray(im.convert("RGB")))


def test_samples_are_unmodified_bccd_originals():
    originals = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "bccd" / "images"
    if not originals.is_dir():
        pytest.skip("../shared/datasets is not here")
    for name in SAMPLES.values():
        assert (_sample_data.SAMPLE_DIR / name).read_bytes() == (originals / name).read_bytes()


def test_unknown_sample_lists_the_keys():
    with pytest.raises(KeyError, match="two_cells"):
        sample_path("nope")


def test_sources_attribute_every_file():
    sources = (_sample_data.SAMPLE_DIR / "SOURCES.md").read_text()
    for name in SAMPLES.values():
        assert name in sources
    assert "MIT" in sources and "Shenggan/BCCD_Dataset" in sources and "Banik" in sources
    pointer = (ROOT / "sample_data" / "SOURCES.md").read_text()
    assert "src/napari_wbc/sample_data" in pointer and "MIT" in pointer


def test_manifest_lists_the_samples_and_points_into_submodules():
    manifest = yaml.safe_load(MANIFEST.read_text())
    assert manifest["name"] == "napari-wbc" and manifest["display_name"] == "napari WBC"
    commands = {c["id"]: c["python_name"] for c in manifest["contributions"]["commands"]}
    samples = {s["key"]: commands[s["command"]] for s in manifest["contributions"]["sample_data"]}
    assert samples == {key: f"napari_wbc._sample_data:{key}" for key in [*SAMPLES, "sample_slide"]}
    for python_name in commands.values():
        module, _ = python_name.split(":")
        assert module.startswith("napari_wbc.") and module != "napari_wbc"


def test_installed_manifest_is_valid_and_importable():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_distribution("napari-wbc")  # through the entry point
    assert manifest.display_name == "napari WBC"
    manifest.validate_imports()  # every python_name resolves


def test_napari_open_sample(notifications):
    from napari.components import ViewerModel
    from npe2 import PluginManager

    PluginManager.instance().discover()
    viewer = ViewerModel()
    layers = viewer.open_sample("napari-wbc", "two_cells")
    assert [layer.name for layer in layers] == ["BloodImage_00034"]
    assert layers[0].rgb and layers[0].data.shape == (480, 640, 3)
    assert notifications == []


def test_napari_open_sample_slide(notifications, tmp_path, monkeypatch):
    import dask.array as da
    from napari.components import ViewerModel
    from npe2 import PluginManager

    monkeypatch.setenv("NAPARI_WBC_HOME", str(tmp_path / "home"))
    PluginManager.instance().discover()
    viewer = ViewerModel()
    (layer,) = viewer.open_sample("napari-wbc", "sample_slide")
    assert layer.name == "sample_slide" and layer.rgb and layer.multiscale
    assert layer.data[0].shape == (3360, 4960, 3) and len(layer.data) > 3
    assert all(isinstance(level, da.Array) for level in layer.data)  # lazy: read as drawn
    assert tuple(layer.scale) == pytest.approx((0.1, 0.1))
    path = Path(layer.metadata["slide"])
    assert path.is_relative_to(tmp_path / "home" / "cache") and path.name == "sample_slide.ome.tif"
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left
    # real smear content: the first field lies at (160, 160), unchanged
    with Image.open(_sample_data.SAMPLE_DIR / "BloodImage_00034.jpg") as im:
        field = np.asarray(im.convert("RGB"))
    np.testing.assert_array_equal(np.asarray(layer.data[0][160:640, 160:800]), field)
    built = path.stat().st_mtime_ns
    (layer,) = viewer.open_sample("napari-wbc", "sample_slide")  # built once, then reused
    assert path.stat().st_mtime_ns == built and layer.data[0].shape == (3360, 4960, 3)
    assert notifications == []
