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

from .dataset import list_pairs, load_pair
from .metrics import METRICS, class_map_metrics, mean_metrics


def reference_count(pair, label) -> int:
    """White cells in a reference: the VOC WBC boxes when the dataset has them, else the
    connected white-cell regions of the mask."""
    import xml.etree.ElementTree as ET

    from scipy import ndimage

    voc = pair.image.parent.parent / "annotations_voc" / f"{pair.stem}.xml"
    if voc.exists():
        return sum(o.findtext("name") == "WBC" for o in ET.parse(voc).getroot().iter("object"))
    return int(ndimage.label(label > 0)[1])


def evaluate_dataset(dataset, split="test", model=None, weights=None, device="auto", out=None,
                     progress=None, flip_average: bool = False) -> dict:
    from ..models import load_model, resolve_weights, sha256
    from .device import pick_device
    from .inference import run, segment

    device = pick_device(device)
    folder = resolve_weights(model, weights)
    net, spec = load_model(weights=folder, device=device, flip_average=flip_average)
    pairs = list_pairs(dataset, split)
    if not pairs:
        raise FileNotFoundError(f"{dataset}: no images in split {split!r}")
    from scipy import ndimage

    from .ap import average_precision
    from .dataset import image_cell_types

    known_types = image_cell_types(dataset)
    per_image, network, annotated, count_errors, predictions, references = [], [], [], [], [], []
    single = []
    typed = {"cells": 0, "correct": 0}
    ncr_ratios = []
    for i, pair in enumerate(pairs):
        image, label = load_pair(pair)
        result = run(segment(image, net, spec, device))
        per_image.append(class_map_metrics(result.classes, label))
        network.append(class_map_metrics(result.network, label))
        annotated.append(class_map_metrics(annotated_only(result.classes, result.cells, label), label))
        single.append(class_map_metrics(centre_cell_only(result.classes, result.cells), label))
        count_errors.append(len(np.unique(result.cells[result.cells > 0])) - reference_count(pair, label))
        reference = ndimage.label(label > 0)[0]
        ncr_ratios += ncr_ratios_of_matches(result.cells, result.nuclei, reference, label)
        predictions.append((result.cells, result.scores or {}))
        references.append(reference)
        if result.types and pair.stem in known_types:
            for cell, (kind, _) in result.types.items():
                if _best_iou(result.cells == cell, reference) >= 0.5:
                    typed["cells"] += 1
                    typed["correct"] += kind == known_types[pair.stem]
        if progress:
            progress(i + 1, len(pairs))
    result = {
        "dataset": Path(dataset).name, "split": split, "images": len(pairs), "model": spec.name,
        "weights": str(folder), "weights_sha256": sha256(folder / "model.safetensors"),
        "flip_average": flip_average, "device": device, "machine": platform.machine(),
        "date": datetime.date.today().isoformat(),
        # what the user gets (cells and nuclei after clean-up), and the network's raw argmax
        "metrics": mean_metrics(per_image),
        "network_metrics": mean_metrics(network),
        "annotated_metrics": mean_metrics(annotated),
        # what `segment --single-cell` gives: the centre cell of each image only
        "single_cell_metrics": mean_metrics(single),
        "count": {"mean_abs_error": sum(map(abs, count_errors)) / len(count_errors),
                  "exact": sum(e == 0 for e in count_errors) / len(count_errors),
                  "over": sum(e > 0 for e in count_errors), "under": sum(e < 0 for e in count_errors)},
        "instances": average_precision(predictions, references),
        "ncr_agreement": ncr_agreement(ncr_ratios),
    }
    if typed["cells"]:
        result["types"] = {**typed, "accuracy": typed["correct"] / typed["cells"]}
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        stem = f"{result['dataset']}_{split}_{spec.name}"
        (out / f"{stem}.json").write_text(json.dumps(result, indent=2))
        (out / f"{stem}.md").write_text(format_markdown(result) + "\n")
    return result


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


def ncr_ratios_of_matches(cells: np.ndarray, nuclei: np.ndarray, reference: np.ndarray,
                          label: np.ndarray) -> list[float]:
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
    return {"cells": int(r.size), "median_ratio": float(np.median(r)),
            "within_10pct": float(np.mean(np.abs(r - 1) <= 0.1)),
            "within_20pct": float(np.mean(np.abs(r - 1) <= 0.2))}


def _best_iou(mask: np.ndarray, reference: np.ndarray) -> float:
    ids, overlap = np.unique(reference[mask & (reference > 0)], return_counts=True)
    if not len(ids):
        return 0.0
    k = int(overlap.argmax())
    return float(overlap[k] / (mask.sum() + (reference == ids[k]).sum() - overlap[k]))


def format_markdown(result: dict) -> str:
    """The metrics as a Markdown table (percent), regions as rows."""
    tta = ", flip-averaged" if result.get("flip_average") else ""
    head = (f"{result['model']} on {result['dataset']} {result['split']} "
            f"({result['images']} images, mean over images{tta}, %)")
    lines = [head, "", "| region | " + " | ".join(METRICS) + " |", "|---" * (len(METRICS) + 1) + "|"]
    for region, scores in result["metrics"].items():
        lines.append(f"| {region} | " + " | ".join(f"{100 * scores[m]:.2f}" for m in METRICS) + " |")
    raw = result.get("network_metrics")
    if raw:
        lines += ["", "Network alone (raw class map), Dice: " + ", ".join(
            f"{region} {100 * scores['dice']:.2f}" for region, scores in raw.items())]
    kept = result.get("annotated_metrics")
    if kept:
        lines += ["", "Annotated cells only (result cells that overlap no reference cell left out), "
                      "Dice: " + ", ".join(f"{region} {100 * scores['dice']:.2f}"
                                           for region, scores in kept.items())]
    single = result.get("single_cell_metrics")
    if single:
        lines += ["", "Single-cell crop mode (`segment --single-cell`: only the centre cell kept), "
                      "Dice: " + ", ".join(f"{region} {100 * scores['dice']:.2f}"
                                           for region, scores in single.items())]
    c = result.get("count")
    if c:
        lines += ["", f"White-cell count per image: mean absolute error {c['mean_abs_error']:.3f}, "
                      f"exact in {100 * c['exact']:.1f}% of images ({c['over']} over, {c['under']} under)"]
    ap = result.get("instances")
    if ap:
        figures = ", ".join(f"{k} {v:.2f}" for k, v in ap.items())
        lines += ["", f"Cells as instances (COCO-style, mask IoU): {figures}"]
    n = result.get("ncr_agreement")
    if n and n.get("cells"):
        lines += ["", f"NCR of the {n['cells']} matched cells (IoU >= 0.5) against the reference's: "
                      f"median ratio {n['median_ratio']:.3f}, within 10% in {100 * n['within_10pct']:.0f}%, "
                      f"within 20% in {100 * n['within_20pct']:.0f}% of cells"]
    t = result.get("types")
    if t:
        lines += ["", f"Cell type accuracy: {100 * t['accuracy']:.1f}% of {t['cells']} matched cells "
                      "in images whose type the dataset gives"]
    return "\n".join(lines)
