"""Evaluate a model on a dataset split: the six metrics for cell, cytoplasm and nucleus.

Scores are computed per image at the image's native size and averaged over images, as
in the papers: ``metrics`` for the pipeline's result (the cells and nuclei a user gets,
after instance clean-up), ``network_metrics`` for the network's raw class map, and
``annotated_metrics`` for the result's cells that overlap a reference cell (the Zheng
crops annotate only their centre cell, so a neighbour the model rightly finds counts as
false positive pixels in ``metrics``; such cells still show in the count). For every
model also the instance figures: COCO-style AP, AP50 and AP75 of the cells against the
reference's connected white-cell regions (pooled over images), the count error per image,
the agreement of each matched cell's NCR with the reference's (``ncr_agreement``), and for
a typing model the accuracy of the cell types against the dataset's class labels.
``evaluate_dataset`` writes ``<dataset>_<split>_<model>.json`` and ``.md``.
"""

from __future__ import annotations

import datetime
import json
import platform
from pathlib import Path

import numpy as np

from .dataset import NOT_WBC, list_pairs, load_pair
from .metrics import METRICS, class_map_metrics, mean_metrics


def reference_count(pair, label) -> int:
    """White cells in a reference: the VOC WBC boxes when the dataset has them, plus each
    white-cell region of the mask that lies mostly outside every box (bccd's boxes miss a
    cell that its mask and its type labels hold in 3 of 73 test fields, cells cut by the
    frame); without boxes, the connected white-cell regions of the mask."""
    from scipy import ndimage

    from .celltype_data import voc_boxes

    regions, n = ndimage.label(label > 0)
    boxes = voc_boxes(pair.image.parent.parent, pair.stem).get("WBC")
    if boxes is None:
        return int(n)
    boxed = np.zeros(label.shape, bool)
    for y0, x0, y1, x1 in boxes:
        boxed[max(0, y0) : y1 + 1, max(0, x0) : x1 + 1] = True
    inside = ndimage.mean(boxed, regions, np.arange(1, n + 1)) if n else np.zeros(0)
    return len(boxes) + int((np.asarray(inside) < 0.5).sum())


def evaluate_dataset(
    dataset,
    split="test",
    model=None,
    weights=None,
    device="auto",
    out=None,
    progress=None,
    flip_average: bool = False,
    typing: str = "classifier",
    classifier_weights=None,
) -> dict:
    from ..models import load_model, resolve_weights, sha256
    from .celltypes import CLASSIFIER, classify_cells, load_classifier
    from .device import pick_device
    from .inference import run, segment
    from .options import Options
    from .type_metrics import MISSED, confusion_png, type_report, wrong_cells_png

    device = pick_device(device)
    folder = resolve_weights(model, weights)
    net, spec = load_model(weights=folder, device=device, flip_average=flip_average)
    classifier = load_classifier(typing, device, classifier_weights)
    options = Options(device=device)
    pairs = list_pairs(dataset, split)
    if not pairs:
        raise FileNotFoundError(f"{dataset}: no images in split {split!r}")
    from scipy import ndimage

    from .ap import average_precision
    from .dataset import image_cell_types

    known_types = image_cell_types(dataset)
    per_image, network, annotated, count_errors, predictions, references = [], [], [], [], [], []
    single, all_objects = [], []
    typed = {"truth": [], "pipeline": [], "reference": []}
    wrong, wrong_thumbs = [], []  # the cells the whole pipeline types wrong, and their pictures
    ncr_ratios = []
    for i, pair in enumerate(pairs):
        image, label = load_pair(pair)
        result = run(segment(image, net, spec, options, classifier=classifier))
        types = result.types if typing != "none" else None
        per_image.append(class_map_metrics(result.classes, label))
        network.append(class_map_metrics(result.network, label))
        annotated.append(class_map_metrics(annotated_only(result.classes, result.cells, label), label))
        single.append(class_map_metrics(centre_cell_only(result.classes, result.cells), label))
        found = [int(c) for c in np.unique(result.cells[result.cells > 0])]
        counted = [c for c in found if (types or {}).get(c, ("",))[0] != NOT_WBC]
        count_errors.append(len(counted) - reference_count(pair, label))
        all_objects.append(len(found) - reference_count(pair, label))
        reference = ndimage.label(label > 0)[0]
        ncr_ratios += ncr_ratios_of_matches(result.cells, result.nuclei, reference, label)
        predictions.append((result.cells, result.scores or {}))
        references.append(reference)
        if types is not None and pair.stem in known_types:
            refs = list(range(1, int(reference.max()) + 1))
            for r in refs:
                cell = _best_match(reference == r, result.cells)
                truth = known_types[pair.stem]
                kind, confidence = types.get(cell, (MISSED, None)) if cell else (MISSED, None)
                typed["truth"].append(truth)
                typed["pipeline"].append(kind)
                if kind != truth:
                    wrong.append(
                        {"field": pair.stem, "reference": truth, "typed": kind, "confidence": confidence}
                    )
                    if out is not None:  # the picture is only written with the reports
                        shown = (
                            (result.cells, result.nuclei, cell)
                            if cell
                            else (reference, np.where(label == 2, reference, 0), r)
                        )
                        wrong_thumbs.append(_cell_picture(image, *shown))
            if classifier is not None:
                nuclei = np.where(label == 2, reference, 0)
                alone, _ = classify_cells(*classifier, image, reference, nuclei, device)
                typed["reference"] += [alone[r][0] for r in refs]
        if progress:
            progress(i + 1, len(pairs))
    result = {
        "dataset": Path(dataset).name,
        "split": split,
        "images": len(pairs),
        "model": spec.name,
        "weights": str(folder),
        "weights_sha256": sha256(folder / "model.safetensors"),
        "flip_average": flip_average,
        "device": device,
        "machine": platform.machine(),
        "date": datetime.date.today().isoformat(),
        # what the user gets (cells and nuclei after clean-up), and the network's raw argmax
        "metrics": mean_metrics(per_image),
        "network_metrics": mean_metrics(network),
        "annotated_metrics": mean_metrics(annotated),
        # what `segment --single-cell` gives: the centre cell of each image only
        "single_cell_metrics": mean_metrics(single),
        # white cells counted (objects the classifier calls no white cell left out), and every object
        "count": _count_figures(count_errors),
        "count_all_objects": _count_figures(all_objects),
        "instances": average_precision(predictions, references),
        "ncr_agreement": ncr_agreement(ncr_ratios),
    }
    if typed["truth"]:
        result["typing"] = typing
        if classifier is not None:
            where = resolve_weights(None if classifier_weights else CLASSIFIER, classifier_weights)
            result["classifier"] = {
                "name": classifier[1].name,
                "weights_sha256": sha256(where / "model.safetensors"),
                "unidentified_below": classifier[1].extra.get("unidentified_below"),
            }
        result["types"] = {**type_report(typed["truth"], typed["pipeline"]), "wrong_cells": wrong}
        if typed["reference"]:
            result["types_reference_cells"] = type_report(typed["truth"], typed["reference"])
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{result['dataset']}_{split}_{spec.name}"
        if "types" in result:
            confusion_png(
                result["types"],
                out / f"{stem}_confusion.png",
                f"{result['dataset']} {split}: cell types, whole pipeline ({spec.name})",
            )
        if wrong:
            wrong_cells_png(
                wrong,
                wrong_thumbs,
                out / f"{stem}_wrong_types.png",
                f"{result['dataset']} {split}: the cells typed wrong, whole pipeline ({spec.name})",
            )
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
        (out / f"{stem}.md").write_text(format_markdown(result) + "\n")
    return result


def _cell_picture(image: np.ndarray, cells: np.ndarray, nuclei: np.ndarray, label: int) -> np.ndarray:
    """A thumbnail of cell ``label`` (its nucleus carries the same id in ``nuclei``), 2.5x
    its width, its outlines drawn."""
    from .thumbnails import thumbnail

    width = 2 * np.sqrt((cells == label).sum() / np.pi)
    return thumbnail(image, cells, nuclei, label, side_px=2.5 * max(width, 8.0))


def _count_figures(errors: list[int]) -> dict:
    """Count errors per image (found - reference) as mean absolute error, exact share, over/under."""
    return {
        "mean_abs_error": sum(map(abs, errors)) / len(errors),
        "exact": sum(e == 0 for e in errors) / len(errors),
        "over": sum(e > 0 for e in errors),
        "under": sum(e < 0 for e in errors),
    }


def _best_match(ref: np.ndarray, cells: np.ndarray) -> int:
    """The result cell that matches a reference cell with IoU >= 0.5, else 0."""
    ids, overlap = np.unique(cells[ref & (cells > 0)], return_counts=True)
    if not len(ids):
        return 0
    k = int(overlap.argmax())
    iou = overlap[k] / (ref.sum() + (cells == ids[k]).sum() - overlap[k])
    return int(ids[k]) if iou >= 0.5 else 0


def centre_cell_only(classes: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """The class map with every cell but the one at the image centre set to background,
    as single-cell crop mode gives it (:func:`.postprocess.centre_cell`)."""
    from .postprocess import centre_cell

    keep = centre_cell(cells)
    return np.where((cells == keep) & (keep > 0), classes, 0).astype(classes.dtype)


def annotated_only(classes: np.ndarray, cells: np.ndarray, label: np.ndarray) -> np.ndarray:
    """The class map with every cell that does not overlap the reference's white cells set
    to background."""
    hit = np.unique(cells[(label > 0) & (cells > 0)])
    return np.where(np.isin(cells, hit), classes, 0).astype(classes.dtype)


def _ncr(cell: np.ndarray, nucleus: np.ndarray) -> float:
    cytoplasm = int(cell.sum()) - int(nucleus.sum())
    return float(nucleus.sum()) / cytoplasm if cytoplasm > 0 else float("nan")


def ncr_ratios_of_matches(
    cells: np.ndarray, nuclei: np.ndarray, reference: np.ndarray, label: np.ndarray
) -> list[float]:
    """Result NCR / reference NCR for each reference cell that a result cell matches with
    IoU >= 0.5 (NCR = nucleus area / cytoplasm area, as in the measurement table)."""
    ratios = []
    for ref_id in np.unique(reference[reference > 0]):
        ref = reference == ref_id
        ids, overlap = np.unique(cells[ref & (cells > 0)], return_counts=True)
        if not len(ids):
            continue
        cell_id = ids[overlap.argmax()]
        cell = cells == cell_id
        if overlap.max() / (cell | ref).sum() < 0.5:
            continue
        want, got = _ncr(ref, ref & (label == 2)), _ncr(cell, nuclei == cell_id)
        if want > 0 and np.isfinite(want) and np.isfinite(got):
            ratios.append(got / want)
    return ratios


def ncr_agreement(ratios: list[float]) -> dict:
    """How far the result's NCRs are from the reference's: the median ratio (1 = no bias)
    and the share of cells within 10% and 20% of the reference."""
    r = np.asarray(ratios, float)
    if not r.size:
        return {"cells": 0}
    return {
        "cells": int(r.size),
        "median_ratio": float(np.median(r)),
        "within_10pct": float(np.mean(np.abs(r - 1) <= 0.1)),
        "within_20pct": float(np.mean(np.abs(r - 1) <= 0.2)),
    }


def format_markdown(result: dict) -> str:
    """The metrics as a Markdown table (percent), regions as rows."""
    tta = ", flip-averaged" if result.get("flip_average") else ""
    head = (
        f"{result['model']} on {result['dataset']} {result['split']} "
        f"({result['images']} images, mean over images{tta}, %)"
    )
    lines = [head, "", "| region | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for region, scores in result["metrics"].items():
        lines.append(f"| {region} | " + " | ".join(f"{100 * scores[m]:.2f}" for m in METRICS) + " |")
    raw = result.get("network_metrics")
    if raw:
        lines += [
            "",
            "Network alone (raw class map), Dice: "
            + ", ".join(f"{region} {100 * scores['dice']:.2f}" for region, scores in raw.items()),
        ]
    kept = result.get("annotated_metrics")
    if kept:
        lines += [
            "",
            "Annotated cells only (result cells that overlap no reference cell left out), "
            "Dice: " + ", ".join(f"{region} {100 * scores['dice']:.2f}" for region, scores in kept.items()),
        ]
    single = result.get("single_cell_metrics")
    if single:
        lines += [
            "",
            "Single-cell crop mode (`segment --single-cell`: only the centre cell kept), "
            "Dice: " + ", ".join(f"{region} {100 * scores['dice']:.2f}" for region, scores in single.items()),
        ]
    for key, what in (
        ("count", "White-cell count per image"),
        ("count_all_objects", "Every object segmented (before leaving out what is no white cell)"),
    ):
        c = result.get(key)
        if c:
            lines += [
                "",
                f"{what}: mean absolute error {c['mean_abs_error']:.3f}, "
                f"exact in {100 * c['exact']:.1f}% of images ({c['over']} over, "
                f"{c['under']} under)",
            ]
    ap = result.get("instances")
    if ap:
        figures = ", ".join(f"{k} {v:.2f}" for k, v in ap.items())
        lines += ["", f"Cells as instances (COCO-style, mask IoU): {figures}"]
    n = result.get("ncr_agreement")
    if n and n.get("cells"):
        lines += [
            "",
            f"NCR of the {n['cells']} matched cells (IoU >= 0.5) against the reference's: "
            f"median ratio {n['median_ratio']:.3f}, within 10% in {100 * n['within_10pct']:.0f}%, "
            f"within 20% in {100 * n['within_20pct']:.0f}% of cells",
        ]
    from .type_metrics import format_type_report

    if result.get("types"):
        lines += [
            "",
            format_type_report(
                result["types"],
                "Cell types, whole pipeline (every reference cell "
                "of known type; unmatched ones count as missed)",
            ),
        ]
    if result.get("types_reference_cells"):
        lines += [
            "",
            format_type_report(
                result["types_reference_cells"], "Cell types, classifier alone (on the reference outlines)"
            ),
        ]
    return "\n".join(lines)
