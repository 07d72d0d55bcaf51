"""Training the cell-type classifier (``napari-wbc train --model celltype``).

Examples come from :mod:`.celltype_data` (cells the default segmenter finds in the data
folders' train and val splits, the reference cells, and negatives), kept in the output
folder so a rerun starts at once. Each step draws a batch weighted against class imbalance
(a class's examples are drawn in proportion to ``count ** (1 - BALANCE)``: basophils, a
handful in all three sets, are seen far more often than their share) and augments every
crop with :func:`.augment.augment` (any rotation, a small zoom and shift, stain, lamp,
camera, blur, noise, grayscale); the size cue is jittered too. Loss: cross-entropy with
label smoothing. Validation on the val crops every ``val_every`` steps keeps the best
weights by the mean of accuracy and the mean per-class recall; at the end the
``unidentified_below`` threshold is chosen on the val white cells (:func:`choose_threshold`)
and written into ``config.json`` with the crop settings and the figures.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from .augment import AugmentConfig, augment
from .celltype_data import BIG, BIG_CONTEXT, CLASSES, cached_examples
from .celltypes import crops_to_tensor, predict_crops
from .dataset import CELL_TYPES
from .train import load_checkpoint, save_checkpoint, take_step

log = logging.getLogger(__name__)
BALANCE = 0.75
SIZE_JITTER = 0.15  # sd of the noise added to the size cue (log units)
UNIDENTIFIED_COST = 0.5  # an unidentified cell costs the reviewer half of what a wrong type does
MAX_UNIDENTIFIED = 0.10


def choose_threshold(prob: np.ndarray, target: np.ndarray) -> tuple[float, dict]:
    """The ``unidentified_below`` threshold for white cells of known type: the one that
    minimises wrong types + ``UNIDENTIFIED_COST`` x unidentified, with at most
    ``MAX_UNIDENTIFIED`` of the cells unidentified; and the val figures at it."""
    kinds = [CLASSES.index(t) for t in CELL_TYPES]
    q = prob[:, kinds] / np.maximum(prob[:, kinds].sum(1, keepdims=True), 1e-12)
    top, best_type = q.max(1), q.argmax(1)
    right = best_type == target
    best = (np.inf, 0.0, {})
    for t in np.round(np.arange(0.0, 0.96, 0.02), 2):
        unknown = top < t
        if unknown.mean() > MAX_UNIDENTIFIED:
            break
        wrong = int((~right & ~unknown).sum())
        cost = wrong + UNIDENTIFIED_COST * int(unknown.sum())
        if cost < best[0]:
            figures = {
                "wrong": wrong,
                "unidentified": int(unknown.sum()),
                "cells": len(target),
                "accuracy_identified": float(right[~unknown].mean()) if (~unknown).any() else 0.0,
            }
            best = (cost, float(t), figures)
    return best[1], best[2]


def _scores(prob: np.ndarray, target: np.ndarray) -> dict:
    pred = prob.argmax(1)
    recalls = {
        CLASSES[k]: float((pred[target == k] == k).mean())
        for k in range(len(CLASSES))
        if (target == k).sum() >= 3
    }
    accuracy = float((pred == target).mean())
    return {
        "accuracy": accuracy,
        "mean_recall": float(np.mean(list(recalls.values()))),
        "recall": recalls,
        "score": 0.5 * accuracy + 0.5 * float(np.mean(list(recalls.values()))),
    }


class _Batches(IterableDataset):
    """Endless augmented batches (crops, labels, size cues, targets), drawn as
    :func:`train_classifier` says; an iterable for torch's DataLoader, each worker process
    with its own seed (the same seed and worker count give the same batches)."""

    def __init__(
        self, examples: dict, weights: np.ndarray, aug: AugmentConfig, scale_range, batch: int, seed: int
    ):
        self.ex, self.weights, self.aug, self.scale_range = examples, weights, aug, scale_range
        self.batch, self.seed = batch, seed

    def __iter__(self):
        info = get_worker_info()
        rng = np.random.default_rng([self.seed, 0 if info is None else info.id])
        ex = self.ex
        while True:
            idx = rng.choice(len(self.weights), self.batch, p=self.weights)
            pairs = [augment(ex["big"][i], ex["big_label"][i], self.aug, rng, self.scale_range) for i in idx]
            sizes = ex["size"][idx] + rng.normal(0, SIZE_JITTER, len(idx)).astype(np.float32)
            yield (
                np.stack([p[0] for p in pairs]),
                np.stack([p[1] for p in pairs]).astype(np.uint8),
                sizes,
                ex["target"][idx],
            )


def train_classifier(
    data_dirs,
    out,
    config,
    device: str = "cpu",
    resume: bool = False,
    init_weights=None,
    progress=None,
    cancelled=None,
    segmenter=None,
) -> dict:
    """Train (or fine-tune from ``init_weights``) the classifier; return the history.
    ``segmenter``: (net, spec) whose cells are learned (default: the shipped default model)."""
    import torch
    import torch.nn.functional as F

    from ..models import ModelSpec, create_model, load_model, read_spec, save_model, sha256
    from ..models.registry import model_module

    module = model_module(config.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    crop, context = int(module.CROP), float(module.CONTEXT)
    segmenter = segmenter or load_model(device=device)

    def collecting(split):
        return lambda d, n: progress and progress(0, 0, {f"collecting {split}": d / n})

    ex = {
        s: cached_examples(out, data_dirs, s, segmenter, device, crop, context, progress=collecting(s))
        for s in ("train", "val")
    }
    train_ex, val_ex = ex["train"], ex["val"]
    if not len(train_ex["target"]):
        raise ValueError(
            "no training cells found: the data folders need class_labels.csv or "
            "wbc_class_labels.csv with cell types"
        )
    spec = read_spec(init_weights) if init_weights else ModelSpec(config.model, {}, classes=CLASSES)
    spec.extra.update({"crop": crop, "context": context})
    net = create_model(spec.name, **spec.cfg).to(device)
    if init_weights:
        from safetensors.torch import load_file

        state = load_file(str(Path(init_weights) / "model.safetensors"))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
        spec.extra["init"] = {
            "weights": str(init_weights),
            "sha256": sha256(Path(init_weights) / "model.safetensors"),
        }
    counts = np.bincount(train_ex["target"], minlength=len(CLASSES)).astype(np.float64)
    weights = (1.0 / np.maximum(counts, 1) ** BALANCE)[train_ex["target"]]
    weights /= weights.sum()
    aug = AugmentConfig(size=crop, centred=True, focus_p=0.0, **config.augment)
    zoom = (crop / context) / (BIG / BIG_CONTEXT)  # output px per input px at the nominal crop
    scale_range = (aug.scale[0] * zoom, aug.scale[1] * zoom)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.max_steps or config.epochs * max(1, len(train_ex["target"]) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=total, pct_start=0.1)
    history = {
        "config": asdict(config),
        "data": [str(d) for d in data_dirs],
        "train_examples": {c: int(n) for c, n in zip(CLASSES, counts, strict=True)},
        "val_examples": {
            c: int(n)
            for c, n in zip(CLASSES, np.bincount(val_ex["target"], minlength=len(CLASSES)), strict=True)
        },
        "loss": [],
        "val": [],
        "best": None,
    }
    step, best, best_state = 0, -1.0, None
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, net, opt, sched, device)
        step, best = int(state["step"]), float(state["best"])
        if (out / "model.safetensors").exists():  # the best weights so far
            from safetensors.torch import load_file

            best_state = {
                k: v.float() if v.is_floating_point() else v
                for k, v in load_file(str(out / "model.safetensors")).items()
            }
        history = json.loads((out / "history.json").read_text())

    def validate() -> dict:
        net.eval()
        prob = predict_crops(net, spec, val_ex["small"], val_ex["small_label"], val_ex["size"], device)
        net.train()
        return _scores(prob, val_ex["target"]) if len(prob) else {"score": -step}

    batches = torch.utils.data.DataLoader(
        _Batches(train_ex, weights, aug, scale_range, config.batch_size, config.seed + step),
        batch_size=None,
        num_workers=config.workers,
        pin_memory=device.startswith("cuda"),
        persistent_workers=config.workers > 0,
    )
    net.train()
    t0, start, running = time.time(), step, None
    for rgb, label, sizes, target in batches:
        if step >= total:
            break
        if cancelled is not None and cancelled():
            history["cancelled"] = True
            break
        x = crops_to_tensor(rgb.numpy(), label.numpy(), spec, device)
        y = target.to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=config.bf16):
            logits = net(x, sizes.to(device))
        loss = F.cross_entropy(logits.float(), y, label_smoothing=0.05)
        step, running = take_step(loss, opt, sched, history, step, running)
        info = {"loss": running, "s_per_step": (time.time() - t0) / (step - start)}
        if step % config.val_every == 0 or step == total:
            scores = validate()
            history["val"].append({"step": step, **scores})
            info.update({k: v for k, v in scores.items() if isinstance(v, float)})
            if scores["score"] > best:
                best = scores["score"]
                history["best"] = {"step": step, **scores}
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                save_model(net, spec, out, half=True)
            save_checkpoint(out, history, net, opt, sched, step=step, best=best)
        if progress is not None:
            progress(step, total, info)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    # the unidentified threshold, on the val white cells, with the best weights
    white = val_ex["target"] < len(CELL_TYPES)
    threshold, figures = 0.5, {}
    if white.any():
        prob = predict_crops(
            net, spec, val_ex["small"][white], val_ex["small_label"][white], val_ex["size"][white], device
        )
        threshold, figures = choose_threshold(prob, val_ex["target"][white])
    spec = replace(
        spec,
        extra={
            **spec.extra,
            "unidentified_below": threshold,
            "trained": {
                "best": history["best"],
                "steps": step,
                "data": [Path(d).name for d in data_dirs],
                "val_at_threshold": figures,
            },
        },
    )
    save_model(net, spec, out, half=True)
    history.update(
        steps=step,
        seconds=round(time.time() - t0, 1),
        device=device,
        unidentified_below=threshold,
        val_at_threshold=figures,
    )
    (out / "history.json").write_text(json.dumps(history))
    return history
