"""Training loop: augmented patches, the model's loss, validation Dice, early stopping.

``train`` takes plain callbacks (``progress(step, total, info)`` and ``cancelled()``), so the
same loop runs from the CLI with a terminal bar and from a widget thread. It writes a
resumable checkpoint (``checkpoint.pt``, tensors only, loaded with ``weights_only=True``)
and, whenever validation improves, the best weights as ``config.json`` +
``model.safetensors`` with ``history.json``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .augment import AugmentConfig, augment
from .dataset import list_pairs, load_pair

log = logging.getLogger(__name__)

# patches show white cells between these diameters (px), whatever the data's native scale
CELL_DIAMETER_RANGE = (60.0, 200.0)


@dataclass
class TrainConfig:
    model: str = "mifnet"
    epochs: int = 100  # one epoch = one augmented patch per training image
    batch_size: int = 8
    patch: int = 192
    lr: float = 1e-3
    weight_decay: float = 5e-4  # MIF-Net: Adam, lr 1e-3, L2 5e-4
    dice_weight: float = 0.5
    val_every: int = 200  # steps
    patience: int = 20  # validations without improvement (MIF-Net: 20)
    seed: int = 0
    bf16: bool = False  # bfloat16 autocast (fast on CPUs with AVX512-BF16 and on GPUs)
    max_steps: int | None = None
    # working pixel size written into the model's config: patches show cells 60-200 px
    # across, i.e. a 12 um white cell at about 0.06-0.2 um/px; 0.1 sits in the middle
    pixel_size: float = 0.1
    cfg: dict = field(default_factory=dict)


def _cell_diameter(label: np.ndarray) -> float:
    """Equivalent diameter of the largest white cell in a class mask (px)."""
    from skimage.measure import label as cc
    from skimage.measure import regionprops

    regions = regionprops(cc(label > 0))
    if not regions:
        return 100.0
    return float(max(r.equivalent_diameter_area for r in regions))


class PatchSampler:
    """Random augmented patches from a list of pairs, each at a cell scale in range."""

    def __init__(self, pairs, aug: AugmentConfig, seed: int = 0):
        self.items = []
        for pair in pairs:
            image, label = load_pair(pair)
            d = _cell_diameter(label)
            lo, hi = CELL_DIAMETER_RANGE
            self.items.append((image, label, (lo / d, hi / d)))
        if not self.items:
            raise ValueError("no training pairs found")
        self.aug = aug
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int):
        idx = self.rng.integers(len(self.items), size=n)
        xs, ys = zip(*(augment(*self.items[i][:2], self.aug, self.rng, self.items[i][2]) for i in idx),
                     strict=True)
        return np.stack(xs), np.stack(ys)


def segmentation_loss(logits, target, dice_weight: float = 0.5):
    """Cross-entropy plus soft Dice over the foreground classes."""
    import torch.nn.functional as F

    ce = F.cross_entropy(logits, target)
    if not dice_weight:
        return ce
    prob = logits.float().softmax(1)
    onehot = F.one_hot(target, logits.shape[1]).permute(0, 3, 1, 2).float()
    inter = (prob * onehot).sum((0, 2, 3))[1:]
    denom = (prob + onehot).sum((0, 2, 3))[1:]
    dice = 1 - ((2 * inter + 1) / (denom + 1)).mean()
    return ce + dice_weight * dice


def validate(net, spec, pairs, device) -> dict[str, float]:
    """Mean Dice of whole cell and nucleus over validation pairs at native scale."""
    from .inference import predict_probabilities
    from .metrics import class_map_metrics, mean_metrics

    net.eval()
    scores = []
    for pair in pairs:
        image, label = load_pair(pair)
        pred = predict_probabilities(net, spec, image, device).argmax(0)
        scores.append(class_map_metrics(pred, label))
    net.train()
    m = mean_metrics(scores)
    return {"dice_cell": m["cell"]["dice"], "dice_cytoplasm": m["cytoplasm"]["dice"],
            "dice_nucleus": m["nucleus"]["dice"]}


def train(data_dirs, out: str | Path, config: TrainConfig | None = None, device: str = "cpu",
          resume: bool = False, init_weights: str | Path | None = None,
          progress=None, cancelled=None) -> dict:
    """Train (or fine-tune from ``init_weights``) and return the history summary."""
    import torch

    from ..models import ModelSpec, create_model, read_spec, save_model

    config = config or TrainConfig()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train_pairs = [p for d in data_dirs for p in list_pairs(d, "train")]
    val_pairs = [p for d in data_dirs for p in list_pairs(d, "val")]
    sampler = PatchSampler(train_pairs, AugmentConfig(size=config.patch), config.seed)
    spec = read_spec(init_weights) if init_weights else ModelSpec(config.model, config.cfg,
                                                                    pixel_size=config.pixel_size)
    net = create_model(spec.name, **spec.cfg).to(device)
    if init_weights:
        from safetensors.torch import load_file

        from ..models import sha256

        spec.extra.pop("trained", None)  # the base model's record is not this model's
        spec.extra["init"] = {"weights": str(init_weights),
                              "sha256": sha256(Path(init_weights) / "model.safetensors")}
        state = load_file(str(Path(init_weights) / "model.safetensors"))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_pairs) / config.batch_size))
    total = config.max_steps or config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, config.lr, total_steps=total, pct_start=0.05)
    history = {"config": asdict(config), "data": [str(d) for d in data_dirs],
               "train_images": len(train_pairs), "val_images": len(val_pairs),
               "steps_per_epoch": steps_per_epoch, "loss": [], "val": [], "best": None}
    step, best, stale = 0, -1.0, 0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device, weights_only=True)
        net.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, best, stale = int(state["step"]), float(state["best"]), int(state["stale"])
        history = json.loads((out / "history.json").read_text())
        sampler.rng = np.random.default_rng(config.seed + step)
    def checkpoint():
        (out / "history.json").write_text(json.dumps(history))
        state = {"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(),
                 "step": step, "best": best, "stale": stale}
        torch.save(state, out / "checkpoint.pt.tmp")
        os.replace(out / "checkpoint.pt.tmp", ckpt)

    net.train()
    t0, running, start = time.time(), None, step
    while step < total:
        if cancelled is not None and cancelled():
            history["cancelled"] = True
            checkpoint()
            break
        x, y = sampler.batch(config.batch_size)
        x = (x - np.float32(spec.mean)) / np.float32(spec.std)
        xt = torch.from_numpy(x.transpose(0, 3, 1, 2).copy()).to(device)
        yt = torch.from_numpy(y).to(device)
        kind = device.split(":")[0]
        with torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=config.bf16):
            logits = net(xt)
        loss = segmentation_loss(logits.float(), yt, config.dice_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        step += 1
        running = loss.item() if running is None else 0.95 * running + 0.05 * loss.item()
        history["loss"].append([step, round(loss.item(), 5)])
        seconds = (time.time() - t0) / (step - start)
        info = {"loss": running, "epoch": step / steps_per_epoch, "s_per_step": seconds}
        if step % config.val_every == 0 or step == total:
            scores = validate(net, spec, val_pairs, device) if val_pairs else {"dice_cell": -step}
            score = scores["dice_cell"] + scores.get("dice_nucleus", 0.0)
            history["val"].append({"step": step, **scores})
            info.update(scores)
            if score > best:
                best, stale = score, 0
                history["best"] = {"step": step, "epoch": step / steps_per_epoch, **scores}
                save_model(net, spec, out)
            else:
                stale += 1
            checkpoint()
            if stale >= config.patience:
                log.info("early stop at step %d: no improvement in %d validations", step, stale)
                break
        if progress is not None:
            progress(step, total, info)
    if history["best"] is None:  # cancelled before the first validation
        save_model(net, spec, out)
    history["steps"] = step
    (out / "history.json").write_text(json.dumps(history))
    return history
