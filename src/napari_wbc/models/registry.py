"""Name-keyed registry of architectures: ``create_model(name, **cfg)``."""

from __future__ import annotations

import importlib
from typing import Any

# name -> module that defines ``build(**cfg)``; modules are imported on first use
_ARCHITECTURES = {
    "mifnet": "napari_wbc.models.mifnet",
}


def list_models() -> list[str]:
    """Names of every registered architecture."""
    return sorted(_ARCHITECTURES)


def create_model(name: str, **cfg: Any):
    """Build an untrained network by name (``KeyError`` lists the valid names)."""
    try:
        module = _ARCHITECTURES[name]
    except KeyError:
        raise KeyError(f"unknown model {name!r}; choose one of {list_models()}") from None
    return importlib.import_module(module).build(**cfg)
