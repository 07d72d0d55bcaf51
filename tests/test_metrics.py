import numpy as np
import pytest

from napari_wbc.core.metrics import binary_metrics, class_map_metrics, mean_metrics


def test_binary_metrics_by_hand():
    ref = np.zeros((10, 10), bool)
    ref[0:4, 0:5] = True  # 20 px
    pred = np.zeros_like(ref)
    pred[0:4, 1:6] = True  # 20 px: 16 TP, 4 FP, 4 FN, 76 TN
    m = binary_metrics(pred, ref)
    assert m["precision"] == pytest.approx(16 / 20)
    assert m["dice"] == pytest.approx(32 / 40)
    assert m["miou"] == pytest.approx(0.5 * (16 / 24 + 76 / 84))
    assert m["me"] == pytest.approx(8 / 100)
    assert m["fpr"] == pytest.approx(4 / 80)
    assert m["fnr"] == pytest.approx(4 / 20)


def test_empty_prediction_of_empty_reference_is_perfect():
    z = np.zeros((5, 5), bool)
    m = binary_metrics(z, z)
    assert (m["precision"], m["dice"], m["miou"], m["me"], m["fpr"], m["fnr"]) == (1, 1, 1, 0, 0, 0)
    missed = binary_metrics(z, ~z)
    assert missed["dice"] == 0 and missed["fnr"] == 1 and missed["precision"] == 0


def test_regions_of_class_maps():
    ref = np.array([[0, 1, 1, 2], [0, 1, 2, 2]])
    pred = np.array([[0, 1, 2, 2], [1, 1, 2, 0]])
    m = class_map_metrics(pred, ref)
    # cell: ref 6 px, pred 6 px, overlap 5
    assert m["cell"]["dice"] == pytest.approx(10 / 12)
    # cytoplasm: ref {01,02,11}, pred {01,10,11}: overlap 2
    assert m["cytoplasm"]["dice"] == pytest.approx(4 / 6)
    # nucleus: ref {03,12,13}, pred {02,03,12}: overlap 2
    assert m["nucleus"]["dice"] == pytest.approx(4 / 6)
    with pytest.raises(ValueError):
        class_map_metrics(pred, ref[:, :3])


def test_mean_over_images():
    a = class_map_metrics(np.array([[1, 2]]), np.array([[1, 2]]))
    b = class_map_metrics(np.array([[0, 0]]), np.array([[1, 2]]))
    assert mean_metrics([a, b])["cell"]["dice"] == pytest.approx(0.5)
