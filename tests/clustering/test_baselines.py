"""Baselines: k-subspaces, EnSC, spectral clustering, k-means; shared input checks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from subspaces.clustering import (
    EnSC,
    KMeans,
    KSubspaces,
    SpectralClustering,
    clustering_accuracy,
    elastic_net_self_expression,
    kmeans,
    mean_principal_cosines,
    spectral_clustering,
)
from subspaces.clustering._checks import check_data, check_n_clusters, check_subspace_dim
from subspaces.linalg.subspace import Subspace


def planted(n_sub=3, dim=3, ambient=20, per=40, seed=0, noise=0.0):
    g = torch.Generator().manual_seed(seed)
    bases = [
        torch.linalg.qr(torch.randn(ambient, dim, generator=g, dtype=torch.float64))[0]
        for _ in range(n_sub)
    ]
    X = torch.cat([(U @ torch.randn(dim, per, generator=g, dtype=torch.float64)).T for U in bases])
    X = X + noise * torch.randn(X.shape, generator=g, dtype=torch.float64)
    y = torch.arange(n_sub).repeat_interleave(per)
    perm = torch.randperm(X.shape[0], generator=g)
    return X[perm], y[perm], bases


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ksubspaces_recovers_planted_subspaces_exactly(seed):
    X, y, bases = planted(seed=seed)
    est = KSubspaces(3, subspace_dim=3, random_state=seed).fit(X)
    assert clustering_accuracy(y, est.labels_) == 1.0
    # each learned subspace is one planted subspace, to rounding
    for S in est.subspaces_:
        best = min(S.distance(Subspace(B)) for B in bases)
        assert best <= 1e3 * torch.finfo(torch.float64).eps
    assert torch.equal(est.predict(X), est.labels_)
    D = est.transform(X)
    assert D.shape == (120, 3) and float(D.gather(1, est.labels_[:, None]).max()) < 1e-10
    assert set(est.principal_angles()) == {(0, 1), (0, 2), (1, 2)}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_ensc_recovers_planted_subspaces_exactly(seed):
    X, y, _ = planted(seed=seed)
    est = EnSC(3, random_state=seed).fit(X)
    assert clustering_accuracy(y, est.labels_) == 1.0
    # subspace-preserving code: (almost) no weight across subspaces
    C = est.coef_.abs()
    same = y[:, None] == y[None, :]
    assert float(C[~same].sum()) <= 1e-3 * float(C[same].sum())
    assert bool((torch.diagonal(est.coef_) == 0).all())


def test_ensc_self_expression_solves_its_problem():
    # optimality (KKT) of each column: |grad_i| <= lam off the support, = -lam sign(c_i) on it
    X, _, _ = planted(n_sub=2, dim=2, ambient=6, per=10, seed=3)
    X = X / X.norm(dim=1, keepdim=True)
    lam, alpha = 0.9, 20.0
    C, _ = elastic_net_self_expression(X, l1_ratio=lam, alpha=alpha, max_iter=5000, tol=1e-12)
    G = X @ X.T
    off = G.abs().fill_diagonal_(0).max(0).values
    gamma = alpha / off
    grad = (1 - lam) * C + gamma[None, :] * (G @ C - G)
    mask = ~torch.eye(20, dtype=torch.bool)
    on = (C != 0) & mask
    scale = float(gamma.max()) * float(torch.linalg.matrix_norm(X, 2)) ** 2
    assert float((grad[on] + lam * C[on].sign()).abs().max()) <= 1e-6 * scale
    assert float(grad[(C == 0) & mask].abs().max()) <= lam + 1e-6 * scale


def test_spectral_clustering_dense_and_sparse_agree():
    import scipy.sparse as sp

    g = torch.Generator().manual_seed(0)
    blocks = [torch.rand(n, n, generator=g, dtype=torch.float64) for n in (90, 80, 100)]
    W = torch.block_diag(*blocks)
    W = W + 1e-3 * torch.rand(270, 270, generator=g, dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(torch.tensor([90, 80, 100]))
    assert clustering_accuracy(y, spectral_clustering(W, 3, random_state=0)) == 1.0
    Ws = sp.csr_matrix(torch.block_diag(*blocks).numpy())
    assert clustering_accuracy(y, spectral_clustering(Ws, 3, random_state=0)) == 1.0


def test_kmeans_ours_and_sklearn_wrapper():
    g = torch.Generator().manual_seed(1)
    centers = torch.tensor([[0.0, 0.0], [6.0, 0.0], [0.0, 6.0]], dtype=torch.float64)
    y = torch.arange(3).repeat_interleave(30)
    X = centers[y] + 0.5 * torch.randn(90, 2, generator=g, dtype=torch.float64)
    labels, C, inertia = kmeans(X, 3, random_state=0)
    assert clustering_accuracy(y, labels) == 1.0 and C.shape == (3, 2) and inertia > 0
    km = KMeans(3, random_state=0).fit(X)
    assert clustering_accuracy(y, km.labels_) == 1.0
    assert torch.equal(km.predict(X), km.labels_)
    assert km.transform(X).shape == (90, 3)
    sc = SpectralClustering(3, gamma=0.1, random_state=0)
    assert clustering_accuracy(y, sc.fit_predict(X)) == 1.0


def test_random_state_reproducible_and_params():
    X, _, _ = planted(noise=0.05, seed=4)
    a = KSubspaces(3, subspace_dim=3, n_init=2, random_state=7).fit_predict(X)
    b = KSubspaces(3, subspace_dim=3, n_init=2, random_state=7).fit_predict(X)
    assert torch.equal(a, b)
    est = EnSC(3, alpha=20.0)
    assert est.get_params()["alpha"] == 20.0
    assert "EnSC(n_clusters=3" in repr(est)
    with pytest.raises(ValueError, match="invalid parameter 'bogus'"):
        est.set_params(bogus=1)
    sk = pytest.importorskip("sklearn.base")
    clone = sk.clone(KSubspaces(3, subspace_dim=2, random_state=0))
    assert clone.subspace_dim == 2


def test_mean_principal_cosines_of_planted():
    e = torch.eye(4, dtype=torch.float64)
    S = [Subspace(e[:, :1]), Subspace.from_vectors(e[:, 0] + e[:, 1])]
    M = mean_principal_cosines(S)
    assert M[0, 1] == pytest.approx(math.cos(math.pi / 4), abs=1e-12)


@pytest.mark.parametrize("Est", [KSubspaces, EnSC, KMeans])
def test_bad_input_errors_name_the_value(Est):
    X = torch.randn(10, 4, dtype=torch.float64)
    Xnan = X.clone()
    Xnan[3, 1] = float("nan")
    Xnan[7, 0] = float("inf")
    with pytest.raises(ValueError, match=r"2 row\(s\) with NaN or Inf values \(rows \[3, 7\]\)"):
        Est(2).fit(Xnan)
    with pytest.raises(ValueError, match="has 10 sample\\(s\\), fewer than n_clusters=11"):
        Est(11).fit(X)
    with pytest.raises(ValueError, match="n_clusters must be >= 1, got 0"):
        Est(0).fit(X)
    with pytest.raises(ValueError, match="n_clusters must be >= 1, got -2"):
        Est(-2).fit(X)
    with pytest.raises(TypeError, match="n_clusters must be an int"):
        Est(2.5).fit(X)
    with pytest.raises(ValueError, match="must be 2-D"):
        Est(2).fit(X[0])


def test_subspace_dim_above_ambient_and_other_checks():
    X = torch.randn(10, 4)
    with pytest.raises(ValueError, match="subspace_dim=5 is above the ambient dimension 4"):
        KSubspaces(2, subspace_dim=5).fit(X)
    with pytest.raises(ValueError, match="subspace_dim must be >= 1, got 0"):
        KSubspaces(2, subspace_dim=0).fit(X)
    with pytest.raises(RuntimeError, match="not fitted"):
        KSubspaces(2).predict(X)
    with pytest.raises(ValueError, match="3 features, the model was fitted with 4"):
        KSubspaces(2, subspace_dim=1, random_state=0).fit(X).predict(torch.randn(2, 3))
    with pytest.raises(TypeError, match="real numbers"):
        check_data(np.array([["a", "b"]]))
    with pytest.raises(ValueError, match="all-zero row"):
        EnSC(2).fit(torch.cat([X, torch.zeros(1, 4)]))
    with pytest.raises(ValueError, match="l1_ratio must be in"):
        EnSC(2, l1_ratio=1.5).fit(X)
    assert check_n_clusters(np.int64(3)) == 3
    assert check_subspace_dim(2, 4) == 2
    assert check_data(np.arange(6).reshape(3, 2)).dtype == torch.float64


def test_spectral_clustering_not_derailed_by_isolated_points():
    # A sparse self-expressive affinity often has a few isolated points or tiny components;
    # each adds an eigenvalue 1 that competed with the clusters' (0.855 accuracy before the
    # regularized embedding, scikit-learn 0.896 on this graph).
    import scipy.sparse as sp

    g = torch.Generator().manual_seed(0)
    blocks = [
        torch.rand(100, 100, generator=g, dtype=torch.float64)
        * (torch.rand(100, 100, generator=g, dtype=torch.float64) < 0.1)
        for _ in range(10)
    ]
    W = torch.block_diag(*blocks)
    W = W + W.T
    y = torch.arange(10).repeat_interleave(100)
    cut = [5, 150, 777, 300, 301]
    for i in cut:
        W[i, :] = 0
        W[:, i] = 0
    W[300, 301] = W[301, 300] = 1.0  # a component of two points
    keep = torch.ones(1000, dtype=torch.bool)
    keep[cut] = False
    for affinity in (sp.csr_matrix(W.numpy()), W):
        labels = spectral_clustering(affinity, 10, random_state=0)
        assert clustering_accuracy(y[keep], labels[keep]) == 1.0
