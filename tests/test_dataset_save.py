"""Corrected labels saved as training pairs: layout, provenance, no overwrite, killed saves."""

import os
import signal
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import tifffile

from napari_wbc.core.dataset import (
    list_pairs,
    load_pair,
    read_manifest,
    save_training_pair,
    validate_training_folder,
)

PROVENANCE = {
    "source": "/slides/smear 7.tif",
    "model": "mifnet",
    "weights_sha256": "ab" * 32,
    "cells_edited": 3,
}


def make_pair(seed=0, shape=(48, 64)):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    cells = np.zeros(shape, np.uint32)
    nuclei = np.zeros(shape, np.uint32)
    cells[4:20, 4:24] = 1
    nuclei[8:14, 8:14] = 1
    cells[25:45, 30:60] = 6
    nuclei[30:40, 40:50] = 6
    return image, cells, nuclei


def snapshot(root):
    """Every file under root with its bytes (temporary files left by a killed save excluded)."""
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.name.endswith(".tmp")
    }


def test_saved_pair_is_in_the_dataset_layout_with_provenance(tmp_path):
    image, cells, nuclei = make_pair()
    table = pd.DataFrame({"label": [1, 6], "cell_type": ["neutrophil", None]})
    stem = save_training_pair(tmp_path, image, cells, nuclei, PROVENANCE, table=table)
    assert stem == "smear_7"
    (pair,) = list_pairs(tmp_path)
    assert pair.stem == stem and pair.split == "train"
    got_image, got_label = load_pair(pair)
    assert np.array_equal(got_image, image)
    expected = np.where(nuclei > 0, 2, np.where(cells > 0, 1, 0))
    assert np.array_equal(got_label, expected)
    assert np.array_equal(tifffile.imread(tmp_path / "instances" / f"{stem}_cells.tif"), cells)
    assert np.array_equal(tifffile.imread(tmp_path / "instances" / f"{stem}_nuclei.tif"), nuclei)
    assert pd.read_csv(tmp_path / "instances" / f"{stem}_cells.csv")["cell_type"].iloc[0] == "neutrophil"
    (record,) = read_manifest(tmp_path)
    for key, value in PROVENANCE.items():
        assert record[key] == value
    assert record["stem"] == stem and record["n_cells"] == 2 and record["shape"] == [48, 64]
    assert record["date"][:2] == "20" and record["files"]["label"] == f"labels/{stem}.png"
    assert validate_training_folder(tmp_path) == []


def test_nothing_is_overwritten_and_every_fifth_pair_validates(tmp_path):
    first = save_training_pair(tmp_path, *make_pair(0), PROVENANCE)
    kept = snapshot(tmp_path)
    stems = [first] + [save_training_pair(tmp_path, *make_pair(i), PROVENANCE) for i in range(1, 6)]
    assert stems == ["smear_7", "smear_7-2", "smear_7-3", "smear_7-4", "smear_7-5", "smear_7-6"]
    now = snapshot(tmp_path)
    for name, data in kept.items():
        if name not in ("manifest.jsonl", "split.csv"):
            assert now[name] == data  # the first pair's files are untouched
    assert now["manifest.jsonl"].startswith(kept["manifest.jsonl"])  # records only appended
    splits = {p.stem: p.split for p in list_pairs(tmp_path)}
    assert [s for s, split in splits.items() if split == "val"] == ["smear_7-5"]
    assert [r["stem"] for r in read_manifest(tmp_path)] == stems
    assert validate_training_folder(tmp_path) == []


def test_region_of_a_slide_is_cropped_and_recorded(tmp_path):
    image, cells, nuclei = make_pair()
    stem = save_training_pair(tmp_path, image, cells, nuclei, PROVENANCE, region=(20, 24, 48, 64))
    assert stem == "smear_7_y20_x24"
    got_image, got_label = load_pair(list_pairs(tmp_path)[0])
    assert np.array_equal(got_image, image[20:48, 24:64])
    assert np.array_equal(got_label > 0, cells[20:48, 24:64] > 0)
    assert read_manifest(tmp_path)[0]["region"] == [20, 24, 48, 64]


def test_inconsistent_labels_are_refused_before_anything_is_written(tmp_path):
    image, cells, nuclei = make_pair()
    nuclei[0, 0] = 3
    with pytest.raises(ValueError, match="outside every cell"):
        save_training_pair(tmp_path / "t", image, cells, nuclei, PROVENANCE)
    assert not (tmp_path / "t").exists()
    with pytest.raises(ValueError, match="differ in shape"):
        save_training_pair(tmp_path / "t", image[:40], cells, nuclei * 0, PROVENANCE)


@pytest.mark.parametrize("renames_done", range(6))
def test_a_save_failing_half_way_leaves_a_valid_folder(tmp_path, monkeypatch, renames_done):
    # a save renames 6 files into place: cells, nuclei, label, split.csv, image, manifest
    save_training_pair(tmp_path, *make_pair(0), PROVENANCE)
    before = snapshot(tmp_path)
    calls = []
    real_replace = os.replace

    def failing_replace(src, dst):
        if len(calls) == renames_done:
            raise OSError("disk full")
        calls.append(dst)
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        save_training_pair(tmp_path, *make_pair(1), PROVENANCE)
    monkeypatch.setattr(os, "replace", real_replace)

    assert validate_training_folder(tmp_path) == []
    after = snapshot(tmp_path)
    for name, data in before.items():  # the earlier pair and the manifest are intact
        assert after[name].startswith(data) if name == "split.csv" else after[name] == data
    assert [r["stem"] for r in read_manifest(tmp_path)] == ["smear_7"]
    listed = sorted(p.stem for p in list_pairs(tmp_path))
    # the pair appears only once its image is in place (5th rename), complete
    assert listed == (["smear_7", "smear_7-2"] if renames_done == 5 else ["smear_7"])
    assert not any(p.name.endswith(".tmp") for p in tmp_path.rglob("*"))  # cleaned up on error
    # the next save steps around the leftovers
    expected = "smear_7-3" if renames_done else "smear_7-2"
    assert save_training_pair(tmp_path, *make_pair(2), PROVENANCE) == expected
    assert validate_training_folder(tmp_path) == []


KILLER = textwrap.dedent("""
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_dataset_save import PROVENANCE, make_pair
    from napari_wbc.core.dataset import save_training_pair

    done, real = [], os.replace
    def replace(src, dst):
        if len(done) == {renames_done}:
            os.kill(os.getpid(), signal.SIGKILL)  # killed with the temporary file written
        done.append(dst)
        real(src, dst)
    os.replace = replace
    save_training_pair({root!r}, *make_pair(1), PROVENANCE)
""")


@pytest.mark.parametrize("renames_done", [3, 5])
def test_a_killed_save_leaves_a_valid_folder(tmp_path, renames_done):
    save_training_pair(tmp_path, *make_pair(0), PROVENANCE)
    before = snapshot(tmp_path)
    code = KILLER.format(tests=os.path.dirname(__file__), root=str(tmp_path), renames_done=renames_done)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert leftovers  # the kill left a temporary file behind ...
    assert validate_training_folder(tmp_path) == []  # ... and the folder is still valid
    after = snapshot(tmp_path)
    for name, data in before.items():
        assert after[name].startswith(data) if name == "split.csv" else after[name] == data
    assert sorted(p.stem for p in list_pairs(tmp_path)) == (
        ["smear_7", "smear_7-2"] if renames_done == 5 else ["smear_7"]
    )
    stem = save_training_pair(tmp_path, *make_pair(2), PROVENANCE)
    assert stem == "smear_7-3"  # the killed save's stem is not reused
    assert validate_training_folder(tmp_path) == []
    assert [r["stem"] for r in read_manifest(tmp_path)] == ["smear_7", "smear_7-3"]
