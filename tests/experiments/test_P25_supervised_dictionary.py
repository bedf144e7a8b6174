"""P25: supervised dictionary learning with auxiliary covariates (Lee, Lyu & Yao)."""

from __future__ import annotations

import numpy as np
import pytest

from subspaces.experiments import get
from subspaces.experiments.P25_supervised_dictionary import (
    DISC_STD,
    NUISANCE_STD,
    make_data,
    two_stage_accuracy,
)


def test_data_has_a_low_variance_discriminative_direction() -> None:
    d = make_data(0, 3000, 10)
    X, v = d["X_train"], d["direction"]
    along = X @ v
    assert np.std(along) == pytest.approx(np.hypot(DISC_STD, 0.3), rel=0.05)
    top = np.linalg.svd(X - X.mean(0), compute_uv=False)[:5] / np.sqrt(len(X))
    assert np.all(top > 0.9 * NUISANCE_STD)  # five nuisance directions dominate the variance
    # The label depends on the weak direction: its correlation with y is strong.
    assert np.corrcoef(along, d["y_train"])[0, 1] > 0.5


def test_pca_pipeline_misses_the_discriminative_direction() -> None:
    acc = two_stage_accuracy(make_data(1, 300, 1000), "pca", 0)
    assert acc < 0.7  # PCA(3) keeps nuisance directions; only the covariate helps


@pytest.mark.slow
def test_p25_fast_run() -> None:
    result = get("P25").run(True, 0)
    m = result.measured
    assert set(m["accuracy"]) == {"SDL", "PCA+LR", "DL+LR"}
    assert m["gain_sdl_minus_pca"]["n"] == 3
    assert result.headline == ("gain_sdl_minus_pca", "gain_sdl_minus_dl")
