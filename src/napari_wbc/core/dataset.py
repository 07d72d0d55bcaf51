"""Training pairs on disk in the layout of ``../shared/datasets``.

A dataset folder holds ``images/<stem>.png|.jpg``, ``labels/<stem>.png`` (uint8 index
mask: 0 background, 1 cytoplasm, 2 nucleus) and ``split.csv`` (``stem,split`` with split
in train/val/test). Folders without ``split.csv`` put every pair in ``train``.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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


def _write_splits(path: Path, rows: list[dict]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stem", "split"], extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


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


def _fresh_stem(root: Path, base: str) -> str:
    """``base``, or ``base-2``, ``base-3``... : the first stem no file, split row or record uses."""
    used = {row.get("stem") for row in _read_splits(root)} | {r.get("stem") for r in read_manifest(root)}
    used |= {p.stem for p in (root / "images").glob("*")} if (root / "images").is_dir() else set()
    k = 1
    while True:
        stem = base if k == 1 else f"{base}-{k}"
        files = [root / f for f in _pair_files(stem).values()]
        if stem not in used and not any(f.exists() or f.with_name(f".{f.name}.tmp").exists() for f in files):
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
    plus stem, files, split, region, shape, cell count and date. ``region`` (y0, x0, y1,
    x1) crops all maps to e.g. the visible part of a slide; ``image`` may be lazy (dask).

    The stem is the source's stem (with the region), made unique with ``-2``, ``-3``...:
    nothing saved before is overwritten. Each file goes to a temporary name and is renamed;
    the label before the image, so ``list_pairs`` sees the pair only when both are whole,
    and the manifest line last. A save killed half-way leaves at most a pair without its
    manifest line (complete, usable), orphan instance/label files and hidden ``.*.tmp``
    files, which ``list_pairs`` ignores and later saves step around.
    """
    import datetime
    import json

    from PIL import Image

    from .batch import write_atomic, write_csv, write_labels_tiff
    from .edit import check_invariants
    from .io import to_rgb8
    from .review import classes_from_instances

    root = Path(root)
    provenance = dict(provenance or {})
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
    if split is not None and split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, not {split!r}")
    for sub in ("images", "labels", "instances"):
        (root / sub).mkdir(parents=True, exist_ok=True)

    base = _safe_stem(provenance.get("source") or "image")
    if region is not None:
        base = f"{base}_y{region[0]}_x{region[1]}"
    stem = _fresh_stem(root, base)
    split = split or _auto_split(root)
    files = _pair_files(stem)
    px = provenance.get("pixel_size_um")
    write_labels_tiff(root / files["cells"], cells, px)
    write_labels_tiff(root / files["nuclei"], nuclei, px)
    if table is not None:
        write_csv(root / files["table"], table)
    else:
        del files["table"]
    classes = classes_from_instances(cells, nuclei)
    write_atomic(root / files["label"], lambda p: Image.fromarray(classes, "L").save(p, format="PNG"))

    rows = [r for r in _read_splits(root) if r.get("stem") != stem] + [{"stem": stem, "split": split}]
    write_atomic(root / "split.csv", lambda p: _write_splits(p, rows))
    write_atomic(root / files["image"], lambda p: Image.fromarray(image, "RGB").save(p, format="PNG"))

    record = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **provenance,
        "stem": stem,
        "split": split,
        "files": files,
        "shape": list(cells.shape),
        "n_cells": len(np.unique(cells[cells > 0])),
    }
    if region is not None:
        record["region"] = region
    old = (root / MANIFEST).read_bytes() if (root / MANIFEST).exists() else b""
    if old and not old.endswith(b"\n"):
        old += b"\n"
    line = json.dumps(record, default=str).encode() + b"\n"
    write_atomic(root / MANIFEST, lambda p: p.write_bytes(old + line))
    return stem


def validate_training_folder(root: str | Path) -> list[str]:
    """Problems of a training folder (empty: valid): every pair loads, labels are 0/1/2, and
    every manifest record names a complete pair with its instance maps."""
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
    for record in read_manifest(root):
        stem = record.get("stem")
        if stem not in pairs:
            problems.append(f"manifest names {stem!r}, which is not a complete pair")
        missing = [f for f in (record.get("files") or {}).values() if not (root / f).exists()]
        if missing:
            problems.append(f"{stem}: missing {missing}")
    return problems


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
