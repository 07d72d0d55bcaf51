"""The shipped weights on real test splits: accuracy aims of the first slice.

Marked slow (about a minute on 2 cores); thresholds sit just under the figures in
docs/benchmarks.md, so a regression in the model or the pipeline fails here.
"""

import pytest

from napari_wbc.core.evaluate import evaluate_dataset

pytestmark = pytest.mark.slow

# dataset: (minimum whole-cell Dice, minimum nucleus Dice, maximum count MAE)
AIMS = {
    "zheng_d1": (0.97, 0.95, None),
    "zheng_d2": (0.97, 0.95, None),
    "bccd": (0.90, 0.90, 0.25),
}


@pytest.mark.parametrize("name", sorted(AIMS))
def test_shipped_model_on_test_split(name, datasets, trained_model):
    result = evaluate_dataset(datasets / name, "test", model=trained_model, device="cpu")
    cell, nucleus, count_mae = AIMS[name]
    m = result["metrics"]
    assert m["cell"]["dice"] >= cell
    assert m["nucleus"]["dice"] >= nucleus
    if count_mae is not None:
        assert result["count"]["mean_abs_error"] <= count_mae
