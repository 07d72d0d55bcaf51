"""Screenshot of the review flow: a bccd sample field segmented, reviewed against its ground truth.

Writes docs/screenshot_review.png: the "<image> review" layer (TP cytoplasm yellow, TP
nucleus blue, false positive green, false negative red) over the field, with the Review
widget (as tall as its controls, the metrics in view) and the measurement table (review
columns joined) docked. Needs a display and
../shared/datasets; on a server run it under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python bench/screenshot_review.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from screenshot import save_screenshot  # bench/ is on sys.path when run as a script

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
REVIEW_WIDGET = "Review against a reference"  # display name in napari.yaml
REVIEW_HEIGHT = 560  # px: the review dock with its metrics table and the missed cells in view


def _wait(app, busy, timeout: float, what: str) -> bool:
    deadline = time.monotonic() + timeout
    while busy():
        if time.monotonic() > deadline:
            print(f"{what} still running after {timeout:.0f} s", file=sys.stderr)
            return False
        app.processEvents()
        time.sleep(0.05)
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshot_review.png"))
    p.add_argument("--sample", default="two_cells")
    p.add_argument("--size", default="1500x950", help="window size, WIDTHxHEIGHT")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for each step")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_wbc._sample_data import sample_path
    from napari_wbc.demo import PLUGIN, start_demo

    stem = sample_path(args.sample).stem
    truth = DATASETS / "bccd" / "labels" / f"{stem}.png"
    if not truth.exists():
        print(f"no ground truth for {stem} at {truth}", file=sys.stderr)
        return 1
    viewer = napari.Viewer(title="napari WBC", show=True)
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window.resize(width, height)
    app = QApplication.instance()
    segment = start_demo(viewer, args.sample)
    running = lambda: segment.worker is not None  # noqa: E731
    if segment.worker is None or not _wait(app, running, args.timeout, "segmentation"):
        return 1
    viewer.window.remove_dock_widget(segment.native)  # the review is the subject here
    dock, review = viewer.window.add_plugin_dock_widget(PLUGIN, REVIEW_WIDGET)
    review.prediction.value = viewer.layers[f"{stem} cells"]
    review.open_reference(truth)
    if review.run() is None or not _wait(app, lambda: review.worker is not None, args.timeout, "review"):
        return 1
    viewer.layers[f"{stem} nuclei"].visible = False  # the review colours say it all
    viewer.layers.selection.active = viewer.layers[f"{stem} cells"]
    _fit_docks(viewer, app, dock, review.native)
    out = save_screenshot(viewer, app, args.out)
    print(f"wrote {out}: {review.summary.value}")
    viewer.close()
    return 0


def _fit_docks(viewer, app, review_dock, review) -> None:
    """The docks wide enough for the table's columns; the review dock tall enough for its
    metrics (the docks are compact by default: it would scroll), the table above it short."""
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QDockWidget, QSizePolicy

    window = viewer.window._qt_window
    app.processEvents()
    right = [
        d
        for d in window.findChildren(QDockWidget)
        if d.isVisible() and window.dockWidgetArea(d) == Qt.DockWidgetArea.RightDockWidgetArea
    ]
    window.resizeDocks(right, [560] * len(right), Qt.Orientation.Horizontal)
    app.processEvents()
    # the review tall enough for its metrics table (its dock asks for less, and would scroll);
    # the table above it the rest
    review.setSizePolicy(QSizePolicy.Policy.Preferred, QSizePolicy.Policy.Expanding)
    review_dock.setMinimumHeight(REVIEW_HEIGHT)


if __name__ == "__main__":
    sys.exit(main())
