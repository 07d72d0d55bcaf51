"""The report of a review: the differential, the flagged cells and the cells' thumbnails.

- :func:`write_report`: ``<stem>_report.csv`` and ``<stem>_report.html`` (one self-contained
  page: the sign-off line, the differential with NCR and areas per type, the flagged cells,
  the cells' thumbnails (JPEG) grouped by type: above ``REPORT_ALL_CELLS`` cells the flagged
  ones and a sample per type, :func:`report_cells`; the CSV lists every cell); atomic, and a
  signed report is never replaced (a new name, ``<stem>_report-2.html``..., instead).
- :func:`report_output`: the report of one output of a ``segment --out`` folder
  (``napari-wbc report``; :func:`output_stems` lists them), signed off on request.

The review and its sign-off are made in :mod:`.verification`, the thumbnails in :mod:`.thumbnails`.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path

import numpy as np
import pandas as pd

from ..models import weights_sha256
from .batch import write_atomic
from .celltypes import differential
from .dataset import CELL_TYPES, NOT_WBC, UNIDENTIFIED
from .io import InputError
from .measure import count_summary, describe_counts
from .slide import plane_shape
from .thumbnails import CELL_COLOUR, NUCLEUS_COLOUR, THUMB_SIZE, thumbnails
from .verification import (
    STATUS_COLOURS,
    SignOffRefused,
    n_cells,
    open_review,
    review_path,
    save_review,
    sign_off,
    signoff_holds,
    signoff_problems,
    start_review,
    text,
    utc_now,
)

# a cell typed with less confidence than this is flagged in the report (the classifier calls
# cells under its ``unidentified_below``, 0.3 for the shipped one, unidentified)
LOW_CONFIDENCE = 0.6
REPORT_THUMB = 128  # the report's thumbnails are larger: people would rather look than read
# the report's thumbnails are JPEG at this quality, colour not subsampled (the 1 px outlines stay
# sharp): a third of a PNG's size, encoded 40x faster
REPORT_JPEG_QUALITY = 85
REPORT_ALL_CELLS = 500  # up to this many cells the report's sheet shows every cell's thumbnail;
REPORT_SAMPLE = 40  # above, the flagged cells and a sample of this many others per type


def _area_columns(table: pd.DataFrame) -> tuple[str, str, str]:
    """(cell area column, nucleus area column, unit): um^2 when the table has them."""
    if "cell_area_um2" in table and table["cell_area_um2"].notna().any():
        return "cell_area_um2", "nucleus_area_um2", "µm²"
    return "cell_area_px", "nucleus_area_px", "px"


def _flags(t: pd.DataFrame) -> pd.Series:
    """Per cell, why the report flags it ("" when it does not)."""
    confidence = (
        t["type_confidence"].astype(float) if "type_confidence" in t else pd.Series(np.nan, index=t.index)
    )
    suggested = t["suggested_type"]
    low = confidence.lt(LOW_CONFIDENCE) & ~suggested.isin(("", NOT_WBC))
    border = t["touches_border"].astype(bool) if "touches_border" in t else pd.Series(False, index=t.index)
    status = t["review_status"]
    parts = [
        (low, "low confidence"),
        (border, "touches the border"),
        (status == "reclassified", "reclassified"),
        ((status == "excluded") & (suggested != NOT_WBC), "excluded by the reviewer"),
    ]
    flags = pd.Series([[] for _ in range(len(t))], index=t.index)
    for mask, why in parts:
        for i in t.index[mask.to_numpy()]:
            flags[i].append(why)
    return flags.map("; ".join)


def _stats(values: pd.Series) -> tuple[float, float, float]:
    v = values.astype(float).dropna()
    return (float(v.median()), float(v.min()), float(v.max())) if len(v) else (np.nan, np.nan, np.nan)


def report_tables(table: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(per type, flagged cells)``: per type (the five, then unidentified) its count,
    percent and the percent's 95% confidence interval (``ci95_low``, ``ci95_high``), and the
    median, min and max of NCR and the cell and nucleus areas; the flagged
    cells (low confidence, touching the border, reclassified, excluded by the reviewer)."""
    t = start_review(table)
    counts = count_summary(t)
    cell_area, nucleus_area, unit = _area_columns(t)
    unit = "um2" if unit != "px" else "px"
    kinds = t["cell_type"].map(text)
    shares = differential(t)  # the percents' 95% intervals
    rows = []
    for kind in (*CELL_TYPES, UNIDENTIFIED):
        own = t[kinds == kind]
        row = {"type": kind, "count": counts.get(f"n_{kind}", len(own)), "percent": counts.get(f"pct_{kind}")}
        row["ci95_low"], row["ci95_high"] = shares.loc[kind, ["ci_low", "ci_high"]]
        for column, name in (
            ("ncr", "ncr"),
            (cell_area, f"cell_area_{unit}"),
            (nucleus_area, f"nucleus_area_{unit}"),
        ):
            row[f"{name}_median"], row[f"{name}_min"], row[f"{name}_max"] = (
                _stats(own[column]) if column in own else (np.nan,) * 3
            )
        rows.append(row)
    per_type = pd.DataFrame(rows)
    cells = _cell_rows(t)
    return per_type, cells[cells["flags"] != ""].reset_index(drop=True)


def _cell_rows(t: pd.DataFrame) -> pd.DataFrame:
    """Every cell of a review table (:func:`.verification.start_review`'s) with why it is
    flagged ("" if not)."""
    columns = ["label", "cell_type", "suggested_type", "review_status", "type_confidence", "touches_border"]
    cells = t[[c for c in columns if c in t]].copy()
    cells["flags"] = _flags(t)
    return cells


def report_cells(table: pd.DataFrame) -> list[int]:
    """The cells whose thumbnails the report's sheet shows, by id (the others need none):
    every cell up to ``REPORT_ALL_CELLS`` cells; above, every flagged cell (:func:`report_tables`)
    and a sample of ``REPORT_SAMPLE`` others per type, spread evenly over its cells by id."""
    t = start_review(table)
    labels = t["label"].astype(np.int64).to_numpy()
    if len(t) <= REPORT_ALL_CELLS:
        return labels.tolist()
    flagged = (_flags(t) != "").to_numpy()
    shown = flagged.copy()
    kinds = t["cell_type"].map(text).to_numpy()
    for kind in dict.fromkeys(kinds):
        others = np.flatnonzero((kinds == kind) & ~flagged)
        others = others[np.argsort(labels[others], kind="stable")]
        if len(others) > REPORT_SAMPLE:  # steps over 1: no cell picked twice
            others = others[np.linspace(0, len(others) - 1, REPORT_SAMPLE).round().astype(np.int64)]
        shown[others] = True
    return labels[shown].tolist()


def _signoff_line(record: dict | None, problems: list[str]) -> str:
    if record:
        return f"signed off by {record['reviewer']} at {record['time']}"
    return "not signed off: " + "; ".join(problems)


def _report_csv(t: pd.DataFrame, record: dict | None, problems: list[str], meta: dict) -> pd.DataFrame:
    counts = count_summary(t)
    per_type, flagged = report_tables(t)
    line = _signoff_line(record, problems)
    models = (record or {}).get("models") or meta.get("models") or {}
    head = [
        {"section": "signoff", "type": "signed" if record else "not signed", "note": line},
        *(
            {"section": "model", "type": name, "note": f"weights sha256 {sha or 'unknown'}"}
            for name, sha in models.items()
        ),
        {"section": "image", "note": text(meta.get("image"))},
        {
            "section": "total",
            "type": "white cells",
            "count": counts["white_cells"],
            "note": describe_counts(counts),
        },
        {"section": "total", "type": "excluded (not a white cell)", "count": counts.get("excluded", 0)},
    ]
    parts = [pd.DataFrame(head), per_type.assign(section="differential")]
    if len(flagged):
        parts.append(flagged.rename(columns={"cell_type": "type"}).assign(section="flagged"))
    if len(t):  # every cell, whether the page's sheet shows it or not
        parts.append(_cell_rows(t).rename(columns={"cell_type": "type"}).assign(section="cell"))
    out = pd.concat(parts, ignore_index=True)
    for column in out:
        if column in ("count", "label"):
            out[column] = out[column].astype("Int64")
        elif column.startswith(("ncr_", "type_confidence")):
            out[column] = out[column].astype(float).round(3)
        elif column == "percent" or column.endswith(("_um2_median", "_um2_min", "_um2_max")):
            out[column] = out[column].astype(float).round(2)
    first = ["section", "type", "count", "percent"]
    return out[[*first, *[c for c in out if c not in (*first, "note")], "note"]]


def _jpeg(rgb: np.ndarray) -> str:
    """A thumbnail as a ``data:`` URL: JPEG, ``REPORT_JPEG_QUALITY``, 4:4:4 (the 1 px coloured
    outlines would blur with the colour subsampled); optimize would save 10% for 7x the time."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(rgb, np.uint8)).save(
        buffer, format="JPEG", quality=REPORT_JPEG_QUALITY, subsampling=0
    )
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _fmt(value, digits: int = 0) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–"
    return f"{value:,.{digits}f}"


def _range(median, lo, hi, digits: int) -> str:
    if not math.isfinite(median):
        return "–"
    return f"{_fmt(median, digits)} <span class=r>({_fmt(lo, digits)}–{_fmt(hi, digits)})</span>"


def _interval(low: float, high: float) -> str:
    return f"{low:.0f}–{high:.0f}" if math.isfinite(low) else "–"


TITLES = {
    **{kind: kind.capitalize() for kind in CELL_TYPES},
    UNIDENTIFIED: "Unidentified",
    "": "Without a type",
    NOT_WBC: "Excluded: not a white cell",
}
STATUS_TEXT = {"suggested": "not reviewed", "confirmed": "confirmed", "excluded": "excluded"}

CSS = """
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0}
body{background:#f5f6f8}
main{max-width:1120px;margin:0 auto;padding:24px 28px 48px;background:#fff;min-height:100vh}
h1{font-size:24px;margin:0 0 4px}
h2{font-size:18px;margin:28px 0 10px;padding-bottom:4px;border-bottom:1px solid #e3e6ea}
.sub{color:#5b6473;font-size:13px;margin:0 0 16px}.sub code{font-size:12px}
.banner{border-radius:8px;padding:12px 16px;margin:12px 0 20px;font-size:16px}
.banner.ok{background:#e6f4ea;border:1px solid #8cc9a0;color:#17522b}
.banner.no{background:#fdecea;border:2px solid #e0796b;color:#8a1f11}
.banner ul{margin:6px 0 0 20px;padding:0;font-size:15px}
table{border-collapse:collapse;font-size:14px;margin:4px 0}
th,td{padding:5px 12px;text-align:right;border-bottom:1px solid #e9ecef}
th{background:#f0f2f5;font-weight:600}th:first-child,td:first-child{text-align:left}
td.t,th.t{text-align:left}
tr.apart td{color:#5b6473;font-style:italic}
tr.total td{font-weight:600;border-top:2px solid #c9ced6}
.r{color:#6b7483;font-size:12px}
.grid{display:flex;flex-wrap:wrap;gap:10px}
figure{margin:0;text-align:center;font-size:12px;color:#3a4250}
figure img,figure .none{border-radius:4px;display:block;margin:0 auto 2px;border:2px solid transparent}
figure .none{background:#ddd;color:#777}
figure.suggested img,figure.suggested .none{border-style:dashed}
.st{display:block;font-size:11px;color:#6b7483}.st.reclassified{color:#1d2330;font-weight:600}
.legend span{display:inline-block;width:14px;height:3px;vertical-align:middle;margin:0 4px 0 10px}
i.sw{display:inline-block;width:9px;height:9px;border:2px solid;border-radius:2px;vertical-align:-1px}
.legend i.sw{margin:0 4px 0 10px}td i.sw{margin-right:5px}i.sw.suggested{border-style:dashed}
.note{background:#fff8e1;border:1px solid #f0d98c;border-radius:6px;padding:8px 12px;font-size:14px}
a{color:#1a5fb4;text-decoration:none}a:hover{text-decoration:underline}
footer{margin-top:32px;color:#6b7483;font-size:12px}
@media print{body{background:#fff}main{padding:0}figure{break-inside:avoid}}
"""


def _status_css() -> str:
    """The review statuses' colours (:data:`.verification.STATUS_COLOURS`, the Cell
    gallery's): a thumbnail's frame and the swatches of the legend and the flagged cells'
    table."""
    return "".join(
        f"figure.{s} img,figure.{s} .none,i.sw.{s}{{border-color:{c}}}" for s, c in STATUS_COLOURS.items()
    )


def _swatch(status: str) -> str:
    return f'<i class="sw {html.escape(status)}"></i>'


def _report_html(
    stem: str,
    t: pd.DataFrame,
    thumbs: dict,
    record: dict | None,
    problems: list[str],
    meta: dict,
    csv_name: str | None = None,
) -> str:
    from .. import __version__

    e = html.escape
    counts = count_summary(t)
    per_type, flagged = report_tables(t)
    _, _, unit = _area_columns(t)
    digits = 1 if unit == "µm²" else 0
    models = (record or {}).get("models") or meta.get("models") or {}
    kinds = t["cell_type"].map(text)
    shown = set(report_cells(t))
    out = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>White-cell differential: {e(stem)}</title>",
    ]
    if record:
        out.append(f'<meta name="napari-wbc-signoff" content="{e(record["time"])} {e(record["reviewer"])}">')
    side = max(
        (int(np.shape(a)[0]) for k, a in thumbs.items() if a is not None and k in shown), default=THUMB_SIZE
    )
    sizes = f"figure{{width:{side + 8}px}}figure .none{{width:{side}px;height:{side}px;line-height:{side}px}}"
    out += [
        f"<style>{CSS}{_status_css()}{sizes}</style></head><body><main>",
        f"<h1>White-cell differential: {e(stem)}</h1>",
    ]
    sub = []
    if meta.get("image"):
        sub.append(f"image <code>{e(str(meta['image']))}</code>")
    if meta.get("pixel_size"):
        sub.append(f"{float(meta['pixel_size']):.4g} µm/px")
    sub.append(f"report written {utc_now().replace('T', ' ').replace('Z', ' UTC')}")
    out.append(f'<p class="sub">{" · ".join(sub)}</p>')
    if record:
        out.append(
            f'<div class="banner ok">&#10004; <b>Signed off</b> by {e(record["reviewer"])} on '
            f"{e(record['time'].replace('T', ' ').replace('Z', ' UTC'))}</div>"
        )
    else:
        items = "".join(f"<li>{e(p)}</li>" for p in problems)
        out.append(f'<div class="banner no"><b>Not signed off</b><ul>{items}</ul></div>')
    # the differential
    out.append("<h2>Differential</h2><table><tr><th>type</th><th>count</th><th>%</th>")
    ci = "where the share of so few cells may lie (exact binomial, as in Ruemke's table)"
    out.append(f'<th title="{e(ci)}">95% CI</th>')
    out.append(f"<th>NCR <span class=r>median (range)</span></th><th>cell area, {unit}</th>")
    out.append(f"<th>nucleus area, {unit}</th></tr>")
    for row in per_type.itertuples(index=False):
        row = row._asdict()
        apart = ' class="apart"' if row["type"] == UNIDENTIFIED else ""
        area = [k for k in row if k.startswith("cell_area_") and k.endswith("_median")][0][: -len("_median")]
        nuc = "nucleus" + area[len("cell") :]
        name = e(TITLES[row["type"]])
        link = f'<a href="#type-{e(row["type"])}">{name}</a>' if row["count"] else name
        out.append(
            f"<tr{apart}><td>{link}</td>"
            f"<td>{row['count']}</td><td>{_fmt(row['percent'], 1)}</td>"
            f"<td>{_interval(row['ci95_low'], row['ci95_high'])}</td>"
            f"<td>{_range(row['ncr_median'], row['ncr_min'], row['ncr_max'], 2)}</td>"
            f"<td>{_range(row[area + '_median'], row[area + '_min'], row[area + '_max'], digits)}</td>"
            f"<td>{_range(row[nuc + '_median'], row[nuc + '_min'], row[nuc + '_max'], digits)}</td></tr>"
        )
    out.append(
        f'<tr class="total"><td>white cells counted</td><td>{counts["white_cells"]}</td><td>100</td><td></td>'
    )
    out.append(f"<td>{_fmt(counts.get('mean_ncr'), 2)} <span class=r>mean</span></td><td></td><td></td></tr>")
    excluded = counts.get("excluded", 0)
    name = "excluded: not a white cell"
    link = f'<a href="#type-{NOT_WBC}">{name}</a>' if excluded else name
    out.append(f'<tr class="apart"><td>{link}</td><td>{excluded}</td>' + "<td></td>" * 5 + "</tr></table>")
    status = t["review_status"].value_counts()
    tally = [
        f"{status.get(s, 0)} {STATUS_TEXT.get(s, s)}"
        for s in ("confirmed", "reclassified", "excluded", "suggested")
    ]
    out.append(
        f'<p class="sub">{n_cells(len(t))} in all: {", ".join(tally)}. {e(describe_counts(counts))}.</p>'
    )
    # flagged cells
    out.append(f"<h2>Flagged cells ({len(flagged)})</h2>")
    if len(flagged):
        out.append('<table><tr><th>cell</th><th class="t">type</th><th class="t">suggested</th>')
        out.append('<th class="t">status</th><th>confidence</th><th class="t">why</th></tr>')
        for row in flagged.to_dict("records"):
            confidence = row.get("type_confidence")
            out.append(
                f'<tr><td><a href="#cell-{row["label"]}">#{row["label"]}</a></td>'
                f'<td class="t">{e(text(row["cell_type"]) or "–")}</td>'
                f'<td class="t">{e(row["suggested_type"] or "–")}</td>'
                f'<td class="t">{_swatch(row["review_status"])}'
                f"{e(STATUS_TEXT.get(row['review_status'], row['review_status']))}</td>"
                f"<td>{_fmt(confidence, 2) if confidence is not None else '–'}</td>"
                f'<td class="t">{e(row["flags"])}</td></tr>'
            )
        out.append("</table>")
    else:
        out.append('<p class="sub">none</p>')
    # the gallery
    out.append('<h2>Cells by type</h2><p class="sub legend">outlines:')
    out.append(f'<span style="background:rgb{CELL_COLOUR}"></span>cell')
    out.append(f'<span style="background:rgb{NUCLEUS_COLOUR}"></span>nucleus; frame:')
    out.append(", ".join(f"{_swatch(s)}{e(STATUS_TEXT.get(s, s))}" for s in STATUS_COLOURS) + "</p>")
    sampled = len(shown) < len(t)
    if sampled:
        where = f"<code>{e(csv_name)}</code>" if csv_name else "the report's CSV"
        out.append(
            f'<p class="note">{len(t):,} cells: too many to show each. Shown here: all '
            f"{len(flagged):,} flagged cells (low confidence, at the border, reclassified, excluded by "
            f"the reviewer) and a sample of up to {REPORT_SAMPLE} others per type, {len(shown):,} cells "
            f"in all. The counts above are of every cell; {where} lists every cell.</p>"
        )
    order = [*CELL_TYPES, UNIDENTIFIED, "", NOT_WBC]
    order += sorted(set(kinds) - set(order))
    for kind in order:
        own = t[kinds == kind].sort_values("label")
        if not len(own):
            continue
        pct = counts.get(f"pct_{kind}")
        share = f" ({_fmt(pct, 0)}%)" if pct is not None and kind in (*CELL_TYPES, UNIDENTIFIED) else ""
        title = TITLES.get(kind, kind)
        out.append(f'<h3 id="type-{e(kind) or "none"}">{e(title)}: {len(own)}{share}</h3>')
        if sampled:
            on_sheet = own["label"].astype(np.int64).isin(shown)
            n_flagged = int((_flags(own)[on_sheet] != "").sum())
            out.append(
                f'<p class="sub">{int(on_sheet.sum()):,} of {len(own):,} shown: {n_flagged:,} flagged, '
                f"{int(on_sheet.sum()) - n_flagged:,} of the others</p>"
            )
            own = own[on_sheet]
        out.append('<div class="grid">')
        for row in own.to_dict("records"):
            label = int(row["label"])
            st = row["review_status"]
            img = thumbs.get(label)
            picture = (
                f'<img src="{_jpeg(img)}" alt="cell {label}" width="{img.shape[1]}" height="{img.shape[0]}">'
                if img is not None
                else '<div class="none">no image</div>'
            )
            if st == "reclassified":
                caption = f"was {e(row['suggested_type'] or 'untyped')}"
            else:
                caption = STATUS_TEXT.get(st, st)
            confidence = row.get("type_confidence")
            conf = f" · {_fmt(confidence, 2)}" if confidence is not None and pd.notna(confidence) else ""
            out.append(
                f'<figure id="cell-{label}" class="{e(st)}">{picture}<b>#{label}</b>{conf}'
                f'<span class="st {e(st)}">{caption}</span></figure>'
            )
        out.append("</div>")
    # provenance
    out.append("<footer>")
    if record:
        out.append(f"Signed off by {e(record['reviewer'])} at {e(record['time'])}. ")
    for name, sha in models.items():
        out.append(f"Model <b>{e(name)}</b>, weights sha256 <code>{e(sha or 'unknown')}</code>. ")
    if meta.get("models_note"):
        out.append(f"({e(meta['models_note'])}) ")
    out.append(f"Written by napari-wbc {e(__version__)}.</footer></main></body></html>")
    return "\n".join(out)


def _signed(html_path: Path) -> str | None:
    """The sign-off (time and reviewer) an existing HTML report carries, None if unsigned."""
    try:
        with open(html_path, encoding="utf-8", errors="replace") as f:
            head = f.read(8192)
    except OSError:
        return None
    marker = '<meta name="napari-wbc-signoff" content="'
    start = head.find(marker)
    return (
        None if start < 0 else html.unescape(head[start + len(marker) : head.find('"', start + len(marker))])
    )


def write_report(
    folder: str | Path,
    stem: str,
    table: pd.DataFrame,
    thumbs: dict,
    record: dict | None = None,
    meta: dict | None = None,
) -> dict[str, Path]:
    """Write ``<stem>_report.csv`` and ``<stem>_report.html`` into ``folder``; their paths
    (``{"csv": ..., "html": ...}``).

    ``thumbs`` maps a cell's label to its thumbnail (cells without one show "no image"; only
    those of :func:`report_cells` are shown, so only theirs are needed);
    ``record`` is the sign-off (:func:`.verification.sign_off`; None, or one that no longer
    holds for the table: the report says "not signed off" and why); ``meta`` may give
    ``image``, ``pixel_size`` and ``models`` (name -> weights sha256) for the page's header.
    Both files are written atomically; a signed report already there is never replaced: the
    new one gets the next free name (``<stem>_report-2.html``...), unless it carries the same
    sign-off, when it is left as it is and its paths are returned.
    """
    folder = Path(folder)
    meta = dict(meta or {})
    t = start_review(table)
    problems = signoff_problems(t)
    if record and not signoff_holds(record, t):  # the cells changed after the sign-off
        problems = problems or ["the counts changed after the sign-off: sign off again"]
        problems.append(
            f"the sign-off by {record.get('reviewer')} at {record.get('time')} is no longer valid"
        )
        record = None
    key = f"{record['time']} {record['reviewer']}" if record else None
    k = 1
    while True:
        base = f"{stem}_report" + (f"-{k}" if k > 1 else "")
        paths = {"csv": folder / f"{base}.csv", "html": folder / f"{base}.html"}
        signed = _signed(paths["html"]) if paths["html"].exists() else None
        if key is not None and signed == key and paths["csv"].exists():
            return paths  # this sign-off's report is there already
        if signed is None:
            break
        k += 1
    page = _report_html(stem, t, thumbs, record, problems, meta, csv_name=paths["csv"].name)
    csv = _report_csv(t, record, problems, meta)
    write_atomic(paths["csv"], lambda p: csv.to_csv(p, index=False))
    write_atomic(paths["html"], lambda p: p.write_text(page, encoding="utf-8"))
    return paths


# --- reports of a segment output folder (``napari-wbc report``) -------------------------------


def output_stems(folder: str | Path) -> list[str]:
    """The outputs in a ``segment --out`` folder that a report can be made of: fields and
    slides with ``<stem>_cells.csv``, ``<stem>_cells.tif`` and ``<stem>_nuclei.tif``."""
    folder = Path(folder)
    stems = []
    for table in sorted(folder.glob("*_cells.csv")):
        stem = table.name[: -len("_cells.csv")]
        if (folder / f"{stem}_cells.tif").is_file() and (folder / f"{stem}_nuclei.tif").is_file():
            stems.append(stem)
    return stems


def _summary_row(folder: Path, stem: str) -> dict:
    """The output's row of ``summary.csv`` (fields) or ``<stem>_summary.csv`` (a slide)."""
    from .slide_output import result_paths

    slide = result_paths(folder, stem)["summary"]
    path, key = (slide, None) if slide.is_file() else (folder / "summary.csv", stem)
    try:
        summary = pd.read_csv(path)
    except (OSError, ValueError):
        return {}
    if key is not None:
        summary = summary[summary["output"].astype(str) == key] if "output" in summary else summary.iloc[:0]
    if not len(summary):
        return {}
    return {k: (None if not isinstance(v, str) and pd.isna(v) else v) for k, v in summary.iloc[-1].items()}


def _find_image(stem: str, candidates: list, images: list) -> Path | None:
    """The first candidate path that is a file, else a file in an ``images`` folder named
    like the output (``x.jpg`` for ``x``; a slide ``x.ome.tif`` for ``x``)."""
    from .slide import slide_name

    for candidate in candidates:
        if candidate and Path(str(candidate)).is_file():
            return Path(str(candidate))
    for folder in images or []:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(f"--images {folder}: no such folder")
        for path in sorted(folder.iterdir()):
            if path.is_file() and stem in (path.stem, path.name, slide_name(path)):
                if not path.name.endswith(("_cells.tif", "_nuclei.tif")):
                    return path
    return None


def _open_labels(path: Path, closers: list):
    """A label TIFF: in memory when it is one level (a field), the full-resolution level of
    its pyramid, read lazily, when it is a slide's."""
    import tifffile

    from .io import squeezed
    from .slide import level_arrays

    try:
        tif = tifffile.TiffFile(path)
    except Exception as err:
        raise InputError(f"{path}: cannot read these labels ({err})") from None
    closers.append(tif.close)
    series = tif.series[0]
    axes = squeezed(series)[0]
    if axes != "YX":
        raise InputError(f"{path}: not a 2D label image (axes {axes})")
    if len(series.levels) == 1:
        return series.asarray().reshape(squeezed(series)[1])
    arrays, level_closers = level_arrays(series)
    closers[:0] = level_closers
    level = arrays[0]
    return level if len(level.shape) == 2 else level[(0,) * (len(level.shape) - 2)]


def _with_labels(path: Path, use):
    """``use(labels)`` with the label TIFF ``path`` open (:func:`_open_labels`), closed after."""
    closers: list = []
    try:
        return use(_open_labels(path, closers))
    finally:
        for close in closers:
            close()


def report_output(folder: str | Path, stem: str, reviewer: str | None = None, images=None) -> dict:
    """The report of one output in a ``segment --out`` folder (a field or a slide).

    Reads ``<stem>_cells.csv``, the labels, the image (``summary.csv``'s ``file``, the review
    file's ``image``, or a file named like the output in one of the ``images`` folders) and
    ``<stem>_review.json`` when there is one (:func:`.verification.open_review`: refused,
    with :class:`.verification.ReviewMismatch`, when it is another segmentation's). With
    ``reviewer``, signs the review off (:func:`.verification.sign_off`) and saves the record in
    the review file. Returns ``{"paths", "record", "problems", "refused", "notes"}``: the
    report's files, the sign-off record (None: not signed), why it is not signed, the reasons
    a requested sign-off was refused (None when none was asked or it was given), and what the
    report lacks. InputError for files that cannot be read.
    """
    from .io import read_image
    from .slide import open_slide

    folder = Path(folder)
    notes: list[str] = []
    try:
        table = pd.read_csv(folder / f"{stem}_cells.csv")
    except (OSError, ValueError) as err:
        raise InputError(f"{folder / f'{stem}_cells.csv'}: cannot read this table ({err})") from None
    if "label" not in table:
        raise InputError(f"{folder / f'{stem}_cells.csv'}: no label column; not a cell table")
    summary = _summary_row(folder, stem)
    path = review_path(folder, stem)
    meta: dict = {}
    cells_tif = folder / f"{stem}_cells.tif"
    if path.is_file():
        table, meta = _with_labels(cells_tif, lambda cells: open_review(path, table, cells))
    table = start_review(table)
    image = _find_image(stem, [meta.get("image"), summary.get("file")], images)
    px = summary.get("pixel_size_um") or meta.get("pixel_size")
    models = meta.get("models") or {}
    models_note = None
    if not models:
        names = [summary.get("model"), text(summary.get("typing")).split(" ")[0]]
        from ..models.registry import list_classifiers, list_models

        known = [n for n in names if n and n in list_models() + list_classifiers()]
        models = {name: weights_sha256(name) for name in dict.fromkeys(known)}
        if models:
            models_note = "weights looked up by model name: the segment run did not record their sha256"
    record = meta.get("signoff") if signoff_holds(meta.get("signoff"), table) else None
    refused = None
    if reviewer is not None and record is None:
        try:
            record = sign_off(table, reviewer, models)
        except SignOffRefused as err:
            refused = err.reasons
        else:
            keep = {"image": str(image) if image else meta.get("image"), "pixel_size": px, "models": models}
            meta = {**meta, **keep, "reviewer": record["reviewer"], "signoff": record}
            _with_labels(cells_tif, lambda cells: save_review(path, table, meta, cells))
    thumbs: dict = {}
    if image is None:
        notes.append("image not found: no thumbnails (give the folder of the images with --images)")
    else:
        closers: list = []
        try:
            cells = _open_labels(folder / f"{stem}_cells.tif", closers)
            nuclei = _open_labels(folder / f"{stem}_nuclei.tif", closers)
            slide = not isinstance(cells, np.ndarray)
            pixels = open_slide(image) if slide else read_image(image).data
            if slide:
                closers.append(pixels.close)
            if plane_shape(pixels) != plane_shape(cells):
                shapes = f"{plane_shape(pixels)} px, the labels {plane_shape(cells)}"
                notes.append(f"{image} is {shapes}: no thumbnails")
            else:
                labels = report_cells(table)  # the cells the page shows
                pictures = thumbnails(
                    pixels, cells, nuclei, labels, size=REPORT_THUMB, pixel_size=px, table=table
                )
                thumbs = dict(zip(labels, pictures, strict=True))
        finally:
            for close in closers:
                close()
    shown = {
        "image": str(image) if image else meta.get("image"),
        "pixel_size": px,
        "models": models,
        "models_note": models_note,
    }
    paths = write_report(folder, stem, table, thumbs, record, shown)
    problems = [] if record else signoff_problems(table)
    return {"paths": paths, "record": record, "problems": problems, "refused": refused, "notes": notes}
