"""Val white-cell accuracy of cell-type classifiers, alone and with their probabilities averaged.

Reads the val examples a ``napari-wbc train --model celltype`` run cut (``OUT/examples_val.npz``,
all at one crop) and prints, for each classifier and each combination of two or more, the
share of val white cells whose most likely class is their type (8-view averaged, as the
pipeline types), the val score that picks a run's weights, the recall per class and the
white-cell accuracy per data folder.

Usage: python bench/celltype_val.py EXAMPLES_VAL.npz WEIGHTS [WEIGHTS ...]
"""

from __future__ import annotations

import argparse
import itertools

import numpy as np

from napari_wbc.core.celltypes import predict_crops
from napari_wbc.core.train_classifier import _scores
from napari_wbc.models import load_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("examples", help="a run's examples_val.npz")
    p.add_argument("weights", nargs="+", help="classifier weights folders (their crop must be the examples')")
    args = p.parse_args()
    with np.load(args.examples) as z:
        ex = {k: z[k] for k in z.files}
    probs = {}
    for w in args.weights:
        net, spec = load_model(None, w)
        if int(spec.extra["crop"]) != ex["small"].shape[1]:
            raise SystemExit(f"{w}: crop {spec.extra['crop']} px, the examples are {ex['small'].shape[1]} px")
        probs[w] = predict_crops(net, spec, ex["small"], ex["small_label"], ex["size"])
    target = ex["target"]
    folder = np.array([s.split("/")[0] for s in ex["source"]])
    wbc = target < 5  # the five types; 5 is not_wbc

    def show(name: str, prob: np.ndarray) -> None:
        s, pred = _scores(prob, target), prob.argmax(1)
        per = ", ".join(
            f"{d} {100 * (pred[m] == target[m]).mean():.1f}"
            for d in np.unique(folder)
            for m in [(folder == d) & wbc]
        )
        recall = ", ".join(f"{k} {100 * v:.0f}" for k, v in s["recall"].items())
        print(f"| {name} | {100 * s['white_cell_accuracy']:.1f} | {s['score']:.3f} | {recall} | {per} |")

    print(f"{int(wbc.sum())} val white cells, {int((~wbc).sum())} negatives")
    print("| classifier(s) | white cells % | val score | recall % | white cells % per folder |")
    print("|---|---|---|---|---|")
    for w, prob in probs.items():
        show(w, prob)
    for n in range(2, len(probs) + 1):
        for combo in itertools.combinations(probs, n):
            show(" + ".join(combo), np.mean([probs[c] for c in combo], 0))


if __name__ == "__main__":
    main()
