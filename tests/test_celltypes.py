"""The cell-type classifier's parts: crops, the analyser's rules (not a white cell,
unidentified), the threshold choice, the differential, the figures, the network itself."""

import numpy as np
import pandas as pd
import pytest
import torch

from napari_wbc.core.celltypes import cell_crops, crops_to_tensor, decide, differential, size_cue
from napari_wbc.core.dataset import CELL_TYPES, list_pairs, load_pair
from napari_wbc.core.train_classifier import _scores, choose_threshold, fine_tune_loss
from napari_wbc.core.type_metrics import type_report
from napari_wbc.models import ModelSpec, create_model, load_model, save_model
from napari_wbc.models.celltype import CLASSES, CROP


def test_crop_is_centred_on_the_cell_scaled_to_it_and_masks_only_it():
    image = np.zeros((100, 120, 3), np.uint8)
    cells = np.zeros((100, 120), np.uint32)
    cells[20:40, 30:50] = 1  # a 20 px square cell
    cells[20:40, 50:60] = 2  # its neighbour, right next to it
    nuclei = np.zeros_like(cells)
    nuclei[25:35, 35:45] = 1
    image[cells == 1] = 200
    rgb, label, width = cell_crops(image, cells, nuclei, [1], size=30, context=1.5)
    assert rgb.shape == (1, 30, 30, 3) and label.shape == (1, 30, 30)
    # the crop is 30 px of image around the 20 px cell: the cell spans the middle 20 px
    assert set(np.unique(label[0])) == {0, 1, 2}
    assert (label[0, 5:25, 5:25] > 0).all() and (label[0, :5] == 0).all() and (label[0, :, 25:] == 0).all()
    assert (label[0, 10:20, 10:20] == 2).all()
    assert width[0] == pytest.approx(np.sqrt(4 * 400 / np.pi))
    assert rgb[0, 15, 15, 0] == 200 and rgb[0, 15, 2, 0] == 0
    # the neighbour is in the image but not in the masks
    assert (label[0, 5:25, 25:] == 0).all()


def test_crop_at_the_image_edge_mirrors_the_image_and_pads_masks_with_zero():
    image = np.zeros((50, 50, 3), np.uint8)
    image[:, :10] = 255
    cells = np.zeros((50, 50), np.uint32)
    cells[10:30, 0:10] = 1
    rgb, label, _ = cell_crops(image, cells, cells, [1], size=30, context=1.5)
    assert (label[0][:, :5] == 0).all()  # left of the image: no mask
    assert (rgb[0][:, :5] == 255).all()  # ...but mirrored image


def test_crops_on_a_part_of_the_image_at_an_origin_give_the_same_crop():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)
    cells = np.zeros((80, 80), np.uint32)
    cells[30:50, 30:45] = 1
    whole = cell_crops(image, cells, cells, [1])
    part = cell_crops(image, cells[20:60, 25:55], cells[20:60, 25:55], [1], origin=(20, 25))
    for a, b in zip(whole, part, strict=True):
        np.testing.assert_array_equal(a, b)


def test_network_input_and_size_cue():
    spec = ModelSpec("celltype", classes=CLASSES)
    rgb = np.full((2, 8, 8, 3), 255, np.uint8)
    label = np.zeros((2, 8, 8), np.uint8)
    label[0, 2:6, 2:6] = 1
    label[0, 3:5, 3:5] = 2
    x = crops_to_tensor(rgb, label, spec)
    assert x.shape == (2, 5, 8, 8)
    assert torch.allclose(x[:, :3], torch.full((2, 3, 8, 8), 2.0))  # (1 - 0.5) / 0.25
    assert x[0, 3].sum() == 16 and x[0, 4].sum() == 4 and x[1, 3:].sum() == 0
    # width in red-cell diameters (log), and whether the field has that ruler
    assert size_cue(np.array([100.0, 50.0]), 50.0) == pytest.approx(np.array([[np.log(2.0), 1], [0, 1]]))
    assert (size_cue(np.array([100.0, 50.0]), None) == 0).all()


def test_rules_not_a_white_cell_and_unidentified():
    p = np.array(
        [
            [0.80, 0.10, 0.05, 0.03, 0.01, 0.01],  # a confident neutrophil
            [0.30, 0.25, 0.20, 0.10, 0.05, 0.10],  # unsure: 0.30 / 0.90 = 0.33 of the types
            [0.05, 0.05, 0.05, 0.05, 0.05, 0.75],  # no white cell
            [0.10, 0.05, 0.05, 0.30, 0.05, 0.45],  # not_wbc most likely
            [
                0.20,
                0.00,
                0.00,
                0.40,
                0.00,
                0.40,
            ],  # tie between eosinophil and not_wbc: argmax takes eosinophil
        ]
    )
    out = decide(p, CLASSES, 0.5)
    assert [kind for kind, _ in out] == ["neutrophil", "unidentified", "not_wbc", "not_wbc", "eosinophil"]
    assert out[0][1] == pytest.approx(0.80 / 0.99)
    assert out[1][1] == pytest.approx(0.30 / 0.90)
    assert out[2][1] == pytest.approx(0.75)
    assert out[4][1] == pytest.approx(0.40 / 0.60)
    assert decide(p[1:2], CLASSES, 0.3)[0][0] == "neutrophil"


def test_differential_counts_and_percent_leave_out_what_is_no_white_cell():
    kinds = ["neutrophil"] * 3 + ["lymphocyte", "monocyte", "unidentified", "not_wbc", "not_wbc"]
    table = pd.DataFrame({"label": range(1, 9), "cell_type": kinds})
    d = differential(table)
    assert list(d.index) == [*CELL_TYPES, "unidentified"]
    assert d["count"].tolist() == [3, 1, 1, 0, 0, 1]
    assert d["percent"].tolist() == pytest.approx([50.0, 100 / 6, 100 / 6, 0.0, 0.0, 100 / 6])
    assert d["percent"].sum() == pytest.approx(100.0)
    assert differential(table.drop(columns="cell_type"))["count"].sum() == 0


def test_threshold_minimises_wrong_plus_half_unidentified_with_at_most_a_tenth_unidentified():
    # 20 cells: 18 right and sure, one wrong and unsure (0.4), one right and unsure (0.45)
    prob = np.zeros((20, 6))
    target = np.zeros(20, int)
    prob[:, 0] = 0.95
    prob[:, 1] = 0.05
    prob[18] = [0.4, 0.35, 0.25, 0, 0, 0]
    target[18] = 1  # wrong: the top is neutrophil
    prob[19] = [0.45, 0.35, 0.20, 0, 0, 0]
    threshold, figures = choose_threshold(prob, target)
    # leaving the wrong cell unidentified (cost 0.5) beats calling it (cost 1); the unsure right one
    # stays called (leaving it out costs 0.5 for nothing)
    assert 0.4 < threshold <= 0.45
    assert figures == {"wrong": 0, "unidentified": 1, "cells": 20, "accuracy_identified": 1.0}


def test_type_report_exact_values():
    truth = ["neutrophil"] * 4 + ["lymphocyte"] * 2 + ["eosinophil"]
    pred = ["neutrophil", "neutrophil", "unidentified", "missed", "lymphocyte", "neutrophil", "eosinophil"]
    r = type_report(truth, pred)
    assert r["cells"] == 7
    assert r["accuracy"] == pytest.approx(4 / 7)
    assert r["accuracy_identified"] == pytest.approx(4 / 5)
    assert r["unidentified_rate"] == pytest.approx(1 / 7)
    assert r["per_class"]["neutrophil"] == {"cells": 4, "recall": 0.5, "precision": pytest.approx(2 / 3)}
    assert r["per_class"]["lymphocyte"]["recall"] == 0.5 and r["per_class"]["monocyte"]["recall"] is None
    assert r["confusion"][0] == [2, 0, 0, 0, 0, 1, 0, 1]


def test_forward_save_load_and_training_lowers_the_loss(tmp_path):
    torch.manual_seed(0)
    spec = ModelSpec(
        "celltype", classes=CLASSES, extra={"crop": CROP, "context": 1.5, "unidentified_below": 0.5}
    )
    net = create_model("celltype")
    # two kinds of crop: a dark round nucleus (lymphocyte-like) and a pale one with pink granules
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:CROP, :CROP]
    r = np.hypot(yy - CROP / 2, xx - CROP / 2)
    label = np.where(r < 14, 2, np.where(r < 22, 1, 0)).astype(np.uint8)
    rgb = np.empty((16, CROP, CROP, 3), np.uint8)
    target = np.arange(16) % 2
    for i in range(16):
        colour = (60, 40, 120) if target[i] == 0 else (220, 120, 120)
        rgb[i] = np.where((label > 0)[..., None], colour, 230) + rng.integers(0, 20, (CROP, CROP, 3))
    x = crops_to_tensor(rgb, np.repeat(label[None], 16, 0), spec)
    y = torch.from_numpy(target)
    assert net.eval()(x).shape == (16, len(CLASSES))
    net.train()
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    losses = []
    for _ in range(15):
        loss = torch.nn.functional.cross_entropy(net(x, torch.zeros(16, 2)), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    save_model(net, spec, tmp_path / "ct")
    loaded, loaded_spec = load_model(weights=tmp_path / "ct")
    assert loaded_spec.extra["unidentified_below"] == 0.5 and loaded_spec.classes == CLASSES
    net.eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), net(x))


def test_fine_tune_loss_holds_base_examples_where_the_start_was_and_learns_the_corrections():
    """With corrections and base data, a base example is taught the start weights'
    prediction: no gradient while the network gives it, however wrong its label says it is;
    a corrected cell is taught its type. Taught their labels (no start probabilities), the
    base examples pull the weights too."""
    torch.manual_seed(0)
    start_logits = torch.randn(6, len(CLASSES))
    target = torch.tensor([0, 1, 2, 3, 0, 5])
    group = torch.tensor([0, 0, 0, 1, 1, 1])
    start_prob = torch.softmax(start_logits, 1)
    logits = start_logits.clone().requires_grad_(True)
    fine_tune_loss(logits, target, group, start_prob).backward()
    base, corrected = logits.grad[group == 0], logits.grad[group == 1]
    torch.testing.assert_close(base, torch.zeros_like(base), atol=1e-7, rtol=0)
    assert (corrected.abs().sum(1) > 1e-3).all()
    assert (corrected.gather(1, target[group == 1, None]) < 0).all()  # toward the reviewer's type
    logits.grad = None
    fine_tune_loss(logits, target, group, None).backward()
    assert (logits.grad[group == 0].abs().sum(1) > 1e-3).all()


def test_napari_wbc_train_celltype_end_to_end(tmp_path, datasets, monkeypatch):
    """`napari-wbc train --model celltype` on a tiny copy of bccd (two train fields, one val
    field): examples collected with the shipped segmenter, a few steps with a worker process,
    weights that load at the crop asked for, with the unidentified threshold chosen on val;
    examples at another crop cut from the kept segmentations and rulers."""
    import shutil

    from napari_wbc.cli import main

    source = datasets / "bccd"
    data = tmp_path / "bccd"
    splits = {"BloodImage_00001": "train", "BloodImage_00004": "train", "BloodImage_00003": "val"}
    for sub in ("images", "labels", "annotations_voc"):
        (data / sub).mkdir(parents=True)
    for stem in splits:
        shutil.copy(source / "images" / f"{stem}.jpg", data / "images")
        shutil.copy(source / "labels" / f"{stem}.png", data / "labels")
        shutil.copy(source / "annotations_voc" / f"{stem}.xml", data / "annotations_voc")
    shutil.copy(source / "wbc_class_labels.csv", data)
    (data / "split.csv").write_text("stem,split\n" + "".join(f"{s},{v}\n" for s, v in splits.items()))
    out = tmp_path / "celltype"
    args = [
        "train",
        "--model",
        "celltype",
        "--data",
        str(data),
        "--out",
        str(out),
        "--max-steps",
        "4",
        "--val-every",
        "2",
        "--batch-size",
        "8",
        "--patch",
        "48",
        "--workers",
        "1",
        "--device",
        "cpu",
    ]
    assert main(args) == 0
    net, spec = load_model(weights=out)
    assert spec.name == "celltype" and spec.classes == CLASSES
    # --patch sets the crop the classifier sees, and its config says so
    assert 0.0 <= spec.extra["unidentified_below"] < 1.0 and spec.extra["crop"] == 48 != CROP
    with np.load(out / "examples_train.npz") as z:
        kinds = set(z["target"].tolist())
        # the neutrophils of the fields, and red cells and platelets as "not a white cell"
        assert CLASSES.index("neutrophil") in kinds and CLASSES.index("not_wbc") in kinds
        assert any(":ref:" in s for s in z["source"]) and any(":seg:" in s for s in z["source"])
        sources = sorted(z["source"].tolist())
    # another crop is cut from what the segmenter found and the fields' rulers, kept beside
    # the examples: no segmentation (this net would refuse it), no ruler measured again
    from napari_wbc.core import celltype_data
    from napari_wbc.core.celltype_data import big_side, cached_examples
    from napari_wbc.core.celltypes import field_ruler

    with np.load(out / "segmented_train.npz") as z:
        kept = dict(zip(z["sources"].tolist(), z["rulers"].tolist(), strict=True))
        first = z["sources"][0]
        image = load_pair(next(p for p in list_pairs(data, "train") if p.stem in first))[0]
        assert "+" not in first and kept[first] == pytest.approx(field_ruler(image, z["cells_0"]))
    # the bccd fields as they are show their red cells (NaN: no ruler)
    assert len(kept) == 3 and not np.isnan([r for k, r in kept.items() if "+" not in k]).any()

    class Refuses(torch.nn.Module):
        def forward(self, x):
            raise AssertionError("segmented again")

    def measures(*args):
        raise AssertionError("ruler measured again")

    segmenter = (Refuses(), load_model()[1])
    with monkeypatch.context() as m:
        m.setattr(celltype_data, "field_ruler", measures)
        ex = cached_examples(out, [data], "train", segmenter, crop=CROP, context=1.5)
    assert ex["small"].shape[1:] == (CROP, CROP, 3) and ex["big"].shape[1:3] == (big_side(CROP, 1.5),) * 2
    assert sorted(ex["source"].tolist()) == sources
    # kept per image: with another split (or other data folders) only the images not seen
    # before are segmented, here the val field moved to train
    seen = []

    class Counts(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            seen.append(x.shape)
            return self.net(x)

    (data / "split.csv").write_text("stem,split\n" + "".join(f"{s},train\n" for s in splits))
    real = load_model()
    ex = cached_examples(out, [data], "train", (Counts(real[0]), real[1]), crop=CROP, context=1.5)
    assert any("BloodImage_00003" in s for s in ex["source"].tolist()) and len(seen) >= 1
    calls = len(seen)
    cached_examples(out, [data], "train", (Refuses(), real[1]), crop=CROP + 8, context=1.5)
    assert calls == len(seen)
    # a cache kept before rulers were, holding a field of a folder this run does not take:
    # the fields used are measured once and kept, the other stays as it was
    seg = out / "segmented_train.npz"
    with np.load(seg) as z:
        old = {k: z[k] for k in z.files if k != "rulers"}
    n = len(old["sources"])
    old["sources"] = np.append(old["sources"], "zheng_d1/001")
    old["scales"] = np.append(old["scales"], 1.0)
    old[f"cells_{n}"], old[f"nuclei_{n}"] = old["cells_0"], old["nuclei_0"]
    np.savez_compressed(seg, **old)
    (out / "examples_train.npz").unlink()
    measured = []

    def counts(image, objects):
        measured.append(1)
        return field_ruler(image, objects)

    with monkeypatch.context() as m:
        m.setattr(celltype_data, "field_ruler", counts)
        cached_examples(out, [data], "train", segmenter, crop=CROP + 8, context=1.5)
    with np.load(seg) as z:
        again = dict(zip(z["sources"].tolist(), z["rulers"].tolist(), strict=True))
    assert len(measured) == len(again) - 1 and again.pop("zheng_d1/001") == celltype_data.NOT_MEASURED
    assert kept.keys() <= again.keys()  # the split changed above: more train fields now
    assert np.allclose([again[k] for k in kept], list(kept.values()), equal_nan=True)


def test_the_weights_are_picked_by_the_white_cells_not_by_the_many_negatives():
    """Val score = mean of white-cell accuracy and mean recall (classes with >= 3 examples):
    a model that gets every negative right and half the white cells scores below one that
    types the white cells and misses a negative."""
    wbc = [CLASSES.index(t) for t in ("neutrophil",) * 3 + ("lymphocyte",) * 3]
    neg = [CLASSES.index("not_wbc")] * 6
    target = np.array(wbc + neg)

    def prob(pred):
        return np.eye(len(CLASSES))[pred]

    half = _scores(prob(wbc[:3] + wbc[:3] + neg), target)  # lymphocytes called neutrophils
    assert half["accuracy"] == 9 / 12 and half["white_cell_accuracy"] == 0.5
    assert half["recall"] == {"neutrophil": 1.0, "lymphocyte": 0.0, "not_wbc": 1.0}
    assert half["score"] == 0.5 * 0.5 + 0.5 * (2 / 3)
    typed = _scores(prob(wbc + [CLASSES.index("neutrophil")] + neg[1:]), target)
    assert typed["white_cell_accuracy"] == 1.0 and typed["recall"]["not_wbc"] == 5 / 6
    assert typed["score"] == 0.5 * 1.0 + 0.5 * (1 + 1 + 5 / 6) / 3
    assert typed["score"] > half["score"]
