"""Compare many predictions with references: the engine behind ``napari-wbc compare``.

Both sides are folders of labels, matched by stem. A folder holds, per stem, either
``<stem>_cells.tif`` + ``<stem>_nuclei.tif`` (as ``napari-wbc segment`` writes them) or a
0/1/2 class mask ``<stem>.png`` (the dataset layout); a dataset root (with ``labels/``)
stands for its ``labels/``. Per compared stem the output folder gets:

- ``<stem>_review.png``: RGBA, the exact TP/FP/FN colours, agreement on background
  transparent (so it lies over the image in any viewer or napari);
- ``<stem>_overlay.png``: RGB, the same colours over the image, where the image is known
  (``images`` given, or the reference is a dataset root with ``images/``);
- ``<stem>_metrics.csv``: the six metrics for cell, cytoplasm and nucleus;
- ``<stem>_matches.csv``: the per-cell match table (not ``_cells.csv``, which is
  the measurement table of ``segment`` and may share the folder);

and one ``summary.csv`` (a row per stem) and ``summary.md`` (means over stems). A stem
without a reference, or with an unreadable file, is reported and skipped.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd

from .io import InputError
from .metrics import METRICS, mean_metrics
from .review import LabelSet, as_labels, review, review_rgb

log = logging.getLogger(__name__)
OUTPUT_SUFFIXES = ("_review", "_overlay")  # our own PNGs, never labels


def labels_folder(root: str | Path) -> Path:
    root = Path(root)
    return root / "labels" if (root / "labels").is_dir() else root


def list_labels(folder: str | Path) -> dict[str, Path]:
    """Stem -> labels file (``<stem>_cells.tif``, preferred, or a ``<stem>.png`` class mask)."""
    folder = labels_folder(folder)
    if not folder.is_dir():
        raise InputError(f"{folder}: no such folder")
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        name = path.name
        if name.startswith("."):
            continue
        if name.endswith("_cells.tif"):
            found[name[: -len("_cells.tif")]] = path
        elif path.suffix.lower() == ".png" and not path.stem.endswith(OUTPUT_SUFFIXES):
            found.setdefault(path.stem, path)
    return found


def read_labels(path: str | Path) -> LabelSet:
    """A labels file: ``<stem>_cells.tif`` (with its ``_nuclei.tif``) or a 0/1/2 mask PNG."""
    path = Path(path)
    try:
        if path.name.endswith("_cells.tif"):
            import tifffile

            nuclei_path = path.with_name(path.name[: -len("_cells.tif")] + "_nuclei.tif")
            if not nuclei_path.exists():
                raise InputError(f"{nuclei_path.name} is missing beside {path.name}")
            cells, nuclei = tifffile.imread(path), tifffile.imread(nuclei_path)
            if cells.shape != nuclei.shape or cells.ndim != 2:
                raise InputError(
                    f"{path.name}: cells {cells.shape} and nuclei {nuclei.shape} must be 2D maps of one shape"
                )
            return as_labels((cells, nuclei))
        from PIL import Image

        with Image.open(path) as im:
            classes = np.asarray(im)
        if classes.ndim == 3:
            classes = classes[..., 0]
        if classes.max(initial=0) > 2:
            raise InputError(
                f"{path.name}: not a class mask (values up to {classes.max()}, expected "
                "0 background, 1 cytoplasm, 2 nucleus)"
            )
        return as_labels(classes)
    except InputError:
        raise
    except Exception as err:  # truncated, corrupt or not an image
        raise InputError(f"{path.name}: cannot read these labels ({err}); is the file complete?") from err


def _find_image(folder: Path | None, stem: str) -> np.ndarray | None:
    from .io import read_image

    if folder is None:
        return None
    for path in sorted(folder.glob(f"{stem}.*")):
        try:
            return read_image(path).data
        except InputError as err:
            log.warning("%s", err)
    return None


def _write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    from .batch import write_atomic

    write_atomic(path, lambda p: Image.fromarray(array).save(p, format="PNG"))


def compare_one(pred_path, ref_path, out: Path, stem: str, image=None, min_iou: float = 0.5) -> dict:
    """Review one prediction file against one reference file; write its outputs; return its summary row."""
    from .batch import write_csv

    pred, ref = read_labels(pred_path), read_labels(ref_path)
    if pred.classes.shape != ref.classes.shape:
        raise InputError(
            f"{stem}: prediction {pred.classes.shape} and reference {ref.classes.shape} differ in size"
        )
    result = review(pred, ref, min_iou)
    _write_png(out / f"{stem}_review.png", review_rgb(result.codes))
    if image is not None and image.shape[:2] == result.codes.shape:
        _write_png(out / f"{stem}_overlay.png", review_rgb(result.codes, image))
    write_csv(out / f"{stem}_metrics.csv", result.metrics_table())
    write_csv(out / f"{stem}_matches.csv", result.cells)
    return {"stem": stem, **result.summary()}


def compare_folders(pred, ref, out, images=None, min_iou: float = 0.5, progress=None, on_error=None) -> int:
    """Compare every prediction in ``pred`` with its reference in ``ref``; return the failures."""
    from .batch import write_atomic, write_csv

    if not 0 < min_iou <= 1:
        raise InputError(f"the matching IoU must be in (0, 1], not {min_iou}")
    preds, refs = list_labels(pred), list_labels(ref)
    if not preds:
        raise InputError(
            f"{pred}: no predictions found; expected <stem>_cells.tif + <stem>_nuclei.tif "
            "(from `napari-wbc segment`) or 0/1/2 <stem>.png masks"
        )
    if not refs:
        raise InputError(
            f"{ref}: no references found; expected a dataset folder (labels/<stem>.png), "
            "0/1/2 <stem>.png masks or <stem>_cells.tif + <stem>_nuclei.tif"
        )
    if images is None and (Path(ref) / "labels").is_dir() and (Path(ref) / "images").is_dir():
        images = Path(ref) / "images"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows, failures = [], 0
    for i, (stem, pred_path) in enumerate(preds.items()):
        try:
            if stem not in refs:
                raise InputError(f"{stem}: no reference for it in {labels_folder(ref)}")
            image = _find_image(None if images is None else Path(images), stem)
            rows.append(compare_one(pred_path, refs[stem], out, stem, image, min_iou))
        except ValueError as err:  # InputError, or labels that cannot be compared
            failures += 1
            log.warning("%s", err)
            if on_error:
                on_error(stem, str(err))
        if progress:
            progress(i + 1, len(preds))
    if rows:
        summary = pd.DataFrame(rows)
        write_csv(out / "summary.csv", summary)
        write_atomic(out / "summary.md", lambda p: p.write_text(format_summary(summary, min_iou) + "\n"))
    return failures


def format_summary(summary: pd.DataFrame, min_iou: float = 0.5) -> str:
    """Mean metrics over images (percent) and cell totals, as Markdown."""
    regions = ("cell", "cytoplasm", "nucleus")
    per_image = [
        {region: {m: row[f"{region}_{m}"] for m in METRICS} for region in regions}
        for _, row in summary.iterrows()
    ]
    lines = [
        f"Review of {len(summary)} images (mean over images, %)",
        "",
        "| region | " + " | ".join(METRICS) + " |",
        "|---" * (len(METRICS) + 1) + "|",
    ]
    for region, scores in mean_metrics(per_image).items():
        lines.append(f"| {region} | " + " | ".join(f"{100 * scores[m]:.2f}" for m in METRICS) + " |")
    t = summary[["ref_cells", "pred_cells", "matched", "missed", "extra"]].sum()
    lines += [
        "",
        f"Cells: {t['matched']} of {t['ref_cells']} reference cells matched (IoU >= {min_iou:g}), "
        f"{t['missed']} missed, {t['extra']} extra of {t['pred_cells']} predicted.",
    ]
    return "\n".join(lines)
