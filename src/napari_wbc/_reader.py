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

The result of a field (what ``napari-wbc segment`` and the napari WBC writer,
:mod:`._writer`, write: ``<stem>_cells.tif`` and ``<stem>_nuclei.tif``, 2D integer TIFFs, with
``<stem>_cells.csv`` and ``<stem>_review.json`` beside them) opens from either TIFF as the two
labels layers ``"<stem> cells"`` and ``"<stem> nuclei"``, named, scaled and styled as the
Segment widget makes them, so that the other widgets pair them: the pixel size of the TIFF
in their metadata, their scale that of the image they came from (its pixel size in um when
its file records one, else pixels: a pixel size given with ``--pixel-size`` or in the widget
does not move the labels off the image). The cells layer gets the table as its features,
the saved review applied to it (:func:`napari_wbc.core.verification.open_review`: only when
it is the review of these labels; a review of another segmentation is said and left as it
is), and,
from the review or the folder's ``summary.csv``, the image and model it came from; its
``metadata["files"]`` says where the result's files are (as for a slide), which is where the
gallery finds and keeps the review. The image itself is not opened with it. A table or
review that cannot be read is said in a notification, and the cells open without it; a
damaged TIFF is refused with one message.

Other TIFF files are only claimed when they hold one 2D field; stacks, multi-page files
and other non-pyramidal 32/64-bit integer images (a lone ``*_cells.tif`` without its
``*_nuclei.tif``) are left to other readers.
"""

from __future__ import annotations

import logging
import os
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


def _is_label_image(path: Path, unreadable: bool = True) -> bool:
    """A single 2D integer image (not a pyramid); ``unreadable`` when the file cannot be read
    (True when claiming: the reader then says what is wrong)."""
    import tifffile

    from .core.io import squeezed

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return (
                len(tif.series) == 1
                and len(series.levels) == 1
                and squeezed(series)[0] == "YX"
                and np.dtype(series.dtype).kind in "iu"
            )
    except Exception:
        return unreadable


def field_result(path: str | Path) -> Path | None:
    """The ``<stem>_cells.tif`` of the field result that ``path`` (its ``_cells.tif`` or
    ``_nuclei.tif``) is part of, when the other TIFF is beside it; else None."""
    from .core.batch import OUTPUTS

    path = Path(path)
    cells, nuclei = OUTPUTS[:2]
    for own, other in ((cells, nuclei), (nuclei, cells)):
        if path.name.endswith(own) and len(path.name) > len(own):
            stem = path.name[: -len(own)]
            # os.path.isfile: False, not an error, for a name too long
            if os.path.isfile(path.with_name(stem + other)) and _is_label_image(path):
                return path.with_name(stem + cells)
    return None


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
    if _is_slide(path) or field_result(path):
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
    kwargs = {
        "name": slide_name(path),
        "multiscale": len(levels) > 1,
        "metadata": {"pixel_size": pixel_size, "source": str(path), "notes": []},
    }
    _scale(kwargs, pixel_size)
    table_path = path.with_name(f"{kwargs['name']}.csv")
    if kwargs["name"].endswith("_cells"):
        _give_table(kwargs, read_table(table_path, kwargs["metadata"]["notes"]))
    return (levels if len(levels) > 1 else levels[0]), kwargs, "labels"


def _scale(kwargs: dict, pixel_size: float | None) -> None:
    """The layer's scale in um, when the pixel size is known (napari's scale bar then reads um)."""
    if pixel_size:
        kwargs["scale"] = (pixel_size, pixel_size)
        kwargs["units"] = ("um", "um")


def read_table(path: Path, notes: list[str]):
    """The cell table in ``path`` (a DataFrame with ``label``), or None: missing, or unreadable
    (said in ``notes``, so that the labels still open)."""
    import pandas as pd

    if not os.path.isfile(path):
        return None
    try:
        table = pd.read_csv(path)
    except Exception as err:  # damaged, not a table
        notes.append(f"{path.name} cannot be read ({err}); the cells open without their measurements")
        return None
    if "label" not in table.columns:
        notes.append(f"{path.name} has no 'label' column; the cells open without their measurements")
        return None
    return table


def _give_table(kwargs: dict, table) -> None:
    """``table`` as the layer's features (napari maps label -> row by ``index``), with its counts."""
    from .core.measure import count_summary

    if table is None:
        return
    kwargs["features"] = table.assign(index=table["label"])
    if "touches_border" in table.columns:
        kwargs["metadata"]["counts"] = count_summary(table)


def _origin(folder: Path, stem: str) -> dict:
    """The image file and model of the output ``stem``, from the folder's ``summary.csv``
    (``napari-wbc segment`` writes one); empty when unknown."""
    from .core.batch import SUMMARY, _read_summary

    try:
        summary = _read_summary(folder / SUMMARY)
    except (InputError, OSError):
        return {}
    if summary is None:
        return {}
    rows = summary[summary["output"].astype(str) == stem]
    if rows.empty:
        return {}
    row = rows.iloc[-1]
    found = {"source": row.get("file"), "model": row.get("model")}
    return {key: str(value) for key, value in found.items() if isinstance(value, str) and value}


def _result_labels(path: Path, opened: Path) -> tuple[np.ndarray, float | None]:
    """A field result's label TIFF as uint32, with its pixel size; an InputError that names
    the file opened (and this one, when it is the other TIFF of the pair)."""
    import tifffile

    from .core.slide import slide_pixel_size

    where = path.name if path == opened else f"{opened.name}: its partner {path.name}"
    try:
        with tifffile.TiffFile(path) as tif:
            data = tif.series[0].asarray()
            pixel_size = slide_pixel_size(tif, path)
    except Exception as err:  # truncated, damaged, not a TIFF
        raise InputError(
            f"{where}: cannot read these labels ({err}); the file may be damaged or incomplete: "
            "write it again"
        ) from err
    data = np.squeeze(data)
    if data.ndim != 2 or data.dtype.kind not in "iu":
        raise InputError(f"{where}: not a 2D label image ({data.dtype} {data.shape})")
    if data.size and data.min() < 0:
        raise InputError(f"{where}: holds negative labels, which no cell id is")
    return data.astype(np.uint32, copy=False), pixel_size


def image_pixel_size(source: str | Path | None) -> float | None:
    """The pixel size the image file ``source`` opens with (:func:`smear_layer_data`: only a
    TIFF's tags give one, checked by :func:`~.core.io.plausible_pixel_size`), from its header;
    None when it records none, or is unknown or gone."""
    from .core.io import _tiff_pixel_size, plausible_pixel_size

    if not source or Path(source).suffix.lower() not in (".tif", ".tiff") or not os.path.isfile(source):
        return None
    try:
        return plausible_pixel_size(_tiff_pixel_size(Path(source)), Path(source).name)
    except Exception:  # unreadable: the image will not open either
        return None


def result_layer_data(cells_path: str | Path, opened: str | Path | None = None) -> list[LayerData]:
    """The field result ``<stem>_cells.tif`` (with ``<stem>_nuclei.tif``) as the layers
    ``"<stem> nuclei"`` and ``"<stem> cells"``, as the Segment widget makes them: the cells
    with their table, review and counts. ``opened``: the TIFF the user opened (default the
    cells), which messages name. Raises InputError for damaged or mismatched TIFFs."""
    from .core.batch import OUTPUTS
    from .core.verification import review_path

    cells_path = Path(cells_path)
    opened = cells_path if opened is None else Path(opened)
    stem = cells_path.name[: -len(OUTPUTS[0])]
    nuclei_path = cells_path.with_name(stem + OUTPUTS[1])
    cells, pixel_size = _result_labels(cells_path, opened)
    nuclei, _ = _result_labels(nuclei_path, opened)
    if cells.shape != nuclei.shape:
        raise InputError(
            f"{opened.name}: {cells_path.name} {cells.shape} and {nuclei_path.name} {nuclei.shape} "
            "differ in size: they are not one result"
        )
    files = {"cells": cells_path, "nuclei": nuclei_path, "table": cells_path.with_name(stem + OUTPUTS[2])}
    files["review"] = review_path(cells_path)
    notes: list[str] = []
    table = read_table(files["table"], notes)
    if table is None and not notes:
        notes.append(f"no {files['table'].name} beside it; the cells open without their measurements")
    origin = _origin(cells_path.parent, stem)
    review = _review(files["review"], table, cells, notes)
    if review is not None:
        table, meta = review
        models = [name for name in meta.get("models") or {} if name]
        origin = {
            "source": meta.get("image") or origin.get("source"),
            "model": origin.get("model") or (models[0] if models else None),
            "reviewer": meta.get("reviewer"),
        }
    # the metadata keys of the Segment widget's layers, and where the files are (as for a slide)
    common = {"source_layer": stem, "model": origin.get("model"), "pixel_size": pixel_size}
    where = {"output": str(cells_path.parent), "files": {kind: str(path) for kind, path in files.items()}}
    cells_kwargs = {
        "name": f"{stem} cells",
        "metadata": {
            **common,
            "source": origin.get("source"),
            **where,
            "notes": notes,
            **({"reviewer": origin["reviewer"]} if origin.get("reviewer") else {}),
        },
    }
    nuclei_kwargs = {"name": f"{stem} nuclei", "metadata": {**common, **where}}
    # aligned with the image, as the Segment widget aligns them: in um when its file records
    # the pixel size, else in pixels (the run's pixel size, given by the user, is in the metadata)
    for kwargs in (cells_kwargs, nuclei_kwargs):
        _scale(kwargs, image_pixel_size(origin.get("source")))
    _give_table(cells_kwargs, table)
    return [(nuclei, nuclei_kwargs, "labels"), (cells, cells_kwargs, "labels")]


def layer_data(path: str | Path) -> LayerData:
    """Layer data for a field or a slide, whichever ``path`` is; raises InputError."""
    path = Path(path)
    check_regular(path)  # a missing file, a pipe or a device: an InputError before anything opens it
    if _is_slide(path):
        return slide_layer_data(path)
    return smear_layer_data(path)


def _review(path: Path, table, cells: np.ndarray, notes: list[str]):
    """``(table with the review in ``path`` applied, the review's meta)``, or None when there
    is no review file; a review that cannot be read, or is of other labels than ``cells``, is
    said in ``notes`` (and the file left as it is)."""
    from .core.verification import ReviewMismatch, open_review

    if not os.path.isfile(path):
        return None
    if table is None:
        notes.append(f"{path.name} is not applied: the cells have no table to apply it to")
        return None
    try:
        table, meta = open_review(path, table, cells)
        return table, dict(meta or {})
    except ReviewMismatch as err:
        notes.append(str(err))
        return None
    except (InputError, ValueError, KeyError, OSError) as err:
        notes.append(f"{path.name} cannot be read ({err}); the cells open without their review")
        return None


def layers_data(path: str | Path) -> list[LayerData]:
    """The layers that opening ``path`` gives: a field, a slide, or a field result's cells and
    nuclei (:func:`result_layer_data`); raises InputError."""
    path = Path(path)
    check_regular(path)
    if not _is_slide(path):
        cells = field_result(path)
        if cells is not None:
            return result_layer_data(cells, path)
    return [layer_data(path)]


def _style_when_added(found: list[LayerData]) -> None:
    """Outline a field result's cells and nuclei as the Segment widget does
    (``CELLS_STYLE``, ``NUCLEI_STYLE``) when napari adds them to the current viewer: napari takes
    no contour width from a reader. Without napari and Qt (scripts, the I/O tests) nothing."""
    try:
        import napari

        from ._widgets._layers import CELLS_STYLE, NUCLEI_STYLE

        viewer = napari.current_viewer()
    except Exception:  # napari or Qt not there: the layers keep napari's own look
        return
    if viewer is None:
        return
    styles = {
        id(data): (data, CELLS_STYLE if kwargs["name"].endswith(" cells") else NUCLEI_STYLE)
        for data, kwargs, _ in found
    }

    def on_inserted(event) -> None:
        data, style = styles.pop(id(event.value.data), (None, {}))
        if data is event.value.data:
            for key, value in style.items():
                setattr(event.value, key, value)
        if not styles:
            viewer.layers.events.inserted.disconnect(on_inserted)

    viewer.layers.events.inserted.connect(on_inserted)


def _notify(severity: str, message: str) -> None:
    """A napari notification; napari is imported only then, so files read without it (tests, scripts)."""
    from napari.utils import notifications

    {"error": notifications.show_error, "info": notifications.show_info}[severity](message)


def read_smears(path: str | Sequence[str]) -> list[LayerData]:
    """Read each file into an RGB image layer (lazy and multiscale for a slide); report problems."""
    paths = [path] if isinstance(path, str | Path) else list(path)
    layers, results = [], set()
    for p in paths:
        cells = field_result(p) if os.path.isfile(p) else None  # never opens a pipe
        if cells is not None and cells in results:  # its cells and nuclei TIFFs both chosen: open once
            continue
        try:
            found = layers_data(p)
        except InputError as err:
            log.info("%s", err)
            _notify("error", str(err))
            continue
        if cells is not None:
            results.add(cells)
            _style_when_added(found)
        for data, kwargs, kind in found:
            notes = kwargs["metadata"].get("notes")
            if notes:
                _notify("info", f"{Path(p).name}: " + "; ".join(notes))
            layers.append((data, kwargs, kind))
    # [(None,)] tells napari the file was handled (the error was shown) but adds no layer
    return layers or [(None,)]
