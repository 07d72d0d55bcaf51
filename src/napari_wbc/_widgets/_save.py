"""Save corrected cells as a training pair, with where they came from (provenance)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from napari.layers import Image

from ..core.io import InputError
from ._layers import features_of, image_name, partner

log = logging.getLogger(__name__)


def source_image(viewer, cells) -> Image:
    """The RGB image layer the cells were found in."""
    name = image_name(cells)
    layer = viewer.layers[name] if name in viewer.layers else None
    if not isinstance(layer, Image) or not layer.rgb:
        raise InputError(
            f"the image {name!r} of {cells.name!r} is not in the viewer; open it again "
            "(its labels are saved together with it)"
        )
    if tuple(layer.data.shape[:2]) != tuple(cells.data.shape):
        raise InputError(
            f"the image {name!r} {tuple(layer.data.shape[:2])} and {cells.name!r} "
            f"{tuple(cells.data.shape)} differ in size"
        )
    return layer


def visible_region(image: Image) -> tuple[int, int, int, int]:
    """(y0, x0, y1, x1) of the part of ``image`` shown on the canvas."""
    (y0, x0), (y1, x1) = np.asarray(image.corner_pixels)[:, -2:]
    h, w = image.data.shape[:2]
    return max(0, int(y0)), max(0, int(x0)), min(h, int(y1) + 1), min(w, int(x1) + 1)


def weights_sha256(model: str | None) -> str | None:
    from ..models import MissingWeightsError, resolve_weights, sha256

    if not model:
        return None
    try:
        return sha256(resolve_weights(model) / "model.safetensors")
    except (MissingWeightsError, OSError) as err:
        log.info("no sha256 for model %s: %s", model, err)
        return None


def save_training_data(viewer, cells, folder: str | Path, edited, visible_only: bool = False) -> str:
    """Write the image and the corrected cells/nuclei of ``cells`` into ``folder``; the new stem."""
    from .. import __version__
    from ..core.dataset import save_training_pair

    nuclei = partner(viewer.layers, cells, "nuclei")
    if nuclei is None:
        raise InputError(f"{cells.name!r} has no nuclei layer beside it")
    image = source_image(viewer, cells)
    meta = cells.metadata or {}
    table = features_of(cells)
    region = visible_region(image) if visible_only else None
    reviews = (
        viewer.layers[f"{image_name(cells)} review"].metadata
        if f"{image_name(cells)} review" in viewer.layers
        else {}
    )
    provenance = {
        "source": meta.get("source") or (image.metadata or {}).get("source") or image.name,
        "model": meta.get("model"),
        "weights_sha256": weights_sha256(meta.get("model")),
        "pixel_size_um": meta.get("pixel_size"),
        "cells_edited": len(edited),
        "edited_ids": sorted(int(i) for i in edited),
        "cells_reviewed": int(table["reviewed"].sum()) if table is not None and "reviewed" in table else 0,
        "reference": reviews.get("reference"),
        "tool": f"napari-wbc {__version__}",
    }
    return save_training_pair(
        folder,
        image.data,
        np.asarray(cells.data),
        np.asarray(nuclei.data),
        provenance=provenance,
        region=region,
        table=table,
    )
