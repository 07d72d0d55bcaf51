"""The verification report: its size and how long it takes to write, with 100, 1,000 and
5,000 cells.

``python bench/report.py [--cells 100 1000 5000]``: a real bccd field is segmented and typed
once with the shipped models and tiled into one image with the wanted number of cells (as
``bench/gallery.py`` does); the review confirms every cell and reclassifies one in 40, then
signs off. Printed per size: the cells the report's gallery sheet shows
(:func:`napari_wbc.core.report.report_cells`: every cell up to ``REPORT_ALL_CELLS``,
else the flagged cells and a sample per type), the time to make their thumbnails (96 px, as
the Cell gallery's sign-off makes them), the time :func:`write_report` takes (encoding the
thumbnails, the page, the CSV) and the sizes of the HTML page and the CSV.

No display needed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gallery import DATASETS, FIELD, segment_field, tiled  # noqa: E402

RECLASSIFY_EVERY = 40


def reviewed(table):
    """Every cell confirmed, one in RECLASSIFY_EVERY reclassified; the sign-off record."""
    from napari_wbc.core import verification as v

    t = v.confirm(v.start_review(table), table["label"], "bench")
    white = t[t["cell_type"] != "not_wbc"]["label"].tolist()
    t = v.set_type(t, white[::RECLASSIFY_EVERY], "monocyte", "bench")
    t = v.set_type(t, white[1::RECLASSIFY_EVERY], "lymphocyte", "bench")  # one of them a change
    t = v.set_type(t, t.loc[t["cell_type"] == "unidentified", "label"], "neutrophil", "bench")
    return t, v.sign_off(t, "bench", {"mifnet": "0" * 64})


def time_report(field, n_cells: int, folder: Path) -> dict:
    from napari_wbc.core import report as rp
    from napari_wbc.core import thumbnails as tn

    rgb, cells, nuclei, table = tiled(field, n_cells)
    table, record = reviewed(table)
    shown = rp.report_cells(table) if hasattr(rp, "report_cells") else table["label"].astype(int).tolist()
    begin = time.perf_counter()
    thumbs = dict(zip(shown, tn.thumbnails(rgb, cells, nuclei, shown, table=table), strict=True))
    out = {"cells": n_cells, "shown": len(shown), "thumbnails_s": time.perf_counter() - begin}
    begin = time.perf_counter()
    paths = rp.write_report(folder, f"tiled_{n_cells}", table, thumbs, record, {"image": "tiled.jpg"})
    out["write_s"] = time.perf_counter() - begin
    out["html_mb"] = paths["html"].stat().st_size / 1e6
    out["csv_kb"] = paths["csv"].stat().st_size / 1e3
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cells", type=int, nargs="+", default=[100, 1000, 5000])
    args = p.parse_args(argv)
    field = segment_field(DATASETS / "bccd" / "images" / f"{FIELD}.jpg")
    print(f"field {FIELD}: {len(field[3])} cells; tiled into images of N cells")
    print("| cells | cells on the sheet | their thumbnails s | write_report s | HTML MB | CSV kB |")
    print("|---" * 6 + "|")
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.cells:
            r = time_report(field, n, Path(tmp))
            print(
                f"| {r['cells']:,} | {r['shown']:,} | {r['thumbnails_s']:.2f} | {r['write_s']:.2f} "
                f"| {r['html_mb']:.1f} | {r['csv_kb']:.0f} |",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
