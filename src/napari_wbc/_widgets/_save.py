"""Save corrected cells as a training pair, with where they came from (provenance)."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np
from napari.layers import Image

from ..core.io import InputError
from ._layers import features_of, image_name, partner


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


class Saved(NamedTuple):
    stem: str
    new: bool  # False: the folder held this very pair already (``stem``); nothing was written


def save_training_data(viewer, cells, folder: str | Path, edited, visible_only: bool = False) -> Saved:
    """Write the image and the corrected cells/nuclei of ``cells`` into ``folder`` as a new pair,
    unless the folder holds the same pair already (image, maps and table unchanged since)."""
    from .. import __version__
    from ..core.dataset import find_saved_pair, save_training_pair
    from ..models import weights_sha256

    nuclei = partner(viewer.layers, cells, "nuclei")
    if nuclei is None:
        raise InputError(f"{cells.name!r} has no nuclei layer beside it")
    image = source_image(viewer, cells)
    meta = cells.metadata or {}
    table = features_of(cells)
    region = visible_region(image) if visible_only else None
    maps = (image.data, np.asarray(cells.data), np.asarray(nuclei.data))
    same = find_saved_pair(folder, *maps, region=region, table=table, pixel_size=meta.get("pixel_size"))
    if same is not None:
        return Saved(same, new=False)
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
    return Saved(save_training_pair(folder, *maps, provenance=provenance, region=region, table=table), True)
