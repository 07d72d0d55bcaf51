"""The report of a smear with many cells: self-contained, JPEG thumbnails at the size shown,
the flagged cells and a sample per type on the sheet, every cell in the CSV, the counts the
table's; and the review statuses in the Cell gallery's colours."""

from __future__ import annotations

import base64
import io
import re
from html.parser import HTMLParser

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from napari_wbc.core import report as rp
from napari_wbc.core import verification as v
from napari_wbc.core.dataset import CELL_TYPES, NOT_WBC
from napari_wbc.core.measure import count_summary

N_CELLS = 1200  # over REPORT_ALL_CELLS: the sheet shows the flagged cells and a sample per type
SIDE = 96  # the thumbnails' side, as the Cell gallery's sign-off makes them


class Page(HTMLParser):
    """The page's figures (cell id -> its <img>, None without one), every src and href, and
    whether each element closes in order."""

    VOID = {"meta", "img", "br", "hr", "link", "input"}

    def __init__(self, text: str):
        super().__init__()
        self.stack, self.errors, self.figures, self.links, self.sources = [], [], {}, [], []
        self._figure = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "src" in attrs:
            self.sources.append(attrs["src"])
        if "href" in attrs:
            self.links.append(attrs["href"])
        if tag == "figure":
            self._figure = int(attrs["id"].removeprefix("cell-"))
            self.figures[self._figure] = None
        elif tag == "img" and self._figure is not None:
            self.figures[self._figure] = attrs
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if tag == "figure":
            self._figure = None
        if not self.stack or self.stack.pop() != tag:
            self.errors.append(tag)


def many_cells(n: int = N_CELLS, seed: int = 0) -> pd.DataFrame:
    """``n`` typed and reviewed cells: most confirmed, some reclassified, excluded, of low
    confidence or at the border (the flagged ones)."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice([*CELL_TYPES, NOT_WBC], n, p=[0.5, 0.25, 0.1, 0.06, 0.02, 0.07])
    table = pd.DataFrame(
        {
            "label": np.arange(1, n + 1),
            "cell_type": kinds.astype(object),
            "type_confidence": np.where(rng.random(n) < 0.03, 0.5, 0.95),
            "touches_border": rng.random(n) < 0.02,
            "ncr": rng.uniform(0.3, 2.0, n),
            "cell_area_px": rng.uniform(800, 3000, n).round(),
            "nucleus_area_px": rng.uniform(300, 1500, n).round(),
        }
    )
    table = v.confirm(v.start_review(table), table["label"], "Ann")
    white = table.loc[table["cell_type"] != NOT_WBC, "label"].to_numpy()
    table = v.set_type(table, white[::97], "basophil", "Ann")  # reclassified (or confirmed)
    return v.set_type(table, white[5::211], NOT_WBC, "Ann")  # excluded by the reviewer


def thumbs_of(labels) -> dict:
    """A plain thumbnail per cell, its colour from its id."""
    return {int(label): np.full((SIDE, SIDE, 3), (int(label) % 251, 90, 160), np.uint8) for label in labels}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("report")
    table = many_cells()
    record = v.sign_off(table, "Ann", {"mifnet": "ab" * 32})
    paths = rp.write_report(folder, "smear", table, thumbs_of(table["label"]), record)
    return table, paths, paths["html"].read_text(encoding="utf-8")


def test_the_sheet_shows_every_flagged_cell_and_a_sample_per_type(report):
    table, paths, page = report
    parsed = Page(page)
    assert parsed.errors == [] and parsed.stack == []
    _, flagged = rp.report_tables(table)
    assert 0 < len(flagged) < len(table)
    assert set(flagged["review_status"]) >= {"reclassified", "excluded"}
    shown = rp.report_cells(table)
    assert set(parsed.figures) == set(shown) and len(shown) < len(table)
    # every flagged cell is on the sheet with its thumbnail, and the flagged table links to it
    assert set(flagged["label"]) <= {label for label, img in parsed.figures.items() if img is not None}
    assert {f"#cell-{label}" for label in flagged["label"]} <= set(parsed.links)
    # a sample of the others of each type: REPORT_SAMPLE of them, or all when fewer
    others = table[~table["label"].isin(flagged["label"])]
    for kind, own in others.groupby("cell_type"):
        on_sheet = own["label"].isin(shown).sum()
        assert on_sheet == min(rp.REPORT_SAMPLE, len(own)), kind
    # the note says so, and where every cell is
    assert f"{len(table):,} cells: too many to show each" in page
    assert f"all {len(flagged):,} flagged cells" in page and paths["csv"].name in page


def test_the_report_is_self_contained_with_jpeg_thumbnails_at_the_size_shown(report):
    _, _, page = report
    parsed = Page(page)
    assert parsed.sources and all(src.startswith("data:image/jpeg;base64,") for src in parsed.sources)
    assert all(link.startswith("#") for link in parsed.links)  # within the page
    assert not re.search(r"<link|<script|@import|url\(|https?://", page)
    for img in parsed.figures.values():
        jpeg = Image.open(io.BytesIO(base64.b64decode(img["src"].split(",", 1)[1])))
        assert jpeg.format == "JPEG" and jpeg.size == (SIDE, SIDE)
        assert (img["width"], img["height"]) == (str(SIDE), str(SIDE))
    assert len(page) < 8_000 * len(parsed.figures) + 600_000  # a few kB per thumbnail shown


def test_the_counts_are_the_tables_and_the_csv_lists_every_cell(report):
    table, paths, page = report
    counts = count_summary(table)
    csv = pd.read_csv(paths["csv"])
    diff = csv[csv["section"] == "differential"].set_index("type")
    cells = csv[csv["section"] == "cell"]
    assert sorted(cells["label"]) == sorted(table["label"])
    by_type = cells["type"].value_counts()
    for kind in CELL_TYPES:
        assert diff.loc[kind, "count"] == counts[f"n_{kind}"] == by_type.get(kind, 0)
        assert diff.loc[kind, "percent"] == pytest.approx(counts[f"pct_{kind}"], abs=0.01)
        # each share's 95% interval holds it and narrows with the cells counted (N_CELLS here)
        low, high = diff.loc[kind, ["ci95_low", "ci95_high"]]
        assert low <= counts[f"pct_{kind}"] <= high and high - low < 10
        assert f"<td>{low:.0f}–{high:.0f}</td>" in page
        if counts[f"n_{kind}"]:  # the page's section of that type counts all of them
            assert f">{kind.capitalize()}: {counts[f'n_{kind}']} (" in page
    totals = csv[csv["section"] == "total"].set_index("type")["count"]
    assert totals["white cells"] == counts["white_cells"] == (cells["type"] != NOT_WBC).sum()
    assert totals["excluded (not a white cell)"] == counts["excluded"] == by_type[NOT_WBC]
    # the cells' rows carry their review and flags; the flagged ones are those of the flagged section
    flagged = csv[csv["section"] == "flagged"]
    assert sorted(cells.loc[cells["flags"].notna(), "label"]) == sorted(flagged["label"])
    assert (cells.set_index("label")["review_status"] == table.set_index("label")["review_status"]).all()


def test_a_small_report_shows_every_cell_without_a_note(tmp_path):
    table = many_cells(rp.REPORT_ALL_CELLS)
    assert rp.report_cells(table) == table["label"].tolist()
    paths = rp.write_report(tmp_path, "small", table, thumbs_of(table["label"]))
    page = paths["html"].read_text(encoding="utf-8")
    assert set(Page(page).figures) == set(table["label"])
    assert "too many to show each" not in page
    assert len(pd.read_csv(paths["csv"]).query("section == 'cell'")) == len(table)


def test_only_the_shown_cells_need_thumbnails(tmp_path, report):
    table, _, page = report
    shown = rp.report_cells(table)
    paths = rp.write_report(tmp_path, "smear", table, thumbs_of(shown))
    figures = Page(paths["html"].read_text(encoding="utf-8")).figures
    assert set(figures) == set(shown) and all(img is not None for img in figures.values())


def _frame_colours(page: str) -> dict[str, str]:
    """status -> the colour the page's CSS gives a thumbnail's frame of that status."""
    return dict(re.findall(r"figure\.(\w+) img,[^{]*\{border-color:(#[0-9a-fA-F]{6})\}", page))


def test_the_report_frames_each_status_in_the_palette(report):
    table, _, page = report
    assert _frame_colours(page) == v.STATUS_COLOURS
    reclassified = int(table.loc[table["review_status"] == "reclassified", "label"].iloc[0])
    assert f'<figure id="cell-{reclassified}" class="reclassified">' in page
    assert v.STATUS_COLOURS["reclassified"] in page


@pytest.mark.gui
def test_the_gallery_and_the_report_share_one_palette(report):
    from napari_wbc._widgets import gallery, gallery_view

    assert gallery_view.STATUS_COLOURS is v.STATUS_COLOURS  # the thumbnails' borders
    assert gallery.STATUS_COLOURS is v.STATUS_COLOURS  # the legend
    assert set(v.STATUS_COLOURS) == set(v.STATUSES)
    assert _frame_colours(report[2]) == gallery_view.STATUS_COLOURS
    for status, colour in v.STATUS_COLOURS.items():  # the gallery's legend shows the same colours
        assert f"<span style='color:{colour}'>■</span>{status}" in gallery.LEGEND
