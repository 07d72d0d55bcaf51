"""Corrected cell types feed the classifier: review, save corrections, fine-tune, measure.

A reviewer is simulated on the bccd *val* fields whose cells are all of one type (the
classifier never trained on them; fields with two types are left out, as everywhere): the
shipped pipeline (MIF-Net + the shipped classifier) segments and types each field, and the
reviewer gives every segmented cell that matches a reference cell (IoU >= 0.5) the field's
type from ``wbc_class_labels.csv`` (confirmed when the classifier said so, else
reclassified), and excludes as "not a white cell" every object that matches no white cell
and lies outside every VOC WBC box; other objects (a white cell cut badly) stay unreviewed.
Each field is saved with :func:`napari_wbc.core.corrections.save_type_corrections`, as the
review does. The shipped classifier is then fine-tuned on the corrections on the CPU
(``train_classifier``, as ``napari-wbc train --model celltype --data FOLDER --init WEIGHTS``
and the Train widget do), and the types on the bccd *test* split (never seen) are measured
before and after with ``core.evaluate.evaluate_dataset`` (``core.type_metrics.type_report``).

Two recipes (``--recipes``): ``mixed`` (the corrections drawn half of each batch, the
shipped classifier's own training examples the other half; val: both) and
``corrections`` (the corrections alone). ``mixed`` needs the base examples that
``napari-wbc train --model celltype`` collected (``--base-cache``: a folder with its
``examples_train.npz`` / ``examples_val.npz``, copied, never written); without them they
are collected (about 30 min on 2 CPU cores).

The fine-tune keeps the start weights unless a validation beats them (as the Train widget
and the CLI do); ``--no-keep-start`` leaves them out of the running, to measure what the
fine-tuned steps themselves give, and ``--corrections`` reuses a corrections folder of an
earlier run (the same cells) instead of reviewing again.

Usage: python bench/finetune_types.py [--fields 0] [--steps 200] [--lr 2e-4] [--batch-size 64]
       [--recipes mixed corrections] [--base-cache runs/celltype] [--out runs/finetune-types]
       [--no-keep-start] [--corrections FOLDER] [--skip-before] [--condition none|gray|hema-|...]
       [--base WEIGHTS --base-data zheng_d1 zheng_d2]

``--base`` starts from another classifier than the shipped one: with one trained on the Zheng
sets alone (``--base-data``), the reviewer's bccd fields are a lab it has never seen, which is
what a new site is for the shipped classifier.

``--condition`` simulates a lab whose smears the classifier has not seen (one of
bench/robustness.py's changes: a grayscale camera, another stain...): the reviewer corrects
the changed val fields, and the types are measured on the changed test split, and the
fine-tunes also on the unchanged one.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shutil
import time
from pathlib import Path

import numpy as np
from robustness import CONDITIONS, changed_split

DATASETS = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def _pct(v) -> str:
    return "–" if v is None else f"{100 * v:.1f}"


def review_field(pair, known_type: str, segmenter, classifier, reviewer: str = "bench", change=None):
    """Segment and type one field, and review it as described in the module docstring:
    (image, cells, nuclei, table with the review columns, scale). ``change(image, label)``
    turns the field into another lab's (``--condition``) before anything looks at it."""
    import pandas as pd
    from scipy import ndimage

    from napari_wbc.core.celltype_data import _iou_matrix, voc_boxes
    from napari_wbc.core.dataset import NOT_WBC, load_pair
    from napari_wbc.core.inference import run, segment

    image, label = load_pair(pair)
    if change is not None:
        image, label = change(image, label)
    result = run(segment(image, *segmenter, classifier=classifier))
    ref = ndimage.label(label > 0)[0].astype(np.uint32)
    iou = _iou_matrix(result.cells, ref)
    wbc = np.zeros(label.shape, bool)
    for y0, x0, y1, x1 in voc_boxes(pair.image.parent.parent, pair.stem).get("WBC", []):
        wbc[y0:y1, x0:x1] = True
    now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    rows = []
    for cid in sorted(result.types):
        suggested = result.types[cid][0]
        row = {"label": cid, "cell_type": suggested, "suggested_type": suggested}
        matched = iou.shape[1] and iou[cid - 1].max() >= 0.5
        if (
            matched
            or (not iou.shape[1] or iou[cid - 1].max() < 0.1)
            and wbc[result.cells == cid].mean() < 0.2
        ):
            kind = known_type if matched else NOT_WBC
            status = "excluded" if kind == NOT_WBC else "confirmed" if kind == suggested else "reclassified"
            row.update(cell_type=kind, review_status=status, reviewed_by=reviewer, reviewed_at=now)
        else:
            row.update(review_status="suggested", reviewed_by="", reviewed_at="")
        rows.append(row)
    return image, result.cells, result.nuclei, pd.DataFrame(rows), result.scale


def evaluate(classifier_weights, label: str, dataset: Path = DATASETS / "bccd") -> dict:
    from napari_wbc.core.evaluate import evaluate_dataset

    t0 = time.time()
    r = evaluate_dataset(dataset, "test", device="cpu", classifier_weights=classifier_weights)
    minutes = (time.time() - t0) / 60
    print(f"  evaluated {label} on {dataset.name}'s test split in {minutes:.1f} min", flush=True)
    return r


def row(name: str, r: dict) -> str:
    t, alone = r["types"], r.get("types_reference_cells", {})
    recall = ", ".join(f"{k} {_pct(c['recall'])}" for k, c in t["per_class"].items() if c["cells"])
    return (
        f"| {name} | {t['cells']} | {_pct(t['accuracy'])} | {_pct(t['accuracy_identified'])} "
        f"| {_pct(alone.get('accuracy'))} | {_pct(t['unidentified_rate'])} | {recall} "
        f"| {_pct(r['count']['exact'])} | {r['classifier']['unidentified_below']} |"
    )


def learned(weights, folder) -> str:
    """Accuracy (argmax of the six classes) of a classifier on the corrections' train cells."""
    from napari_wbc.core.celltype_data import correction_examples
    from napari_wbc.core.celltypes import predict_crops
    from napari_wbc.models import load_model

    net, spec = load_model(weights=weights, device="cpu")
    ex = correction_examples([folder], "train", int(spec.extra["crop"]), float(spec.extra["context"]))
    prob = predict_crops(net, spec, ex["small"], ex["small_label"], ex["size"])
    return f"{_pct(float((prob.argmax(1) == ex['target']).mean()))}% of {len(ex['target'])}"


def main() -> None:
    from napari_wbc.core.celltypes import load_classifier
    from napari_wbc.core.corrections import read_corrections, save_type_corrections, validate_corrections
    from napari_wbc.core.dataset import image_cell_types, list_pairs
    from napari_wbc.core.train import TrainConfig, recipe
    from napari_wbc.core.train_classifier import train_classifier
    from napari_wbc.models import SHIPPED, load_model, resolve_weights, sha256

    p = argparse.ArgumentParser()
    p.add_argument("--fields", type=int, default=0, help="bccd fields to review (0: all with one type)")
    p.add_argument(
        "--review-splits",
        nargs="+",
        default=["val"],
        choices=["train", "val"],
        help="the bccd splits the reviewer corrects; train only with a --base that never saw bccd",
    )
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--val-every", type=int, default=25)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--recipes", nargs="+", default=["mixed", "corrections"], choices=["mixed", "corrections"])
    p.add_argument("--base-cache", default="runs/celltype", help="folder with the base examples_*.npz")
    p.add_argument(
        "--base",
        default=None,
        help="the classifier the lab starts from (a weights folder; default: the shipped one), e.g. one "
        "trained without bccd (--base-data zheng_d1 zheng_d2) to simulate a lab whose smears it has not seen",
    )
    p.add_argument(
        "--base-data",
        nargs="+",
        default=["zheng_d1", "zheng_d2", "bccd"],
        help="the data folders the base classifier trained on (the 'mixed' recipe draws on them)",
    )
    p.add_argument("--out", default="runs/finetune-types")
    p.add_argument("--skip-before", action="store_true", help="do not measure the shipped classifier")
    p.add_argument(
        "--no-keep-start",
        action="store_true",
        help="the start weights do not compete with the fine-tuned steps (what fine-tuning itself gives)",
    )
    p.add_argument("--corrections", default=None, help="reuse this corrections folder (no review)")
    p.add_argument(
        "--condition",
        default="none",
        choices=list(CONDITIONS),
        help="another lab's smears (bench/robustness.py): the reviewed val fields and the test split are "
        "changed so; the fine-tunes are also measured on the unchanged test split",
    )
    args = p.parse_args()
    out = Path(args.out)
    if out.exists():
        raise SystemExit(f"{out} exists; give another --out (nothing is overwritten)")
    out.mkdir(parents=True)
    change = None if args.condition == "none" else CONDITIONS[args.condition][1]
    test_split = DATASETS / "bccd"
    if change is not None:
        test_split = changed_split(DATASETS / "bccd", args.condition, out / "changed", None)
        print(f"condition '{args.condition}': {CONDITIONS[args.condition][0]}", flush=True)
    base = Path(args.base) if args.base else SHIPPED / "celltype"
    segmenter_dir = resolve_weights()
    segmenter = load_model(weights=segmenter_dir, device="cpu")
    classifier = load_classifier("classifier", "cpu", base)
    provenance = {
        "model": segmenter[1].name,
        "weights_sha256": sha256(segmenter_dir / "model.safetensors"),
        "classifier": classifier[1].name,
        "classifier_sha256": sha256(base / "model.safetensors"),
        "note": "simulated reviewer: bench/finetune_types.py",
    }
    print(
        f"{platform.node()} ({platform.machine()}, {os.cpu_count()} CPUs), "
        f"{datetime.date.today().isoformat()}; torch threads {__import__('torch').get_num_threads()}"
    )

    # 1. review the val fields and save the corrections
    types = image_cell_types(DATASETS / "bccd")
    if "train" in args.review_splits and "bccd" in args.base_data:
        raise SystemExit("the base classifier trained on bccd's train split: review its val fields only")
    pairs = [p for s in args.review_splits for p in list_pairs(DATASETS / "bccd", s) if p.stem in types]
    pairs = pairs[: args.fields] if args.fields else pairs
    folder = Path(args.corrections) if args.corrections else out / "type_corrections"
    t0 = time.time()
    statuses: dict[str, int] = {}
    for pair in [] if args.corrections else pairs:
        image, cells, nuclei, table, scale = review_field(
            pair, types[pair.stem], segmenter, classifier, change=change
        )
        for s in table["review_status"]:
            statuses[s] = statuses.get(s, 0) + 1
        save_type_corrections(
            folder, image, cells, nuclei, table, {**provenance, "source": str(pair.image)}, scale=scale
        )
    problems = validate_corrections(folder)
    assert not problems, problems
    records = read_corrections(folder)
    by_split = {s: sum(r["split"] == s for r in records) for s in ("train", "val")}
    kinds = {}
    for r in records:
        kinds[r["cell_type"]] = kinds.get(r["cell_type"], 0) + 1
    what = (
        f"reused {folder}"
        if args.corrections
        else f"reviewed {len(pairs)} bccd {'+'.join(args.review_splits)} fields"
    )
    print(
        f"{what} in {(time.time() - t0) / 60:.1f} min: cells {statuses}; "
        f"saved {len(records)} corrections ({by_split['train']} train, {by_split['val']} val): {kinds}",
        flush=True,
    )

    # 2. measure the base classifier, fine-tune, measure again
    start = "start (--base)" if args.base else "shipped"
    results = {} if args.skip_before else {start: evaluate(base, f"the {start} classifier", test_split)}
    fits = {}
    for name in args.recipes:
        run_dir = out / name
        data = [folder]
        if name == "mixed":
            data += [DATASETS / d for d in args.base_data]
            run_dir.mkdir()
            for split in ("train", "val"):
                cached = Path(args.base_cache) / f"examples_{split}.npz"
                if cached.exists():
                    shutil.copy(cached, run_dir / cached.name)
        config = recipe(
            TrainConfig(
                model="celltype",
                max_steps=args.steps,
                lr=args.lr,
                batch_size=args.batch_size,
                val_every=args.val_every,
                workers=args.workers,
            )
        )
        t0 = time.time()
        history = train_classifier(
            data,
            run_dir,
            config,
            "cpu",
            init_weights=base,
            segmenter=segmenter,
            keep_start=not args.no_keep_start,
        )
        minutes = (time.time() - t0) / 60
        best = history["best"]
        fits[name] = {"minutes": minutes, "best": best, "history": history}
        print(
            f"fine-tuned '{name}': {history['steps']} steps (batch {args.batch_size}, lr {args.lr}) in "
            f"{minutes:.1f} min; val examples {sum(history['val_examples'].values())}; best val at step "
            f"{best['step']}: accuracy {_pct(best['accuracy'])}%, mean recall {_pct(best['mean_recall'])}% "
            f"(first: step {history['val'][0]['step']}, {_pct(history['val'][0]['accuracy'])}% / "
            f"{_pct(history['val'][0]['mean_recall'])}%); "
            f"unidentified below {history['unidentified_below']}; notes {history['notes']}",
            flush=True,
        )
        curve = [
            f"{v['step']}: {_pct(v['accuracy'])}"
            + (
                f" (corrections {_pct(v['corrections_accuracy'])}, base {_pct(v['base_accuracy'])})"
                if "base_accuracy" in v
                else ""
            )
            for v in history["val"]
        ]
        print("  val accuracy % by step: " + "; ".join(curve), flush=True)
        fits[name]["train_corrections_accuracy"] = {
            who: learned(weights, folder) for who, weights in (("start", base), ("result", run_dir))
        }
        print(f"  accuracy on the corrections it trained on: {fits[name]['train_corrections_accuracy']}")
        results[name] = evaluate(run_dir, f"the '{name}' fine-tune", test_split)
        if change is not None:  # what the fine-tune does to the lab's usual smears
            results[f"{name}, unchanged test split"] = evaluate(run_dir, f"the '{name}' fine-tune")

    print(
        "\n| classifier | cells | accuracy, pipeline % | of identified % | classifier alone % "
        "| unidentified % | recall per type % | count exact % | unidentified below |"
    )
    print("|---" * 9 + "|")
    for name, r in results.items():
        print(row(name, r))
    (out / "result.json").write_text(
        json.dumps({"results": results, "fits": fits, "args": vars(args)}, indent=2, default=str)
    )


if __name__ == "__main__":
    main()
