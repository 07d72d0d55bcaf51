"""Training loop: augmented patches, the model's loss, validation Dice, early stopping.

Every architecture trains through the same loop with its paper's recipe (the module's
``TRAINING``: optimizer, learning rate, weight decay, batch, patch, augmentation) unless
the config says otherwise, and its paper's loss (the module's ``loss`` for semantic
models, ``net.loss`` for instance models; docs/model-interface.md). Instance targets are
built from each augmented patch's class map; a typing model's targets carry each image's
cell type from the dataset's class labels.

``train`` takes plain callbacks (``progress(step, total, info)`` and ``cancelled()``), so the
same loop runs from the CLI with a terminal bar and from a widget thread. Batches are drawn
and augmented by ``workers`` processes while the network trains (:mod:`.batches`: batch
``k`` depends only on the seed and ``k``, whatever the worker count), normalised there, with
the instance targets of instance models. It writes a resumable checkpoint (``checkpoint.pt``,
tensors only, loaded with ``weights_only=True``; with torch's random state, so that a resumed
run on the CPU repeats an uninterrupted one) and, whenever validation improves, the best
weights as ``config.json`` + ``model.safetensors`` with ``history.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .augment import AugmentConfig, augment
from .batch import write_atomic
from .dataset import CELL_TYPES, image_cell_types, list_pairs, load_pair

log = logging.getLogger(__name__)

# patches show white cells between these diameters (px), whatever the data's native scale
CELL_DIAMETER_RANGE = (60.0, 200.0)


# used where a model's TRAINING does not say (MIF-Net's recipe)
FALLBACK = {
    "optimizer": "adam",
    "lr": 1e-3,
    "weight_decay": 5e-4,
    "momentum": 0.9,
    "batch_size": 8,
    "patch": 192,
}
# target value of a nucleus pixel whose cell type the data does not give (typing models)
UNKNOWN_TYPE_NUCLEUS = 2 + len(CELL_TYPES)  # 7: the class after the last type


@dataclass
class TrainConfig:
    model: str = "mifnet"
    epochs: int = 100  # one epoch = one augmented patch per training image
    # None: the model's paper recipe (its module's TRAINING), see ``recipe``
    batch_size: int | None = None
    patch: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    optimizer: str | None = None  # "adam" or "sgd"
    momentum: float | None = None
    augment: dict = field(default_factory=dict)  # AugmentConfig overrides on top of the paper's
    dice_weight: float = 0.5  # for models without a loss of their own
    val_every: int = 200  # steps
    patience: int = 20  # validations without improvement (MIF-Net: 20)
    seed: int = 0
    # draw each data folder equally often, whatever its size, so a small dataset from
    # another lab, stain or camera weighs as much as a large one
    balance: bool = True
    bf16: bool = False  # bfloat16 autocast (fast on CPUs with AVX512-BF16 and on GPUs)
    max_steps: int | None = None
    # processes that draw and augment batches while the network trains (0: the training
    # process draws them itself, between steps); every model, the classifier too
    workers: int = 1
    # working pixel size written into the model's config: patches show cells 60-200 px
    # across, i.e. a 12 um white cell at about 0.06-0.2 um/px; 0.1 sits in the middle
    pixel_size: float = 0.1
    cfg: dict = field(default_factory=dict)


def recipe(config: TrainConfig) -> TrainConfig:
    """The config with every unset field taken from the model's paper recipe."""
    from dataclasses import replace

    from ..models.registry import model_module

    paper = getattr(model_module(config.model), "TRAINING", {})
    filled = {k: paper.get(k, FALLBACK[k]) for k in FALLBACK if getattr(config, k) is None}
    return replace(config, **filled, augment={**paper.get("augment", {}), **config.augment})


def typed_target(label: np.ndarray, cell_type: str | None, names: list[str]) -> np.ndarray:
    """A class map (0, 1, 2) as a typing model's target: nucleus pixels become 2 + the type's
    index in ``names``, or 2 + len(names) (``UNKNOWN_TYPE_NUCLEUS`` for the five dataset
    types) when the type is not known."""
    code = 2 + names.index(cell_type) if cell_type in names else 2 + len(names)
    return np.where(label == 2, code, label)


def _cell_diameter(label: np.ndarray) -> float:
    """Equivalent diameter of the largest white cell in a class mask (px)."""
    from skimage.measure import label as cc
    from skimage.measure import regionprops

    regions = regionprops(cc(label > 0))
    if not regions:
        return 100.0
    return float(max(r.equivalent_diameter_area for r in regions))


class PatchSampler:
    """Random augmented patches from a list of pairs, each at a cell scale in range.

    The zoom of each patch is drawn so that the image's white cells are
    ``CELL_DIAMETER_RANGE`` px across, or with ``zoom`` in that range of the native scale
    (``--augment scale=LO,HI``; ``scale=1,1``: native scale). With ``balance`` each data
    folder (a pair's ``images/`` parent) is drawn equally often; without it, each pair is.
    """

    def __init__(
        self,
        pairs,
        aug: AugmentConfig,
        seed: int = 0,
        type_names: list[str] | None = None,
        balance: bool = False,
        zoom: tuple[float, float] | None = None,
    ):
        self.items = []
        types = {}
        if type_names:
            for root in {Path(p.image).parent.parent for p in pairs}:
                types[root] = image_cell_types(root)
        for pair in pairs:
            image, label = load_pair(pair)
            d = _cell_diameter(label)
            lo, hi = CELL_DIAMETER_RANGE
            if type_names:
                kind = types[Path(pair.image).parent.parent].get(pair.stem)
                label = typed_target(label, kind, type_names).astype(np.uint8)
            self.items.append((image, label, tuple(zoom) if zoom else (lo / d, hi / d)))
        if not self.items:
            raise ValueError("no training pairs found")
        roots = [Path(p.image).parent.parent for p in pairs]
        counts = Counter(roots)
        self.weights = None  # uniform over pairs
        if balance and len(counts) > 1:
            weights = np.array([1.0 / counts[r] for r in roots])
            self.weights = weights / weights.sum()
        self.aug = aug
        self.rng = np.random.default_rng(seed)

    def batch(self, n: int, rng: np.random.Generator | None = None):
        """``n`` patches (n, size, size, 3) float32 in 0..1 and their (n, size, size) labels,
        drawn with ``rng`` (default: the sampler's own generator)."""
        rng = self.rng if rng is None else rng
        if self.weights is None:
            idx = rng.integers(len(self.items), size=n)
        else:
            idx = rng.choice(len(self.items), size=n, p=self.weights)
        patches = [augment(*self.items[i][:2], self.aug, rng, self.items[i][2]) for i in idx]
        return np.stack([p[0] for p in patches]), np.stack([p[1] for p in patches])


class PatchBatches:
    """One training batch per call, for :func:`.batches.batch_loader`: ``x`` (B, 3, H, W)
    float32 normalised as ``spec`` says, ``y`` the (B, H, W) int64 class maps and, for an
    instance model, ``targets`` (per image: boxes, cell and nucleus masks)."""

    def __init__(self, sampler: PatchSampler, size: int, spec, instance: bool):
        self.sampler, self.size, self.instance = sampler, size, instance
        self.mean, self.std = np.float32(spec.mean), np.float32(spec.std)

    def __call__(self, rng: np.random.Generator) -> dict:
        x, y = self.sampler.batch(self.size, rng)
        x = np.ascontiguousarray(((x - self.mean) / self.std).transpose(0, 3, 1, 2))
        out = {"x": x, "y": y}
        if self.instance:
            from .instances import targets_from_classes

            out["targets"] = [targets_from_classes(label, min_area=64) for label in y]
        return out


def instance_targets(labels, device, targets: list[dict] | None = None) -> list[dict]:
    """Per-image instance targets (tensors on ``device``) from a batch of class maps, or
    ``targets`` already made from them (arrays or tensors, as :class:`PatchBatches` gives)."""
    import torch

    from .instances import targets_from_classes

    if targets is None:
        targets = [targets_from_classes(np.asarray(label), min_area=64) for label in labels]
    return [{k: torch.as_tensor(v).to(device, non_blocking=True) for k, v in t.items()} for t in targets]


def model_loss(
    net,
    module,
    x,
    labels,
    device: str = "cpu",
    dice_weight: float = 0.5,
    bf16: bool = False,
    targets: list[dict] | None = None,
):
    """The model's training loss on a normalised batch ``x`` and its (B, H, W) class maps
    (array or tensor): the paper's loss of its module (``loss`` or ``net.loss`` for instance
    models, on ``targets`` when given, else made from the class maps), else
    :func:`segmentation_loss`."""
    import torch

    kind = device.split(":")[0]
    with torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=bf16):
        if getattr(module, "KIND", "semantic") == "instance":
            return sum(net.loss(x, instance_targets(labels, device, targets)).values()).float()
        outputs = net(x)
    outputs = [o.float() for o in outputs] if isinstance(outputs, list | tuple) else outputs.float()
    target = labels if isinstance(labels, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(labels))
    target = target.long().to(device, non_blocking=True)
    if hasattr(module, "loss"):
        return module.loss(outputs, target).float()
    return segmentation_loss(outputs, target, dice_weight)


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


def warmup_share(total: int, share: float = 0.05) -> float:
    """OneCycleLR's ``pct_start`` for ``total`` steps: ``share`` of them warm up, unless that is
    exactly one step (20 steps at 5 %), where torch divides by zero: then two."""
    return share if abs(share * total - 1.0) > 1e-9 else 2.0 / total


def load_checkpoint(path: Path, net, opt, sched, device: str) -> dict:
    """Restore the network, optimiser and schedule from a ``checkpoint.pt`` (tensors only,
    no pickle), and torch's CPU random state when it was saved (``rng``); return the whole
    saved state (step, best score, ...)."""
    import torch

    state = torch.load(path, map_location=device, weights_only=True)
    net.load_state_dict(state["model"])
    opt.load_state_dict(state["opt"])
    sched.load_state_dict(state["sched"])
    if "rng" in state:
        torch.set_rng_state(state["rng"].cpu())
    return state


def save_checkpoint(out: Path, history: dict, net, opt, sched, **state) -> None:
    """``history.json`` and ``checkpoint.pt`` (network, optimiser, schedule and ``state``: step,
    best score...), each written atomically, for ``--resume`` (:func:`load_checkpoint`)."""
    import torch

    write_atomic(out / "history.json", lambda p: p.write_text(json.dumps(history)))
    state = {"model": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), **state}
    write_atomic(out / "checkpoint.pt", lambda p: torch.save(state, p))


def take_step(loss, opt, sched, history: dict, step: int, running: float | None) -> tuple[int, float]:
    """One optimiser and schedule step on ``loss``, logged in ``history["loss"]``; returns the
    new step count and the running (exponentially smoothed) loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
    value = loss.item()
    history["loss"].append([step + 1, round(value, 5)])
    return step + 1, value if running is None else 0.95 * running + 0.05 * value


def validate(net, spec, pairs, device) -> dict[str, float]:
    """Mean Dice of whole cell and nucleus over validation pairs at native scale."""
    from .inference import network_classes
    from .metrics import class_map_metrics, mean_metrics

    net.eval()
    scores = []
    for pair in pairs:
        image, label = load_pair(pair)
        scores.append(class_map_metrics(network_classes(net, spec, image, device), label))
    net.train()
    m = mean_metrics(scores)
    return {
        "dice_cell": m["cell"]["dice"],
        "dice_cytoplasm": m["cytoplasm"]["dice"],
        "dice_nucleus": m["nucleus"]["dice"],
    }


def train(
    data_dirs,
    out: str | Path,
    config: TrainConfig | None = None,
    device: str = "cpu",
    resume: bool = False,
    init_weights: str | Path | None = None,
    progress=None,
    cancelled=None,
) -> dict:
    """Train (or fine-tune from ``init_weights``) and return the history summary."""
    import torch

    from ..models import ModelSpec, create_model, read_spec, save_model
    from ..models.registry import model_kind, model_module
    from .batches import batch_loader
    from .inference import type_names

    config = config or TrainConfig()
    if init_weights:  # fine-tuning trains the architecture of the weights it starts from
        from dataclasses import replace

        config = replace(config, model=read_spec(init_weights).name)
    config = recipe(config)
    module = model_module(config.model)
    if model_kind(config.model) == "classifier":
        from .train_classifier import train_classifier

        return train_classifier(data_dirs, out, config, device, resume, init_weights, progress, cancelled)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    train_pairs = [p for d in data_dirs for p in list_pairs(d, "train")]
    val_pairs = [p for d in data_dirs for p in list_pairs(d, "val")]
    if init_weights:
        spec = read_spec(init_weights)
    else:
        classes = tuple(getattr(module, "CLASSES", ModelSpec.classes))
        cfg = {**config.cfg, **({"num_classes": len(classes)} if hasattr(module, "CLASSES") else {})}
        spec = ModelSpec(config.model, cfg, classes=classes, pixel_size=config.pixel_size)
    sampler = PatchSampler(
        train_pairs,
        AugmentConfig(size=config.patch, **config.augment),
        config.seed,
        type_names(spec),
        config.balance,
        config.augment.get("scale"),
    )
    net = create_model(spec.name, **spec.cfg).to(device)
    if init_weights:
        from safetensors.torch import load_file

        from ..models import sha256

        spec.extra.pop("trained", None)  # the base model's record is not this model's
        spec.extra["init"] = {
            "weights": str(init_weights),
            "sha256": sha256(Path(init_weights) / "model.safetensors"),
        }
        state = load_file(str(Path(init_weights) / "model.safetensors"))
        net.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state.items()})
    if config.optimizer == "sgd":
        opt = torch.optim.SGD(
            net.parameters(), lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay
        )
    else:
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps_per_epoch = max(1, math.ceil(len(train_pairs) / config.batch_size))
    total = config.max_steps or config.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, config.lr, total_steps=total, pct_start=warmup_share(total)
    )
    history = {
        "config": asdict(config),
        "data": [str(d) for d in data_dirs],
        "train_images": len(train_pairs),
        "val_images": len(val_pairs),
        "steps_per_epoch": steps_per_epoch,
        "loss": [],
        "val": [],
        "best": None,
    }
    step, best, stale = 0, -1.0, 0
    ckpt = out / "checkpoint.pt"
    if resume and ckpt.exists():
        state = load_checkpoint(ckpt, net, opt, sched, device)
        step, best, stale = int(state["step"]), float(state["best"]), int(state["stale"])
        history = json.loads((out / "history.json").read_text())

    def checkpoint():
        rng = torch.get_rng_state()
        save_checkpoint(out, history, net, opt, sched, step=step, best=best, stale=stale, rng=rng)

    draw = PatchBatches(sampler, config.batch_size, spec, spec.kind == "instance")
    batches = batch_loader(draw, config.seed, step, config.workers, device)
    net.train()
    t0, running, start = time.time(), None, step
    try:
        while step < total:
            if cancelled is not None and cancelled():
                history["cancelled"] = True
                checkpoint()
                break
            batch = next(batches)
            xt = batch["x"].to(device, non_blocking=True)
            loss = model_loss(
                net, module, xt, batch["y"], device, config.dice_weight, config.bf16, batch.get("targets")
            )
            step, running = take_step(loss, opt, sched, history, step, running)
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
    finally:
        batches.close()  # stops the workers
    if history["best"] is None:  # cancelled before the first validation
        save_model(net, spec, out)
    history["steps"] = step
    history["seconds"] = round(history.get("seconds", 0.0) + time.time() - t0, 1)
    history["device"] = device
    (out / "history.json").write_text(json.dumps(history))
    write_card(out, spec, history)
    return history


def write_card(out: Path, spec, history: dict) -> Path:
    """A short model card (CARD.md) next to the weights: data, split, recipe, figures."""
    import platform

    from ..models import sha256

    c, best = history["config"], history.get("best") or {}
    figures = ", ".join(
        f"{k.removeprefix('dice_')} {100 * v:.2f}" for k, v in best.items() if k.startswith("dice_")
    )
    text = "\n".join(
        [
            f"# {spec.name}: trained weights",
            "",
            f"- data: {', '.join(history['data'])} (train split: {history['train_images']} images; "
            f"validation split: {history['val_images']} images; test split never seen); patches drawn from "
            + ("each data folder equally often" if c.get("balance") else "each image equally often"),
            f"- recipe: {c['optimizer']} lr {c['lr']} weight decay {c['weight_decay']}, "
            f"batch {c['batch_size']} of {c['patch']} px patches, "
            f"augmentation overrides {c['augment'] or 'none'}, bf16 {c['bf16']}",
            f"- trained {history['steps']} steps "
            f"({history['steps'] / history['steps_per_epoch']:.1f} epochs) "
            f"in {history['seconds'] / 60:.1f} min on {history['device']} ({platform.machine()}, "
            f"{platform.node() or 'unknown host'})" + (" - cancelled" if history.get("cancelled") else ""),
            f"- best validation (step {best.get('step')}): Dice % {figures or 'none'}",
            f"- classes: {', '.join(spec.classes)}; working pixel size {spec.pixel_size} um/px",
            f"- model.safetensors sha256 {sha256(out / 'model.safetensors')}",
            "",
            "Test-split figures: `napari-wbc evaluate --dataset DIR --split test --weights THIS_FOLDER`.",
            "",
        ]
    )
    (out / "CARD.md").write_text(text)
    return out / "CARD.md"
