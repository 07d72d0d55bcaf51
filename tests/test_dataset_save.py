"""Corrected labels saved as training pairs: layout, provenance, no overwrite, failed, killed
and concurrent saves, planted links, check and repair."""

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from concurrency import run_together

from napari_wbc.cli import main
from napari_wbc.core.dataset import (
    check_training_folder,
    list_pairs,
    load_pair,
    read_manifest,
    repair_training_folder,
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


def failing_replace_at(monkeypatch, renames_done, once=True):
    """Make the rename after ``renames_done`` good ones fail (and every later one, unless once)."""
    calls, real_replace = [], os.replace

    def replace(src, dst):
        calls.append(dst)
        if len(calls) == renames_done + 1 or (not once and len(calls) > renames_done):
            raise OSError("disk full")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)


@pytest.mark.parametrize("renames_done", range(6))
def test_a_failed_save_leaves_the_folder_as_it_was(tmp_path, monkeypatch, renames_done):
    # a save renames 6 files into place: cells, nuclei, label, split.csv, image, manifest
    save_training_pair(tmp_path, *make_pair(0), PROVENANCE)
    before = snapshot(tmp_path)
    failing_replace_at(monkeypatch, renames_done)
    with pytest.raises(OSError, match="disk full"):
        save_training_pair(tmp_path, *make_pair(1), PROVENANCE)
    monkeypatch.undo()
    assert snapshot(tmp_path) == before  # what was put in place is taken back ...
    assert not list(tmp_path.rglob("*.tmp"))  # ... and the temporary files removed
    assert check_training_folder(tmp_path) == []
    assert save_training_pair(tmp_path, *make_pair(2), PROVENANCE) == "smear_7-2"
    assert validate_training_folder(tmp_path) == []


@pytest.mark.parametrize("renames_done", [2, 4, 5])
def test_a_save_that_cannot_undo_leaves_what_repair_removes(tmp_path, monkeypatch, renames_done):
    save_training_pair(tmp_path, *make_pair(0), PROVENANCE)
    before = snapshot(tmp_path)
    failing_replace_at(monkeypatch, renames_done, once=False)  # split.csv cannot be restored
    with pytest.raises(OSError, match="disk full"):
        save_training_pair(tmp_path, *make_pair(1), PROVENANCE)
    monkeypatch.undo()
    assert validate_training_folder(tmp_path) == []  # usable as it is
    assert [p.stem for p in list_pairs(tmp_path)] == ["smear_7"]
    problems = check_training_folder(tmp_path)
    assert problems == (["split.csv: row 'smear_7-2' names no complete pair"] if renames_done >= 4 else [])
    repair_training_folder(tmp_path)
    assert check_training_folder(tmp_path) == []
    assert snapshot(tmp_path) == before


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


@pytest.mark.parametrize("renames_done", [0, 3, 5])
def test_a_killed_saves_leftovers_are_found_and_repaired(tmp_path, renames_done):
    save_training_pair(tmp_path, *make_pair(0), PROVENANCE)
    before = snapshot(tmp_path)
    code = KILLER.format(tests=os.path.dirname(__file__), root=str(tmp_path), renames_done=renames_done)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert list(tmp_path.rglob("*.tmp"))  # the kill left temporary files behind ...
    assert validate_training_folder(tmp_path) == []  # ... and the folder is still valid
    after = snapshot(tmp_path)
    for name, data in before.items():
        assert after[name].startswith(data) if name == "split.csv" else after[name] == data
    complete = renames_done == 5  # killed before the manifest: the pair is complete
    assert sorted(p.stem for p in list_pairs(tmp_path)) == ["smear_7"] + ["smear_7-2"] * complete
    # the next save steps around the leftovers (the stem is taken once any file of it is there)
    stem = save_training_pair(tmp_path, *make_pair(2), PROVENANCE)
    assert stem == ("smear_7-2" if renames_done == 0 else "smear_7-3")

    problems = check_training_folder(tmp_path)
    assert any("temporary file" in p for p in problems)
    if renames_done == 3:  # instance maps and label, no image
        orphans = {"instances/smear_7-2_cells.tif", "instances/smear_7-2_nuclei.tif", "labels/smear_7-2.png"}
        assert {p.split(":")[0] for p in problems if "no complete pair" in p} == orphans
    done = repair_training_folder(tmp_path)
    assert len(done) == len(problems)
    assert check_training_folder(tmp_path) == []
    assert not list(tmp_path.rglob("*.tmp"))
    # complete pairs are kept, the killed one too when it got as far as its image
    assert sorted(p.stem for p in list_pairs(tmp_path)) == sorted(
        ["smear_7", stem] + ["smear_7-2"] * complete
    )
    assert [r["stem"] for r in read_manifest(tmp_path)] == ["smear_7", stem]


# --- concurrent savers -----------------------------------------------------------------------


def marked_pair(saver, n):
    """A pair that says who saved it: image value, cell size and id tell saver and round apart."""
    shape = (24, 32)
    image = np.full((*shape, 3), 10 * saver + n % 10, np.uint8)
    cells = np.zeros(shape, np.uint32)
    nuclei = np.zeros(shape, np.uint32)
    cells[2 : 4 + saver, 2 : 4 + n] = 1 + saver
    nuclei[2, 2] = 1 + saver
    return image, cells, nuclei


def saver_process(root, saver, rounds, start, results):
    start.wait()
    stems = []
    for n in range(rounds):
        try:
            stems.append(
                (saver, n, save_training_pair(root, *marked_pair(saver, n), {"source": "smear.png"}))
            )
        except Exception as err:  # a crash is a failure of the test, reported by the parent
            stems.append((saver, n, f"error: {type(err).__name__}: {err}"))
    results.put(stems)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_concurrent_saves_never_mix_up_pairs(tmp_path, method):
    savers, rounds = 3, 16
    saved = run_together(saver_process, tmp_path, savers, rounds, method)
    errors = [stem for *_, stem in saved if stem.startswith("error")]
    assert errors == []
    stems = [stem for *_, stem in saved]
    assert len(set(stems)) == savers * rounds  # every save got its own stem
    records = {r["stem"]: r for r in read_manifest(tmp_path)}
    assert sorted(records) == sorted(stems)
    for saver, n, stem in saved:  # ... and holds what that saver wrote
        image, cells, nuclei = marked_pair(saver, n)
        got_image, got_label = load_pair(next(p for p in list_pairs(tmp_path) if p.stem == stem))
        assert np.array_equal(got_image, image), stem
        assert np.array_equal(got_label, np.where(nuclei > 0, 2, np.where(cells > 0, 1, 0))), stem
        assert np.array_equal(tifffile.imread(tmp_path / "instances" / f"{stem}_cells.tif"), cells), stem
    rows = list(pd.read_csv(tmp_path / "split.csv")["stem"])
    assert sorted(rows) == sorted(stems)
    assert check_training_folder(tmp_path) == []


def test_mixed_up_pairs_are_found(tmp_path):
    first = save_training_pair(tmp_path, *marked_pair(0, 1), PROVENANCE)
    second = save_training_pair(tmp_path, *marked_pair(1, 2), PROVENANCE)
    assert validate_training_folder(tmp_path) == []
    # what unlocked concurrent saves did: one's label under the other's name
    (tmp_path / "labels" / f"{first}.png").write_bytes((tmp_path / "labels" / f"{second}.png").read_bytes())
    (record,) = [r for r in read_manifest(tmp_path) if r["stem"] == first]
    (tmp_path / "manifest.jsonl").write_text(
        (tmp_path / "manifest.jsonl").read_text() + json.dumps(record) + "\n"
    )
    problems = validate_training_folder(tmp_path)
    assert f"{first}: labels/{first}.png is not the file saved with it (changed since)" in problems
    assert f"manifest names {first!r} more than once" in problems
    assert len(set(problems)) == 2  # (the mismatch is found for both records)


def test_a_planted_symlink_at_a_temporary_name_is_not_followed(tmp_path, monkeypatch):
    import secrets

    root, outside = tmp_path / "training", tmp_path / "outside"
    outside.mkdir()
    (outside / "kept.txt").write_bytes(b"keep")
    names = ["images/smear_7.png", "labels/smear_7.png", "instances/smear_7_cells.tif"]
    names += ["instances/smear_7_nuclei.tif", "split.csv", "manifest.jsonl"]
    planted = []
    for k, name in enumerate(names):
        for tmp in (f".{Path(name).name}.tmp", f".{Path(name).name}.planted.tmp"):  # old and new names
            link = root / Path(name).parent / tmp
            link.parent.mkdir(parents=True, exist_ok=True)
            target = outside / ("kept.txt" if k % 2 else f"new-{k}-{tmp}")  # existing or dangling
            link.symlink_to(target)
            planted.append(link)
    real, calls = secrets.token_hex, []

    def token_hex(n):  # every temporary file's first name is the planted one
        calls.append(n)
        return "planted" if len(calls) % 2 else real(n)

    monkeypatch.setattr(secrets, "token_hex", token_hex)
    stem = save_training_pair(root, *make_pair(0), PROVENANCE)
    monkeypatch.undo()
    assert len(calls) == 2 * len(names)  # each file met its planted link, and took another name
    assert sorted(p.name for p in outside.iterdir()) == ["kept.txt"]
    assert (outside / "kept.txt").read_bytes() == b"keep"
    assert all(link.is_symlink() for link in planted)
    assert validate_training_folder(root) == []
    assert [p.stem for p in list_pairs(root)] == [stem]
    assert len(check_training_folder(root)) == len(planted)  # the links look like leftovers ...
    repair_training_folder(root)  # ... and repair removes them, not what they point to
    assert not any(link.is_symlink() for link in planted)
    assert (outside / "kept.txt").read_bytes() == b"keep"
    assert check_training_folder(root) == []


def test_cli_dataset_check_and_repair(tmp_path, capsys):
    save_training_pair(tmp_path, *make_pair(0), PROVENANCE)
    (tmp_path / "labels" / "lost.png").write_bytes(b"")
    (tmp_path / "images" / ".smear_7.png.0123.tmp").write_bytes(b"")
    assert main(["dataset", "check", str(tmp_path)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[:2] == [
        "images/.smear_7.png.0123.tmp: temporary file of an interrupted save",
        "labels/lost.png: belongs to no complete pair (an interrupted save)",
    ]
    assert main(["dataset", "check", str(tmp_path), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "removed labels/lost.png" in out and "removed images/.smear_7.png.0123.tmp" in out
    assert main(["dataset", "check", str(tmp_path)]) == 0
    assert [p.stem for p in list_pairs(tmp_path)] == ["smear_7"]
    assert main(["dataset", "check", str(tmp_path / "nothing")]) == 2
