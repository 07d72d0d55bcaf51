"""Read smear images, find their pixel size, and turn any image into RGB uint8.

Every problem a user can cause raises :class:`InputError` with one message that says
what is wrong and what to do; callers (CLI, widgets) show that message, not a traceback.
"""

from __future__ import annotations

import logging
import os
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

READABLE = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# The network's memory grows with the pixels it sees at once: about 1.3 GB per megapixel
# (mifnet and the cell-type classifier on CPU, measured on 0.3-5 MP fields). The default
# limit keeps a field under ~13 GB, safe on a 24 GB machine; `--max-megapixels` raises it.
GB_PER_MEGAPIXEL = 1.3
MAX_MEGAPIXELS = 10.0
# Reading a field whole for viewing (napari's reader): refused past this decoded size, which a
# header can declare in a few bytes (a 100000x100000 TIFF); such images are slides, read in tiles.
MAX_DECODED_GB = 4.0

GRAYSCALE_WARNING = (
    "grayscale image: white cells are told from red cells by their stain colour, so counts on "
    "grayscale images are unreliable (red cells may be counted as white cells); segment the "
    "colour (RGB) image"
)


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
    warnings: list[str] = field(default_factory=list)  # why the counts may be wrong


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


def is_grayscale(rgb: np.ndarray) -> bool:
    """Whether an (H, W, 3) image carries no colour: its three channels (nearly) equal, as in a
    grayscale file or an RGB file of a gray picture (JPEG noise of a few levels is allowed)."""
    spread = rgb.max(axis=2).astype(np.int16) - rgb.min(axis=2)
    return bool(np.count_nonzero(spread > 8) <= 0.01 * spread.size)


_FILE_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


def file_kind(mode: int) -> str:
    """What an ``os.stat`` mode that is no regular file is, in words."""
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def check_regular(path: str | Path) -> os.stat_result:
    """``os.stat`` of ``path`` when it is a non-empty regular file, else an InputError that
    names it. Nothing is opened: opening a named pipe blocks until something writes to it,
    and a device may never end."""
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as err:  # a name too long, a permission, a loop of links...
        raise InputError(f"{path}: cannot open it ({err.strerror or err})") from None
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{path}: {file_kind(st.st_mode)}, not an image file; skipped")
    if st.st_size == 0:
        raise InputError(f"{path}: empty file (0 bytes); is the copy complete?")
    return st


def check_file(path: str | Path) -> Path:
    """``path`` when it is a non-empty regular file (:func:`check_regular`) of a readable
    type, else an InputError."""
    path = Path(path)
    check_regular(path)
    if path.suffix.lower() not in READABLE:
        raise InputError(f"{path.name}: unsupported file type; open a PNG, JPEG, TIFF or BMP image")
    return path


@dataclass
class ImageHeader:
    """What a file says about its image before any pixel is decoded."""

    width: int
    height: int
    nbytes: int  # decoded size of everything the reader would load


def check_size(name: str, header: ImageHeader, max_megapixels: float) -> None:
    """An InputError when the image is bigger than the network may see at once."""
    megapixels = header.width * header.height / 1e6
    # a TIFF stack or a deep image may decode to far more than its one plane: allow RGBA float64
    too_many_bytes = header.nbytes > max_megapixels * 1e6 * 4 * 8
    if megapixels <= max_megapixels and not too_many_bytes:
        return
    what = f"{megapixels:.0f} MP" if megapixels > max_megapixels else f"{header.nbytes / 1e9:.1f} GB decoded"
    raise InputError(
        f"{name}: {header.width}x{header.height} px ({what}) is over the limit of {max_megapixels:g} MP "
        f"the network sees at once (~{GB_PER_MEGAPIXEL:g} GB of memory per MP); crop it, segment it in "
        "tiles as a whole slide (save it as a pyramidal TIFF), or raise --max-megapixels if this "
        f"machine has ~{megapixels * GB_PER_MEGAPIXEL:.0f} GB free"
    )


def check_decoded(name: str, header: ImageHeader) -> None:
    """An InputError when the whole image would decode to more than :data:`MAX_DECODED_GB`."""
    if header.nbytes > MAX_DECODED_GB * 1e9:
        raise InputError(
            f"{name}: {header.width}x{header.height} px would take {header.nbytes / 1e9:.1f} GB to read "
            f"whole (the limit is {MAX_DECODED_GB:g} GB); save it as a pyramidal TIFF and open it as a "
            "whole slide, which is read in tiles"
        )


def _pil_open(path: Path):
    """The image opened lazily (header only) by PIL; its own decompression-bomb limit as an
    InputError that says the size."""
    from PIL import Image

    with warnings.catch_warnings():  # we check the size ourselves, with the user's limit
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except Image.DecompressionBombError:
            raise InputError(
                f"{path.name}: declares an image of more than {2 * Image.MAX_IMAGE_PIXELS / 1e6:.0f} MP, "
                "more than can be decoded as one field; crop it, or save it as a pyramidal TIFF and "
                "segment it in tiles as a whole slide"
            ) from None


def squeezed(series) -> tuple[str, tuple[int, ...]]:
    """A tifffile series' axes and shape without its length-1 axes (Y and X always stay)."""
    kept = [(a, int(n)) for a, n in zip(series.axes, series.shape, strict=True) if n != 1 or a in "YX"]
    return "".join(a for a, _ in kept), tuple(n for _, n in kept)


def cmyk_to_rgb(a: np.ndarray) -> np.ndarray:
    """(h, w, 4+) CMYK ink amounts (TIFF photometric SEPARATED) as (h, w, 3) RGB of the same type.

    Each ink takes away its share of the light that black leaves: R = (1 - C)(1 - K), as
    Pillow converts CMYK images. Samples after the fourth (alpha) are dropped.
    """
    full = float(np.iinfo(a.dtype).max) if np.issubdtype(a.dtype, np.integer) else 1.0
    inks = a[..., :4].astype(np.float64) / full
    rgb = (1 - inks[..., :3]) * (1 - inks[..., 3:4]) * full
    return rgb.round().astype(a.dtype) if full != 1.0 else rgb.astype(a.dtype)


def is_cmyk(page) -> bool:
    """Whether a TIFF page stores CMYK inks (photometric SEPARATED, ink set CMYK) rather than RGB."""
    ink_set = page.tags.valueof("InkSet", 1)  # 1 (CMYK) when absent
    return int(page.photometric) == 5 and ink_set == 1 and page.samplesperpixel >= 4


def _tiff_header(tif) -> ImageHeader:
    series = tif.series[0]
    axes, shape = squeezed(series)
    if "Y" not in axes or "X" not in axes:
        raise ValueError(f"no image plane (axes {axes})")
    nbytes = int(np.prod(shape, dtype=np.float64)) * series.dtype.itemsize
    return ImageHeader(int(shape[axes.index("X")]), int(shape[axes.index("Y")]), nbytes)


def _pil_header(im) -> ImageHeader:
    w, h = im.size
    return ImageHeader(w, h, w * h * 4 * 4)  # at most four bands of 32 bits


def read_header(path: str | Path, max_megapixels: float | None = None) -> ImageHeader:
    """The image's size from the file's header, decoding no pixel, after :func:`check_file`;
    with ``max_megapixels``, an InputError when it is bigger (:func:`check_size`)."""
    path = check_file(path)
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                header = _tiff_header(tif)
        else:
            with _pil_open(path) as im:
                header = _pil_header(im)
    except InputError:
        raise
    except Exception as err:  # not an image, or a damaged header
        raise InputError(f"{path.name}: cannot read this image ({err}); is the file complete?") from err
    if max_megapixels is not None:
        check_size(path.name, header, max_megapixels)
    return header


def _tiff_pixel_size(path: Path) -> float | None:
    """um per pixel from a TIFF's resolution tags, as they stand (unchecked)."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        return _tiff_tags_pixel_size(tif)


def _tiff_tags_pixel_size(tif) -> float | None:
    tags = tif.pages[0].tags
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


def read_image(path: str | Path, max_megapixels: float | None = None) -> SmearImage:
    """Read a smear field (PNG, JPEG, TIFF, BMP) as RGB uint8 with its pixel size if known.

    Only a non-empty regular file is opened (:func:`check_file`); the size in its header is
    checked before any pixel is decoded (:func:`check_decoded`, and :func:`check_size` with
    ``max_megapixels``). A
    pixel size from the metadata that no microscope gives is ignored with a warning
    (:func:`plausible_pixel_size`). A grayscale image gets :data:`GRAYSCALE_WARNING`.
    """
    path = check_file(path)
    notes: list[str] = []
    raw_pixel_size = None
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tif:
                header = _tiff_header(tif)
                check_decoded(path.name, header)
                if max_megapixels is not None:
                    check_size(path.name, header, max_megapixels)
                # length-1 axes dropped, a planar (S, Y, X) file made (Y, X, S), CMYK inks made RGB
                axes, shape = squeezed(tif.series[0])
                array = tif.series[0].asarray().reshape(shape)
                if axes.startswith("S") and array.ndim == 3:
                    array = np.moveaxis(array, 0, -1)
                if is_cmyk(tif.pages.first):
                    array = cmyk_to_rgb(array)
                raw_pixel_size = _tiff_tags_pixel_size(tif)
        else:
            with _pil_open(path) as im:
                check_decoded(path.name, _pil_header(im))
                if max_megapixels is not None:
                    check_size(path.name, _pil_header(im), max_megapixels)
                im.load()
                if im.mode in ("P", "CMYK", "YCbCr", "LA"):
                    im = im.convert("RGBA" if "A" in im.mode or im.mode == "P" else "RGB")
                array = np.asarray(im)
    except InputError:
        raise
    except Exception as err:  # corrupt, truncated, or not an image at all
        raise InputError(f"{path.name}: cannot read this image ({err}); is the file complete?") from err
    try:
        data = to_rgb8(array, notes)
    except InputError as err:
        raise InputError(f"{path.name}: {err}") from None
    for note in notes:
        log.info("%s: %s", path.name, note)
    pixel_size = plausible_pixel_size(raw_pixel_size, path.name)
    return SmearImage(data, pixel_size, notes, [GRAYSCALE_WARNING] if is_grayscale(data) else [])
