"""napari reader for single smear fields (PNG, JPEG, BMP, and single-image TIFF).

The image always arrives as an RGB uint8 layer: grayscale, RGBA, 16-bit and float files
are converted by :func:`napari_wbc.core.io.to_rgb8` and a notification says what was
changed. The pixel size (um/px), when the file records it, goes into the layer metadata
and sets the layer scale in micrometres, so napari's scale bar is right; the Segment
widget gives its label layers the same transform. A file that cannot be read gives one
notification with what to do, never a traceback.

TIFF files are only claimed when they hold one 2D field; stacks, multi-page files,
pyramidal whole-slide images and 32/64-bit integer images (label images, such as the
``*_cells.tif`` that ``napari-wbc segment`` writes) are left to other readers.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .core.io import READABLE, InputError, read_image

log = logging.getLogger(__name__)

# a single field larger than this (pixels) is a slide, not a field: left to other readers
MAX_FIELD_PIXELS = 64_000_000

LayerData = tuple  # (data, kwargs, layer_type)


def _is_single_field_tiff(path: Path) -> bool:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            if len(tif.series) != 1:
                return False
            series = tif.series[0]
            if len(getattr(series, "levels", [series])) > 1:
                return False
            shape = [n for n in series.shape if n > 1]
            dtype = np.dtype(series.dtype)
    except Exception:  # unreadable: claim it, so the reader can say what is wrong
        return True
    if dtype.kind in "iu" and dtype.itemsize >= 4:  # 32/64-bit integers: a label image
        return False
    if len(shape) == 2:
        h, w = shape
    elif len(shape) == 3 and (shape[-1] in (3, 4) or shape[0] in (3, 4)):
        h, w = shape[:2] if shape[-1] in (3, 4) else shape[1:]
    else:
        return False
    return h * w <= MAX_FIELD_PIXELS


def _claims(path: str | Path) -> bool:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE or path.is_dir():
        return False
    if suffix in (".tif", ".tiff") and path.exists():
        return _is_single_field_tiff(path)
    return True


def get_reader(path: str | Sequence[str]):
    """The reader function for one smear image (or a list of them), or None."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    if paths and all(_claims(p) for p in paths):
        return read_smears
    return None


def smear_layer_data(path: str | Path) -> LayerData:
    """``(data, kwargs, "image")`` for one smear file; raises InputError."""
    path = Path(path)
    smear = read_image(path)
    kwargs = {
        "name": path.stem,
        "rgb": True,
        "metadata": {"pixel_size": smear.pixel_size, "source": str(path), "notes": list(smear.notes)},
    }
    if smear.pixel_size:
        kwargs["scale"] = (smear.pixel_size, smear.pixel_size)
        kwargs["units"] = ("um", "um")
    return smear.data, kwargs, "image"


def read_smears(path: str | Sequence[str]) -> list[LayerData]:
    """Read each file into an RGB image layer; report problems as notifications."""
    from napari.utils.notifications import show_error, show_info

    paths = [path] if isinstance(path, str | Path) else list(path)
    layers = []
    for p in paths:
        try:
            data, kwargs, kind = smear_layer_data(p)
        except InputError as err:
            log.info("%s", err)
            show_error(str(err))
            continue
        notes = kwargs["metadata"]["notes"]
        if notes:
            show_info(f"{Path(p).name}: " + "; ".join(notes))
        layers.append((data, kwargs, kind))
    # [(None,)] tells napari the file was handled (the error was shown) but adds no layer
    return layers or [(None,)]
