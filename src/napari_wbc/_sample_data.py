"""Sample smear fields for File > Open Sample > napari WBC (BCCD images, MIT; see SOURCES.md)."""

from __future__ import annotations

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "sample_data"

# key -> file; the keys are also the napari.yaml sample keys
SAMPLES = {
    "two_cells": "BloodImage_00034.jpg",  # a lymphocyte-like cell beside a neutrophil, nearly touching
    "neutrophils": "BloodImage_00249.jpg",  # two segmented neutrophils among red cells
}


def sample_path(key: str = "two_cells") -> Path:
    """Path of a bundled sample field (works from a checkout and an installed package)."""
    try:
        return SAMPLE_DIR / SAMPLES[key]
    except KeyError:
        raise KeyError(f"unknown sample {key!r}; choose one of {sorted(SAMPLES)}") from None


def _layer(key: str) -> list[tuple]:
    from ._reader import smear_layer_data

    return [smear_layer_data(sample_path(key))]


def two_cells() -> list[tuple]:
    """Smear field with two white cells side by side (BCCD BloodImage_00034)."""
    return _layer("two_cells")


def neutrophils() -> list[tuple]:
    """Smear field with two neutrophils (BCCD BloodImage_00249)."""
    return _layer("neutrophils")
