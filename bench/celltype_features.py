"""What the cell-type classifier's colour augmentation costs on the labs it was trained on.

A probe, not a classifier the app uses: 30 measured features per crop (the size cue, two numbers; cell
area, NCR; the nucleus's solidity, eccentricity, roundness, lobes (``core.lobes``) and
holes; the cell's solidity and eccentricity; mean, spread and blue/red balance of the
optical density of nucleus and cytoplasm, against the crop's own background) and a small
MLP on them, trained on a run's train examples and scored on its val white cells, as
``bench/celltype_val.py`` scores the CNN (same examples, most likely class):

* "as cut": the features of the crops as they are;
* "augmented": the features of crops drawn and augmented as the classifier's training draws
  them (``train_classifier._Batches``: stain +-35%, lamp, camera, gray, blur, noise).

The shipped CNN (trained with that augmentation) is scored beside them.

Usage: python bench/celltype_features.py RUN_OUT [--batches 150] [--seeds 5]
  RUN_OUT: a ``napari-wbc train --model celltype`` output folder (examples_train/val.npz)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def features(rgb: np.ndarray, label: np.ndarray, size: np.ndarray) -> np.ndarray:
    from skimage import measure

    from napari_wbc.core.lobes import count_lobes

    rows = []
    for image, lab, s in zip(rgb, label, size, strict=True):
        image = image.astype(np.float32) + 1
        cell, nucleus, cytoplasm = lab > 0, lab == 2, lab == 1
        glass = ~cell
        white = np.percentile(image[glass], 90, axis=0) if glass.sum() > 20 else np.full(3, 256.0)
        od = -np.log(np.clip(image / white, 1e-3, 1))

        def colour(mask, od=od):
            if mask.sum() < 3:
                return [0.0] * 8
            o = od[mask]
            balance = o[:, 0].mean() / (o[:, 2].mean() + 1e-3)
            return [*o.mean(0), *o.std(0), balance, np.percentile(o.sum(1), 90)]

        n, c = nucleus.sum(), cell.sum()
        row = [*np.atleast_1d(s), np.log(c + 1), n / max(c, 1)]
        if n > 3:
            r = measure.regionprops(nucleus.astype(np.uint8))[0]
            row += [
                r.solidity,
                r.eccentricity,
                r.perimeter**2 / (4 * np.pi * n),
                min(count_lobes(nucleus), 5),
            ]
            row += [r.euler_number]
        else:
            row += [0.0] * 5
        r = measure.regionprops(cell.astype(np.uint8))[0]
        rows.append(row + [r.solidity, r.eccentricity] + colour(nucleus) + colour(cytoplasm))
    return np.array(rows, np.float32)


def mlp_scores(x_train, y_train, x_val, y_val, folder, seeds: int, full_batch: bool) -> np.ndarray:
    """Per seed: val white-cell accuracy, per folder (bccd, zheng_d1, zheng_d2), negatives
    recall; all in %."""
    import torch

    mean, sd = x_train.mean(0), x_train.std(0) + 1e-6
    xt, xv = torch.tensor((x_train - mean) / sd), torch.tensor((x_val - mean) / sd)
    yt = torch.tensor(y_train)
    weight = None
    if full_batch:  # as cut: classes weighted; augmented batches are drawn class-balanced
        weight = torch.tensor(1 / np.bincount(y_train, minlength=6).clip(1), dtype=torch.float32)
        weight = weight / weight.mean()
    out = []
    for seed in range(seeds):
        torch.manual_seed(seed)
        net = torch.nn.Sequential(
            torch.nn.Linear(xt.shape[1], 64), torch.nn.ReLU(), torch.nn.Dropout(0.2), torch.nn.Linear(64, 6)
        )
        opt = torch.optim.Adam(net.parameters(), 1e-2 if full_batch else 3e-3, weight_decay=1e-3)
        steps = (
            [torch.arange(len(xt))] * 1500
            if full_batch
            else [b for _ in range(30) for b in torch.randperm(len(xt)).split(256)]
        )
        net.train()
        for idx in steps:
            opt.zero_grad()
            torch.nn.functional.cross_entropy(net(xt[idx]), yt[idx], weight=weight).backward()
            opt.step()
        net.eval()
        pred = net(xv).argmax(1).numpy()
        out.append(score(pred, y_val, folder))
    return np.array(out)


def score(pred, target, folder) -> list[float]:
    white = target < 5
    per = [100 * (pred[(folder == d) & white] == target[(folder == d) & white]).mean() for d in FOLDERS]
    return [100 * (pred[white] == target[white]).mean(), *per, 100 * (pred[~white] == 5).mean()]


FOLDERS = ("bccd", "zheng_d1", "zheng_d2")


def main() -> None:
    from napari_wbc.core.augment import AugmentConfig
    from napari_wbc.core.celltypes import predict_crops
    from napari_wbc.core.train_classifier import BIG_CONTEXT, _Batches, _draw_weights
    from napari_wbc.models import load_model
    from napari_wbc.models.celltype import CONTEXT, CROP, TRAINING

    p = argparse.ArgumentParser()
    p.add_argument("run", type=Path, help="a classifier run's output folder (examples_train/val.npz)")
    p.add_argument("--batches", type=int, default=150, help="augmented batches of 64 to draw")
    p.add_argument("--seeds", type=int, default=5)
    args = p.parse_args()

    def load(split):
        with np.load(args.run / f"examples_{split}.npz") as z:
            return {k: z[k] for k in z.files}

    train, val = load("train"), load("val")
    folder = np.array([s.split("/")[0] for s in val["source"]])
    x_val = features(val["small"], val["small_label"], val["size"])
    rows = {}
    x = features(train["small"], train["small_label"], train["size"])
    rows["features + MLP, as cut"] = mlp_scores(
        x, train["target"], x_val, val["target"], folder, args.seeds, True
    )
    train["group"] = np.zeros(len(train["target"]), int)
    aug = AugmentConfig(size=CROP, centred=True, focus_p=0.0, **TRAINING["augment"])
    zoom = (CROP / CONTEXT) / (train["big"].shape[1] / BIG_CONTEXT)
    draw = _Batches(train, _draw_weights(train), aug, (aug.scale[0] * zoom, aug.scale[1] * zoom), 64)
    xs, ys = [], []
    for k in range(args.batches):
        rgb, lab, size, target, _ = draw(np.random.default_rng(k))
        xs.append(features(np.round(rgb * 255).astype(np.uint8), lab, size))
        ys.append(target)
    rows["features + MLP, augmented"] = mlp_scores(
        np.concatenate(xs), np.concatenate(ys), x_val, val["target"], folder, args.seeds, False
    )
    net, spec = load_model(None, "src/napari_wbc/models/weights/celltype")
    prob = predict_crops(net, spec, val["small"], val["small_label"], val["size"])
    rows["shipped CNN (augmented, 8 views)"] = np.array([score(prob.argmax(1), val["target"], folder)])
    n_white = int((val["target"] < 5).sum())
    print(f"{n_white} val white cells, {len(val['target']) - n_white} negatives; mean (min) over seeds, %")
    print(
        "| model | white cells | bccd | zheng_d1 | zheng_d2 | not a white cell |\n|---|---|---|---|---|---|"
    )
    for name, r in rows.items():
        cells = " | ".join(f"{m:.1f} ({lo:.1f})" for m, lo in zip(r.mean(0), r.min(0), strict=True))
        print(f"| {name} | {cells} |")


if __name__ == "__main__":
    main()
