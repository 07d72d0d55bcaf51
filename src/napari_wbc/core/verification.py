"""Verify a smear as on an analyser: review every cell's type and sign off.

The review lives in the measurement table (one row per cell, ``label`` = cell id: the cells
layer's ``features``, ``<stem>_cells.csv`` on disk), in four columns that
:func:`start_review` adds: ``suggested_type`` (the type the classifier gave, never changed
by the reviewer), ``review_status`` (one of :data:`STATUSES`), ``reviewed_by`` and
``reviewed_at`` (ISO 8601 UTC seconds; "" while suggested). The older ``reviewed`` flag is
kept in step (``reviewed == status != "suggested"``). Every function returns a new table
and leaves its input as it was.

- :func:`set_type` gives cells a type (``not_wbc`` excludes them, a type other than the
  suggested one reclassifies them); :func:`confirm` accepts their current type.
- :func:`differential` is the live count (:func:`.measure.count_summary`: unidentified
  apart, ``not_wbc`` left out as ``excluded``); :func:`.measure.describe_counts` says it.
- :func:`signoff_problems` says, in words, why a sign-off is refused (cells not reviewed,
  unidentified or without a type); :func:`sign_off` refuses (:class:`SignOffRefused`) or
  returns the record: reviewer, time, models (name -> weights sha256), counts.
- :func:`reopen` undoes a review: the cells back to "suggested", the classifier's type.
- The review file ``<stem>_review.json`` (:func:`review_path`) beside ``<stem>_cells.tif``
  (or beside the image when there are no outputs): :func:`save_review` (atomic; with the
  fingerprint of the cell labels it is of, :func:`labels_fingerprint`), :func:`load_review`,
  :func:`apply_review` onto a (re)measured table, by ``label``, and :func:`open_review`, which
  applies a review file only to the labels it is of (:class:`ReviewMismatch` otherwise).

The cells' thumbnails are made in :mod:`.thumbnails`, the report of a review in :mod:`.report`.
"""

from __future__ import annotations

import hashlib
import json
import math
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd

from .batch import write_atomic
from .dataset import CELL_TYPES, NOT_WBC, UNIDENTIFIED
from .io import InputError
from .measure import count_summary
from .slide import level0, plane_shape

STATUSES = ("suggested", "confirmed", "reclassified", "excluded")
# what the reviewer did with a cell, as a colour: a thumbnail's frame in the Cell gallery and in
# the report, one palette for both (it reads on napari's dark theme and on the report's white page)
STATUS_COLOURS = {
    "suggested": "#8a8a8a",
    "confirmed": "#2fb344",
    "reclassified": "#f59f00",
    "excluded": "#e03131",
}
REVIEW_COLUMNS = ("suggested_type", "review_status", "reviewed_by", "reviewed_at")
TYPES = (*CELL_TYPES, UNIDENTIFIED, NOT_WBC)  # the types a reviewer can give
REVIEW_FORMAT = "napari-wbc review"
REVIEW_VERSION = 1
MAX_IDS_SAID = 8  # a reason names at most this many cell ids


class SignOffRefused(ValueError):
    """Sign-off refused; ``reasons`` says why, one sentence each."""

    def __init__(self, reasons: list[str]):
        self.reasons = list(reasons)
        super().__init__("sign-off refused: " + "; ".join(self.reasons))


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def text(value) -> str:
    """A type or name as a string, "" for none (None, NaN, pandas NA)."""
    return "" if value is None or (not isinstance(value, str) and pd.isna(value)) else str(value)


def _reviewer(reviewer) -> str:
    name = text(reviewer).strip()
    if not name:
        raise ValueError("give the reviewer's name")
    return name


def _status(cell_type: pd.Series, suggested: pd.Series) -> np.ndarray:
    kinds = cell_type.map(text)
    return np.where(
        kinds == NOT_WBC, "excluded", np.where(kinds == suggested.map(text), "confirmed", "reclassified")
    )


def _rows(table: pd.DataFrame, labels) -> pd.Series:
    from .edit import _rows as rows  # the one check that the cells are in the table

    return rows(table, labels)


def start_review(table: pd.DataFrame) -> pd.DataFrame:
    """The table with the review columns: ``suggested_type`` = the cell's type and status
    "suggested" where they are absent (a cell an earlier version marked ``reviewed`` gets the
    status its type gives); existing review columns are kept, blanks filled. Idempotent."""
    out = table.copy()
    if "cell_type" not in out:
        out["cell_type"] = pd.Series([None] * len(out), index=out.index, dtype=object)
    if "suggested_type" in out:
        out["suggested_type"] = out["suggested_type"].map(text).astype(object)
    else:
        out["suggested_type"] = out["cell_type"].map(text).astype(object)
    if "review_status" in out:
        status = out["review_status"].map(text).replace("", "suggested")
        unknown = sorted(set(status) - set(STATUSES))
        if unknown:
            raise ValueError(f"unknown review status {unknown}; one of {list(STATUSES)}")
    else:
        reviewed = (
            out["reviewed"].fillna(False).astype(bool)
            if "reviewed" in out
            else pd.Series(False, index=out.index)
        )
        status = pd.Series(
            np.where(reviewed, _status(out["cell_type"], out["suggested_type"]), "suggested"), index=out.index
        )
    out["review_status"] = status.astype(object)
    for column in ("reviewed_by", "reviewed_at"):
        out[column] = (out[column].map(text) if column in out else pd.Series("", index=out.index)).astype(
            object
        )
    out["reviewed"] = (out["review_status"] != "suggested").astype(bool)
    return out


def _decide(table: pd.DataFrame, labels, reviewer, cell_type: str | None) -> pd.DataFrame:
    name = _reviewer(reviewer)
    out = start_review(table)
    rows = _rows(out, labels)
    if cell_type is not None:
        out.loc[rows, "cell_type"] = cell_type
    out.loc[rows, "review_status"] = _status(out.loc[rows, "cell_type"], out.loc[rows, "suggested_type"])
    out.loc[rows, "reviewed_by"] = name
    out.loc[rows, "reviewed_at"] = utc_now()
    out.loc[rows, "reviewed"] = True
    return out


def set_type(table: pd.DataFrame, labels, cell_type: str, reviewer: str) -> pd.DataFrame:
    """These cells typed ``cell_type`` by ``reviewer``: "excluded" for ``not_wbc``,
    "confirmed" when it is the suggested type, else "reclassified". ValueError for an unknown
    type, a cell not in the table or no reviewer name."""
    if cell_type not in TYPES:
        raise ValueError(f"unknown cell type {cell_type!r}; one of {list(TYPES)}")
    return _decide(table, labels, reviewer, cell_type)


def confirm(table: pd.DataFrame, labels, reviewer: str) -> pd.DataFrame:
    """These cells' current types accepted by ``reviewer``: "confirmed" (or "excluded" for
    ``not_wbc``, "reclassified" where the type is not the suggested one)."""
    return _decide(table, labels, reviewer, None)


def reopen(table: pd.DataFrame, labels) -> pd.DataFrame:
    """These cells' review undone: status "suggested", the suggested type back, no reviewer."""
    out = start_review(table)
    rows = _rows(out, labels)
    out.loc[rows, "cell_type"] = [text(v) or None for v in out.loc[rows, "suggested_type"]]
    out.loc[rows, "review_status"] = "suggested"
    out.loc[rows, ["reviewed_by", "reviewed_at"]] = ""
    out.loc[rows, "reviewed"] = False
    return out


def differential(table: pd.DataFrame) -> dict:
    """The live differential: :func:`.measure.count_summary` (``n_<type>``, ``pct_<type>``,
    unidentified apart, ``excluded`` = objects typed ``not_wbc``); :func:`.measure.describe_counts`
    says it in words."""
    return count_summary(table)


def n_cells(n: int) -> str:
    return f"{n} cell{'' if n == 1 else 's'}"


def _ids(labels) -> str:
    labels = [int(i) for i in labels]
    more = f", ... ({len(labels) - MAX_IDS_SAID} more)" if len(labels) > MAX_IDS_SAID else ""
    return (
        f" (cell{'' if len(labels) == 1 else 's'} " + ", ".join(map(str, labels[:MAX_IDS_SAID])) + more + ")"
    )


def signoff_problems(table: pd.DataFrame) -> list[str]:
    """Why the review cannot be signed off yet, one sentence each; empty when it can: every
    cell reviewed, none unidentified, none without a type or with a type outside the
    differential."""
    t = start_review(table)
    kinds = t["cell_type"].map(text)
    problems = []
    waiting = t.loc[t["review_status"] == "suggested", "label"]
    if len(waiting):
        problems.append(f"{n_cells(len(waiting))} not reviewed yet" + _ids(waiting))
    unidentified = t.loc[kinds == UNIDENTIFIED, "label"]
    if len(unidentified):
        problems.append(
            f"{n_cells(len(unidentified))} unidentified: give each a type or exclude it" + _ids(unidentified)
        )
    untyped = t.loc[kinds == "", "label"]
    if len(untyped):
        problems.append(
            f"{n_cells(len(untyped))} without a type: give each a type or exclude it" + _ids(untyped)
        )
    other = t.loc[(kinds != "") & ~kinds.isin(TYPES), "label"]
    if len(other):
        names = ", ".join(sorted(set(kinds[(kinds != "") & ~kinds.isin(TYPES)])))
        problems.append(
            f"{n_cells(len(other))} of a type the differential has no place for ({names}): give each "
            f"one of {', '.join(CELL_TYPES)}, or exclude it" + _ids(other)
        )
    return problems


def _plain(value):
    """JSON-friendly: numpy scalars as Python numbers, NaN as None."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def sign_off(table: pd.DataFrame, reviewer: str, models: dict) -> dict:
    """The sign-off record ``{reviewer, time, models (name -> weights sha256), counts}``, or
    :class:`SignOffRefused` with the reasons (:func:`signoff_problems`, and a missing name)."""
    problems = signoff_problems(table)
    name = text(reviewer).strip()
    if not name:
        problems.append("no reviewer name: give yours to sign off")
    if problems:
        raise SignOffRefused(problems)
    return {
        "reviewer": name,
        "time": utc_now(),
        "models": {str(k): text(v) or None for k, v in dict(models or {}).items()},
        "counts": _plain(count_summary(table)),
    }


def signoff_holds(record: dict | None, table: pd.DataFrame) -> bool:
    """Whether a sign-off ``record`` still holds for ``table``: nothing to refuse, and the
    counts it signed are the table's."""
    if not record or signoff_problems(table):
        return False
    signed, now = record.get("counts") or {}, _plain(count_summary(table))
    keys = [k for k in now if k == "white_cells" or k == "excluded" or k.startswith("n_")]
    return all(signed.get(k) == now[k] for k in keys)


# --- the review file -------------------------------------------------------------------------


def review_path(where: str | Path, stem: str | None = None) -> Path:
    """Where a review is kept: ``<stem>_review.json`` in the folder ``where`` when a stem is
    given (a segment ``--out`` folder, a slide's output folder); else beside the file
    ``where``: ``x_cells.tif`` -> ``x_review.json``, an image ``x.jpg`` -> ``x_review.json``."""
    where = Path(where)
    if stem is not None:
        return where / f"{stem}_review.json"
    name = where.name
    stem = name[: -len("_cells.tif")] if name.endswith("_cells.tif") else where.stem
    return where.with_name(f"{stem}_review.json")


class ReviewMismatch(InputError):
    """A review file of other cells than the labels it would be applied to."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        super().__init__(
            f"{self.path} is the review of another segmentation, not of these cells: not applied. "
            f"Re-segmenting discards the old review; move or delete {self.path.name} to start a new "
            "review of these cells."
        )


FINGERPRINTS = ("pixels", "cells")


def labels_fingerprint(cells, table: pd.DataFrame | None = None, kind: str | None = None) -> dict:
    """What a review is of, recorded in its file (:func:`save_review`) and checked when the
    file is applied (:func:`open_review`).

    ``kind`` "pixels": the sha256 of the cell labels' full-resolution pixels (as uint32,
    uint64 for larger ids) and their shape; "cells": the sha256 of ``table``'s cell ids and
    areas (px), which were measured from the labels, and the labels' shape: for a slide's lazy
    labels, too big to read whole at each save. None: "pixels" for labels in memory (a numpy
    array, a field's), else "cells".
    """
    source = level0(cells)
    if kind is None:
        kind = "pixels" if isinstance(source, np.ndarray) or table is None else "cells"
    digest = hashlib.sha256()
    if kind == "pixels":
        ids = np.asarray(source)
        wide = ids.dtype.itemsize > 4 and ids.size and int(ids.max()) > np.iinfo(np.uint32).max
        ids = np.ascontiguousarray(ids, dtype="<u8" if wide else "<u4")
        digest.update(f"{ids.shape}|{ids.dtype.str}|".encode())
        digest.update(ids.data)
    elif kind == "cells":
        if table is None or "label" not in table:
            raise ValueError("a fingerprint of the cells needs their table")
        columns = [c for c in ("label", "cell_area_px") if c in table]
        values = table[columns].apply(pd.to_numeric).fillna(-1).round().astype("<i8")
        values = np.ascontiguousarray(values.sort_values("label").to_numpy())
        digest.update(f"{plane_shape(source)}|{','.join(columns)}|".encode())
        digest.update(values.data)
    else:
        raise ValueError(f"unknown fingerprint kind {kind!r}; one of {list(FINGERPRINTS)}")
    return {"kind": kind, "shape": list(plane_shape(source)), "sha256": digest.hexdigest()}


def review_matches(review: pd.DataFrame, meta: dict, cells, table: pd.DataFrame) -> bool:
    """Whether a loaded review (:func:`load_review`) is of these cell labels and their
    ``table``: its fingerprint is theirs; a file written before fingerprints (or with a kind
    this version does not know) names only cells the table has."""
    saved = meta.get("labels")
    if isinstance(saved, dict) and saved.get("kind") in FINGERPRINTS:
        now = labels_fingerprint(cells, table, saved["kind"])
        return all(saved.get(key) == now[key] for key in ("shape", "sha256"))
    known = set(pd.to_numeric(table["label"]).astype(np.int64))
    return set(review["label"].astype(np.int64)) <= known


def save_review(path: str | Path, table: pd.DataFrame, meta: dict | None = None, cells=None) -> Path:
    """Write the table's review (label, type and the review columns of every cell) and
    ``meta`` (image path, models and weights sha256, reviewer, sign-off record) as JSON,
    atomically; with ``cells``, the cell labels the review is of, their fingerprint
    (:func:`labels_fingerprint`), which :func:`open_review` checks."""
    path = Path(path)
    t = start_review(table)
    meta = {k: v for k, v in dict(meta or {}).items() if k != "labels"}  # never another's fingerprint
    rows = [
        {
            "label": int(row.label),
            "cell_type": text(row.cell_type) or None,
            **{c: text(getattr(row, c)) for c in REVIEW_COLUMNS},
        }
        for row in t[["label", "cell_type", *REVIEW_COLUMNS]].itertuples(index=False)
    ]
    doc = {
        "format": REVIEW_FORMAT,
        "version": REVIEW_VERSION,
        "meta": _plain(meta),
        **({} if cells is None else {"labels": labels_fingerprint(cells, t)}),
        "cells": rows,
    }
    body = json.dumps(doc, indent=1, ensure_ascii=False)
    write_atomic(path, lambda p: p.write_text(body, encoding="utf-8"))
    return path


def load_review(path: str | Path) -> tuple[pd.DataFrame, dict]:
    """``(review table, meta)`` of a review file: one row per cell with ``label``,
    ``cell_type`` and the review columns; ``meta["labels"]`` is the fingerprint of the labels
    it is of (none in files written before fingerprints). InputError, naming the file, when
    it is not one."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{path}: no such review file") from None
    except (OSError, ValueError) as err:
        raise InputError(f"{path}: cannot read this review file ({err})") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != REVIEW_FORMAT
        or not isinstance(doc.get("cells"), list)
    ):
        raise InputError(f"{path}: not a napari-wbc review file")
    if doc.get("version", 0) > REVIEW_VERSION:
        raise InputError(f"{path}: written by a newer napari-wbc (review version {doc['version']}); update")
    columns = ["label", "cell_type", *REVIEW_COLUMNS]
    try:
        review = pd.DataFrame(
            [{c: cell.get(c) for c in columns} for cell in doc["cells"]], columns=columns
        ).astype({"label": np.int64})
        review = start_review(review)[columns]
    except (AttributeError, TypeError, ValueError) as err:
        raise InputError(f"{path}: damaged review file ({err})") from None
    meta = dict(doc.get("meta") or {})
    if isinstance(doc.get("labels"), dict):
        meta["labels"] = doc["labels"]
    return review, meta


def open_review(path: str | Path, table: pd.DataFrame, cells) -> tuple[pd.DataFrame, dict]:
    """``(table with the review file at path applied, its meta)`` (:func:`load_review`,
    :func:`apply_review`), when the review is of the cell labels ``cells`` and their ``table``
    (:func:`review_matches`); else :class:`ReviewMismatch`, one message that names the file
    and says what to do (the file is left as it is)."""
    review, meta = load_review(path)
    if not review_matches(review, meta, cells, table):
        raise ReviewMismatch(path)
    return apply_review(table, review), meta


def apply_review(table: pd.DataFrame, review: pd.DataFrame) -> pd.DataFrame:
    """``table`` (e.g. measured again) with the saved ``review`` merged in by ``label``: a
    cell the review decided on (status other than "suggested") takes the review's type and
    columns; the others keep the table's type, as suggested. Cells the review does not know
    are suggested; reviewed cells no longer in the table are dropped."""
    out = start_review(table)
    decided = start_review(review)
    decided = decided[decided["review_status"] != "suggested"].drop_duplicates("label", keep="last")
    decided = decided.set_index(decided["label"].astype(np.int64))
    rows = out["label"].astype(np.int64).isin(decided.index)
    at = out.loc[rows, "label"].astype(np.int64)
    for column in ("cell_type", *REVIEW_COLUMNS):
        values = decided.loc[at, column].to_numpy(dtype=object)
        if column == "cell_type":
            values = np.array([text(v) or None for v in values], dtype=object)
        out.loc[rows, column] = values
    out["reviewed"] = (out["review_status"] != "suggested").astype(bool)
    return out
