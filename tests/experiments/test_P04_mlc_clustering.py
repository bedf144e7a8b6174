"""P04: manifold linearizing and clustering (Ding et al. 2023): pieces and the fast run."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P04_mlc_clustering import (
    CURVATURE,
    DATASETS,
    METHODS,
    class_subspaces,
    digits_features,
    off_diagonal_mean,
    union_of_manifolds,
)


def test_union_of_manifolds_lies_on_its_paraboloids():
    X, y = union_of_manifolds(50, seed=3, noise=0.0)
    assert X.shape == (150, 5) and torch.bincount(y).tolist() == [50, 50, 50]
    # regenerate the frames with the same generator stream and check the defining equation
    g = torch.Generator().manual_seed(3)
    for k in range(3):
        Q = torch.linalg.qr(torch.randn(5, 3, generator=g, dtype=torch.float64))[0]
        a = torch.randn(50, 2, generator=g, dtype=torch.float64)
        Xk = X[y == k]
        assert torch.allclose(Xk @ Q[:, :2], a, atol=1e-12)
        assert torch.allclose(Xk @ Q[:, 2], CURVATURE * (a.pow(2).sum(1) / 2 - 1), atol=1e-12)
        resid = Xk - Xk @ Q @ Q.T
        assert float(resid.abs().max()) < 1e-12
    # the same seed gives the same data; noise is added on top
    Xn, _ = union_of_manifolds(50, seed=3)
    assert 0.0 < float((Xn - X).std()) < 0.1


def test_digits_features_stratified_subset():
    X, y = digits_features(7, seed=1)
    assert X.shape == (70, 64) and torch.bincount(y).tolist() == [7] * 10
    Xa, _ = digits_features(None, seed=1)
    assert Xa.shape == (1797, 64)


def test_class_subspaces_and_off_diagonal_mean():
    e = torch.eye(4, dtype=torch.float64)
    X = torch.cat([e[[0, 1]].repeat(5, 1), e[[2]].repeat(4, 1) * 3])
    y = torch.tensor([0] * 10 + [1] * 4)
    S = class_subspaces(X, y, energy=0.99)
    assert [s.dim for s in S] == [2, 1]
    assert S[0].principal_angles(S[1]).tolist() == pytest.approx([torch.pi / 2])
    assert off_diagonal_mean(torch.tensor([[1.0, 0.0], [0.5, 1.0]])) == 0.25


@pytest.mark.slow
def test_p04_fast_run():
    result = get("P04").run(True, 0)
    m = result.measured
    assert m["n_seeds"] == 3
    for ds in DATASETS:
        for method in METHODS:
            for metric in ("acc", "nmi"):
                s = m[ds][f"{method}_{metric}"]
                assert len(s["per_seed"]) == 3 and 0.0 <= s["mean"] <= 1.0
        assert 0.0 <= m[ds]["mlc_cos"]["mean"] <= 1.0
    assert set(m["checks"]) == {
        f"{ds}_{metric}_vs_{base}"
        for ds in DATASETS
        for metric in ("acc", "nmi")
        for base in ("kmeans", "spectral")
    } | {f"{ds}_subspaces_near_orthogonal" for ds in DATASETS}
    assert result.passed == all(m["checks"].values())
    assert ("failed:" in result.summary) == (not result.passed)
