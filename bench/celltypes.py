"""Cell types and white-cell counts of the default pipeline (segmenter + cell-type classifier)
on the test splits, and the classifier's CPU time next to the segmenter's.

Usage: python bench/celltypes.py [--classifier-weights DIR] [--out docs/eval/celltypes]
       [--datasets zheng_d1 zheng_d2 bccd] [--device cpu] [--timing-fields 20]

Per split: type accuracy of every reference cell of known type through the whole pipeline
(a cell the segmenter misses, or the classifier leaves unidentified or calls no white cell,
counts as wrong), of the identified ones, and of the classifier alone on the reference
outlines; per-class recall; the unidentified rate; the white-cell count (exact share, mean
absolute error) before and after leaving out what the classifier calls no white cell. The
JSON/Markdown reports and confusion-matrix PNGs go to --out.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def timing(fields: int, device: str, classifier_weights=None) -> str:
    """Mean CPU time per bccd test field of segmentation and of typing, and per typed cell."""
    from napari_wbc.core.celltypes import classify_cells, load_classifier
    from napari_wbc.core.dataset import list_pairs, load_pair
    from napari_wbc.core.inference import run, segment
    from napari_wbc.core.options import Options
    from napari_wbc.models import load_model

    net, spec = load_model(device=device)
    classifier = load_classifier("classifier", device, classifier_weights)
    options = Options(device=device)
    seg_s = type_s = 0.0
    cells = 0
    pairs = list_pairs(DATASETS / "bccd", "test")[:fields]
    for pair in pairs:
        image, _ = load_pair(pair)
        t = time.perf_counter()
        result = run(segment(image, net, spec, options))
        seg_s += time.perf_counter() - t
        t = time.perf_counter()
        types, _ = classify_cells(*classifier, image, result.cells, result.nuclei, device)
        type_s += time.perf_counter() - t
        cells += len(types)
    n = len(pairs)
    return (
        f"{n} bccd test fields on {device}: segmentation {1000 * seg_s / n:.0f} ms per field, typing "
        f"{1000 * type_s / n:.1f} ms per field ({1000 * type_s / max(cells, 1):.1f} ms per cell, "
        f"{cells} cells): typing adds {100 * type_s / seg_s:.1f}% to the segmentation time"
    )


def main() -> None:
    from napari_wbc.core.dataset import CELL_TYPES
    from napari_wbc.core.evaluate import evaluate_dataset

    p = argparse.ArgumentParser()
    p.add_argument(
        "--classifier-weights", default=None, help="a classifier weights folder (default: the shipped one)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=None)
    p.add_argument("--datasets", nargs="+", default=["zheng_d1", "zheng_d2", "bccd"])
    p.add_argument("--timing-fields", type=int, default=20)
    args = p.parse_args()
    print(
        "| test split | cells | accuracy, pipeline % | of identified % | classifier alone % "
        "| unidentified % | recall per type % (cells) | count exact % before -> after "
        "| count MAE before -> after |"
    )
    print("|---" * 9 + "|")
    for name in args.datasets:
        r = evaluate_dataset(
            DATASETS / name,
            "test",
            device=args.device,
            out=args.out,
            classifier_weights=args.classifier_weights,
        )
        t, alone = r["types"], r.get("types_reference_cells", {})
        recall = ", ".join(
            f"{k[:4]} {_pct(c['recall'])} ({c['cells']})" for k, c in t["per_class"].items() if c["cells"]
        )
        before, after = r["count_all_objects"], r["count"]
        print(
            f"| {name} | {t['cells']} | {_pct(t['accuracy'])} | {_pct(t['accuracy_identified'])} "
            f"| {_pct(alone.get('accuracy'))} | {_pct(t['unidentified_rate'])} | {recall} "
            f"| {_pct(before['exact'])} -> {_pct(after['exact'])} "
            f"| {before['mean_abs_error']:.3f} -> {after['mean_abs_error']:.3f} |",
            flush=True,
        )
    c = r.get("classifier", {})
    print(
        f"\nclassifier sha256 {c.get('weights_sha256', '?')[:16]}..., unidentified below "
        f"{c.get('unidentified_below')}; segmenter {r['model']} sha256 {r['weights_sha256'][:16]}...; "
        f"types {', '.join(CELL_TYPES)}"
    )
    if args.timing_fields:
        print(timing(args.timing_fields, args.device, args.classifier_weights))


if __name__ == "__main__":
    main()
