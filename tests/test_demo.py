"""`napari-wbc demo`: headless on disk, and the GUI flow that docks widgets and segments."""

from __future__ import annotations

import pandas as pd
import pytest

from napari_wbc import demo
from napari_wbc._sample_data import SAMPLES, sample_path
from napari_wbc.cli import main


def test_headless_demo_segments_the_samples(tmp_path, capsys, trained_model):
    out = tmp_path / "demo"
    assert main(["demo", "--headless", "--out", str(out)]) == 0
    stems = [sample_path(key).stem for key in SAMPLES]
    for stem in stems:
        for suffix in ("_cells.tif", "_nuclei.tif", "_cells.csv"):
            assert (out / f"{stem}{suffix}").is_file()
    summary = pd.read_csv(out / "summary.csv")
    assert [p.split("/")[-1] for p in summary["file"]] == [f"{s}.jpg" for s in stems]
    assert (summary["white_cells"] >= 1).all()
    printed = capsys.readouterr().out
    assert "segmented 2 of 2 sample fields" in printed and str(out.resolve()) in printed


@pytest.mark.parametrize(
    ("env", "expected"), [({}, False), ({"DISPLAY": ":1"}, True), ({"WAYLAND_DISPLAY": "wayland-0"}, True)]
)
def test_has_display_on_linux(monkeypatch, env, expected):
    monkeypatch.setattr(demo.sys, "platform", "linux")
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert demo.has_display() is expected


def test_demo_without_display_runs_headless(monkeypatch, tmp_path):
    calls, said = [], []
    monkeypatch.setattr(demo, "has_display", lambda: False)
    monkeypatch.setattr(demo, "segment_samples", lambda out: calls.append(out) or (0, "written"))
    assert demo.run_demo(headless=False, out=str(tmp_path), say=said.append) == 0
    assert calls == [str(tmp_path)]
    assert said == ["no display found: segmenting the samples headless instead", "written"]


@pytest.mark.gui
def test_gui_demo_shows_cells_nuclei_and_table(make_napari_viewer_proxy, qtbot, trained_model):
    viewer = make_napari_viewer_proxy()
    segment = demo.start_demo(viewer)
    assert segment.worker is not None
    qtbot.waitUntil(lambda: segment.worker is None, timeout=120_000)
    stem = sample_path("two_cells").stem
    assert [layer.name for layer in viewer.layers] == [stem, f"{stem} nuclei", f"{stem} cells"]
    _, table = viewer.window.add_plugin_dock_widget(demo.PLUGIN, demo.MEASURE_WIDGET)
    cells = viewer.layers[f"{stem} cells"]
    assert table.layer.value == cells
    assert table.table.rowCount() == len(cells.features) >= 1
