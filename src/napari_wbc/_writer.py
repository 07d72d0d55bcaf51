"""napari writer for napari-wbc results: a cells layer and its nuclei layer, their table and review.

File > Save Selected Layers... with the napari WBC ``.tif`` format (or
``viewer.layers.save(path, selected=True, plugin="napari-wbc")``), with the cells layer
selected, its nuclei layer, or both, writes the files of a ``napari-wbc segment`` run into
the chosen folder, for ``<stem>`` = the chosen name without ``.tif`` and without a trailing
``_cells`` / ``_nuclei`` (``x_cells.tif``, ``x_nuclei.tif`` and ``x.tif`` all give ``x``):

- ``<stem>_cells.tif`` and ``<stem>_nuclei.tif``: uint32 labels with the pixel size, as
  :func:`napari_wbc.core.batch.labels_tiff_writer` writes them for the CLI;
- ``<stem>_cells.csv``: the cells layer's features, the measurement table (measured from
  the labels when the layer has none);
- ``<stem>_review.json``: the review (:func:`napari_wbc.core.verification.save_review`),
  when the table has the review columns, with the fingerprint of the cells it is of.

:mod:`._reader` opens them again as ``"<stem> cells"`` / ``"<stem> nuclei"`` with the table
and the review, and ``napari-wbc compare`` reads them. A single selected layer brings its
partner from the viewer by name (``"<image> cells"`` with ``"<image> nuclei"``: see
:func:`._widgets._layers.partner`). Whole-slide (multiscale) results are not written here:
the slide run writes them into its output folder.

Saving is all or nothing: every file is written to a temporary name first, and only when
all are written are they renamed into place. Nothing the user made is replaced: napari asks
before replacing the file it was given; the other files of the set are replaced only when
that file was one of them (``<stem>_cells.tif`` or ``<stem>_nuclei.tif``: the user chose to
replace that result) and they are napari-wbc files themselves; then a review file left from
before, that the new table has no review for, is removed with it. The layer's own review
file (the one the gallery keeps beside its image or cells TIFF, which the same review
replaces) is replaced too. Otherwise the save is
refused, before anything is written, with a :class:`SaveRefused` that says which file is in
the way and what to do.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .core.batch import OUTPUTS, exclusive_temp, labels_tiff_writer

LayerData = tuple  # (data, meta, layer_type), as napari hands them to a writer
SUFFIX = ".tif"


class SaveRefused(OSError):
    """A save that would lose data or cannot be done, with what to do. An OSError, not a
    ValueError: napari reads a ValueError from a writer as "no writer for these layers"."""


def write_result(path: str, layer_data: Sequence[LayerData]) -> list[str]:
    """npe2 writer (multi-layer form): write the cells and nuclei in ``layer_data`` (or the one
    given and its partner in the viewer) as a napari-wbc result; the paths written."""
    given = Path(os.path.abspath(path))
    cells, nuclei = _pair(list(layer_data))
    files = _files(given)
    labels, table, pixel_size = _contents(cells, nuclei)
    review = _has_review(table)
    writes: dict[Path, Callable[[Path], None]] = {
        files["nuclei"]: labels_tiff_writer(labels[1], pixel_size),
        files["table"]: lambda p: table.to_csv(p, index=False),
        files["cells"]: labels_tiff_writer(labels[0], pixel_size),
    }
    own = set()
    if review:
        writes[files["review"]] = _review_writer(table, cells[1], labels[0])
        own = {_current_review(cells[1])}  # the gallery's file of this very review
    # a review file of earlier cells, which this table has no review for, goes with them
    stale = [] if review or not os.path.lexists(files["review"]) else [files["review"]]
    _check_overwrites(given, files, list(writes) + stale, own)
    _write_all(writes)
    for old in stale:
        old.unlink(missing_ok=True)
    return [str(p) for p in files.values() if p in writes]


def result_stem(path: Path) -> str:
    """The stem of a result named ``path``: ``x_cells.tif``, ``x_nuclei.tif``, ``x cells.tif``
    and ``x.tif`` all give ``x``."""
    from ._widgets._layers import split_name

    name = path.name[: -len(SUFFIX)] if path.name.lower().endswith(SUFFIX) else path.name
    parts = split_name(name)
    return parts[0] if parts else name


def _files(given: Path) -> dict[str, Path]:
    """The files of the result that ``given`` names: cells, nuclei, table and review."""
    from .core.verification import review_path

    stem = result_stem(given)
    if not stem.strip(" ._"):
        raise SaveRefused(f"{given.name}: name the file after the image, e.g. 'BloodImage_00034_cells.tif'")
    if not given.parent.is_dir():
        raise SaveRefused(f"{given.parent} is not a folder; pick a folder that exists")
    cells_suffix, nuclei_suffix, table_suffix = OUTPUTS
    files = {
        "cells": given.with_name(stem + cells_suffix),
        "nuclei": given.with_name(stem + nuclei_suffix),
        "table": given.with_name(stem + table_suffix),
    }
    files["review"] = Path(review_path(files["cells"]))
    return files


def _pair(layer_data: list[LayerData]) -> tuple[LayerData, LayerData]:
    """(cells, nuclei) from the layers given: a ``... cells`` and ``... nuclei`` pair, or one
    of them and the other from the viewer."""
    from ._widgets._layers import split_name

    parts = [split_name(str(item[1].get("name", ""))) for item in layer_data]
    found = {p[2]: item for p, item in zip(parts, layer_data, strict=True) if p is not None}
    if None in parts or len(found) != len(layer_data) or len({p[:2] for p in parts}) != 1:
        names = ", ".join(repr(item[1].get("name")) for item in layer_data)
        raise SaveRefused(
            f"the napari WBC format saves a cells layer ('<image> cells') with its nuclei layer "
            f"('<image> nuclei'); select one or both of them (not {names})"
        )
    for kind in ("cells", "nuclei"):
        if kind not in found:
            found[kind] = _partner_in_viewer(layer_data[0], kind)
    return found["cells"], found["nuclei"]


def _partner_in_viewer(item: LayerData, kind: str) -> LayerData:
    """The ``kind`` layer that goes with the layer ``item`` in the current viewer, as layer data."""
    import napari

    from ._widgets._layers import partner, split_name

    name = item[1]["name"]
    viewer = napari.current_viewer()
    layer = viewer.layers[name] if viewer is not None and name in viewer.layers else None
    other = partner(viewer.layers, layer, kind) if layer is not None else None
    if other is None:
        base, sep, _ = split_name(name)
        raise SaveRefused(
            f"{name!r} is saved together with its {kind} layer, and there is no layer "
            f"{base + sep + kind!r} of the same size in the viewer; select both and save again"
        )
    return other.as_layer_data_tuple()


def _labels(item: LayerData) -> np.ndarray:
    data, meta, _ = item
    name = meta.get("name")
    if meta.get("multiscale"):
        raise SaveRefused(
            f"{name!r} is a whole-slide result: the slide run writes its files into the slide's output folder"
        )
    array = np.asarray(data)
    if array.ndim != 2 or array.dtype.kind not in "iu":
        raise SaveRefused(f"{name!r} is not a 2D labels layer ({array.ndim}D {array.dtype})")
    if array.size and array.min() < 0:
        raise SaveRefused(f"{name!r} holds negative labels; cell ids are positive")
    return array.astype(np.uint32)


def _contents(cells: LayerData, nuclei: LayerData):
    """((cells, nuclei) uint32 arrays, the cell table, the pixel size) to write."""
    import pandas as pd

    from ._widgets._layers import NAPARI_ONLY_COLUMNS
    from .core.measure import measure_cells

    arrays = (_labels(cells), _labels(nuclei))
    if arrays[0].shape != arrays[1].shape:
        raise SaveRefused(
            f"{cells[1]['name']!r} {arrays[0].shape} and {nuclei[1]['name']!r} {arrays[1].shape} "
            "differ in size"
        )
    meta = cells[1].get("metadata") or {}
    pixel_size = meta.get("pixel_size") or None
    table = cells[1].get("features")
    if not isinstance(table, pd.DataFrame) or "label" not in table.columns:
        table = measure_cells(*arrays, pixel_size)
    table = table.drop(columns=[c for c in NAPARI_ONLY_COLUMNS if c in table.columns])
    return arrays, table.reset_index(drop=True), pixel_size


def _has_review(table) -> bool:
    from .core.verification import REVIEW_COLUMNS

    return all(column in table.columns for column in REVIEW_COLUMNS)


def _review_writer(table, cells_meta: dict, cells: np.ndarray) -> Callable[[Path], None]:
    """A writer of the review file, with the fingerprint of the cell labels written with it
    (``cells``: :func:`napari_wbc.core.verification.labels_fingerprint`). Its meta (reviewer,
    sign-off, report...) is that of the review the layer has now: the file the gallery keeps
    beside the layer's cells TIFF or image (``metadata["files"]["cells"]`` or ``["source"]``),
    completed with what the layer knows (the image, the pixel size, the model and its weights'
    sha256, the reviewer)."""
    from .core.io import InputError
    from .core.verification import load_review, save_review
    from .models import weights_sha256

    metadata = cells_meta.get("metadata") or {}
    meta: dict[str, Any] = {}
    current = _current_review(cells_meta)
    if current is not None and os.path.isfile(current):
        try:
            meta = load_review(current)[1]
        except InputError:  # a damaged review: the table holds the review, the rest is lost
            meta = {}
    model = metadata.get("model")
    known = {
        "image": metadata.get("source"),
        "pixel_size": metadata.get("pixel_size"),
        "models": {model: weights_sha256(model)} if model else None,
        "reviewer": metadata.get("reviewer"),
    }
    meta.update({key: value for key, value in known.items() if value and not meta.get(key)})
    return lambda p: save_review(p, table, meta, cells)


def _current_review(cells_meta: dict) -> Path | None:
    """The review file the cells layer has now, where the gallery keeps it: beside the layer's
    cells TIFF (``metadata["files"]["cells"]``) or else its image (``metadata["source"]``)."""
    from .core.verification import review_path

    metadata = cells_meta.get("metadata") or {}
    where = (metadata.get("files") or {}).get("cells") or metadata.get("source")
    return Path(os.path.abspath(review_path(where))) if where else None


def _is_ours(path: Path) -> bool:
    """Whether ``path`` is a napari-wbc result file (labels, a cell table, a review)."""
    from ._reader import _is_label_image, read_table

    if not os.path.isfile(path) or os.path.islink(path):
        return False
    if path.name.endswith(SUFFIX):
        return _is_label_image(path, unreadable=False)
    if path.suffix == ".csv":
        notes: list[str] = []
        return read_table(path, notes) is not None
    from .core.verification import load_review

    try:
        load_review(path)
    except Exception:  # not a review we can read: not ours to replace
        return False
    return True


def _check_overwrites(given: Path, files: dict[str, Path], replaced: list[Path], own: set) -> None:
    """Refuse (before anything is written) when a file that would be ``replaced`` exists and
    is not the user's to replace (see the module docstring); the ``own`` files (the layer's
    own review) may be, when they are napari-wbc files."""
    existing = [p for p in files.values() if p in replaced and p != given and os.path.lexists(p)]
    existing = [p for p in existing if not (p in own and _is_ours(p))]
    if not existing:
        return
    names = ", ".join(p.name for p in existing)
    if given not in (files["cells"], files["nuclei"]) or not os.path.lexists(given):
        raise SaveRefused(
            f"{names} already in {given.parent}: saving would replace them. Save as "
            f"{files['cells'].name!r} to replace that result (napari asks first), or pick another name"
        )
    foreign = [p.name for p in existing if not _is_ours(p)]
    if foreign:
        raise SaveRefused(
            f"{', '.join(foreign)} in {given.parent} would be replaced and is not a napari-wbc file; "
            "move it away, or save under another name"
        )


def _write_all(writes: dict[Path, Callable[[Path], None]]) -> None:
    """Each ``write(tmp)`` into a temporary file beside its path, then all renamed into place:
    a failure leaves the files as they were."""
    temps: dict[Path, Path] = {}
    try:
        for path, write in writes.items():
            temps[path] = exclusive_temp(path)
            write(temps[path])
        for path, tmp in temps.items():
            os.replace(tmp, path)
    except OSError as err:
        raise SaveRefused(f"cannot write {path.name} in {path.parent} ({err.strerror or err})") from err
    finally:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
