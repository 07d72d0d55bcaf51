"""Samples for File > Open Sample > napari WBC: smear fields (BCCD images, MIT; see SOURCES.md)
and a small tiled slide built from them.

The sample slide is a pyramidal OME-TIFF (3360 x 4960 px, 0.1 um/px) that
:func:`napari_wbc.core.slide.build_sample_slide` makes from the bundled fields; it is
built once into the user cache folder (atomically, so a crash or a second napari never
leaves half a file) and opens through the reader like any slide: lazily, multiscale.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "sample_data"

# key -> file; the keys are also the napari.yaml sample keys
SAMPLES = {
    "two_cells": "BloodImage_00034.jpg",  # a lymphocyte-like cell beside a neutrophil, nearly touching
    "neutrophils": "BloodImage_00249.jpg",  # two segmented neutrophils among red cells
}


# bump when build_sample_slide makes a different slide: the cached one is then rebuilt
SAMPLE_SLIDE_VERSION = 1
SAMPLE_SLIDE_NAME = "sample_slide"


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


def sample_slide_path() -> Path:
    """The sample slide in the user cache folder, built on first use."""
    from ._paths import user_cache_dir
    from .core.slide import build_sample_slide

    folder = user_cache_dir() / f"sample-slide-v{SAMPLE_SLIDE_VERSION}"
    path = folder / f"{SAMPLE_SLIDE_NAME}.ome.tif"
    if not path.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=folder) as work:
            os.replace(build_sample_slide(Path(work) / path.name), path)
    return path


def sample_slide() -> list[tuple]:
    """A small tiled slide: the sample fields on glass, as a lazy multiscale layer."""
    from ._reader import slide_layer_data

    return [slide_layer_data(sample_slide_path())]
