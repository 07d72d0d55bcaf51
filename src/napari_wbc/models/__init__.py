"""Model registry, saved weights (``config.json`` + ``model.safetensors``) and loading.

A weights folder holds ``config.json`` (architecture name and arguments, the input
normalisation, the classes, the working pixel size) and ``model.safetensors``. Loading
never unpickles anything. Shipped weights live in ``models/weights/<name>``; weights the
user trains go to the user data folder (``$NAPARI_WBC_HOME`` or
``~/.local/share/napari-wbc/models/<name>``) and are found there by name.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import create_model, list_models

__all__ = [
    "ModelSpec",
    "create_model",
    "list_models",
    "load_model",
    "save_model",
    "available_weights",
    "resolve_weights",
    "MissingWeightsError",
    "BrokenWeightsError",
    "sha256",
    "weights_sha256",
]

SHIPPED = Path(__file__).parent / "weights"
DEFAULT_MODEL = "mifnet"


# plausible working pixel sizes (um/px) of a light microscope: the same range as
# core.io.PIXEL_SIZE_RANGE, repeated here because models/ does not import core/
PIXEL_SIZE_RANGE = (0.02, 5.0)


class MissingWeightsError(FileNotFoundError):
    """No trained weights for the model the user picked."""


class BrokenWeightsError(MissingWeightsError):
    """Weights that are there but unusable: an unreadable or inconsistent ``config.json`` or
    ``model.safetensors``, or numbers that are not finite. A :class:`MissingWeightsError`, so
    that everything that reports missing weights in one line reports these too."""


def broken_weights(folder: str | Path, problem: str) -> BrokenWeightsError:
    """The error for a weights folder with ``problem``, saying what to do about it."""
    folder = Path(folder)
    if SHIPPED.resolve() in folder.resolve().parents:
        todo = "reinstall napari-wbc to restore its shipped weights"
    else:
        todo = "copy the folder again from where it was trained, or train it anew with `napari-wbc train`"
    return BrokenWeightsError(f"{folder}: {problem}; {todo}")


@dataclass
class ModelSpec:
    name: str
    cfg: dict[str, Any] = field(default_factory=dict)
    classes: tuple[str, ...] = ("background", "cytoplasm", "nucleus")
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)
    # pixel size (um/px) the network was trained at; None: the native scale of its data
    pixel_size: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """ "semantic", "instance" or "classifier": what the network gives (its module's KIND)."""
        from .registry import model_kind

        return model_kind(self.name)

    @property
    def context(self) -> int | None:
        """Working px of context a semantic network needs around a tile to give the same
        outputs as over the whole image: its module's ``RECEPTIVE_REACH``, unless the config
        says otherwise ("context"); None for models that are not tiled."""
        from .registry import model_module

        if "context" in self.extra:
            return int(self.extra["context"])
        reach = getattr(model_module(self.name), "RECEPTIVE_REACH", None)
        return None if reach is None else int(reach)

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "cfg": self.cfg,
            "classes": list(self.classes),
            "mean": list(self.mean),
            "std": list(self.std),
            "pixel_size": self.pixel_size,
            **self.extra,
        }

    @classmethod
    def from_json(cls, d: dict) -> ModelSpec:
        known = {"name", "cfg", "classes", "mean", "std", "pixel_size"}
        return cls(
            d["name"],
            d.get("cfg", {}),
            tuple(d.get("classes", cls.classes)),
            tuple(d.get("mean", cls.mean)),
            tuple(d.get("std", cls.std)),
            d.get("pixel_size"),
            {k: v for k, v in d.items() if k not in known},
        )


def pad_multiple(net) -> int:
    """The network's grid (its total stride): input sides are padded to multiples of it, and
    slide tiles start on them, so that a tile sees the same grid as the whole image."""
    return int(getattr(net, "pad_multiple", 8))


def user_model_dir() -> Path:
    home = os.environ.get("NAPARI_WBC_HOME")
    if home:
        return Path(home) / "models"
    data = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data) / "napari-wbc" / "models"


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_sha256(model: str | None, weights: str | Path | None = None) -> str | None:
    """The sha256 of a model's ``model.safetensors`` (by name, or of an explicit weights
    folder): what a result records to say which weights made it. None when there are none."""
    if not model and weights is None:
        return None
    try:
        return sha256(resolve_weights(model, weights) / "model.safetensors")
    except (MissingWeightsError, OSError):
        return None


def available_weights(classifiers: bool = False) -> dict[str, Path]:
    """Model name -> weights folder, for every segmentation model (or, with
    ``classifiers``, every cell classifier) that has trained weights.

    Weights the user trained take precedence over shipped weights of the same name.
    """
    from .registry import list_classifiers

    found = {}
    for root in (SHIPPED, user_model_dir()):
        if root.is_dir():
            for d in sorted(root.iterdir()):
                if (d / "config.json").exists() and (d / "model.safetensors").exists():
                    try:
                        config = json.loads((d / "config.json").read_text())
                    except (OSError, ValueError):
                        continue
                    name = config.get("name") if isinstance(config, dict) else None
                    if name in (list_classifiers() if classifiers else list_models()):
                        found[d.name] = d
    return found


def resolve_weights(model: str | None = None, weights: str | Path | None = None) -> Path:
    """The weights folder for a model name or an explicit path, or a clear error."""
    if weights is not None:
        path = Path(weights)
        if path.is_file():
            path = path.parent
        if not (path / "model.safetensors").exists() or not (path / "config.json").exists():
            raise MissingWeightsError(
                f"{weights}: no config.json and model.safetensors there; point --weights at "
                "a folder written by `napari-wbc train`"
            )
        return path
    name = model or DEFAULT_MODEL
    found = {**available_weights(), **available_weights(classifiers=True)}
    if name not in found:
        for root in (user_model_dir(), SHIPPED):  # a folder left out of the listing says why
            if (root / name / "config.json").is_file() and (root / name / "model.safetensors").is_file():
                read_spec(root / name)
        raise MissingWeightsError(
            f"model {name!r} has no trained weights yet; train it in napari (Plugins > napari WBC > "
            f"Fine-tune a model: start from {name!r}) or with "
            f"`napari-wbc train --model {name} --data DATASET_DIR --out {user_model_dir() / name}`, "
            f"or pick one of {sorted(found) or 'none'}"
        )
    return found[name]


def save_model(net, spec: ModelSpec, folder: str | Path, half: bool = False) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (optionally as float16) atomically."""
    from safetensors.torch import save_file

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    tmp = folder / "model.safetensors.tmp"
    save_file(state, str(tmp))
    tmp.chmod(0o644)
    os.replace(tmp, folder / "model.safetensors")
    tmp = folder / "config.json.tmp"
    tmp.write_text(json.dumps(spec.to_json(), indent=2))
    os.replace(tmp, folder / "config.json")
    return folder


def read_spec(folder: str | Path) -> ModelSpec:
    """A weights folder's ``config.json``, checked (:class:`BrokenWeightsError` if it is not usable)."""
    try:
        config = json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError) as err:  # ValueError: not JSON, not UTF-8
        raise broken_weights(folder, f"config.json is unreadable ({err})") from None
    problem = config_problem(config)
    if problem:
        raise broken_weights(folder, f"config.json {problem}")
    return ModelSpec.from_json(config)


def _numbers(value, n: int) -> bool:
    return (
        isinstance(value, list)
        and len(value) == n
        and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )


def config_problem(config) -> str | None:
    """What is wrong with the content of a ``config.json`` (None: nothing)."""
    from .registry import list_classifiers

    if not isinstance(config, dict):
        return "is not a JSON object"
    names = list_models() + list_classifiers()
    if config.get("name") not in names:
        return f"names the model {config.get('name')!r}, not one of {names}"
    if not isinstance(config.get("cfg", {}), dict):
        return 'has a "cfg" that is not an object of architecture arguments'
    classes = config.get("classes", [])
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        return 'has "classes" that are not a list of names'
    for key in ("mean", "std"):
        if key in config and not _numbers(config[key], 3):
            return f'has a "{key}" that is not three finite numbers'
    if min(config.get("std", [1])) <= 0:
        return 'has a "std" that is not positive'
    pixel_size = config.get("pixel_size")
    lo, hi = PIXEL_SIZE_RANGE
    if pixel_size is not None and not (_numbers([pixel_size], 1) and lo <= pixel_size <= hi):
        return (
            f'has a "pixel_size" of {pixel_size!r} um/px, not a microscope pixel size ({lo}-{hi} um/px; '
            "null when the network works at its images' own scale)"
        )
    return None


def load_model(
    model: str | None = None,
    weights: str | Path | None = None,
    device: str = "cpu",
    flip_average: bool = False,
):
    """(network in eval mode on ``device``, its ModelSpec); cached per (folder, device).

    With ``flip_average`` a semantic network comes wrapped in :class:`.tta.FlipAverage`
    (four passes, averaged); an instance model gets an InputError that says so.
    """
    folder = resolve_weights(model, weights)
    net, spec = _load(str(folder.resolve()), str(device))
    if flip_average:
        from ..core.io import InputError
        from .tta import FlipAverage

        if spec.kind != "semantic":
            raise InputError(
                f"flip averaging is for models that classify pixels; {spec.name} detects "
                "cells: run it without flip averaging"
            )
        net = FlipAverage(net)
    return net, spec


@functools.lru_cache(maxsize=4)
def _load(folder: str, device: str):
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    spec = read_spec(folder)
    try:
        net = create_model(spec.name, **spec.cfg)
    except (TypeError, ValueError) as err:
        raise broken_weights(
            folder, f'config.json\'s "cfg" does not build a {spec.name} network ({err})'
        ) from None
    try:
        state = load_file(str(Path(folder) / "model.safetensors"))
    except (OSError, SafetensorError) as err:
        raise broken_weights(
            folder, f"model.safetensors is unreadable, truncated or damaged ({err})"
        ) from None
    reference = net.state_dict()
    problem = _state_problem(state, reference)
    if problem:
        raise broken_weights(folder, f"model.safetensors does not fit a {spec.name} network: {problem}")
    state = {k: v.to(reference[k].dtype) for k, v in state.items()}
    bad = [k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise broken_weights(
            folder, f"model.safetensors holds NaN or infinite numbers ({len(bad)} tensors, first {bad[0]})"
        )
    net.load_state_dict(state)
    net.eval().to(torch.device(device))
    if spec.kind == "semantic":  # channels-last convolutions: 1.6x on a CPU, the same class maps
        net.to(memory_format=torch.channels_last)
    return net, spec


def _state_problem(state: dict, reference: dict) -> str | None:
    """How the tensors in ``state`` differ from a network's ``reference`` state (None: they fit)."""
    missing = [k for k in reference if k not in state]
    if missing:
        return f"{len(missing)} tensors missing, first {missing[0]}"
    unexpected = [k for k in state if k not in reference]
    if unexpected:
        return f"{len(unexpected)} unknown tensors, first {unexpected[0]}"
    for k, v in state.items():
        if v.shape != reference[k].shape:
            return f"{k} is {tuple(v.shape)}, not {tuple(reference[k].shape)}"
    return None
