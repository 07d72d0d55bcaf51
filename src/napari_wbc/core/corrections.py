"""Cell types a reviewer set, saved as training data for the cell-type classifier.

A type corrections folder (any folder; e.g. ``type_corrections/`` beside the outputs) holds
per saved cell what the classifier's input is made of:

* ``crops/<id>.png``: the field around the cell at the field's own resolution, a square
  ``SAVE_CONTEXT`` times the cell's larger side centred on its box (cut at the field's
  edge): more than the classifier's crop (1.5x) and its augmentation crop (2.2x), so
  :func:`.celltypes.cell_crops` cuts from it what it would cut from the field;
* ``masks/<id>.png``: uint8, the crop's size: 1 this cell's cytoplasm, 2 its nucleus, 0
  elsewhere (neighbours too), the masks of the classifier's 5-channel input;
* ``manifest.jsonl``: a JSON line per saved cell: ``id``, ``kind`` ("type_correction"),
  ``date``, the caller's provenance (``source`` image, ``model`` and ``weights_sha256`` of
  the segmenter, ``classifier`` and ``classifier_sha256``, ...), ``field`` (sha256 of the
  field's pixels, 16 hex), ``label`` (the cell's id in the field), ``origin`` (y, x of the
  crop in the field), ``cell_type`` (the reviewer's: one of the five types or ``not_wbc``),
  ``suggested_type`` (the classifier's), ``review_status``, ``reviewed_by``, ``reviewed_at``,
  ``red_cell_px`` (the field's red-cell diameter, :mod:`.ruler`, the classifier's size cue's
  ruler; null when the field shows too few red cells),
  ``split``, ``files`` and their ``sha256``, and ``supersedes`` (the id of the record of the
  same cell, same outline, that this one retypes).

:func:`save_type_corrections` saves the reviewed cells of a field (status confirmed,
reclassified or excluded, i.e. every type a person gave or checked, not only the changed
ones, so the classifier is not taught only its mistakes), or of a whole slide: then only a
window around each reviewed cell is read from the lazy slide and labels, and the slide is the
``field`` (the sha256 of its cells' ids and areas). A field's cells all go to one
split: the 2nd, 12th, 22nd... field saved is held out for validation (``val``), so a
fine-tune can be validated once two fields are saved. Nothing is overwritten: a cell saved
again with the same outline and type is skipped, with another type it gets a new record
that supersedes the old. Saves take turns on the folder's lock (:func:`.dataset.folder_lock`)
and write every file to a fresh temporary name renamed into place (masks, then crops, then
the manifest lines of the whole save in one rename), so a killed save leaves at most files
no record names, which the trainer ignores and :func:`validate_corrections` lists.
:func:`read_corrections` gives the records in force (superseded ones dropped), which
:func:`.celltype_data.correction_examples` turns into training examples.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from .celltypes import field_ruler
from .dataset import (
    CELL_TYPES,
    MANIFEST,
    NOT_WBC,
    _replace_with,
    _safe_stem,
    _sha256,
    _write_temp,
    folder_lock,
    read_manifest,
)
from .io import InputError

KIND = "type_correction"
RULER_WINDOW = 1024  # a slide's red cells are measured in this much around each saved cell (px)
SAVE_CONTEXT = 2.5  # crop side / the cell's larger side
SAVED_STATUSES = ("confirmed", "reclassified", "excluded")
TRAINABLE = (*CELL_TYPES, NOT_WBC)  # the classifier's classes (models.celltype.CLASSES)
VAL_EVERY = 10  # the 2nd, 12th, 22nd... field saved is held out for validation
FOLDERS = ("crops", "masks")


def is_corrections_folder(root: str | Path) -> bool:
    """Whether ``root`` is a type corrections folder (crops/, masks/ and a manifest)."""
    root = Path(root)
    return (root / "crops").is_dir() and (root / "masks").is_dir() and (root / MANIFEST).is_file()


def _reviewed_rows(table) -> list[tuple[int, str, dict]]:
    """(label, type, review fields) of every row a person reviewed, with a type to learn."""
    import pandas as pd

    if "label" not in table or "cell_type" not in table:
        raise InputError("the table needs 'label' and 'cell_type' columns (the cells layer's features)")
    if "review_status" in table:
        reviewed = table["review_status"].astype(str).isin(SAVED_STATUSES)
    elif "reviewed" in table:
        reviewed = table["reviewed"].fillna(False).astype(bool)
    else:
        raise InputError("the table has no review (no 'review_status' column): review the cells first")
    rows = []
    for _, row in table[reviewed].iterrows():
        kind = str(row["cell_type"])
        if kind not in TRAINABLE:  # unidentified: nothing to learn
            continue
        review = {
            k: "" if pd.isna(row.get(k)) else str(row.get(k))
            for k in ("suggested_type", "review_status", "reviewed_by", "reviewed_at")
        }
        rows.append((int(row["label"]), kind, review))
    return rows


def _box_around(cells, label: int, centre: tuple[float, float], area: float):
    """(y0, y1, x0, x1) of cell ``label`` in lazy labels, read in a window around its
    ``centre`` (grown until the cell lies inside it); None when the cell is not there."""
    from .slide import plane_shape, read_window

    h, w = plane_shape(cells)
    cy, cx = int(round(centre[0])), int(round(centre[1]))
    half = max(16, int(np.ceil(2 * np.sqrt(max(area, 1.0) / np.pi))) + 2)
    while True:
        y0, x0, y1, x1 = max(0, cy - half), max(0, cx - half), min(h, cy + half + 1), min(w, cx + half + 1)
        own = np.asarray(read_window(cells, y0, x0, y1, x1, None)) == label
        rows, cols = np.flatnonzero(own.any(1)), np.flatnonzero(own.any(0))
        if not len(rows):
            return None
        box = (y0 + rows[0], y0 + rows[-1] + 1, x0 + cols[0], x0 + cols[-1] + 1)
        cut = (box[0] == y0 > 0) or (box[1] == y1 < h) or (box[2] == x0 > 0) or (box[3] == x1 < w)
        if not cut or half > max(h, w):
            return tuple(int(v) for v in box)
        half *= 2


def _slide_boxes(cells, table, rows) -> dict[int, tuple]:
    """The box of every reviewed cell of a slide, from its place in the table."""
    need = {"centroid_y", "centroid_x", "cell_area_px"} - set(table.columns)
    if need:
        raise InputError(f"a slide's table needs the columns {sorted(need)} to find its cells")
    places = table.set_index(table["label"].astype(int))
    boxes, missing = {}, []
    for label, _, _ in rows:
        row = places.loc[label]
        box = _box_around(cells, label, (row["centroid_y"], row["centroid_x"]), float(row["cell_area_px"]))
        if box is None:
            missing.append(label)
        boxes[label] = box
    if missing:
        raise InputError(f"the table names cells the labels lack ({missing[:5]}): is it this slide's table?")
    return boxes


def _field_split(records: list[dict], field: str) -> str:
    for record in records:
        if record.get("field") == field:
            return record.get("split", "train")
    fields = list(dict.fromkeys(r.get("field") for r in records))
    return "val" if len(fields) % VAL_EVERY == 1 else "train"


def _fresh_id(root: Path, base: str, used: set[str]) -> str:
    k = 1
    while True:
        cid = base if k == 1 else f"{base}-{k}"
        taken = cid in used or any(os.path.lexists(root / f"{d}/{cid}.png") for d in FOLDERS)
        if not taken:
            return cid
        k += 1


def save_type_corrections(
    root: str | Path,
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    table,
    provenance: dict | None = None,
) -> dict:
    """Save the reviewed cells of one field (or one slide) into the corrections folder ``root``.

    ``image`` (a field, RGB), ``cells`` and ``nuclei`` (instance maps, nucleus id = cell
    id): numpy arrays, or a slide's lazy ones (dask, zarr, a :class:`.slide.Slide`, napari's
    list of levels: the full resolution is read, a window around each reviewed cell, found
    by its centroid and area in the table, and the ruler in a window around it),
    ``table`` the measurement table with the review columns (``label``,
    ``cell_type``, ``review_status``, ``suggested_type``, ``reviewed_by``, ``reviewed_at``;
    a table with only the older ``reviewed`` flag works too), ``provenance`` what the
    records should say of where the cells come from (``source`` image path, ``model``,
    ``weights_sha256``, ``classifier``, ``classifier_sha256``, ...). Returns
    ``{"saved": [ids], "unchanged": n, "split": split}``.
    Raises :class:`.io.InputError` (nothing saved) for maps that do not fit the image or each other, or a
    table that names cells the maps lack.
    """
    from PIL import Image
    from scipy import ndimage

    from .edit import check_invariants
    from .io import to_rgb8
    from .slide import level0, plane_shape, read_window
    from .thumbnails import OUTSIDE
    from .verification import labels_fingerprint

    root = Path(root)
    provenance = dict(provenance or {})
    rows = _reviewed_rows(table)
    if all(isinstance(a, np.ndarray) for a in (image, cells, nuclei)):  # a field, in memory
        image = to_rgb8(np.asarray(image))
        if cells.shape != image.shape[:2]:
            raise InputError(f"labels {cells.shape} and image {image.shape[:2]} differ in shape")
        problems = check_invariants(cells, nuclei, connected=False)
        if problems:
            raise InputError("the labels are not consistent, so nothing was saved: " + "; ".join(problems))
        found = ndimage.find_objects(cells.astype(np.int64))
        missing = [lab for lab, _, _ in rows if lab < 1 or lab > len(found) or found[lab - 1] is None]
        if missing:
            raise InputError(
                f"the table names cells the labels lack ({missing[:5]}): is it this field's table?"
            )
        boxes = {
            lab: (
                found[lab - 1][0].start,
                found[lab - 1][0].stop,
                found[lab - 1][1].start,
                found[lab - 1][1].stop,
            )
            for lab, _, _ in rows
        }
        field = hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]
        field_red_cell = field_ruler(image, cells)

        def ruler(y0, x0, y1, x1):
            return field_red_cell

        def read(array, y0, x0, y1, x1):
            return array[y0:y1, x0:x1]

    else:  # a slide: read around each cell
        image, cells, nuclei = level0(image), level0(cells), level0(nuclei)
        if not plane_shape(image) == plane_shape(cells) == plane_shape(nuclei):
            raise InputError(f"labels {plane_shape(cells)} and image {plane_shape(image)} differ in shape")
        boxes = _slide_boxes(cells, table, rows)
        field = labels_fingerprint(cells, table, "cells")["sha256"][:16]

        def ruler(y0, x0, y1, x1):  # as a slide's tile is typed: its surroundings
            cy, cx, side = (y0 + y1) // 2, (x0 + x1) // 2, max(RULER_WINDOW, 4 * max(y1 - y0, x1 - x0))
            top, left = max(0, cy - side // 2), max(0, cx - side // 2)
            window = (top, left, min(h, top + side), min(w, left + side))
            return field_ruler(read(image, *window), read(cells, *window))

        def read(array, y0, x0, y1, x1):
            return np.asarray(read_window(array, y0, x0, y1, x1, OUTSIDE if array is image else None))

    h, w = plane_shape(image)
    items = []  # (label, type, review, crop, mask, origin, mask sha256, red-cell diameter)
    for label, kind, review in rows:
        y0, y1, x0, x1 = boxes[label]
        side = int(np.ceil(SAVE_CONTEXT * max(y1 - y0, x1 - x0)))
        top, left = int(round((y0 + y1 - side) / 2)), int(round((x0 + x1 - side) / 2))
        window = (max(0, top), max(0, left), min(h, top + side), min(w, left + side))
        mask = np.where(read(cells, *window) == label, 1, 0).astype(np.uint8)
        mask[(read(nuclei, *window) == label) & (mask > 0)] = 2
        digest = hashlib.sha256(mask.tobytes() + str(mask.shape).encode()).hexdigest()[:16]
        crop, red_cell = read(image, *window), ruler(y0, x0, y1, x1)
        items.append((label, kind, review, crop, mask, [window[0], window[1]], digest, red_cell))

    for sub in FOLDERS:
        (root / sub).mkdir(parents=True, exist_ok=True)
    base = _safe_stem(provenance.get("source") or f"field-{field}")
    result = {"saved": [], "unchanged": 0, "split": None}
    with folder_lock(root):
        records = read_manifest(root)
        current = {r.get("id"): r for r in current_records(records)}
        by_cell = {(r.get("field"), r.get("label"), r.get("mask_digest")): r for r in current.values()}
        split = _field_split(records, field)
        result["split"] = split
        used = {r.get("id") for r in records}
        new_records, temps, placed = [], {}, []
        date = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        for label, kind, review, crop, mask, origin, digest, red_cell in items:
            earlier = by_cell.get((field, label, digest))
            if earlier is not None and earlier.get("cell_type") == kind:
                result["unchanged"] += 1
                continue
            cid = _fresh_id(root, f"{base}_{label}", used)
            used.add(cid)
            files = {"mask": f"masks/{cid}.png", "crop": f"crops/{cid}.png"}
            record = {
                "id": cid,
                "kind": KIND,
                "date": date,
                **provenance,
                "field": field,
                "label": label,
                "origin": origin,
                "cell_type": kind,
                **review,
                "red_cell_px": red_cell,
                "split": split,
                "files": files,
                "sha256": {},
                "mask_digest": digest,
            }
            if earlier is not None:
                record["supersedes"] = earlier["id"]
            new_records.append((record, crop, mask))
        try:
            for record, crop, mask in new_records:
                files = record["files"]
                for part, array, mode in (("mask", mask, "L"), ("crop", crop, "RGB")):
                    tmp, record["sha256"][part] = _write_temp(
                        root / files[part],
                        lambda p, a=array, m=mode: Image.fromarray(a, m).save(p, format="PNG"),
                    )
                    temps[files[part]] = tmp
            for part in ("mask", "crop"):  # a crop with no mask is never in place
                for record, _, _ in new_records:
                    rel = record["files"][part]
                    os.replace(temps.pop(rel), root / rel)
                    placed.append(rel)
            if new_records:
                old = (root / MANIFEST).read_bytes() if (root / MANIFEST).exists() else b""
                if old and not old.endswith(b"\n"):
                    old += b"\n"
                lines = b"".join(json.dumps(r, default=str).encode() + b"\n" for r, _, _ in new_records)
                _replace_with(root / MANIFEST, old + lines)
            elif not (root / MANIFEST).exists():
                _replace_with(root / MANIFEST, b"")  # the folder is a corrections folder from now on
        except BaseException:
            for rel in placed:  # fresh ids: nothing else is lost
                (root / rel).unlink(missing_ok=True)
            raise
        finally:
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)
    result["saved"] = [r["id"] for r, _, _ in new_records]
    return result


def current_records(records: list[dict]) -> list[dict]:
    """The type correction records in force: every one that no later record supersedes."""
    records = [r for r in records if r.get("kind") == KIND]
    superseded = {r.get("supersedes") for r in records if r.get("supersedes")}
    return [r for r in records if r.get("id") not in superseded]


def read_corrections(root: str | Path, split: str | None = None) -> list[dict]:
    """The records in force in a corrections folder (optionally of one split), oldest first."""
    records = current_records(read_manifest(root))
    return [r for r in records if split is None or r.get("split") == split]


def validate_corrections(root: str | Path) -> list[str]:
    """Problems of a corrections folder, one line each (empty: valid): every record names a
    crop and a mask that are the files it saved (sha256), of one size, with the cell in the
    mask, a type the classifier learns, a split, a unique id; files that no record names
    (an interrupted save) and temporary files are listed too."""
    from PIL import Image

    from .batch import TMP

    root = Path(root)
    problems, seen, named = [], set(), set()
    for record in (r for r in read_manifest(root) if r.get("kind") == KIND):
        cid = record.get("id")
        if cid in seen:
            problems.append(f"manifest names {cid!r} more than once")
        seen.add(cid)
        if record.get("cell_type") not in TRAINABLE:
            problems.append(f"{cid}: type {record.get('cell_type')!r} is none the classifier learns")
        if record.get("split") not in ("train", "val", "test"):
            problems.append(f"{cid}: split {record.get('split')!r}")
        files = record.get("files") or {}
        named |= set(files.values())
        if set(files) != {"crop", "mask"}:
            problems.append(f"{cid}: needs a crop and a mask, has {sorted(files)}")
            continue
        missing = [f for f in files.values() if not (root / f).is_file()]
        if missing:
            problems.append(f"{cid}: missing {missing}")
            continue
        for part, rel in files.items():
            if (record.get("sha256") or {}).get(part) != _sha256(root / rel):
                problems.append(f"{cid}: {rel} is not the file saved with it (changed since)")
        try:
            crop, mask = (np.asarray(Image.open(root / files[k])) for k in ("crop", "mask"))
        except OSError as err:
            problems.append(f"{cid}: {err}")
            continue
        if crop.ndim != 3 or crop.shape[:2] != mask.shape:
            problems.append(f"{cid}: crop {crop.shape} and mask {mask.shape} do not match")
        elif not (mask > 0).any() or mask.max() > 2:
            problems.append(f"{cid}: the mask holds no cell (values 1 cytoplasm, 2 nucleus)")
    for sub in FOLDERS:
        for path in sorted((root / sub).iterdir()) if (root / sub).is_dir() else []:
            rel = f"{sub}/{path.name}"
            if path.name.startswith(".") and path.name.endswith(TMP):
                problems.append(f"{rel}: temporary file of an interrupted save")
            elif rel not in named:
                problems.append(f"{rel}: named by no record (an interrupted save)")
    return problems
