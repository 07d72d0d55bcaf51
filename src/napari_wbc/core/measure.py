"""Per-cell measurements and counts, as a pandas DataFrame (one row per cell).

Columns: ``label`` (the cell id), centroid, areas of cell, nucleus and cytoplasm (cell
minus nucleus), ``ncr`` = nucleus area / cytoplasm area (MIF-Net Eq. 10),
``nucleus_cell_ratio`` = nucleus area / cell area, perimeter, circularity
(4 pi area / perimeter^2, 1 for a disc; Crofton perimeter), the number of nucleus lobes (lobes
joined by thin chromatin bridges apart, a band one: :mod:`.lobes`), and whether the
cell touches the image border. With a pixel size, areas in um^2 and lengths in um too.
With the types a typing model gave, ``cell_type`` and ``type_confidence``; the count
summary then holds a differential count per type.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from .dataset import NOT_WBC, UNIDENTIFIED
from .lobes import count_lobes

COLUMNS = [
    "label",
    "centroid_y",
    "centroid_x",
    "cell_area_px",
    "nucleus_area_px",
    "cytoplasm_area_px",
    "ncr",
    "nucleus_cell_ratio",
    "perimeter_px",
    "circularity",
    "nucleus_lobes",
    "touches_border",
]


def measure_cells(
    cells: np.ndarray,
    nuclei: np.ndarray,
    pixel_size: float | None = None,
    offset: tuple[float, float] = (0.0, 0.0),
    types: dict[int, tuple[str, float]] | None = None,
    type_probs: dict[int, dict[str, float]] | None = None,
) -> pd.DataFrame:
    """One row per cell id in ``cells``; ``nuclei`` carries each nucleus's cell id.

    ``offset`` (y, x) shifts centroids, e.g. into slide coordinates. ``types`` maps a cell
    id to (type, confidence); cells it lacks get no type. ``type_probs`` maps a cell id to
    the classifier's probability per class, as columns ``p_<class>``.
    """
    from skimage.measure import regionprops

    cells = np.asarray(cells)
    nuclei = np.asarray(nuclei)
    if cells.shape != nuclei.shape:
        raise ValueError(f"cells {cells.shape} and nuclei {nuclei.shape} differ in shape")
    h, w = cells.shape
    nucleus_area = np.bincount(
        nuclei[(nuclei > 0) & (nuclei == cells)].ravel(), minlength=int(cells.max()) + 1
    )
    rows = []
    for r in regionprops(cells.astype(np.int64)):
        minr, minc, maxr, maxc = r.bbox
        area = int(r.area)
        n_area = int(nucleus_area[r.label])
        cyto = area - n_area
        perimeter = float(r.perimeter_crofton)
        own_nucleus = nuclei[minr:maxr, minc:maxc] == r.label
        rows.append(
            {
                "label": int(r.label),
                "centroid_y": float(r.centroid[0]) + offset[0],
                "centroid_x": float(r.centroid[1]) + offset[1],
                "cell_area_px": area,
                "nucleus_area_px": n_area,
                "cytoplasm_area_px": cyto,
                "ncr": n_area / cyto if cyto > 0 else float("nan"),
                "nucleus_cell_ratio": n_area / area,
                "perimeter_px": perimeter,
                "circularity": 4 * np.pi * area / perimeter**2 if perimeter > 0 else float("nan"),
                "nucleus_lobes": count_lobes(own_nucleus),
                "touches_border": bool(minr == 0 or minc == 0 or maxr == h or maxc == w),
            }
        )
    table = pd.DataFrame(rows, columns=COLUMNS)
    table["touches_border"] = table["touches_border"].astype(bool)
    if pixel_size:
        a = float(pixel_size) ** 2
        for name in ("cell", "nucleus", "cytoplasm"):
            table[f"{name}_area_um2"] = table[f"{name}_area_px"] * a
        table["perimeter_um"] = table["perimeter_px"] * float(pixel_size)
    if types is not None:
        table["cell_type"] = pd.Series(
            [types.get(i, (None, np.nan))[0] for i in table["label"]], index=table.index, dtype=object
        )
        table["type_confidence"] = [types.get(i, (None, np.nan))[1] for i in table["label"]]
    if type_probs:
        names = list(next(iter(type_probs.values())))
        for name in names:
            table[f"p_{name}"] = [type_probs.get(i, {}).get(name, np.nan) for i in table["label"]]
    return table


def count_summary(table: pd.DataFrame) -> dict[str, int | float]:
    """White-cell counts: the white cells (objects typed ``not_wbc`` left out, as
    ``excluded``), those wholly inside the image, their mean NCR, and, when cells are typed, the
    differential: ``n_<type>`` and ``pct_<type>`` for the five types and ``unidentified``."""
    from .celltypes import differential

    counted = table["cell_type"] != NOT_WBC if "cell_type" in table else pd.Series(True, index=table.index)
    summary: dict[str, int | float] = {
        "white_cells": int(counted.sum()),
        "complete_cells": int((counted & ~table["touches_border"].astype(bool)).sum()) if len(table) else 0,
    }
    if "ncr" in table:
        summary["mean_ncr"] = float(table.loc[counted, "ncr"].mean()) if counted.any() else float("nan")
    if "cell_type" in table and table["cell_type"].notna().any():  # the differential count
        summary["excluded"] = int((~counted).sum())
        for kind, row in differential(table).iterrows():
            summary[f"n_{kind}"] = int(row["count"])
            summary[f"pct_{kind}"] = float(row["percent"])
    return summary


def describe_counts(counts: dict) -> str:
    """'12 white cells (11 complete)', with the differential count when cells are typed, each
    share with its 95% confidence interval (:func:`.celltypes.share_interval`): '...: 7
    neutrophil (58%, 95% CI 28-85%), 3 lymphocyte (25%, 5-57%), 2 monocyte (17%, 2-48%);
    1 not a white cell (excluded)'."""
    from .celltypes import share_interval

    text = f"{counts['white_cells']} white cells ({counts['complete_cells']} complete)"
    typed = {k.removeprefix("n_"): n for k, n in counts.items() if k.startswith("n_")}
    kinds = sorted(
        ((n, kind) for kind, n in typed.items() if n), key=lambda item: (item[1] == UNIDENTIFIED, -item[0])
    )
    shares = []
    for n, kind in kinds:
        low, high = share_interval(n, sum(typed.values()))
        ci = f"{'95% CI ' if not shares else ''}{low:.0f}-{high:.0f}%"
        shares.append(f"{n} {kind} ({counts.get('pct_' + kind, float('nan')):.0f}%, {ci})")
    if shares:
        text += ": " + ", ".join(shares)
    if counts.get("excluded"):
        text += f"; {counts['excluded']} not a white cell (excluded)"
    return text
