"""Training the cell-type classifier (``napari-wbc train --model celltype``).

Examples come from :mod:`.celltype_data` (cells the default segmenter finds in the data
folders' train and val splits, the reference cells, and negatives), kept in the output
folder so a rerun starts at once. Each step draws a batch weighted against class imbalance
(a class's examples are drawn in proportion to ``count ** (1 - BALANCE)``: basophils, a
handful in all three sets, are seen far more often than their share) and augments every
crop with :func:`.augment.augment` (any rotation, a small zoom and shift, stain, lamp,
camera, blur, noise, grayscale); the size cue is jittered too, and now and then taken away
(as on a field with no ruler). Loss: cross-entropy with
label smoothing. Validation on the val crops every ``val_every`` steps keeps the best
weights by the mean of the white cells' accuracy and the mean per-class recall
(:func:`_scores`); at the end the
``unidentified_below`` threshold is chosen on the val white cells (:func:`choose_threshold`)
and written into ``config.json`` with the crop settings and the figures.

Type corrections folders (:mod:`.corrections`) may be given among the data folders, alone
or with dataset folders (the "base" data). Fine-tuning from ``init_weights`` on corrections
is meant to teach the classifier the reviewer's cells without forgetting the rest:

* with base data, each batch draws the corrections with probability ``CORRECTIONS_SHARE``
  and the base examples otherwise (each group balanced by class as above); the weights are
  picked by the mean of the corrections' and the base examples' val scores
  (:func:`_val_scores`); a field the corrections train on is left out of the base val
  examples;
* with base data, the base examples are taught the start weights' own predictions
  (distillation, :func:`fine_tune_loss`), not their labels; the corrections their types.
  Taught their labels, the base examples pull the weights at once: the start weights are
  the best validation of their run (taken mid-schedule, at a high learning rate), and any
  step on the base labels moved them back toward that run's plateau (val accuracy -2 to -12
  points within 50 steps: with the corrections, on base data alone, with the head alone);
  against the start's own predictions a base example has no gradient until the weights
  drift, so only the corrections move them, and the base examples hold them where the start
  was (from the shipped weights with bccd-gray corrections: base val accuracy +0.3 to +2.4
  points over 200 steps, though its Zheng cells still -2.5 to -5);
* batch norm keeps the start weights' statistics (few, skewed examples would shift them);
* the start weights are validated first (step 0) and stay the result, threshold included,
  unless a later validation beats them, so a fine-tune is never worse on val than where it
  started;
* validation is required: corrections with no val cells (every 10th field saved is held
  out, from the 2nd on), or data with no val examples at all, are refused;
* the threshold is chosen again only on at least ``MIN_THRESHOLD_CELLS`` val white cells;
  with fewer, the start weights' threshold is kept.

Collected dataset examples are cached in ``cache`` (default: ``out``).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .augment import AugmentConfig, augment
from .batches import batch_loader
from .celltype_data import BIG_CONTEXT, CLASSES, cached_examples, correction_examples
from .celltypes import DEFAULT_UNIDENTIFIED_BELOW, crops_to_tensor, predict_crops
from .dataset import CELL_TYPES, NOT_WBC
from .io import InputError
from .train import load_checkpoint, save_checkpoint, take_step, warmup_share

log = logging.getLogger(__name__)
BALANCE = 0.75
SIZE_JITTER = 0.1  # sd of the noise added to the size cue (log units): the ruler's own spread
RULER_DROP = 0.15  # share of the cells drawn as if their field had no ruler
UNIDENTIFIED_COST = 0.5  # an unidentified cell costs the reviewer half of what a wrong type does
MAX_UNIDENTIFIED = 0.10
CORRECTIONS_SHARE = 0.5  # of each batch, when corrections are mixed with base data
MIN_THRESHOLD_CELLS = 30  # val white cells needed to choose the unidentified threshold again


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
    """Val figures of the most likely class: accuracy over all examples and over the white
    cells (what the differential is made of), recall per class with at least 3 examples, and
    the ``score`` that picks the weights: the mean of the white cells' accuracy and the mean
    recall. Negatives ("not a white cell", about half the val examples) count through their
    recall, so they do not outweigh the types."""
    pred = prob.argmax(1)
    recalls = {
        CLASSES[k]: float((pred[target == k] == k).mean())
        for k in range(len(CLASSES))
        if (target == k).sum() >= 3
    }
    accuracy = float((pred == target).mean())
    wbc = target != CLASSES.index(NOT_WBC)
    wbc_accuracy = float((pred[wbc] == target[wbc]).mean()) if wbc.any() else accuracy
    mean_recall = float(np.mean(list(recalls.values()))) if recalls else accuracy
    return {
        "accuracy": accuracy,
        "white_cell_accuracy": wbc_accuracy,
        "mean_recall": mean_recall,
        "recall": recalls,
        "score": 0.5 * wbc_accuracy + 0.5 * mean_recall,
    }


def _val_scores(prob: np.ndarray, target: np.ndarray, group: np.ndarray) -> dict:
    """:func:`_scores` of all val examples; with corrections and base examples both there, the
    ``score`` that picks the weights is the mean of the two groups' scores, so the reviewer's
    cells (few) weigh as much as the base data (many, the start weights' own selection set),
    and ``corrections_accuracy`` / ``base_accuracy`` say how each fares."""
    scores = _scores(prob, target)
    if len(np.unique(group)) == 2:
        parts = {
            name: _scores(prob[group == g], target[group == g])
            for g, name in ((1, "corrections"), (0, "base"))
        }
        scores.update({f"{name}_accuracy": part["accuracy"] for name, part in parts.items()})
        scores["score"] = 0.5 * (parts["corrections"]["score"] + parts["base"]["score"])
    return scores


def _field(source: str) -> str:
    """The field stem of an example's ``source`` (``<folder>/<stem>[+artefacts]:...``)."""
    return source.split(":")[0].split("/")[-1].split("+")[0]


def _concat(parts: list[dict]) -> dict:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _select(ex: dict, keep: np.ndarray) -> dict:
    return {k: v[keep] for k, v in ex.items()}


def gather_examples(data_dirs, out, segmenter, device, crop, context, cache=None, progress=None) -> dict:
    """Train and val examples of the data folders: dataset folders' (:func:`cached_examples`,
    with ``segmenter`` (net, spec) or the default model) and corrections folders'
    (:func:`correction_examples`), each with ``group`` 0 (base) or 1 (corrections); what
    was held back from val, and why, in ``notes``. Raises InputError when there is
    nothing to train on or to validate on."""
    from ..models import load_model
    from .corrections import is_corrections_folder, read_corrections

    folders = [Path(d) for d in data_dirs]
    corrections = [d for d in folders if is_corrections_folder(d)]
    datasets = [d for d in folders if d not in corrections]
    if datasets and segmenter is None:
        segmenter = load_model(device=device)
    ex, notes = {}, []
    for s in ("train", "val"):
        parts = []
        if datasets:
            collected = cached_examples(
                cache or out, datasets, s, segmenter, device, crop, context, progress=progress and progress(s)
            )
            parts.append({**collected, "group": np.zeros(len(collected["target"]), np.int64)})
        if corrections:
            corrected = correction_examples(corrections, s, crop, context)
            parts.append({**corrected, "group": np.ones(len(corrected["target"]), np.int64)})
        ex[s] = _concat(parts)
    if not len(ex["train"]["target"]):
        raise InputError(
            "no training cells found: the data folders need class_labels.csv or wbc_class_labels.csv "
            "with cell types, or type corrections in the train split"
        )
    if corrections and not (ex["val"]["group"] == 1).any():
        raise InputError(
            f"{', '.join(d.name for d in corrections)}: no corrections in the val split, so the "
            "fine-tuned classifier could not be validated on them; save the corrections of a second "
            "field (the 2nd, 12th, 22nd... field saved is held out for validation)"
        )
    if not len(ex["val"]["target"]):
        raise InputError("no val cells to validate on: the data folders need a val split with cell types")
    trained_on = {Path(str(r.get("source"))).stem for d in corrections for r in read_corrections(d, "train")}
    val = ex["val"]
    leak = (val["group"] == 0) & np.isin([_field(s) for s in val["source"]], sorted(trained_on))
    if leak.any():
        ex["val"] = _select(val, ~leak)
        notes.append(f"left {int(leak.sum())} base val examples out: their fields are corrected in train")
    return {**ex, "notes": notes}


def fine_tune_loss(logits, target, group, start_prob):
    """A fine-tune's loss on a batch mixing corrections (``group`` 1: cross-entropy with their
    types, label smoothing 0.05) and base examples (``group`` 0: cross-entropy with
    ``start_prob``, the start weights' probabilities for the same crops; ``None``: with their
    labels as in training from scratch). Its gradient on a base example is
    ``softmax(logits) - start_prob``: zero while the weights give what the start gave."""
    import torch
    import torch.nn.functional as F

    loss = F.cross_entropy(logits, target, label_smoothing=0.05, reduction="none")
    if start_prob is not None:
        kept = -(start_prob * torch.log_softmax(logits, 1)).sum(1)
        loss = torch.where(group == 1, loss, kept)
    return loss.mean()


def _draw_weights(ex: dict) -> np.ndarray:
    """Per example, its chance to be drawn: class-balanced (``BALANCE``) within its group,
    the corrections group drawn ``CORRECTIONS_SHARE`` of the time when there are both."""
    weights = np.zeros(len(ex["target"]))
    groups = np.unique(ex["group"])
    for g in groups:
        own = ex["group"] == g
        counts = np.bincount(ex["target"][own], minlength=len(CLASSES)).astype(np.float64)
        w = 1.0 / np.maximum(counts, 1) ** BALANCE
        w = w[ex["target"][own]]
        share = 1.0 if len(groups) == 1 else (CORRECTIONS_SHARE if g == 1 else 1 - CORRECTIONS_SHARE)
        weights[own] = share * w / w.sum()
    return weights / weights.sum()


class _Batches:
    """One augmented batch (crops, labels, size cues, targets, groups) per call, drawn with
    the generator it is given as :func:`train_classifier` says; :func:`.batches.batch_loader`
    draws them in worker processes, batch ``k`` with a generator seeded by (seed, ``k``)."""

    def __init__(self, examples: dict, weights: np.ndarray, aug: AugmentConfig, scale_range, batch: int):
        self.ex, self.weights, self.aug, self.scale_range = examples, weights, aug, scale_range
        self.batch = batch

    def __call__(self, rng: np.random.Generator) -> tuple:
        ex = self.ex
        idx = rng.choice(len(self.weights), self.batch, p=self.weights)
        pairs = [augment(ex["big"][i], ex["big_label"][i], self.aug, rng, self.scale_range) for i in idx]
        sizes = ex["size"][idx].copy()
        sizes[:, 0] += (rng.normal(0, SIZE_JITTER, len(idx)) * sizes[:, 1]).astype(np.float32)
        sizes[rng.random(len(idx)) < RULER_DROP] = 0.0
        return (
            np.stack([p[0] for p in pairs]),
            np.stack([p[1] for p in pairs]).astype(np.uint8),
            sizes,
            ex["target"][idx],
            ex["group"][idx],
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
    cache=None,
    keep_start: bool = True,
) -> dict:
    """Train (or fine-tune from ``init_weights``) the classifier; return the history.
    ``segmenter``: (net, spec) whose cells are learned (default: the shipped default model);
    ``cache``: where collected dataset examples are kept (default: ``out``); ``keep_start``
    False: the start weights are not in the running (to measure what fine-tuning itself gives)."""
    import torch

    from ..models import ModelSpec, create_model, read_spec, save_model, sha256
    from ..models.registry import model_module

    module = model_module(config.model)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    start = read_spec(init_weights) if init_weights else None
    # the crop the network sees: the start weights' own when fine-tuning, else the recipe's
    # (``patch``, the module's CROP unless set)
    if start is not None:
        crop = int(start.extra.get("crop", module.CROP))
        context = float(start.extra.get("context", module.CONTEXT))
    else:
        crop, context = int(config.patch or module.CROP), float(module.CONTEXT)

    def collecting(split):
        return lambda d, n: progress and progress(0, 0, {f"collecting {split}": d / n})

    ex = gather_examples(data_dirs, out, segmenter, device, crop, context, cache, collecting)
    train_ex, val_ex = ex["train"], ex["val"]
    for note in ex["notes"]:
        log.info("%s", note)
    spec = start or ModelSpec(config.model, {}, classes=CLASSES)
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
    # corrections with base data: the base examples keep the start weights' predictions
    start_net = None
    if init_weights and len(np.unique(train_ex["group"])) == 2:
        import copy

        start_net = copy.deepcopy(net).eval().requires_grad_(False)
    counts = np.bincount(train_ex["target"], minlength=len(CLASSES)).astype(np.float64)
    weights = _draw_weights(train_ex)
    aug = AugmentConfig(size=crop, centred=True, focus_p=0.0, **config.augment)
    big = train_ex["big"].shape[1]
    zoom = (crop / context) / (big / BIG_CONTEXT)  # output px per input px at the nominal crop
    scale_range = (aug.scale[0] * zoom, aug.scale[1] * zoom)
    opt = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    total = config.max_steps or config.epochs * max(1, len(train_ex["target"]) // config.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, config.lr, total_steps=total, pct_start=warmup_share(total, 0.1)
    )
    history = {
        "config": asdict(config),
        "data": [str(d) for d in data_dirs],
        "train_examples": {c: int(n) for c, n in zip(CLASSES, counts, strict=True)},
        "val_examples": {
            c: int(n)
            for c, n in zip(CLASSES, np.bincount(val_ex["target"], minlength=len(CLASSES)), strict=True)
        },
        "corrections": {s: int((ex[s]["group"] == 1).sum()) for s in ("train", "val")},
        "notes": ex["notes"]
        + (["base examples taught the start weights' predictions (distillation)"] if start_net else []),
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
        history = {
            "corrections": history["corrections"],
            "notes": [],
            **json.loads((out / "history.json").read_text()),
        }

    def training_mode() -> None:
        """Train mode; a fine-tune keeps batch norm's statistics as the start weights have them
        (few, skewed examples would otherwise shift them: -4 points of val accuracy at lr 0)."""
        net.train()
        if init_weights:
            for module in net.modules():
                if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                    module.eval()

    def validate() -> dict:
        net.eval()
        prob = predict_crops(net, spec, val_ex["small"], val_ex["small_label"], val_ex["size"], device)
        training_mode()
        return _val_scores(prob, val_ex["target"], val_ex["group"])

    def keep_if_best(scores: dict) -> None:
        nonlocal best, best_state
        history["val"].append({"step": step, **scores})
        if scores["score"] > best:
            best = scores["score"]
            history["best"] = {"step": step, **scores}
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            save_model(net, spec, out, half=True)

    if init_weights and keep_start and step == 0:  # the start is what a fine-tune has to beat
        keep_if_best(validate())
        if progress is not None:
            progress(0, total, {k: v for k, v in history["best"].items() if isinstance(v, float)})
    draw = _Batches(train_ex, weights, aug, scale_range, config.batch_size)
    batches = batch_loader(draw, config.seed, step, config.workers, device)
    training_mode()
    t0, start, running = time.time(), step, None
    for rgb, label, sizes, target, group in batches:
        if step >= total:
            break
        if cancelled is not None and cancelled():
            history["cancelled"] = True
            break
        x = crops_to_tensor(rgb.numpy(), label.numpy(), spec, device)
        y = target.to(device)
        with torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=config.bf16):
            logits = net(x, sizes.to(device))
            start_prob = None
            if start_net is not None:
                with torch.no_grad():
                    start_prob = torch.softmax(start_net(x, sizes.to(device)).float(), 1)
        loss = fine_tune_loss(logits.float(), y, group.to(device), start_prob)
        step, running = take_step(loss, opt, sched, history, step, running)
        info = {"loss": running, "s_per_step": (time.time() - t0) / (step - start)}
        if step % config.val_every == 0 or step == total:
            scores = validate()
            info.update({k: v for k, v in scores.items() if isinstance(v, float)})
            keep_if_best(scores)
            save_checkpoint(out, history, net, opt, sched, step=step, best=best)
        if progress is not None:
            progress(step, total, info)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    # the unidentified threshold, on the val white cells, with the best weights; kept as the
    # start weights had it when they are the result, or too few val white cells to choose it
    white = val_ex["target"] < len(CELL_TYPES)
    threshold = float(spec.extra.get("unidentified_below", DEFAULT_UNIDENTIFIED_BELOW))
    figures = {}
    kept_start = bool(init_weights) and (history["best"] or {}).get("step") == 0
    if kept_start:
        history["notes"].append(
            "no step beat the start weights on validation: they are the result, as they were"
        )
    elif white.sum() >= MIN_THRESHOLD_CELLS or (white.any() and not init_weights):
        prob = predict_crops(
            net, spec, val_ex["small"][white], val_ex["small_label"][white], val_ex["size"][white], device
        )
        threshold, figures = choose_threshold(prob, val_ex["target"][white])
    else:
        history["notes"].append(
            f"kept the unidentified threshold {threshold}: {int(white.sum())} val white cells are too few "
            f"to choose it (at least {MIN_THRESHOLD_CELLS})"
        )
    spec = replace(
        spec,
        extra={
            **spec.extra,
            "unidentified_below": threshold,
            "trained": {
                "best": history["best"],
                "steps": step,
                "data": [Path(d).name for d in data_dirs],
                "corrections": history["corrections"],
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
    write_card(out, spec, history)
    return history


def write_card(out: Path, spec, history: dict) -> Path:
    """A short model card (CARD.md) next to the classifier's weights: data, start, recipe,
    validation."""
    import platform

    from ..models import sha256

    c, best = history["config"], history.get("best") or {}
    init = spec.extra.get("init")
    start = f"fine-tuned from {init['weights']} (sha256 {init['sha256'][:16]}...)" if init else "from scratch"
    kept = best.get("step") == 0 and init
    recall = ", ".join(f"{k} {100 * v:.0f}" for k, v in (best.get("recall") or {}).items())
    text = "\n".join(
        [
            f"# {spec.name}: trained weights",
            "",
            f"- {start}",
            f"- data: {', '.join(history['data'])}; train examples {history['train_examples']}, "
            f"val examples {history['val_examples']}; type corrections: {history['corrections']['train']} "
            f"train, {history['corrections']['val']} val cells",
            f"- recipe: AdamW lr {c['lr']} weight decay {c['weight_decay']}, batch {c['batch_size']}, "
            f"augmentation overrides {c['augment'] or 'none'}",
            f"- trained {history['steps']} steps in {history['seconds'] / 60:.1f} min on {history['device']} "
            f"({platform.machine()})" + (" - cancelled" if history.get("cancelled") else ""),
            f"- best validation (step {best.get('step')}): accuracy {100 * best.get('accuracy', 0):.1f}%, "
            f"mean recall {100 * best.get('mean_recall', 0):.1f}% ({recall})"
            + (": no step beat the start weights, which these are" if kept else ""),
            f"- unidentified below {spec.extra.get('unidentified_below')}",
            *(f"- {note}" for note in history["notes"]),
            f"- model.safetensors sha256 {sha256(out / 'model.safetensors')}",
            "",
            "Test-split figures: `napari-wbc evaluate --dataset DIR --split test --classifier-weights "
            "THIS_FOLDER`.",
            "",
        ]
    )
    (out / "CARD.md").write_text(text)
    return out / "CARD.md"
