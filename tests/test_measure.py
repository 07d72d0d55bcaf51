import numpy as np
import pandas as pd
import pytest

from napari_wbc.core.measure import count_summary, describe_counts, measure_cells


def _two_cells():
    cells = np.zeros((60, 60), np.uint32)
    nuclei = np.zeros_like(cells)
    cells[2:12, 2:12] = 1  # 100 px, inside the image
    nuclei[4:8, 4:8] = 1  # 16 px, one lobe
    cells[30:60, 0:20] = 2  # 600 px, touches the left and bottom border
    nuclei[32:40, 2:10] = 2  # two lobes of 64 px
    nuclei[45:53, 2:10] = 2
    return cells, nuclei


def test_areas_ncr_lobes_border():
    table = measure_cells(*_two_cells()).set_index("label")
    assert list(table.index) == [1, 2]
    assert table.loc[1, "cell_area_px"] == 100
    assert table.loc[1, "nucleus_area_px"] == 16
    assert table.loc[1, "cytoplasm_area_px"] == 84
    assert table.loc[1, "ncr"] == pytest.approx(16 / 84)
    assert table.loc[1, "nucleus_cell_ratio"] == pytest.approx(0.16)
    assert table.loc[1, "nucleus_lobes"] == 1
    assert not table.loc[1, "touches_border"]
    assert table.loc[1, "centroid_y"] == pytest.approx(6.5)
    assert table.loc[2, "cell_area_px"] == 600
    assert table.loc[2, "nucleus_area_px"] == 128
    assert table.loc[2, "ncr"] == pytest.approx(128 / 472)
    assert table.loc[2, "nucleus_lobes"] == 2
    assert table.loc[2, "touches_border"]
    assert "cell_area_um2" not in table


def test_mifnet_ncr_example():
    # MIF-Net Eq. 10: nucleus 1945 px, cytoplasm 3403 px -> NCR 0.571
    cells = np.zeros((100, 100), np.uint32)
    nuclei = np.zeros_like(cells)
    flat_cells, flat_nuclei = cells.reshape(-1), nuclei.reshape(-1)
    flat_cells[: 1945 + 3403] = 1
    flat_nuclei[:1945] = 1
    table = measure_cells(cells, nuclei)
    assert table.loc[0, "ncr"] == pytest.approx(1945 / 3403) == pytest.approx(0.571, abs=1e-3)


def test_pixel_size_gives_um():
    table = measure_cells(*_two_cells(), pixel_size=0.5).set_index("label")
    assert table.loc[1, "cell_area_um2"] == pytest.approx(25.0)
    assert table.loc[1, "nucleus_area_um2"] == pytest.approx(4.0)
    assert table.loc[1, "cytoplasm_area_um2"] == pytest.approx(21.0)
    assert table.loc[1, "perimeter_um"] == pytest.approx(table.loc[1, "perimeter_px"] * 0.5)


def test_nucleus_outside_its_cell_is_not_counted():
    cells, nuclei = _two_cells()
    nuclei[20:25, 20:25] = 1  # claims cell 1, but lies in background
    table = measure_cells(cells, nuclei).set_index("label")
    assert table.loc[1, "nucleus_area_px"] == 16


def test_shape_of_a_disc():
    yy, xx = np.mgrid[:101, :101]
    cells = (((yy - 50) ** 2 + (xx - 50) ** 2) <= 40**2).astype(np.uint32)
    table = measure_cells(cells, np.zeros_like(cells))
    assert table.loc[0, "perimeter_px"] == pytest.approx(2 * np.pi * 40, rel=0.02)
    assert table.loc[0, "circularity"] == pytest.approx(1.0, abs=0.03)
    assert table.loc[0, "ncr"] == 0


def test_empty_and_counts():
    empty = measure_cells(np.zeros((10, 10), np.uint32), np.zeros((10, 10), np.uint32))
    assert len(empty) == 0 and "ncr" in empty
    counts = count_summary(empty)
    assert counts["white_cells"] == 0 and counts["complete_cells"] == 0 and np.isnan(counts["mean_ncr"])
    table = measure_cells(*_two_cells())
    assert count_summary(table) == {"white_cells": 2, "complete_cells": 1, "mean_ncr": table["ncr"].mean()}


def test_cell_types_give_a_differential_count():
    cells = np.zeros((20, 30), np.uint32)
    cells[2:8, 2:8], cells[2:8, 12:18], cells[10:16, 12:18] = 1, 2, 3
    nuclei = np.where(np.isin(cells, [1, 2, 3]) & (np.arange(30)[None] % 6 < 3), cells, 0).astype(np.uint32)
    types = {1: ("neutrophil", 0.9), 2: ("lymphocyte", 0.6), 3: ("neutrophil", 0.8)}
    table = measure_cells(cells, nuclei, types=types)
    assert table["cell_type"].tolist() == ["neutrophil", "lymphocyte", "neutrophil"]
    assert table["type_confidence"].tolist() == [0.9, 0.6, 0.8]
    counts = count_summary(table)
    assert counts["n_neutrophil"] == 2 and counts["n_lymphocyte"] == 1 and counts["n_monocyte"] == 0
    assert counts["pct_neutrophil"] == pytest.approx(200 / 3) and counts["excluded"] == 0
    assert describe_counts(counts) == (
        "3 white cells (3 complete): 2 neutrophil (67%, 95% CI 9-99%), 1 lymphocyte (33%, 1-91%)"
    )


def test_not_a_white_cell_is_left_out_of_the_count_and_unidentified_counts_apart():
    cells = np.zeros((30, 30), np.uint32)
    for i, (y, x) in enumerate([(0, 0), (0, 10), (0, 20), (10, 0), (10, 10), (20, 20)], start=1):
        cells[y + 1 : y + 8, x + 1 : x + 8] = i
    nuclei = np.where(cells > 0, cells, 0).astype(np.uint32)
    nuclei[::2] = 0
    types = {
        1: ("neutrophil", 0.9),
        2: ("neutrophil", 0.8),
        3: ("lymphocyte", 0.7),
        4: ("unidentified", 0.4),
        5: ("not_wbc", 0.95),
        6: ("eosinophil", 0.9),
    }
    table = measure_cells(cells, nuclei, types=types)
    counts = count_summary(table)
    # 5 white cells (the not_wbc object is excluded), percent of the 5
    assert counts["white_cells"] == 5 and counts["excluded"] == 1
    assert counts["n_neutrophil"] == 2 and counts["pct_neutrophil"] == 40.0
    assert counts["n_unidentified"] == 1 and counts["pct_unidentified"] == 20.0
    assert counts["n_eosinophil"] == 1 and counts["pct_lymphocyte"] == 20.0
    assert counts["mean_ncr"] == pytest.approx(table["ncr"][table["cell_type"] != "not_wbc"].mean())
    assert describe_counts(counts) == (
        "5 white cells (5 complete): 2 neutrophil (40%, 95% CI 5-85%), 1 lymphocyte (20%, 1-72%), "
        "1 eosinophil (20%, 1-72%), 1 unidentified (20%, 1-72%); 1 not a white cell (excluded)"
    )


def test_each_share_of_the_differential_has_ruemkes_confidence_interval():
    """Exact binomial 95% intervals, as Ruemke's table for manual differentials gives them."""
    from napari_wbc.core.celltypes import differential, share_interval

    assert share_interval(5, 100) == pytest.approx((1.64, 11.28), abs=0.01)  # 5% of 100 cells
    assert share_interval(10, 200) == pytest.approx((2.42, 9.00), abs=0.01)  # 5% of 200 cells
    assert share_interval(0, 20)[0] == 0 and share_interval(20, 20)[1] == 100
    assert all(np.isnan(share_interval(0, 0)))
    table = pd.DataFrame({"cell_type": ["neutrophil"] * 95 + ["monocyte"] * 5 + ["not_wbc"] * 3})
    d = differential(table)
    assert d.loc["monocyte", ["count", "percent"]].tolist() == [5, 5.0]
    assert d.loc["monocyte", ["ci_low", "ci_high"]].tolist() == pytest.approx([1.64, 11.28], abs=0.01)
    # none of 100 seen: the smear may still hold up to 3.6%
    assert d.loc["eosinophil", ["ci_low", "ci_high"]].tolist() == pytest.approx([0, 3.62], abs=0.01)
