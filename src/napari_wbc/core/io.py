"""Read smear images, find their pixel size, and turn any image into RGB uint8.

Every problem a user can cause raises :class:`InputError` with one message that says
what is wrong and what to do; callers (CLI, widgets) show that message, not a traceback.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

READABLE = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class InputError(ValueError):
    """A problem with the user's input, with a message that says what to do."""


# um per pixel a light microscope can give a smear: a 100x oil objective on a fine camera sensor
# (~0.02) to a 4x scanning objective (~5). Metadata outside it is a typo or a screen default.
PIXEL_SIZE_RANGE = (0.02, 5.0)


def plausible_pixel_size(value, source: str) -> float | None:
    """``value`` (um/px) when it is a microscope's pixel size, else None with a warning that
    names ``source`` (the file, or the metadata field); the caller then measures the cells."""
    if value is None:
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        log.warning("%s: pixel size %r is not a number; ignored", source, value)
        return None
    lo, hi = PIXEL_SIZE_RANGE
    if not lo <= value <= hi:
        log.warning(
            "%s: pixel size %g um/px is outside %g-%g um/px; ignored (give --pixel-size if the "
            "file is right)",
            source,
            value,
            lo,
            hi,
        )
        return None
    return value


@dataclass
class SmearImage:
    data: np.ndarray  # (H, W, 3) uint8
    pixel_size: float | None = None  # um per pixel, when the file says
    notes: list[str] = field(default_factory=list)  # conversions that were applied


def to_rgb8(array: np.ndarray, notes: list[str] | None = None) -> np.ndarray:
    """Any 2D grayscale, RGB or RGBA array of integer or float type as (H, W, 3) uint8."""
    notes = [] if notes is None else notes
    a = np.asarray(array)
    if a.dtype == bool or not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InputError(f"images of type {a.dtype} cannot be segmented; give an RGB image")
    if a.ndim == 3 and a.shape[0] in (3, 4) and a.shape[-1] not in (3, 4):
        a = np.moveaxis(a, 0, -1)
        notes.append("moved the channel axis last")
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=-1)
        notes.append("grayscale image: copied into the three colour channels")
    elif a.ndim == 3 and a.shape[-1] == 4:
        a = a[..., :3]
        notes.append("RGBA image: dropped the alpha channel")
    elif a.ndim == 3 and a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
        notes.append("single-channel image: copied into the three colour channels")
    if a.ndim != 3 or a.shape[-1] != 3:
        raise InputError(
            f"expected a 2D colour image (height, width, RGB), got shape {array.shape}; "
            "open a single RGB field, or pick one plane of a stack"
        )
    if min(a.shape[:2]) < 16:
        raise InputError(f"image of {a.shape[1]}x{a.shape[0]} px is too small to hold a white cell")
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if finite.size == 0:
        raise InputError("the image has no finite pixel values")
    if np.issubdtype(array.dtype, np.floating) and finite.min() >= 0 and finite.max() <= 1:
        scaled = a * 255
        notes.append("float image in 0..1: scaled to 0..255")
    else:
        lo, hi = np.percentile(finite, (0.05, 99.95))
        hi = max(hi, lo + 1)
        scaled = (a - lo) * (255.0 / (hi - lo))
        notes.append(f"{array.dtype} image: rescaled {lo:g}..{hi:g} to 8 bits")
    return np.clip(np.nan_to_num(scaled), 0, 255).round().astype(np.uint8)


def _tiff_pixel_size(path: Path) -> float | None:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        tags = page.tags
        if "XResolution" not in tags:
            return None
        num, den = tags["XResolution"].value
        unit = tags["ResolutionUnit"].value if "ResolutionUnit" in tags else 1
        if not num or not den:
            return None
        per_unit = den / num  # units per pixel
        unit = int(unit)
        if unit == 3:  # centimetre
            return per_unit * 1e4
        if unit == 2:  # inch; 72 or 96 dpi are screen defaults, not a microscope
            um = per_unit * 25400
            return um if um < 10 else None
        imagej = tif.imagej_metadata or {}
        if imagej.get("unit") in ("micron", "um", "\\u00B5m", "µm"):
            return per_unit
    return None


def read_image(path: str | Path) -> SmearImage:
    """Read a smear field (PNG, JPEG, TIFF, BMP) as RGB uint8 with its pixel size if known."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if path.suffix.lower() not in READABLE:
        raise InputError(f"{path.name}: unsupported file type; open a PNG, JPEG, TIFF or BMP image")
    notes: list[str] = []
    pixel_size = None
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            array = tifffile.imread(path)
            pixel_size = _tiff_pixel_size(path)
        else:
            from PIL import Image

            with Image.open(path) as im:
                im.load()
                if im.mode in ("P", "CMYK", "YCbCr", "LA"):
                    im = im.convert("RGBA" if "A" in im.mode or im.mode == "P" else "RGB")
                array = np.asarray(im)
    except Exception as err:  # corrupt, truncated, or not an image at all
        raise InputError(f"{path.name}: cannot read this image ({err}); is the file complete?") from err
    data = to_rgb8(array, notes)
    for note in notes:
        log.info("%s: %s", path.name, note)
    return SmearImage(data, pixel_size, notes)
