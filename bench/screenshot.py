"""Screenshot of the demo flow (sample field, Segment widget, measurement table).

Writes docs/screenshot_segment.png. Needs a display; on a server run it under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb \
        .venv/bin/python bench/screenshot.py
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "screenshot_segment.png"))
    p.add_argument("--sample", default="two_cells")
    p.add_argument("--size", default="1500x950", help="window size, WIDTHxHEIGHT")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the segmentation")
    args = p.parse_args(argv)

    import napari
    from qtpy.QtWidgets import QApplication

    from napari_wbc.demo import MEASURE_WIDGET, PLUGIN, start_demo

    viewer = napari.Viewer(title="napari WBC", show=True)
    width, height = (int(v) for v in args.size.split("x"))
    viewer.window.resize(width, height)
    segment = start_demo(viewer, args.sample)
    if segment.worker is None:
        print("the segmentation did not start (see the notification above)", file=sys.stderr)
        return 1
    app = QApplication.instance()
    deadline = time.monotonic() + args.timeout
    while segment.worker is not None:
        if time.monotonic() > deadline:
            print(f"segmentation still running after {args.timeout:.0f} s", file=sys.stderr)
            return 1
        app.processEvents()
        time.sleep(0.05)
    # select the largest cell in the table, as a user would, so the shot shows the sync
    _, table = viewer.window.add_plugin_dock_widget(PLUGIN, MEASURE_WIDGET)
    features = table.features
    if features is not None and len(features):
        largest = int(features.loc[features["cell_area_px"].idxmax(), "label"])
        table.table.selectRow(table.row_of(largest))
    out = save_screenshot(viewer, app, args.out)
    print(f"wrote {out}: {segment.status.value}")
    viewer.close()
    return 0


def save_screenshot(viewer, app, out) -> str:
    """Let Qt settle, then save the whole window (canvas and docks) as PNG; say its size."""
    from PIL import Image

    for _ in range(2):  # fit the view again once the docks have taken their final width
        viewer.reset_view()
        for _ in range(20):
            app.processEvents()
            time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(shot).save(out, optimize=True)
    return f"{out} ({shot.shape[1]}x{shot.shape[0]})"


if __name__ == "__main__":
    sys.exit(main())
