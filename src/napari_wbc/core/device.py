"""Pick the torch device: an explicit choice, ``$NAPARI_WBC_DEVICE``, then cuda, mps, cpu."""

from __future__ import annotations

import os

from .io import InputError

CHOICES = ("auto", "cpu", "cuda", "mps")


def available_devices() -> list[str]:
    """The devices this machine really has, "auto" first."""
    import torch

    found = ["auto", "cpu"]
    if torch.cuda.is_available():
        found.append("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        found.append("mps")
    return found


def pick_device(choice: str | None = "auto") -> str:
    """A device string for torch; a clear error for a device this machine lacks."""
    choice = (choice or "auto").lower()
    if choice == "auto":
        choice = os.environ.get("NAPARI_WBC_DEVICE", "auto").lower()
    have = available_devices()
    if choice == "auto":
        return next((d for d in ("cuda", "mps") if d in have), "cpu")
    base = choice.split(":")[0]
    if base not in CHOICES:
        raise InputError(f"unknown device {choice!r}; choose one of {', '.join(CHOICES)}")
    if base not in have:
        raise InputError(
            f"device {choice!r} is not available on this machine (found: {', '.join(have[1:])}); "
            "choose 'auto' or 'cpu'"
        )
    return choice
