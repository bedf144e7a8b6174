"""MLC (P04): the loss, the membership, the estimator on planted subspaces, bad input."""

from __future__ import annotations

import pytest
import torch

from subspaces.clustering import (
    MLC,
    class_conditional_rate,
    clustering_accuracy,
    coding_rate,
    mlc_loss,
)


def two_subspaces(seed=0, per=60):
    g = torch.Generator().manual_seed(seed)
    U = torch.linalg.qr(torch.randn(6, 6, generator=g))[0]
    X = torch.cat(
        [
            torch.randn(per, 2, generator=g) @ U[:, :2].T,
            torch.randn(per, 2, generator=g) @ U[:, 2:4].T,
        ]
    )
    return X, torch.arange(2 * per) // per


CONFIG = dict(
    feature_dim=4,
    hidden_dims=(),
    init_epochs=0,
    epochs=60,
    entropy=0.0,
    batch_size=60,
    random_state=0,
)


@pytest.fixture(scope="module")
def fitted():
    X, y = two_subspaces()
    return MLC(2, **CONFIG).fit(X), X, y


def test_mlc_loss_terms_and_membership():
    g = torch.Generator().manual_seed(1)
    Z = torch.nn.functional.normalize(torch.randn(20, 5, generator=g, dtype=torch.float64), dim=1)
    C = torch.nn.functional.normalize(torch.randn(20, 3, generator=g, dtype=torch.float64), dim=1)
    loss, Pi, parts = mlc_loss(Z, C, eps=0.4, eta=0.5, gamma=0.8, entropy=0.3, sinkhorn_iter=500)
    one = torch.ones(20, dtype=torch.float64)
    assert torch.allclose(Pi.sum(0), one, atol=1e-12) and torch.allclose(Pi.sum(1), one, atol=1e-6)
    ent = float(-(Pi * Pi.log()).sum() / 20)
    expected = -(
        float(coding_rate(Z, 0.4)) - 0.8 * float(class_conditional_rate(Z, Pi, 0.4)) + 0.3 * ent
    )
    assert float(loss) == pytest.approx(expected, rel=1e-10)
    assert float(parts["entropy"]) == pytest.approx(ent, rel=1e-10)


def test_mlc_loss_block_membership_from_grouped_cluster_features():
    # two groups of identical cluster features at 90 degrees: the membership is block uniform
    e = torch.eye(2, dtype=torch.float64)
    C = e[[0] * 5 + [1] * 5]
    Z = torch.nn.functional.normalize(torch.randn(10, 4, dtype=torch.float64), dim=1)
    _, Pi, _ = mlc_loss(Z, C, eta=0.02, sinkhorn_iter=50)
    block = torch.block_diag(torch.full((5, 5), 0.2), torch.full((5, 5), 0.2)).double()
    assert torch.allclose(Pi, block, atol=1e-12)


def test_mlc_loss_gradients_flow_to_both_heads():
    g = torch.Generator().manual_seed(2)
    Z = torch.randn(16, 4, generator=g, requires_grad=True)
    C = torch.randn(16, 4, generator=g, requires_grad=True)
    loss, _, _ = mlc_loss(
        torch.nn.functional.normalize(Z, dim=1), torch.nn.functional.normalize(C, dim=1)
    )
    loss.backward()
    assert Z.grad is not None and C.grad is not None
    assert float(Z.grad.abs().sum()) > 0 and float(C.grad.abs().sum()) > 0


def test_mlc_clusters_planted_subspaces_and_makes_them_orthogonal(fitted):
    mlc, X, y = fitted
    assert clustering_accuracy(y, mlc.labels_) == 1.0
    # out-of-sample rule (closest learned subspace) agrees with the clustering on the data
    assert clustering_accuracy(mlc.labels_, mlc.predict(X)) >= 0.95
    Z = mlc.transform(X)
    assert Z.shape == (120, 4)
    assert torch.allclose(Z.norm(dim=1), torch.ones(120), atol=1e-5)
    M = mlc.mean_principal_cosines()
    assert float(M[0, 1]) < 0.1
    assert set(mlc.principal_angles()) == {(0, 1)}
    assert len(mlc.subspaces_) == 2 and all(S.ambient_dim == 4 for S in mlc.subspaces_)
    P = mlc.membership_
    assert P.shape == (120, 120)
    assert torch.allclose(P.sum(0).double(), torch.ones(120, dtype=torch.float64), atol=1e-5)
    h = mlc.history_
    assert len(h["loss"]) == 60 and h["loss"][-1] < h["loss"][0]


def test_mlc_reproducible_with_random_state(fitted):
    _, X, _ = fitted
    again = MLC(2, **{**CONFIG, "epochs": 3}).fit(X)
    twice = MLC(2, **{**CONFIG, "epochs": 3}).fit(X)
    assert torch.equal(again.labels_, twice.labels_)
    for a, b in zip(again.network_.parameters(), twice.network_.parameters(), strict=True):
        assert torch.equal(a, b)


def test_mlc_initialization_phase_and_knn_fallback_run():
    X, _ = two_subspaces(seed=3, per=40)
    mlc = MLC(
        2,
        feature_dim=4,
        hidden_dims=(16,),
        init_epochs=2,
        epochs=2,
        batch_size=40,
        max_full_membership=10,  # forces the nearest-neighbour graph of C
        random_state=0,
    ).fit(X.double())
    assert mlc.membership_ is None and mlc.labels_.shape == (80,)
    assert mlc.transform(X.double()).dtype == torch.float32  # the estimator's dtype


def test_mlc_bad_input():
    X, _ = two_subspaces(per=5)
    Xnan = X.clone()
    Xnan[2, 0] = float("nan")
    with pytest.raises(ValueError, match=r"1 row\(s\) with NaN or Inf values \(rows \[2\]\)"):
        MLC(2).fit(Xnan)
    with pytest.raises(ValueError, match="n_clusters must be >= 1, got 0"):
        MLC(0).fit(X)
    with pytest.raises(ValueError, match="10 sample\\(s\\), fewer than n_clusters=11"):
        MLC(11).fit(X)
    with pytest.raises(ValueError, match="subspace_dim=9 is above the ambient dimension 4"):
        MLC(2, feature_dim=4, subspace_dim=9).fit(X)
    with pytest.raises(ValueError, match=r"eta must be a finite number > 0, got -1\.0"):
        MLC(2, eta=-1.0).fit(X)
    with pytest.raises(TypeError, match="dtype must be"):
        MLC(2, dtype=torch.float16).fit(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        MLC(2).predict(X)


def test_mlc_predict_checks_feature_count(fitted):
    mlc, _, _ = fitted
    with pytest.raises(ValueError, match="X has 5 features, the model was fitted with 6"):
        mlc.predict(torch.randn(3, 5))
