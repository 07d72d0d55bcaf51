"""Training pairs on disk in the layout of ``../shared/datasets``.

A dataset folder holds ``images/<stem>.png|.jpg``, ``labels/<stem>.png`` (uint8 index
mask: 0 background, 1 cytoplasm, 2 nucleus) and ``split.csv`` (``stem,split`` with split
in train/val/test). Folders without ``split.csv`` put every pair in ``train``.

Corrected labels are added as training pairs by :func:`save_training_pair` (safe with
concurrent savers: one folder lock), with a line each in ``manifest.jsonl``;
:func:`find_saved_pair` finds the pair a save would only repeat (same files, by sha256);
:func:`check_training_folder` and :func:`repair_training_folder` (``napari-wbc dataset
check DIR [--repair]``) find and remove what interrupted saves left.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .batch import TMP, exclusive_temp, labels_tiff_writer, write_atomic
from .io import read_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Pair:
    dataset: str
    stem: str
    image: Path
    label: Path
    split: str


def list_pairs(root: str | Path, split: str | None = None) -> list[Pair]:
    """Every (image, label) pair of a dataset folder, optionally of one split."""
    root = Path(root)
    if not (root / "images").is_dir() or not (root / "labels").is_dir():
        raise FileNotFoundError(
            f"{root} is not a dataset folder: it needs images/ and labels/ (see the README of the datasets)"
        )
    splits: dict[str, str] = {}
    if (root / "split.csv").exists():
        with open(root / "split.csv", newline="") as f:
            splits = {row["stem"]: row["split"] for row in csv.DictReader(f)}
    pairs = []
    for image in sorted((root / "images").iterdir()):
        if image.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        label = root / "labels" / f"{image.stem}.png"
        if not label.exists():
            continue
        s = splits.get(image.stem, "train")
        if split is None or s == split:
            pairs.append(Pair(root.name, image.stem, image, label, s))
    return pairs


def load_pair(pair: Pair) -> tuple[np.ndarray, np.ndarray]:
    """The RGB uint8 image and its uint8 class mask."""
    from skimage.io import imread

    image = read_image(pair.image).data
    label = np.asarray(imread(pair.label))
    if label.ndim == 3:
        label = label[..., 0]
    if label.shape != image.shape[:2]:
        raise ValueError(f"{pair.label}: label shape {label.shape} != image {image.shape[:2]}")
    return image, label.astype(np.uint8)


# --- saving corrected labels as training pairs -------------------------------------------

MANIFEST = "manifest.jsonl"
VAL_FRACTION = 0.1
# saves, checks and repairs of one training folder take turns on this lock file in it (an
# OS lock: it is free again as soon as its holder ends, even when killed)
LOCK = ".dataset.lock"
LOCK_TIMEOUT = 600.0  # s to wait for another save of the same folder
SUBFOLDERS = ("images", "labels", "instances")


def _safe_stem(name: str) -> str:
    import re

    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(name)).stem).strip("._") or "image"
    return stem[:80]


def _pair_files(stem: str) -> dict[str, str]:
    return {
        "image": f"images/{stem}.png",
        "label": f"labels/{stem}.png",
        "cells": f"instances/{stem}_cells.tif",
        "nuclei": f"instances/{stem}_nuclei.tif",
        "table": f"instances/{stem}_cells.csv",
    }


def _read_splits(root: Path) -> list[dict]:
    if not (root / "split.csv").exists():
        return []
    with open(root / "split.csv", newline="") as f:
        return list(csv.DictReader(f))


def _splits_bytes(rows: list[dict]) -> bytes:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=["stem", "split"], extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue().encode()


def read_manifest(root: str | Path) -> list[dict]:
    """The manifest records of a training folder, oldest first (unreadable lines skipped)."""
    import json
    import logging

    path = Path(root) / MANIFEST
    if not path.exists():
        return []
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            logging.getLogger(__name__).warning("%s line %d is not JSON; skipped", path, n)
    return records


@contextlib.contextmanager
def folder_lock(root: str | Path, timeout: float = LOCK_TIMEOUT):
    """Hold ``root``'s lock (``root`` must exist): one save, check or repair at a time, across
    processes. Raises TimeoutError when another one holds it for ``timeout`` s."""
    from filelock import FileLock, Timeout

    lock = FileLock(Path(root) / LOCK)
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        raise TimeoutError(
            f"{root} is busy: another save or repair has held it for {timeout:.0f} s"
        ) from None
    try:
        yield
    finally:
        lock.release()


def _write_temp(path: Path, write) -> tuple[Path, str]:
    """``write(tmp)`` into a new :func:`.batch.exclusive_temp` file beside ``path``: its name
    and sha256 (recorded in the manifest, so a check notices a file that is not what was saved)."""
    tmp = exclusive_temp(path)
    try:
        write(tmp)
        with open(tmp, "rb") as f:
            return tmp, hashlib.file_digest(f, "sha256").hexdigest()
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _replace_with(path: Path, data: bytes) -> None:
    """Put ``data`` at ``path`` by renaming a temporary file over it (readers see old or new)."""
    write_atomic(path, lambda p: p.write_bytes(data))


def _fresh_stem(root: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... : the first stem no file, split row or record uses.
    Only meaningful under the folder's lock."""
    used = {row.get("stem") for row in _read_splits(root)} | {r.get("stem") for r in read_manifest(root)}
    used |= {p.stem for p in (root / "images").glob("*")} if (root / "images").is_dir() else set()
    k = 1
    while True:
        stem = base if k == 1 else f"{base}-{k}"
        if stem not in used and not any(os.path.lexists(root / f) for f in _pair_files(stem).values()):
            return stem
        k += 1


def _auto_split(root: Path) -> str:
    """``val`` for the 5th, 15th, 25th... pair, so about 10% validate once there are 5."""
    splits = [p.split for p in list_pairs(root)] if (root / "images").is_dir() else []
    target = int((len(splits) + 1) * VAL_FRACTION + 0.5)
    return "val" if splits.count("val") < target else "train"


def save_training_pair(
    root: str | Path,
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    provenance: dict | None = None,
    region: tuple[int, int, int, int] | None = None,
    table=None,
    split: str | None = None,
) -> str:
    """Add a corrected image to a training folder; return the new pair's stem.

    Writes ``images/<stem>.png`` (RGB), ``labels/<stem>.png`` (0/1/2),
    ``instances/<stem>_cells.tif`` and ``_nuclei.tif`` (and ``_cells.csv`` when ``table``,
    e.g. the measurements with cell types, is given), a ``split.csv`` row, and a line in
    ``manifest.jsonl``: ``provenance`` (source, model, weights_sha256, cells_edited, ...)
    plus stem, files, their sha256, split, region, shape, cell count and date. ``region``
    (y0, x0, y1, x1) crops all maps to e.g. the visible part of a slide; ``image`` may be
    lazy (dask).

    The stem is the source's stem (with the region), made unique with ``-2``, ``-3``...:
    nothing saved before is overwritten. Saves into one folder, from any number of
    processes, take turns on the folder's lock (:func:`folder_lock`). Every file is written
    to a fresh temporary name and renamed into place: instance maps and label first, then
    the split row, the image (``list_pairs`` sees the pair from here on, complete) and the
    manifest line last. A save that fails undoes what it did; one that is killed leaves
    temporary files, files of a pair without image, and possibly a split row or a complete
    pair without manifest line: later saves step around them, :func:`check_training_folder`
    lists them and :func:`repair_training_folder` removes them.
    """
    import datetime
    import json

    root = Path(root)
    provenance = dict(provenance or {})
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    writers, region, cells = _pair_writers(
        image, cells, nuclei, region, table, provenance.get("pixel_size_um")
    )
    for sub in SUBFOLDERS:
        (root / sub).mkdir(parents=True, exist_ok=True)

    base = _safe_stem(provenance.get("source") or "image")
    if region is not None:
        base = f"{base}_y{region[0]}_x{region[1]}"
    with folder_lock(root):
        stem = _fresh_stem(root, base)
        split = split or _auto_split(root)
        files = {kind: f for kind, f in _pair_files(stem).items() if writers[kind] is not None}
        record = {
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            **provenance,
            "stem": stem,
            "split": split,
            "files": files,
            "sha256": {},
            "shape": list(cells.shape),
            "n_cells": len(np.unique(cells[cells > 0])),
        }
        if region is not None:
            record["region"] = region
        old_splits = (root / "split.csv").read_bytes() if (root / "split.csv").exists() else None
        temps: dict[str, Path] = {}
        placed: list[str] = []  # kinds renamed into place: undone if the save fails
        try:
            for kind in files:
                temps[kind], record["sha256"][kind] = _write_temp(root / files[kind], writers[kind])
            for kind in ("cells", "nuclei", "table", "label", "split", "image"):
                if kind == "split":
                    rows = [r for r in _read_splits(root) if r.get("stem") != stem]
                    _replace_with(root / "split.csv", _splits_bytes(rows + [{"stem": stem, "split": split}]))
                elif kind in temps:
                    os.replace(temps[kind], root / files[kind])
                    del temps[kind]
                else:
                    continue  # no table
                placed.append(kind)
            old = (root / MANIFEST).read_bytes() if (root / MANIFEST).exists() else b""
            if old and not old.endswith(b"\n"):
                old += b"\n"
            _replace_with(root / MANIFEST, old + json.dumps(record, default=str).encode() + b"\n")
        except BaseException:
            _undo(root, files, placed, old_splits)
            raise
        finally:
            for tmp in temps.values():
                tmp.unlink(missing_ok=True)
    return stem


def _pair_writers(image, cells, nuclei, region=None, table=None, pixel_size=None):
    """What saving a pair writes: ``kind -> write(path)`` for each of :func:`_pair_files`
    (None: no table), the region as ``[y0, x0, y1, x1]`` (or None) and the cells map, both
    as saved. A ValueError says why maps that do not fit the image or each other are not saved."""
    from PIL import Image

    from .edit import check_invariants
    from .io import to_rgb8
    from .review import classes_from_instances

    if region is not None:
        y0, x0, y1, x1 = (int(v) for v in region)
        image, cells, nuclei = (a[y0:y1, x0:x1] for a in (image, cells, nuclei))
        region = [y0, x0, y1, x1]
    image = to_rgb8(np.asarray(image))
    cells, nuclei = np.asarray(cells).astype(np.uint32), np.asarray(nuclei).astype(np.uint32)
    if cells.shape != image.shape[:2]:
        raise ValueError(f"labels {cells.shape} and image {image.shape[:2]} differ in shape")
    problems = check_invariants(cells, nuclei, connected=False)
    if problems:
        raise ValueError("the labels are not consistent, so they were not saved: " + "; ".join(problems))
    classes = classes_from_instances(cells, nuclei)
    writers = {
        "cells": labels_tiff_writer(cells, pixel_size),
        "nuclei": labels_tiff_writer(nuclei, pixel_size),
        "table": None if table is None else lambda p: table.to_csv(p, index=False),
        "label": lambda p: Image.fromarray(classes, "L").save(p, format="PNG"),
        "image": lambda p: Image.fromarray(image, "RGB").save(p, format="PNG"),
    }
    return writers, region, cells


# a pair is saved already when these files are: the image, its corrected maps, and the table
# with the cell types (a table changed since, e.g. a type set, is saved again)
SAME_PAIR = ("image", "cells", "nuclei", "table")


def find_saved_pair(
    root: str | Path,
    image: np.ndarray,
    cells: np.ndarray,
    nuclei: np.ndarray,
    *,
    region: tuple[int, int, int, int] | None = None,
    table=None,
    pixel_size: float | None = None,
) -> str | None:
    """The stem of a complete pair in ``root`` that holds exactly what :func:`save_training_pair`
    would write for these arguments (the manifest's sha256 of the image, the instance maps and
    the table, or no table, all equal), the latest if several; None when there is none. So a
    field saved again unchanged can be said to be saved, rather than written a second time."""
    import tempfile

    root = Path(root)
    records = [r for r in read_manifest(root) if r.get("sha256")]
    if not records or not (root / "images").is_dir() or not (root / "labels").is_dir():
        return None
    writers, _, _ = _pair_writers(image, cells, nuclei, region, table, pixel_size)
    digests = {}
    with tempfile.TemporaryDirectory(prefix="napari-wbc-") as tmp:
        for kind, name in _pair_files("pair").items():
            if kind in SAME_PAIR and writers[kind] is not None:
                path = Path(tmp) / Path(name).name
                writers[kind](path)
                digests[kind] = _sha256(path)
    complete = {pair.stem for pair in list_pairs(root)}
    for record in reversed(records):
        recorded = record["sha256"]
        if record.get("stem") in complete and all(recorded.get(k) == digests.get(k) for k in SAME_PAIR):
            return record["stem"]
    return None


def _undo(root: Path, files: dict[str, str], placed: list[str], old_splits: bytes | None) -> None:
    """Take back what a failed save put in place (its stem was fresh: nothing else is lost).
    What cannot be taken back is what a killed save leaves, which repair removes."""
    import logging

    try:
        for kind in reversed(placed):  # the image first: the pair is gone before its label
            if kind in files:
                (root / files[kind]).unlink(missing_ok=True)
        if "split" in placed:
            if old_splits is None:
                (root / "split.csv").unlink(missing_ok=True)
            else:
                _replace_with(root / "split.csv", old_splits)
    except OSError as err:
        logging.getLogger(__name__).warning("%s: could not undo a failed save: %s", root, err)


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def validate_training_folder(root: str | Path) -> list[str]:
    """Problems of a training folder (empty: valid): every pair loads, labels are 0/1/2, and
    every manifest record names a complete pair, once, with its instance maps, and its
    files are those it saved (sha256, where recorded): a pair whose files were mixed up or
    changed since is found here."""
    root = Path(root)
    problems = []
    pairs = {p.stem: p for p in list_pairs(root)}
    for pair in pairs.values():
        try:
            _, label = load_pair(pair)
        except Exception as err:  # a truncated or mismatched file is what this looks for
            problems.append(f"{pair.stem}: {err}")
            continue
        if label.max(initial=0) > 2:
            problems.append(f"{pair.stem}: label values beyond 0/1/2")
    seen = set()
    for record in read_manifest(root):
        stem = record.get("stem")
        if stem in seen:
            problems.append(f"manifest names {stem!r} more than once")
        seen.add(stem)
        if stem not in pairs:
            problems.append(f"manifest names {stem!r}, which is not a complete pair")
        files = record.get("files") or {}
        missing = [f for f in files.values() if not (root / f).exists()]
        if missing:
            problems.append(f"{stem}: missing {missing}")
        for kind, digest in (record.get("sha256") or {}).items():
            rel = files.get(kind)
            if rel and (root / rel).is_file() and _sha256(root / rel) != digest:
                problems.append(f"{stem}: {rel} is not the file saved with it (changed since)")
    return problems


# --- leftovers of killed saves --------------------------------------------------------------

INSTANCE_SUFFIXES = ("_cells.tif", "_nuclei.tif", "_cells.csv")


def _leftovers(root: Path) -> tuple[list[Path], list[Path], list[str], list[Path]]:
    """What interrupted saves leave in ``root``: temporary files; labels and instance maps of
    no complete pair (a save puts the image in place after them, so they are its files); split
    rows of no complete pair; and images without label, which no save leaves (reported, kept)."""
    pairs = {p.stem for p in list_pairs(root)}
    temps, orphans, unlabelled = [], [], []
    for folder in (root, *(root / sub for sub in SUBFOLDERS)):
        for path in sorted(folder.glob(f".*{TMP}")) if folder.is_dir() else []:
            if path.is_symlink() or path.is_file():
                temps.append(path)
    for path in sorted((root / "labels").glob("*.png")):
        if not path.name.startswith(".") and path.stem not in pairs:
            orphans.append(path)
    for path in sorted((root / "instances").glob("*")) if (root / "instances").is_dir() else []:
        stem = next((path.name[: -len(s)] for s in INSTANCE_SUFFIXES if path.name.endswith(s)), None)
        if stem and not path.name.startswith(".") and stem not in pairs:
            orphans.append(path)
    for path in sorted((root / "images").iterdir()):
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".") and path.stem not in pairs:
            unlabelled.append(path)
    rows = [r.get("stem") for r in _read_splits(root) if r.get("stem") not in pairs]
    return temps, orphans, rows, unlabelled


def _leftover_problems(root: Path) -> list[str]:
    temps, orphans, rows, unlabelled = _leftovers(root)

    def rel(p: Path) -> str:
        return p.relative_to(root).as_posix()

    return (
        [f"{rel(p)}: temporary file of an interrupted save" for p in temps]
        + [f"{rel(p)}: belongs to no complete pair (an interrupted save)" for p in orphans]
        + [f"split.csv: row {stem!r} names no complete pair" for stem in rows]
        + [f"{rel(p)}: image without label" for p in unlabelled]
    )


def check_training_folder(root: str | Path) -> list[str]:
    """Every problem of a training folder, one line each: :func:`validate_training_folder`'s
    and the leftovers of interrupted saves (which :func:`repair_training_folder` removes)."""
    root = Path(root)
    list_pairs(root)  # a clear error for a folder that is no dataset
    # read-only folders (shared datasets) have no saves to wait for
    lock = folder_lock(root) if os.access(root, os.W_OK) else contextlib.nullcontext()
    with lock:
        return validate_training_folder(root) + _leftover_problems(root)


def repair_training_folder(root: str | Path) -> list[str]:
    """Remove the leftovers of interrupted saves; what was done, one line each.

    Removes temporary files, labels and instance maps of no complete pair, and split rows
    of no complete pair. A complete pair (image and label) is never touched, nor an image
    without label, nor the manifest (its records are the folder's history).
    """
    root = Path(root)
    list_pairs(root)
    done = []
    with folder_lock(root):
        temps, orphans, rows, _ = _leftovers(root)
        for path in temps + orphans:
            path.unlink(missing_ok=True)
            done.append(f"removed {path.relative_to(root).as_posix()}")
        if rows:
            kept = [r for r in _read_splits(root) if r.get("stem") not in set(rows)]
            _replace_with(root / "split.csv", _splits_bytes(kept))
            done += [f"dropped split.csv row {stem!r}" for stem in rows]
    return done


# the five white-cell types in the coding of the Zheng sets' class_labels.csv (1..5)
CELL_TYPES = ("neutrophil", "lymphocyte", "monocyte", "eosinophil", "basophil")
# what the cell-type classifier says of an object that is no white cell (platelet, red cell,
# debris, glare, frame edge): kept in the labels, left out of the count
NOT_WBC = "not_wbc"
# a white cell whose most likely type is not likely enough (as analysers say it)
UNIDENTIFIED = "unidentified"
# how cells get their type: the cell-type classifier, the segmentation model's own
# (WCSegNet), or none (core.celltypes.load_classifier)
TYPING = ("classifier", "model", "none")


def image_cell_types(root: str | Path) -> dict[str, str]:
    """stem -> the white-cell type of every cell in that image, where the dataset says.

    Reads ``class_labels.csv`` (Zheng sets: image ID, class 1..5) or ``wbc_class_labels.csv``
    (bccd: image number, category; an image whose cells are of more than one type is left
    out, since the file does not say which cell is which). Images not listed are absent.
    """
    import csv

    root = Path(root)
    out: dict[str, str] = {}
    if (root / "class_labels.csv").exists():
        with open(root / "class_labels.csv", newline="") as f:
            for row in list(csv.reader(f))[1:]:
                if len(row) >= 2 and row[0].strip().isdigit() and row[1].strip().isdigit():
                    k = int(row[1])
                    if 1 <= k <= len(CELL_TYPES):
                        out[f"{int(row[0]):03d}"] = CELL_TYPES[k - 1]
    elif (root / "wbc_class_labels.csv").exists():
        with open(root / "wbc_class_labels.csv", newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                image, category = (row.get("Image") or "").strip(), (row.get("Category") or "")
                kinds = {c.strip().lower() for c in category.split(",") if c.strip()}
                if image.isdigit() and len(kinds) == 1 and next(iter(kinds)) in CELL_TYPES:
                    out[f"BloodImage_{int(image):05d}"] = kinds.pop()
    stems = {p.stem for p in list_pairs(root)} if (root / "images").is_dir() else set(out)
    return {s: t for s, t in out.items() if s in stems}
