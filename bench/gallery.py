"""Cell gallery: how long it takes to open, scroll and review with 100, 1,000 and 5,000 cells;
and its screenshots.

Timing (``python bench/gallery.py [--cells 100 1000 5000]``): a real bccd field is segmented
and typed once with the shipped models; its image and labels are tiled into one big image
(real pixels; each tile's cells get their own ids) holding the wanted number of cells, opened
as multiscale layers as a slide is. The gallery is shown (a top-level window, 560 x 900 px,
five thumbnails a row) on those layers in a viewer without a canvas, so the figures are the
gallery's own. Printed per size:

- open: from creating the widget to the first screen of thumbnails drawn (layout, then the
  thumbnails of the cells on screen, made off the GUI thread);
- scroll: paging down through the whole gallery, the time from a page step until every
  thumbnail on screen is drawn (median, 95th percentile, max), and the time for a page whose
  thumbnails were made already (a page back up);
- key: one keypress that reclassifies a cell (table, layer features, groups, differential);
  then with the Measurements table docked too (sorted by cell type), the median of KEYS
  keypresses with the table rebuilt whole on each (as before issue 14's follow-up: "before")
  and with only its changed items updated (its way now: "after");
- save: writing the review file; report: confirm all, sign off, write the report (thumbnails
  of every cell into one HTML page).

Screenshots (``python bench/gallery.py --screenshots``): six real bccd fields tiled 3 x 2 into
one smear image (saved as a JPEG in a temporary folder and opened with the plugin's reader, so
the review and report go there), segmented by the Segment widget, the gallery docked; the
cells of the fields whose bccd labels name one type only are reviewed with the keys by those
labels (Enter where the classifier agrees, the type's key where not; the two-type fields stay
unreviewed), and a reclassified cell is picked; writes docs/screenshot_gallery.png and, after
the sign-off is refused (cells unreviewed), docs/screenshot_signoff.png.

Both need a display; on a server run them under Xvfb:

    xvfb-run -a -s "-screen 0 1600x1000x24" env QT_QPA_PLATFORM=xcb .venv/bin/python bench/gallery.py
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ROOT.parent / "shared" / "datasets"
FIELD = "BloodImage_00111"  # 8 objects: white cells and what the classifier excludes
MOSAIC = (  # 3 x 2 fields for the screenshots: neutrophils, lymphocytes, a monocyte, eosinophils, debris
    ("BloodImage_00010", "BloodImage_00020", "BloodImage_00015"),
    ("BloodImage_00034", "BloodImage_00031", "BloodImage_00003"),
)
TIMEOUT = 120.0
KEYS = 3  # keypresses timed per way of updating the Measurements table


def _wait(app, done, timeout: float = TIMEOUT) -> float:
    """Process events until ``done()``; the seconds it took."""
    start = time.perf_counter()
    while not done():
        if time.perf_counter() - start > timeout:
            raise TimeoutError(f"still waiting after {timeout:.0f} s")
        app.processEvents()
        time.sleep(0.001)
    return time.perf_counter() - start


def segment_field(path: Path):
    """(rgb, cells, nuclei, table) of a field, as the Segment widget makes them."""
    from PIL import Image

    from napari_wbc.core.celltypes import load_classifier
    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.measure import measure_cells
    from napari_wbc.models import load_model

    rgb = np.asarray(Image.open(path).convert("RGB"))
    net, spec = load_model("mifnet", device="cpu")
    result = run(segment(rgb, net, spec, classifier=load_classifier("classifier", "cpu")))
    table = measure_cells(result.cells, result.nuclei, None, types=result.types, type_probs=result.type_probs)
    return rgb, result.cells, result.nuclei, table


def tiled(field, n_cells: int):
    """The field tiled into one image with ``n_cells`` cells: (rgb, cells, nuclei, table)."""
    import pandas as pd

    rgb, cells, nuclei, table = field
    per_tile = int(cells.max())
    tiles = math.ceil(n_cells / per_tile)
    cols = math.ceil(math.sqrt(tiles))
    rows = math.ceil(tiles / cols)
    h, w = cells.shape
    big = np.zeros((rows * h, cols * w, 3), np.uint8)
    big_cells = np.zeros((rows * h, cols * w), np.uint32)
    big_nuclei = np.zeros_like(big_cells)
    parts = []
    for k in range(rows * cols):
        y, x = (k // cols) * h, (k % cols) * w
        big[y : y + h, x : x + w] = rgb
        if k >= tiles:
            continue
        offset = k * per_tile
        keep = np.arange(per_tile + 1) + offset <= n_cells  # ids past n_cells are left out
        keep[0] = False
        big_cells[y : y + h, x : x + w] = np.where(keep[cells], cells + offset, 0)
        big_nuclei[y : y + h, x : x + w] = np.where(keep[nuclei], nuclei + offset, 0)
        part = table[table["label"] + offset <= n_cells].copy()
        part["label"] += offset
        part["centroid_y"] += y
        part["centroid_x"] += x
        parts.append(part)
    return big, big_cells, big_nuclei, pd.concat(parts, ignore_index=True)


def _levels(array):
    return [array, array[::4, ::4], array[::16, ::16]]


def time_gallery(app, field, n_cells: int, folder: Path) -> dict:
    from napari.components import ViewerModel
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_wbc._widgets.gallery import GalleryWidget
    from napari_wbc._widgets.measure import COLUMN_ROLE, MeasureWidget
    from napari_wbc.core.measure import count_summary
    from napari_wbc.core.thumbnails import thumbnails

    rgb, cells, nuclei, table = tiled(field, n_cells)
    assert len(table) == n_cells
    source = folder / f"tiled_{n_cells}.jpg"  # the review goes beside it; nothing is written there
    viewer = ViewerModel()
    image = viewer.add_image(
        _levels(rgb), name="tiled", rgb=True, multiscale=True, metadata={"source": str(source)}
    )
    viewer.add_labels(_levels(nuclei), name="tiled nuclei", multiscale=True)
    viewer.add_labels(
        _levels(cells),
        name="tiled cells",
        multiscale=True,
        features=table.assign(index=table["label"]),
        metadata={
            "source_layer": image.name,
            "source": str(source),
            "model": "mifnet",
            "counts": count_summary(table),
        },
    )
    out = {"cells": n_cells, "megapixels": rgb.shape[0] * rgb.shape[1] / 1e6}

    def on_screen() -> list[int]:
        app.processEvents()  # laid out and painted: the thumbnails on screen are asked for
        return gallery.view.visible_labels()

    def drawn(shown):
        return lambda: all(gallery.thumbs.cached(label) is not None for label in shown)

    start = time.perf_counter()
    gallery = GalleryWidget(viewer)
    gallery.resize(560, 900)
    gallery.show()
    out["layout_s"] = time.perf_counter() - start
    _wait(app, drawn(on_screen()))
    out["open_s"] = time.perf_counter() - start

    bar = gallery.view.verticalScrollBar()
    pages = []
    while bar.value() < bar.maximum():
        begin = time.perf_counter()
        bar.setValue(bar.value() + bar.pageStep())
        shown = on_screen()
        pages.append(time.perf_counter() - begin + _wait(app, drawn(shown)))
    out["pages"] = len(pages)
    out["page_median_s"] = statistics.median(pages) if pages else 0.0
    out["page_p95_s"] = sorted(pages)[int(0.95 * (len(pages) - 1))] if pages else 0.0
    out["page_max_s"] = max(pages, default=0.0)
    begin = time.perf_counter()  # a page back up: its thumbnails are in the cache
    bar.setValue(bar.value() - bar.pageStep())
    gallery.view.viewport().repaint()
    out["cached_page_s"] = time.perf_counter() - begin
    assert drawn(on_screen())()

    gallery.reviewer.setText("bench")
    order = gallery.model.cell_order()

    def key(label):
        gallery.select_cells([label])
        begin = time.perf_counter()
        QTest.keyClick(gallery.view, Qt.Key.Key_2)
        app.processEvents()
        return time.perf_counter() - begin

    out["key_s"] = key(order[0])
    table_widget = MeasureWidget(viewer)  # the Measurements table docked too, sorted by cell type
    table_widget.show()
    app.processEvents()
    qt_table = table_widget.table
    names = [qt_table.horizontalHeaderItem(c).data(COLUMN_ROLE) for c in range(qt_table.columnCount())]
    qt_table.sortItems(names.index("cell_type"))
    following = iter(order[1:])
    with mock.patch.object(MeasureWidget, "update_changed", return_value=False):  # before: rebuilt
        out["key_rebuild_s"] = statistics.median(key(next(following)) for _ in range(KEYS))
    out["key_with_table_s"] = statistics.median(key(next(following)) for _ in range(KEYS))
    table_widget.native.close()

    gallery._review_file = folder / f"tiled_{n_cells}_review.json"
    begin = time.perf_counter()
    gallery._dirty = True
    gallery.save()
    out["save_s"] = time.perf_counter() - begin

    begin = time.perf_counter()
    thumbnails(rgb, cells, nuclei, order, table=table)
    out["thumbnails_s"] = time.perf_counter() - begin
    gallery.view.selectAll()
    QTest.keyClick(gallery.view, Qt.Key.Key_Return)
    begin = time.perf_counter()
    worker = gallery.sign_off()
    if worker is None:
        raise RuntimeError(f"sign-off refused: {gallery.message.text()}")
    _wait(app, lambda: gallery.signoff_worker is None, timeout=600)
    out["report_s"] = time.perf_counter() - begin
    out["report_mb"] = gallery.report["html"].stat().st_size / 1e6
    gallery.close()
    return out


def run_timing(sizes: list[int]) -> int:
    from qtpy.QtWidgets import QApplication

    app = QApplication.instance() or QApplication([])
    field = segment_field(DATASETS / "bccd" / "images" / f"{FIELD}.jpg")
    print(f"field {FIELD}: {len(field[3])} cells; tiled into images of N cells")
    print(
        "| cells | image MP | layout s | open s (first screen) | pages | page median / p95 / max s "
        "| page again s | key s alone / with the Measurements table rebuilt (before) / updated (after) "
        "| save s | all thumbnails s | sign-off + report s (MB) |"
    )
    print("|---" * 11 + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in sizes:
            r = time_gallery(app, field, n, Path(tmp))
            print(
                f"| {r['cells']:,} | {r['megapixels']:.0f} | {r['layout_s']:.2f} | {r['open_s']:.2f} "
                f"| {r['pages']} | {r['page_median_s']:.3f} / {r['page_p95_s']:.3f} / {r['page_max_s']:.3f} "
                f"| {r['cached_page_s']:.3f} | {r['key_s']:.3f} / {r['key_rebuild_s']:.3f} "
                f"/ {r['key_with_table_s']:.3f} "
                f"| {r['save_s']:.3f} | {r['thumbnails_s']:.1f} "
                f"| {r['report_s']:.1f} ({r['report_mb']:.1f}) |",
                flush=True,
            )
    return 0


def _mosaic(folder: Path) -> Path:
    from PIL import Image

    rows = [
        np.concatenate(
            [np.asarray(Image.open(DATASETS / "bccd" / "images" / f"{s}.jpg").convert("RGB")) for s in row], 1
        )
        for row in MOSAIC
    ]
    path = folder / "bccd_mosaic.jpg"
    Image.fromarray(np.concatenate(rows, 0)).save(path, quality=95)
    return path


def _truth() -> dict[str, list[str]]:
    """bccd field stem -> the white-cell types its labels list (lower case)."""
    import pandas as pd

    table = pd.read_csv(DATASETS / "bccd" / "wbc_class_labels.csv")
    return {
        f"BloodImage_{int(row.Image):05d}": [t.strip().lower() for t in str(row.Category).split(",")]
        for row in table.itertuples()
        if isinstance(row.Category, str)
    }


def _review_by_truth(gallery, table, app) -> list[int]:
    """Type, with the keys, the cells of the mosaic's fields whose labels list one type only
    (the bccd labels name a field's types, not which cell is which); the cells reviewed."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    from napari_wbc._widgets.gallery_view import KEY_TYPES

    key_of = {kind: key for key, kind in KEY_TYPES.items()}
    truth = _truth()
    h, w = 480, 640
    done = []
    for label in gallery.model.cell_order():
        row = table.set_index("label").loc[label]
        stem = MOSAIC[int(row["centroid_y"] // h)][int(row["centroid_x"] // w)]
        kinds = set(truth.get(stem, []))
        if len(kinds) != 1 or row["cell_type"] == "not_wbc":
            continue
        kind = kinds.pop()
        gallery.select_cells([label])
        QTest.keyClick(gallery.view, Qt.Key.Key_Return if kind == row["cell_type"] else key_of[kind])
        app.processEvents()
        done.append(label)
    return done


def _shoot(viewer, app, path: Path) -> None:
    from PIL import Image

    for _ in range(30):
        app.processEvents()
        time.sleep(0.05)
    shot = viewer.screenshot(canvas_only=False, flash=False)
    Image.fromarray(shot).save(path, optimize=True)
    print(f"wrote {path} ({shot.shape[1]}x{shot.shape[0]})")


def run_screenshots(out_dir: Path) -> int:
    import napari
    from qtpy.QtCore import Qt
    from qtpy.QtWidgets import QApplication

    from napari_wbc._widgets.segment import SegmentWidget

    with tempfile.TemporaryDirectory() as tmp:
        path = _mosaic(Path(tmp))
        viewer = napari.Viewer(title="napari WBC", show=True)
        viewer.window.resize(1600, 1000)
        app = QApplication.instance()
        image = viewer.open(path, plugin="napari-wbc")[0]
        segment = SegmentWidget(viewer)
        viewer.window.add_dock_widget(segment, name="segment")
        segment.image.value = image
        if segment.run() is None:
            return 1
        _wait(app, lambda: segment.worker is None, timeout=600)
        for widget in list(viewer.window.dock_widgets.values()):  # the segment widget and the table
            viewer.window.remove_dock_widget(getattr(widget, "native", widget))
        dock, gallery = viewer.window.add_plugin_dock_widget("napari-wbc", "Cell gallery")
        viewer.window._qt_window.resizeDocks([dock], [500], Qt.Orientation.Horizontal)  # four a row
        viewer.reset_view()
        cells = viewer.layers[f"{image.name} cells"]
        table = cells.features.copy()
        print(f"{len(table)} cells; {gallery.differential.text()}")
        gallery.reviewer.setText("A. Hematologist")
        gallery.view.setFocus()
        reviewed = _review_by_truth(gallery, table, app)
        print(f"reviewed {len(reviewed)} cells by the fields' labels; {gallery.differential.text()}")
        # a reclassified cell picked: the viewer centred (and zoomed) on it
        features = cells.features.set_index("label")
        picked = [
            label
            for label in reviewed
            if features.loc[label, "review_status"] == "reclassified"
            and not features.loc[label, "touches_border"]
        ]
        gallery.select_cells(picked[:1] or reviewed[:1])
        gallery.view.scrollToTop()
        _wait(app, lambda: not gallery.thumbs.busy)
        _shoot(viewer, app, out_dir / "screenshot_gallery.png")
        gallery.sign_off()
        print(f"sign-off: {gallery.message.text()}")
        _shoot(viewer, app, out_dir / "screenshot_signoff.png")
        viewer.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[100, 1000, 5000])
    p.add_argument("--screenshots", action="store_true", help="write the two screenshots instead")
    p.add_argument("--out", default=str(ROOT / "docs"), help="folder for the screenshots")
    args = p.parse_args(argv)
    if args.screenshots:
        return run_screenshots(Path(args.out))
    return run_timing(args.cells)


if __name__ == "__main__":
    sys.exit(main())
