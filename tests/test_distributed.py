"""Whole slides on a dask.distributed cluster give the files of the single-process run.

A mosaic slide of four bccd fields (1024 x 1344 px, 6 tiles) and a one-field slide (2
tiles) go through a LocalCluster of two worker processes, with a broken slide among them;
the label pyramids (every level, pixel for pixel) and the CSV tables (byte for byte) must
equal those of ``segment_slide`` in this process.
"""

import filecmp

import numpy as np
import pytest
import tifffile

from napari_wbc.core.celltypes import load_classifier
from napari_wbc.core.inference import run
from napari_wbc.core.io import read_image
from napari_wbc.core.options import Options
from napari_wbc.core.slide import build_mosaic_slide
from napari_wbc.core.wholeslide import segment_slide
from napari_wbc.core.work_folder import WorkFolder
from napari_wbc.models import load_model

FIELDS = ("BloodImage_00034", "BloodImage_00242", "BloodImage_00010", "BloodImage_00100")
TILE = 512  # 6 tiles on the mosaic, 2 on the one-field slide


@pytest.fixture(scope="module")
def slides(tmp_path_factory, datasets):
    folder = tmp_path_factory.mktemp("slides")
    fields = [read_image(datasets / "bccd" / "images" / f"{n}.jpg").data for n in FIELDS]
    mosaic = build_mosaic_slide(
        folder / "mosaic.ome.tif", fields, grid=(2, 2), gap=32, border=16, pixel_size=0.1
    )
    one = build_mosaic_slide(folder / "one.ome.tif", fields[1:2], grid=(1, 1), pixel_size=0.1, tile=128)
    broken = folder / "broken.svs"
    broken.write_bytes(b"II*\x00not a slide")
    return {"mosaic": mosaic, "one": one, "broken": broken}


@pytest.fixture(scope="module")
def reference(slides, tmp_path_factory):
    """Both slides segmented in this process, one tile after another."""
    out = tmp_path_factory.mktemp("single")
    net, spec = load_model(device="cpu")
    classifier = load_classifier("classifier", "cpu")  # as the CLI types cells by default
    for name in ("mosaic", "one"):
        result = run(
            segment_slide(
                slides[name], out, net, spec, Options(tile=TILE, device="cpu"), classifier=classifier
            )
        )
        assert result.counts["white_cells"] >= (6 if name == "mosaic" else 1)
    return out


def assert_same_files(ref, got, name):
    for kind in ("cells", "nuclei"):
        file = f"{name}_{kind}.tif"
        with tifffile.TiffFile(ref / file) as a, tifffile.TiffFile(got / file) as b:
            la, lb = a.series[0].levels, b.series[0].levels
            assert [level.shape for level in la] == [level.shape for level in lb]
            for x, y in zip(la, lb, strict=True):
                assert np.array_equal(x.asarray(), y.asarray()), (name, kind, x.shape)
    for table in ("cells", "summary"):
        assert filecmp.cmp(ref / f"{name}_{table}.csv", got / f"{name}_{table}.csv", shallow=False), table
    assert not WorkFolder(got, name).path.exists()


def test_local_cluster_run_equals_the_single_process_run(slides, reference, tmp_path):
    from distributed import Client, LocalCluster

    from napari_wbc.core.distributed import segment_slides

    out = tmp_path / "dist"
    steps = []
    with (
        LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        gen = segment_slides(
            [slides["mosaic"], slides["broken"], slides["one"]], out, client, Options(device="cpu", tile=TILE)
        )
        mosaic, broken, one = run(gen, lambda *step: steps.append(step))
    assert mosaic.error is None and one.error is None
    assert "broken.svs" in broken.error and broken.result is None
    counts = {k: v for k, v in mosaic.result.counts.items() if k in COUNTS or k.startswith("n_")}
    assert counts == summary_counts(reference, "mosaic") and counts["white_cells"] >= 6
    assert_same_files(reference, out, "mosaic")
    assert_same_files(reference, out, "one")
    # one step per finished task: per slide its plan, 2 shards x (classes, cells), the results
    assert [s[0] for s in steps] == list(range(1, 14)) and steps[-1][1] == 13
    messages = [m for _, _, m in steps]
    assert "mosaic: 6 tiles in 2 shards on cpu" in messages and "one: 2 tiles in 2 shards on cpu" in messages
    assert any(m.startswith("error: broken.svs") for m in messages)


def summary_counts(folder, name):
    import pandas as pd

    row = pd.read_csv(folder / f"{name}_summary.csv").iloc[0]
    return {k: int(v) for k, v in row.items() if k in COUNTS or k.startswith("n_")}


COUNTS = ("white_cells", "complete_cells", "excluded")


def test_cli_workers_flag_spreads_slides_and_reports_a_broken_one(slides, reference, tmp_path, capsys):
    from napari_wbc.cli import main

    out = tmp_path / "cli"
    code = main(
        [
            "segment",
            str(slides["one"]),
            str(slides["broken"]),
            "--out",
            str(out),
            "--workers",
            "2",
            "--tile",
            str(TILE),
            "--device",
            "cpu",
        ]
    )
    assert code == 1  # one slide failed
    err = capsys.readouterr().err
    assert "broken.svs" in err
    assert_same_files(reference, out, "one")
