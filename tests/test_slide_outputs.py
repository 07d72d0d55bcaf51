"""A slide run's results appear all together or not at all, whenever the run fails or is killed.

One real run (4 tiles of a bccd field) keeps its work folder; every test starts from a copy
of it, so the re-runs only write and publish the results (no network).
"""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_wbc.core import pyramid
from napari_wbc.core.inference import run
from napari_wbc.core.io import read_image
from napari_wbc.core.options import Options
from napari_wbc.core.slide import Slide
from napari_wbc.core.slide_output import RESULT_FILES, recover_results, result_paths
from napari_wbc.core.wholeslide import segment_slide
from napari_wbc.core.work_folder import WorkFolder
from napari_wbc.models import load_model

NAME = "field"
OPTIONS = Options(tile=(240, 320), halo=100, skip_empty=False, auto_scale=False)
FIELD = "bccd/images/BloodImage_00242.jpg"


def read_set(out):
    """The slide's result files in ``out`` (kind -> content; absent ones left out)."""
    found = {}
    for kind, path in result_paths(out, NAME).items():
        if path.exists():
            found[kind] = tifffile.imread(path) if path.suffix == ".tif" else pd.read_csv(path)
    return found


def same(a, b) -> bool:
    return np.array_equal(a, b) if isinstance(a, np.ndarray) else a.equals(b)


@pytest.fixture(scope="module")
def model(trained_model):
    return load_model(trained_model)


@pytest.fixture(scope="module")
def done(tmp_path_factory, datasets, model):
    """A finished run (work folder kept), the slide, and its results."""
    out = tmp_path_factory.mktemp("reference")
    slide = Slide.from_array(read_image(datasets / FIELD).data, None, NAME)
    run(segment_slide(slide, out, *model, OPTIONS, keep_work=True))
    results = read_set(out)
    assert len(results) == 4 and results["cells"].max() >= 2
    return WorkFolder(out, NAME).path, slide, results


@pytest.fixture
def out(tmp_path, done):
    """An output folder with every tile of the run done, and an older complete set of results."""
    shutil.copytree(done[0], WorkFolder(tmp_path, NAME).path)
    old = np.ones((4, 4), np.uint32)
    for path in result_paths(tmp_path, NAME).values():
        if path.suffix == ".tif":
            tifffile.imwrite(path, old)
        else:
            pd.DataFrame({"old": [1]}).to_csv(path, index=False)
    return tmp_path


def assert_all_or_nothing(out, reference, old_allowed=True):
    """The summary is there only with the other three of the same run; without it, the set is
    incomplete. Returns "new", "old" or "incomplete"."""
    found = read_set(out)
    if "summary" not in found:
        return "incomplete"
    assert len(found) == 4, f"a summary without all its files: {sorted(found)}"
    if all(same(found[k], reference[k]) for k in RESULT_FILES):
        return "new"
    assert old_allowed and all("old" in t for t in (found["table"], found["summary"]))
    assert all(found[k].shape == (4, 4) for k in ("cells", "nuclei")), "a mixed set"
    return "old"


def leftovers(out):
    return sorted(p.name for p in out.rglob("*") if p.name.startswith(".pyramid-") or p.suffix == ".tmp")


def rerun(out, done, model):
    result = run(segment_slide(done[1], out, *model, OPTIONS))
    assert assert_all_or_nothing(out, done[2]) == "new"
    assert leftovers(out) == [] and not WorkFolder(out, NAME).path.exists()
    return result


@pytest.mark.parametrize("failing", ["cells", "nuclei"])
def test_a_run_failing_while_writing_publishes_nothing(out, done, model, monkeypatch, failing):
    real = pyramid.write_pyramid_tiff

    def write(path, *args, **kwargs):
        if f"_{failing}." in path.name:
            raise OSError("disk full")
        return real(path, *args, **kwargs)

    monkeypatch.setattr(pyramid, "write_pyramid_tiff", write)
    with pytest.raises(OSError, match="disk full"):
        run(segment_slide(done[1], out, *model, OPTIONS))
    monkeypatch.undo()
    assert assert_all_or_nothing(out, done[2]) == "old"  # the earlier results, untouched
    assert leftovers(out) == [] and not WorkFolder(out, NAME).staging.exists()
    rerun(out, done, model)


@pytest.mark.parametrize("moved", range(4))
def test_a_run_failing_while_publishing_is_finished_by_the_next(out, done, model, monkeypatch, moved):
    real, renames = os.replace, []

    def replace(src, dst):
        if os.path.dirname(dst) == str(out):  # a rename into the output folder
            if len(renames) == moved:
                raise OSError("disk full")
            renames.append(dst)
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="disk full"):
        run(segment_slide(done[1], out, *model, OPTIONS))
    monkeypatch.undo()
    assert assert_all_or_nothing(out, done[2]) == "incomplete"  # the old summary went first
    recover_results(WorkFolder(out, NAME), out, NAME)  # what the next run starts with
    assert assert_all_or_nothing(out, done[2]) == "new"
    rerun(out, done, model)


CHILD = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from napari_wbc.core import pyramid
    from napari_wbc.core.inference import run
    from napari_wbc.core.io import read_image
    from napari_wbc.core.options import Options
    from napari_wbc.core.slide import Slide
    from napari_wbc.core.wholeslide import segment_slide
    from napari_wbc.models import load_model

    out, stage = Path({out!r}), {stage!r}

    def die(*args):
        os.kill(os.getpid(), signal.SIGKILL)

    if stage == "writing":  # killed in the middle of the nuclei pyramid
        real = pyramid.write_pyramid_tiff
        def write(path, region, *args, **kwargs):
            return real(path, die if "_nuclei." in Path(path).name else region, *args, **kwargs)
        pyramid.write_pyramid_tiff = write
    else:  # killed after two of the four renames into the output folder
        real, moved = os.replace, []
        def replace(src, dst):
            if Path(dst).parent == out:
                if len(moved) == 2:
                    die()
                moved.append(dst)
            real(src, dst)
        os.replace = replace
    slide = Slide.from_array(read_image({image!r}).data, None, {name!r})
    run(segment_slide(slide, out, *load_model({model!r}), {options!r}))
""")


@pytest.mark.parametrize("stage", ["writing", "publishing"])
def test_a_killed_run_leaves_all_or_nothing_and_a_rerun_completes(
    out, done, model, datasets, trained_model, stage
):
    stale = out / ".pyramid-old"  # left by an older version, long ago
    (stale / "0").mkdir(parents=True)
    hour_ago = time.time() - 7200
    for path in (stale / "0", stale):
        os.utime(path, (hour_ago, hour_ago))
    (out / f".{NAME}_cells.tif.tmp").write_bytes(b"")
    fresh = out / ".pyramid-live"  # someone else's, being written now
    fresh.mkdir()
    code = CHILD.format(
        out=str(out),
        stage=stage,
        image=str(datasets / FIELD),
        name=NAME,
        model=trained_model,
        options=OPTIONS,
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    state = assert_all_or_nothing(out, done[2])
    if stage == "writing":
        assert state == "old"
        assert any(name.startswith(".pyramid-") for name in leftovers(out))  # in the work folder
    else:
        assert state == "incomplete"  # new nuclei and table, the old cells, no summary
        found = read_set(out)
        assert sorted(found) == ["cells", "nuclei", "table"] and found["cells"].shape == (4, 4)
        assert all(same(found[k], done[2][k]) for k in ("nuclei", "table"))
    # the next run finishes or clears what the killed one left, and completes
    result = run(segment_slide(done[1], out, *model, OPTIONS))
    assert assert_all_or_nothing(out, done[2]) == "new"
    assert result.summary == out / f"{NAME}_summary.csv"
    assert leftovers(out) == [".pyramid-live"]  # only what may still be in use
