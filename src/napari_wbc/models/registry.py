"""Name-keyed registry of architectures: ``create_model(name, **cfg)``."""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines ``build(**cfg)``; modules are imported on first use
_ARCHITECTURES = {
    "mifnet": "napari_wbc.models.mifnet",
    "leukocytemask": "napari_wbc.models.leukocytemask",
    "wbcnet": "napari_wbc.models.wbcnet",
    "wcsegnet": "napari_wbc.models.wcsegnet",
    "yolact_cis": "napari_wbc.models.yolact_cis",
}
# classifiers type the cells a segmentation model found (KIND "classifier")
_CLASSIFIERS = {
    "celltype": "napari_wbc.models.celltype",
}


def list_models(kind: str | None = None) -> list[str]:
    """Names of every registered segmentation architecture (of ``kind`` only, if given:
    "semantic" or "instance")."""
    return sorted(m for m in _ARCHITECTURES if kind is None or model_kind(m) == kind)


def list_classifiers() -> list[str]:
    """Names of every registered cell classifier."""
    return sorted(_CLASSIFIERS)


def model_module(name: str):
    """The module that defines an architecture (``KeyError`` lists the valid names).

    It provides ``build``, ``KIND`` ("semantic" or "instance"), ``TRAINING`` (the paper's
    recipe) and optionally ``loss``; see docs/model-interface.md.
    """
    try:
        module = {**_ARCHITECTURES, **_CLASSIFIERS}[name]
    except KeyError:
        valid = list_models() + list_classifiers()
        raise KeyError(f"unknown model {name!r}; choose one of {valid}") from None
    return importlib.import_module(module)


def model_kind(name: str) -> str:
    """ "semantic" (a class per pixel), "instance" (scored masks per cell) or "classifier"
    (a class per cell crop)."""
    return getattr(model_module(name), "KIND", "semantic")


def create_model(name: str, **cfg: Any):
    """Build an untrained network by name (``KeyError`` lists the valid names)."""
    return model_module(name).build(**cfg)
