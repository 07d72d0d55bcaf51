"""Cell-level corrections on (cells, nuclei) instance maps, for a reviewer's editor.

Contract: every edit takes ``cells`` and ``nuclei`` (2D integer maps, nucleus id = owning
cell id) and returns an :class:`Edited` ``(cells, nuclei, ids)``: new uint32 arrays, the
inputs untouched, unless ``inplace=True`` (then the inputs, which must be uint32, are
changed and returned; for large slides). ``ids`` are the cell ids the edit produced or
changed, for the caller to re-measure and select. Given maps that satisfy
:func:`check_invariants`, every edit returns maps that do too: each cell id is one
8-connected object and every nucleus pixel lies in the cell of the same id.

Splitting, for a widget to drive: :func:`split_cell` takes two or more clicked seed
points and floods the cell from them (marker watershed on its distance transform: the
cut falls on the waist between touching cells; where there is no waist, as in a round
blob, each point takes the part nearest to it; the first seed's piece keeps the id), and
refuses a split that leaves a piece too small for a white cell (under
``MIN_SPLIT_FRACTION`` of it: a click near the edge of a cell);
:func:`cut_cell` takes a drawn polyline that crosses the cell (the largest piece keeps
the id). New pieces get the next free ids. :func:`merge_cells` joins the pieces of one
cell: it refuses cells that do not touch (and says how far apart they are) and cells that
merely touch (a short shared border, ``MIN_CONTACT``), which are two cells. A refused edit
raises ValueError with what to do and changes nothing.

Per-cell type and review live in the measurement table (``cell_type``, ``reviewed``, and
the review columns of :mod:`.verification`, which sets them); :func:`remeasure` recomputes
the table after an edit and keeps, for the cells whose ids remain, what measuring does not
give (:func:`carried_columns`): the type and review, and the classifier's confidence and
probabilities.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
from scipy import ndimage

EIGHT = np.ones((3, 3), bool)
USER_COLUMNS = {"cell_type": None, "reviewed": False}  # column -> value for a new cell
# a clicked split leaving a piece below this fraction of the cell is refused: touching white
# cells are of a size (a small lymphocyte beside a monocyte is about 1:4), while a click near the
# edge of one round cell would cut off a sliver; a drawn line (cut_cell) cuts anything off
MIN_SPLIT_FRACTION = 0.2
WAIST = 0.8  # a split follows a waist at most this deep (relative to the pieces' middles)
# merged pieces must share a border this long, relative to the narrower one's width: halves of one
# cell share about their width (0.7 to 1.4 of it); two round cells that touch, a few pixels
MIN_CONTACT = 0.25


class Edited(NamedTuple):
    cells: np.ndarray
    nuclei: np.ndarray
    ids: list[int]


def _start(cells, nuclei, inplace: bool) -> tuple[np.ndarray, np.ndarray]:
    if inplace and not all(isinstance(a, np.ndarray) and a.dtype == np.uint32 for a in (cells, nuclei)):
        raise TypeError("in-place edits need uint32 numpy arrays")
    if np.shape(cells) != np.shape(nuclei) or np.ndim(cells) != 2:
        raise ValueError(f"cells {np.shape(cells)} and nuclei {np.shape(nuclei)} must be 2D, of one shape")
    if inplace:
        return cells, nuclei
    return np.asarray(cells).astype(np.uint32), np.asarray(nuclei).astype(np.uint32)


def _need(cells: np.ndarray, cell_id: int) -> np.ndarray:
    mask = cells == cell_id
    if cell_id <= 0 or not mask.any():
        raise ValueError(f"there is no cell {cell_id}")
    return mask


def next_free_id(cells: np.ndarray, nuclei: np.ndarray | None = None) -> int:
    """One more than the largest id in use."""
    top = int(np.max(cells, initial=0))
    if nuclei is not None:
        top = max(top, int(np.max(nuclei, initial=0)))
    return top + 1


def delete_cell(cells, nuclei, cell_id: int, *, inplace=False) -> Edited:
    """Remove a cell and its nucleus."""
    cells, nuclei = _start(cells, nuclei, inplace)
    mask = _need(cells, cell_id)
    cells[mask] = 0
    nuclei[nuclei == cell_id] = 0
    return Edited(cells, nuclei, [int(cell_id)])


def merge_cells(cells, nuclei, cell_ids, *, inplace=False, min_contact: float = MIN_CONTACT) -> Edited:
    """Merge the pieces of one cell into the smallest of their ids (nuclei follow).

    Refused (ValueError, nothing changed) unless the pieces hold together by borders they
    share: each joined to the others by a border at least ``min_contact`` times as long as
    the narrower piece is wide (its equivalent diameter). Cells that do not touch, and
    separate cells that merely touch, are not one cell.
    """
    ids = sorted({int(i) for i in cell_ids})
    if len(ids) < 2:
        raise ValueError("pick at least two different cells to merge")
    cells, nuclei = _start(cells, nuclei, inplace)
    for i in ids:
        _need(cells, i)
    union = np.isin(cells, ids)
    parts, n = ndimage.label(union, structure=EIGHT)
    listed = ", ".join(map(str, ids))
    if n != 1:
        raise ValueError(
            f"cells {listed} do not touch (a gap of {_gap(parts)} px): not merged; "
            "draw the missing part first (New cell, or the brush), then merge"
        )
    groups, longest = _held_together(cells, ids, min_contact)
    if len(groups) > 1:
        names = ["+".join(map(str, g)) for g in groups]  # 2+3: pieces that do hold together
        apart = f"{', '.join(names[:-1])} and {names[-1]}"
        raise ValueError(
            f"cells {apart} barely touch ({longest} px of border in common; pieces of one cell "
            "share a border about as long as they are wide): not merged, they look like separate "
            "cells. If they are one, paint the missing part with the brush first, then merge"
        )
    cells[union] = ids[0]
    nuclei[np.isin(nuclei, ids)] = ids[0]
    return Edited(cells, nuclei, ids[:1])


def _held_together(cells: np.ndarray, ids: list[int], min_contact: float) -> tuple[list[list[int]], int]:
    """``ids`` in groups held together by long shared borders (one group: they all are), and
    the longest border (4-adjacent pixel pairs) between two groups."""
    sl = ndimage.find_objects(np.isin(cells, ids).astype(np.uint8))[0]
    box = cells[sl]
    pairs = []
    for a, b in ((box[:-1], box[1:]), (box[:, :-1], box[:, 1:])):
        across = (a != b) & np.isin(a, ids) & np.isin(b, ids)
        pairs.append(np.stack([np.minimum(a[across], b[across]), np.maximum(a[across], b[across])]))
    found, border = np.unique(np.concatenate(pairs, axis=1), axis=1, return_counts=True)
    width = {i: 2 * np.sqrt(np.count_nonzero(box == i) / np.pi) for i in ids}
    group = {i: {i} for i in ids}
    borders = list(zip(found.T.tolist(), border.tolist(), strict=True))
    for (a, b), length in borders:
        if length >= min_contact * min(width[a], width[b]) and group[a] is not group[b]:
            joined = group[a] | group[b]
            for i in joined:
                group[i] = joined
    groups = sorted({tuple(sorted(g)) for g in group.values()})
    longest = max([n for (a, b), n in borders if group[a] is not group[b]], default=0)
    return [list(g) for g in groups], int(longest)


def _gap(parts: np.ndarray) -> int:
    """Background pixels between object 1 of ``parts`` and the nearest other object (rounded)."""
    sl = ndimage.find_objects((parts > 0).astype(np.uint8))[0]  # the objects' box holds the gap
    parts = parts[sl]
    distance = ndimage.distance_transform_edt(parts != 1)
    return max(1, int(round(float(distance[parts > 1].min()))) - 1)


def _assign_pieces(cells, nuclei, cell_id, sl, pieces, keep: int) -> list[int]:
    """Relabel one cell from ``pieces`` (1..k, 0 outside) over its box ``sl``; ``keep`` keeps the id."""
    new_id = next_free_id(cells, nuclei)
    cells, nuclei = cells[sl], nuclei[sl]  # views: written through
    mask = cells == cell_id
    ids = [int(cell_id)]
    lut = np.zeros(int(pieces.max()) + 1, np.uint32)
    for k in range(1, len(lut)):
        if k == keep:
            lut[k] = cell_id
        else:
            lut[k] = new_id
            ids.append(new_id)
            new_id += 1
    cells[mask] = lut[pieces[mask]]
    own = mask & (nuclei == cell_id)
    nuclei[own] = cells[own]
    return ids


def _cut_at_waist(pieces: np.ndarray, depth: np.ndarray, mask: np.ndarray) -> bool:
    """Whether the cuts between ``pieces`` run through a waist: the cell is clearly narrower
    there (``depth``: distance to the background) than in the middle of every piece."""
    outside = np.iinfo(np.int32).max
    low = ndimage.minimum_filter(np.where(mask, pieces, outside), size=3)
    high = ndimage.maximum_filter(pieces, size=3)
    cut = mask & (low != high)
    if not cut.any():
        return False
    middle = ndimage.maximum(depth, pieces, index=np.arange(1, int(pieces.max()) + 1))
    return float(depth[cut].max()) < WAIST * float(np.min(middle))


def split_cell(
    cells, nuclei, cell_id: int, seeds, *, inplace=False, min_fraction: float = MIN_SPLIT_FRACTION
) -> Edited:
    """Split a cell into one piece per seed point (y, x); the first seed's piece keeps the id.

    The cut follows the waist between the points, or where there is none, lies halfway
    between them. Refused (ValueError, nothing changed) when a piece would still be smaller
    than ``min_fraction`` of the cell: too small for a white cell, the mark of a mis-placed click.
    """
    from skimage.segmentation import watershed

    cells, nuclei = _start(cells, nuclei, inplace)
    mask = _need(cells, cell_id)
    points = list(dict.fromkeys(tuple(int(round(v)) for v in s) for s in seeds))  # in click order
    if len(points) < 2:
        raise ValueError("click at least two different points inside the cell to split it")
    h, w = mask.shape
    for y, x in points:
        if not (0 <= y < h and 0 <= x < w and mask[y, x]):
            raise ValueError(f"the point ({y}, {x}) is not inside cell {cell_id}")
    sl = ndimage.find_objects(mask.astype(np.uint8))[0]
    local = mask[sl]
    markers = np.zeros(local.shape, np.int32)
    for k, (y, x) in enumerate(points, start=1):
        markers[y - sl[0].start, x - sl[1].start] = k
    # 8-connected flooding reaches every pixel of an 8-connected cell, and each piece stays one object
    depth = ndimage.distance_transform_edt(local)
    pieces = watershed(-depth, markers, mask=local, connectivity=2)
    if not _cut_at_waist(pieces, depth, local):
        # no waist (a round or flat blob): flooding from the deepest point would leave a sliver
        # at the other; each point takes the part of the cell nearest to it instead
        pieces = watershed(ndimage.distance_transform_edt(markers == 0), markers, mask=local, connectivity=2)
    sizes = np.bincount(pieces[local], minlength=len(points) + 1)[1:]
    total = int(local.sum())
    if sizes.min() < min_fraction * total:
        k = int(sizes.argmin())
        raise ValueError(
            f"not split: the piece at point {k + 1} would be {sizes[k]} px, {100 * sizes[k] / total:.0f}% "
            f"of cell {cell_id}, too small for a white cell. Put each point at the centre of one "
            "cell; to cut off a small part, draw a line across it"
        )
    return Edited(cells, nuclei, _assign_pieces(cells, nuclei, cell_id, sl, pieces, keep=1))


def cut_cell(cells, nuclei, cell_id: int, line, *, inplace=False, min_piece: int = 10) -> Edited:
    """Cut a cell along a polyline [(y, x), ...] drawn across it; the largest piece keeps the id.

    Pieces under ``min_piece`` px (or 1% of the cell) and the line's own pixels join the
    piece that reaches them first through the cell, so no area is lost.
    """
    from skimage.draw import line as draw_line
    from skimage.segmentation import watershed

    cells, nuclei = _start(cells, nuclei, inplace)
    mask = _need(cells, cell_id)
    pts = [tuple(int(round(v)) for v in p) for p in line]
    if len(pts) < 2:
        raise ValueError("draw a line with at least two points across the cell")
    sl = ndimage.find_objects(mask.astype(np.uint8))[0]
    mask = mask[sl]
    cut = np.zeros(mask.shape, bool)
    for (y0, x0), (y1, x1) in zip(pts[:-1], pts[1:], strict=True):
        rr, cc = draw_line(y0 - sl[0].start, x0 - sl[1].start, y1 - sl[0].start, x1 - sl[1].start)
        inside = (rr >= 0) & (rr < mask.shape[0]) & (cc >= 0) & (cc < mask.shape[1])
        cut[rr[inside], cc[inside]] = True
    # 2x2 thickening makes the line 4-connected, so that 8-connected pieces cannot leak across it
    cut = ndimage.binary_dilation(cut, structure=np.ones((2, 2), bool)) & mask
    pieces, n = ndimage.label(mask & ~cut, structure=EIGHT)
    sizes = np.bincount(pieces.ravel(), minlength=n + 1)
    big = np.flatnonzero(sizes >= max(min_piece, 0.01 * mask.sum()))
    big = big[big > 0]
    if len(big) < 2:
        raise ValueError(f"the line does not cut cell {cell_id} in two; draw it from edge to edge")
    lut = np.zeros(n + 1, np.int32)
    lut[big] = np.arange(1, len(big) + 1)
    # flooding from the pieces through the cell keeps each piece one 8-connected object
    pieces = watershed(np.zeros(mask.shape), lut[pieces], mask=mask, connectivity=2)
    keep = int(np.argmax(np.bincount(pieces[mask])[1:])) + 1
    return Edited(cells, nuclei, _assign_pieces(cells, nuclei, cell_id, sl, pieces, keep=keep))


def new_cell(cells, nuclei, mask, nucleus=None, *, inplace=False) -> Edited:
    """Add a cell drawn as ``mask`` with the next free id, on background only.

    Pixels of other cells stay theirs; if that leaves the drawing in pieces, the largest
    is kept. ``nucleus`` (optional) is clipped to the new cell.
    """
    cells, nuclei = _start(cells, nuclei, inplace)
    free = np.asarray(mask, bool) & (cells == 0)
    pieces, n = ndimage.label(free, structure=EIGHT)
    if n == 0:
        raise ValueError("the new cell has no pixels on background; draw it where no cell is")
    largest = pieces == int(np.argmax(np.bincount(pieces.ravel())[1:])) + 1
    if nucleus is not None and not (np.asarray(nucleus, bool) & largest).any():
        raise ValueError("the nucleus lies outside the new cell; draw it inside the cell")
    new_id = next_free_id(cells, nuclei)
    cells[largest] = new_id
    if nucleus is not None:
        nuclei[np.asarray(nucleus, bool) & largest] = new_id
    return Edited(cells, nuclei, [new_id])


def set_nucleus(cells, nuclei, cell_id: int, mask, mode: str = "replace", *, inplace=False) -> Edited:
    """Replace, add to or remove from a cell's nucleus; what is drawn outside the cell is dropped."""
    if mode not in ("replace", "add", "remove"):
        raise ValueError(f"mode must be replace, add or remove, not {mode!r}")
    cells, nuclei = _start(cells, nuclei, inplace)
    cell = _need(cells, cell_id)
    drawn = np.asarray(mask, bool) & cell
    if mode == "remove":
        nuclei[drawn & (nuclei == cell_id)] = 0
        return Edited(cells, nuclei, [int(cell_id)])
    if not drawn.any():
        raise ValueError(f"the nucleus lies outside cell {cell_id}; draw it inside the cell")
    if mode == "replace":
        nuclei[nuclei == cell_id] = 0
    nuclei[drawn] = cell_id
    return Edited(cells, nuclei, [int(cell_id)])


def clip_nuclei(cells, nuclei) -> np.ndarray:
    """Nuclei made consistent with the cells: nucleus pixels outside cells dropped, ids = cell ids."""
    cells, nuclei = np.asarray(cells), np.asarray(nuclei)
    return np.where((nuclei > 0) & (cells > 0), cells, 0).astype(np.uint32)


def check_invariants(cells, nuclei, connected: bool = True) -> list[str]:
    """What is wrong with a pair of instance maps, one message per problem (empty: valid)."""
    from skimage.measure import label

    cells, nuclei = np.asarray(cells), np.asarray(nuclei)
    if cells.shape != nuclei.shape or cells.ndim != 2:
        return [f"cells {cells.shape} and nuclei {nuclei.shape} must be 2D maps of one shape"]
    problems = []
    for name, a in (("cells", cells), ("nuclei", nuclei)):
        if not np.issubdtype(a.dtype, np.integer) or (a.size and a.min() < 0):
            problems.append(f"{name} must hold non-negative integer ids")
    outside = (nuclei > 0) & (cells == 0)
    if outside.any():
        problems.append(
            f"{int(outside.sum())} nucleus pixels lie outside every cell "
            f"(nuclei {sorted(set(np.unique(nuclei[outside]).tolist()))})"
        )
    wrong = (nuclei > 0) & (cells > 0) & (nuclei != cells)
    if wrong.any():
        problems.append(
            f"{int(wrong.sum())} nucleus pixels carry another cell's id "
            f"(cells {sorted(set(np.unique(cells[wrong]).tolist()))})"
        )
    if connected and cells.any():
        objects = label(cells, background=0, connectivity=2)
        owner = np.zeros(int(objects.max()) + 1, np.int64)
        owner[objects.ravel()] = cells.ravel()
        ids, n = np.unique(owner[1:], return_counts=True)
        if (n > 1).any():
            problems.append(f"cells {ids[n > 1].tolist()} are each split into separate objects")
    return problems


def edited_cells(before_cells, before_nuclei, cells, nuclei) -> list[int]:
    """Ids (before or after) of the cells whose cell or nucleus pixels changed."""
    changed = (np.asarray(before_cells) != cells) | (np.asarray(before_nuclei) != nuclei)
    ids = np.union1d(np.asarray(before_cells)[changed], np.asarray(cells)[changed])
    return [int(i) for i in ids if i > 0]


def _rows(features: pd.DataFrame, cell_ids) -> pd.Series:
    ids = [int(cell_ids)] if np.isscalar(cell_ids) else [int(i) for i in cell_ids]
    missing = set(ids) - set(features["label"].astype(int))
    if missing:
        raise ValueError(f"no cell {sorted(missing)} in the table")
    return features["label"].isin(ids)


def carried_columns(features: pd.DataFrame | None) -> dict:
    """The columns an edit keeps for the cells whose ids remain, each with a new cell's value:
    :data:`USER_COLUMNS` always; where ``features`` has them, the review
    (:data:`.verification.REVIEW_COLUMNS`: a new cell is "suggested", with no suggested type,
    as :func:`.verification.apply_review` makes a cell its review does not know) and the
    classifier's ``type_confidence`` and ``p_<type>`` (NaN: not classified)."""
    from .verification import REVIEW_COLUMNS, STATUSES

    columns = dict(USER_COLUMNS)
    if features is None:
        return columns
    review = {column: "" for column in REVIEW_COLUMNS} | {"review_status": STATUSES[0]}
    columns.update({column: value for column, value in review.items() if column in features})
    columns.update({c: np.nan for c in features.columns if c == "type_confidence" or str(c).startswith("p_")})
    return columns


def remeasure(features: pd.DataFrame | None, cells, nuclei, pixel_size: float | None = None) -> pd.DataFrame:
    """Fresh measurements of the edited maps, keeping each surviving cell's type, review and
    classifier output (:func:`carried_columns`)."""
    from .measure import measure_cells

    table = measure_cells(cells, nuclei, pixel_size)
    for column, default in carried_columns(features).items():
        old = (
            {}
            if features is None or column not in features
            else dict(zip(features["label"], features[column], strict=True))
        )
        dtype = bool if isinstance(default, bool) else float if isinstance(default, float) else object
        table[column] = pd.Series(
            [old.get(label, default) for label in table["label"]], index=table.index, dtype=dtype
        )
    return table
