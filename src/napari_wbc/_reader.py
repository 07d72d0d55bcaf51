"""napari reader for single smear fields (PNG, JPEG, BMP, and single-image TIFF).

The image always arrives as an RGB uint8 layer: grayscale, RGBA, 16-bit and float files
are converted by :func:`napari_wbc.core.io.to_rgb8` and a notification says what was
changed. The pixel size (um/px), when the file records it, goes into the layer metadata
and sets the layer scale in micrometres, so napari's scale bar is right; the Segment
widget gives its label layers the same transform. A file that cannot be read gives one
notification with what to do, never a traceback.

Whole slides (pyramidal TIFF, OME-TIFF, SVS, and plain TIFFs too big for a field; see
:func:`napari_wbc.core.slide.is_slide`) open as a multiscale RGB image layer of lazy
levels (:mod:`._slide_layers`). At open a little of each end of the data is decoded
(:meth:`napari_wbc.core.slide.Slide.check`), so a damaged or truncated file gives the one
notification then, not errors when napari draws it; beyond that nothing is read until
napari draws it, and then only what it draws. The layer's ``metadata["slide"]`` holds the
path, which is how the Segment widget knows to segment it tile by tile. Pyramidal 32/64-bit
integer TIFFs (the ``*_cells.tif`` and ``*_nuclei.tif`` a slide run writes) open as
multiscale labels layers, checked the same way; ``<stem>_cells.tif`` gets the cell table
``<stem>_cells.csv`` beside it as its features.

Other TIFF files are only claimed when they hold one 2D field; stacks, multi-page files
and non-pyramidal 32/64-bit integer images (label images, such as the ``*_cells.tif``
that ``napari-wbc segment`` writes for a field) are left to other readers.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .core.io import READABLE, InputError, check_regular, read_image
from .core.slide import slide_name

log = logging.getLogger(__name__)

# a single field larger than this (pixels) is a slide, not a field: left to other readers
MAX_FIELD_PIXELS = 64_000_000
# files that may hold a whole slide (opened lazily when core.slide.is_slide says so)
SLIDE_SUFFIXES = (".tif", ".tiff", ".svs", ".ndpi", ".btf", ".tf8")

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


def _is_slide(path: Path) -> bool:
    from .core.slide import is_slide

    return path.suffix.lower() in SLIDE_SUFFIXES and path.is_file() and is_slide(path)


def _claims(path: str | Path) -> bool:
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in READABLE + SLIDE_SUFFIXES:
        return False
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return True  # claimed by its name: the reader says it is missing
    except OSError:  # a name too long, a permission: claimed, so that the reader says why
        return True
    if stat.S_ISDIR(mode):
        return False
    if not stat.S_ISREG(mode):  # a pipe or a device: never opened here (it could block)
        return True  # claimed, so that the reader refuses it with a message
    if _is_slide(path):
        return True
    if suffix in SLIDE_SUFFIXES and suffix not in READABLE:
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


def slide_layer_data(path: str | Path) -> LayerData:
    """``(levels, kwargs, "image")`` for a whole slide: a lazy multiscale RGB layer; raises InputError.

    A pyramidal integer label TIFF gives ``(levels, kwargs, "labels")`` instead.
    """
    from ._slide_layers import label_levels, label_pyramid_info, slide_levels

    path = Path(path)
    is_labels, pixel_size = label_pyramid_info(path)
    if is_labels:
        try:
            levels = label_levels(path)
        except InputError:
            raise
        except Exception as err:
            raise InputError(
                f"{path.name}: cannot read these labels ({err}); the file may be damaged or incomplete: "
                "write it again"
            ) from err
        return labels_layer_data(path, levels, pixel_size)
    levels, slide = slide_levels(path)
    kwargs = {
        "name": slide_name(path),
        "rgb": True,
        "multiscale": len(levels) > 1,
        "contrast_limits": (0, 255),
        "metadata": {"pixel_size": slide.pixel_size, "source": str(path), "slide": str(path), "notes": []},
    }
    if slide.pixel_size:
        kwargs["scale"] = (slide.pixel_size, slide.pixel_size)
        kwargs["units"] = ("um", "um")
    return (levels if len(levels) > 1 else levels[0]), kwargs, "image"


def labels_layer_data(path: Path, levels: list, pixel_size: float | None) -> LayerData:
    """A pyramidal label TIFF as a multiscale labels layer; ``*_cells.tif`` gets its ``.csv`` table."""
    import pandas as pd

    from .core.measure import count_summary

    kwargs = {
        "name": slide_name(path),
        "multiscale": len(levels) > 1,
        "metadata": {"pixel_size": pixel_size, "source": str(path), "notes": []},
    }
    if pixel_size:
        kwargs["scale"] = (pixel_size, pixel_size)
        kwargs["units"] = ("um", "um")
    table_path = path.with_name(f"{kwargs['name']}.csv")
    if kwargs["name"].endswith("_cells") and table_path.is_file():
        table = pd.read_csv(table_path)
        if "label" in table.columns:
            kwargs["features"] = table.assign(index=table["label"])  # napari maps label -> row by `index`
            if "touches_border" in table.columns:
                kwargs["metadata"]["counts"] = count_summary(table)
    return (levels if len(levels) > 1 else levels[0]), kwargs, "labels"


def layer_data(path: str | Path) -> LayerData:
    """Layer data for a field or a slide, whichever ``path`` is; raises InputError."""
    path = Path(path)
    check_regular(path)  # a missing file, a pipe or a device: an InputError before anything opens it
    if _is_slide(path):
        return slide_layer_data(path)
    return smear_layer_data(path)


def _notify(severity: str, message: str) -> None:
    """A napari notification; napari is imported only then, so files read without it (tests, scripts)."""
    from napari.utils import notifications

    {"error": notifications.show_error, "info": notifications.show_info}[severity](message)


def read_smears(path: str | Sequence[str]) -> list[LayerData]:
    """Read each file into an RGB image layer (lazy and multiscale for a slide); report problems."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers = []
    for p in paths:
        try:
            data, kwargs, kind = layer_data(p)
        except InputError as err:
            log.info("%s", err)
            _notify("error", str(err))
            continue
        notes = kwargs["metadata"]["notes"]
        if notes:
            _notify("info", f"{Path(p).name}: " + "; ".join(notes))
        layers.append((data, kwargs, kind))
    # [(None,)] tells napari the file was handled (the error was shown) but adds no layer
    return layers or [(None,)]
