"""Val white-cell accuracy of cell-type classifiers, alone and with their probabilities averaged.

Reads the val examples a ``napari-wbc train --model celltype`` run cut (``OUT/examples_val.npz``,
all at one crop) and prints, for each classifier and each combination of two or more, the
share of val white cells whose most likely class is their type (8-view averaged, as the
pipeline types), the val score that picks a run's weights, the recall per class and the
white-cell accuracy per data folder. ``--condition`` changes the crops' colours first, as
another lab's stain or camera would (``bench/robustness.py``'s colour conditions; they act on
each pixel, so a changed crop is the crop of the changed field); ``--no-ensembles`` prints the
classifiers alone. ``--type-prior TAU ...`` also prints each classifier with its five type
probabilities reweighted by count ** (TAU x BALANCE), count the type's train examples (the
run's ``examples_train.npz`` beside the val file): TAU 1 undoes the class-balanced drawing of
training batches, so the types come out in the training data's proportions.

Usage: python bench/celltype_val.py EXAMPLES_VAL.npz WEIGHTS [WEIGHTS ...]
       [--condition hema+|hema-|dim|gray] [--no-ensembles] [--type-prior TAU [TAU ...]]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np
from robustness import CONDITIONS  # bench/, beside this script

from napari_wbc.core.celltypes import predict_crops
from napari_wbc.core.train_classifier import BALANCE, _scores
from napari_wbc.models import load_model
from napari_wbc.models.celltype import CLASSES

COLOUR_CONDITIONS = ("none", "hema+", "hema-", "dim", "gray")
BOOTSTRAP = 2000


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("examples", help="a run's examples_val.npz")
    p.add_argument("weights", nargs="+", help="classifier weights folders (their crop must be the examples')")
    p.add_argument("--condition", choices=COLOUR_CONDITIONS, default="none")
    p.add_argument("--no-ensembles", action="store_true")
    p.add_argument("--type-prior", type=float, nargs="+", default=[], metavar="TAU")
    args = p.parse_args()
    with np.load(args.examples) as z:
        ex = {k: z[k] for k in z.files}
    change = CONDITIONS[args.condition][1]
    ex["small"] = np.stack([change(crop, None)[0] for crop in ex["small"]])
    probs = {}
    for w in args.weights:
        net, spec = load_model(None, w)
        if int(spec.extra["crop"]) != ex["small"].shape[1]:
            raise SystemExit(f"{w}: crop {spec.extra['crop']} px, the examples are {ex['small'].shape[1]} px")
        probs[w] = predict_crops(net, spec, ex["small"], ex["small_label"], ex["size"])
    target = ex["target"]
    folder = np.array([s.split("/")[0] for s in ex["source"]])
    wbc = target < 5  # the five types; 5 is not_wbc

    # a field's crops (its cells with the reference's and the segmenter's outlines, and the
    # same field with artefacts painted in) stand or fall together: resampled as one
    field = np.array([str(s).split(":")[0].replace("+artefacts", "") for s in ex["source"]])
    fields, where = np.unique(field[wbc], return_inverse=True)
    draws = np.random.default_rng(0).multinomial(
        len(fields), np.full(len(fields), 1 / len(fields)), BOOTSTRAP
    )
    crops = draws @ np.bincount(where, minlength=len(fields))
    base: dict = {}  # the first classifier's right crops per draw, and its accuracy

    def show(name: str, prob: np.ndarray) -> None:
        s, pred = _scores(prob, target), prob.argmax(1)
        per = ", ".join(
            f"{d} {100 * (pred[m] == target[m]).mean():.1f}"
            for d in np.unique(folder)
            for m in [(folder == d) & wbc]
        )
        recall = ", ".join(f"{k} {100 * v:.0f}" for k, v in s["recall"].items())
        accuracy = 100 * s["white_cell_accuracy"]
        right = draws @ np.bincount(where, weights=(pred == target)[wbc], minlength=len(fields))
        against = ""
        if base:
            lo, hi = np.percentile(100 * (right - base["right"]) / crops, [2.5, 97.5])
            against = f"{accuracy - base['accuracy']:+.1f} ({lo:+.1f}, {hi:+.1f})"
        else:
            base.update(right=right, accuracy=accuracy)
        print(f"| {name} | {accuracy:.1f} | {against} | {s['score']:.3f} | {recall} | {per} |")

    print(
        f"{int(wbc.sum())} val white cells in {len(fields)} fields, {int((~wbc).sum())} negatives; "
        + ("the crops as they are" if args.condition == "none" else CONDITIONS[args.condition][0])
    )
    print(
        "| classifier(s) | white cells % | against the first: difference (95% interval, fields resampled) "
        "| val score | recall % | white cells % per folder |"
    )
    print("|---|---|---|---|---|---|")
    for w, prob in probs.items():
        show(w, prob)
    if args.type_prior:
        from pathlib import Path

        with np.load(Path(args.examples).with_name("examples_train.npz")) as z:
            counts = np.bincount(z["target"], minlength=len(CLASSES)).astype(np.float64)
        for w, prob in probs.items():
            for tau in args.type_prior:
                weight = np.ones(len(CLASSES))
                weight[:5] = counts[:5] ** (tau * BALANCE) / counts[:5].max() ** (tau * BALANCE)
                reweighted = prob * weight
                reweighted[:, :5] *= prob[:, :5].sum(1, keepdims=True) / reweighted[:, :5].sum(
                    1, keepdims=True
                )
                show(f"{w}, type prior {tau}", reweighted)
    for n in range(2, 1 if args.no_ensembles else len(probs) + 1):
        for combo in itertools.combinations(probs, n):
            show(" + ".join(combo), np.mean([probs[c] for c in combo], 0))


if __name__ == "__main__":
    main()
