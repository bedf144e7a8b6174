"""The regularization path of one-layer attention (P16): projections, excess loss, path, errors."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.representations import attention_svm, directional_correlation, make_attention_data
from subspaces.representations.attention_path import (
    _project,
    attention_excess_loss,
    attention_regularization_path,
)


def _dense_loss(W, X, Z, y, v):
    s = torch.softmax(torch.einsum("ntd,de,ne->nt", X, W, Z), dim=-1)
    u = y * torch.einsum("ntd,d,nt->n", X, v, s)
    return torch.nn.functional.softplus(-u).mean()


def _problem(seed=0, n=3, T=3, d=8):
    data = make_attention_data(n, T, d, generator=torch.Generator().manual_seed(seed))
    return data["X"], data["Z"], data["y"], data["v"], data["alpha"], data["scores"]


def test_nuclear_projection_shrinks_singular_values_onto_the_l1_ball():
    U, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    V, _ = torch.linalg.qr(torch.randn(5, 5, dtype=torch.float64))
    W = U @ torch.diag(torch.tensor([3.0, 1.0, 0.5, 0.0, 0.0], dtype=torch.float64)) @ V.T
    P = _project(W, 2.0, "nuclear")
    # l1-ball projection of (3, 1, 0.5) onto radius 2 is (2, 0, 0): theta = 1
    torch.testing.assert_close(P, 2.0 * U[:, :1] @ V[:, :1].T, rtol=0, atol=1e-12)
    # variational inequality of a Euclidean projection: <W - P, Y - P> <= 0 on the ball
    g = torch.Generator().manual_seed(1)
    for _ in range(50):
        Y = torch.randn(5, 5, dtype=torch.float64, generator=g)
        Y = Y * (2.0 / float(torch.linalg.svdvals(Y).sum()))
        assert float(((W - P) * (Y - P)).sum()) <= 1e-12
    inside = W * (1.0 / float(torch.linalg.svdvals(W).sum()))
    assert torch.equal(_project(inside, 2.0, "nuclear"), inside)
    torch.testing.assert_close(_project(W, 1.0, "fro").norm(), torch.tensor(1.0).double())


def test_excess_loss_equals_the_dense_difference_where_it_does_not_cancel():
    X, Z, y, v, _, scores = _problem()
    W = 0.7 * torch.randn(8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    infimum = torch.nn.functional.softplus(-scores.max(1).values).mean()
    dense = _dense_loss(W, X, Z, y, v) - infimum
    assert float(dense) > 1e-3
    torch.testing.assert_close(attention_excess_loss(W, X, Z, y, v), dense, rtol=1e-12, atol=0)


@pytest.mark.parametrize("norm", ["fro", "nuclear"])
def test_path_solutions_are_stationary_on_the_sphere_and_beat_feasible_points(norm):
    X, Z, y, v, _, _ = _problem(seed=3)
    R = 3.0
    path = attention_regularization_path(X, Z, y, v, [1.0, R], norm=norm, tol=1e-8)
    W = path.solutions[-1]
    size = float(W.norm()) if norm == "fro" else float(torch.linalg.svdvals(W).sum())
    assert size == pytest.approx(R, rel=1e-9)
    # KKT recomputed from the dense loss (accurate at this radius): -g attains its dual norm
    Wg = W.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(_dense_loss(Wg, X, Z, y, v), Wg)
    dual = float(g.norm()) if norm == "fro" else float(torch.linalg.matrix_norm(g, ord=2))
    assert float((-g * W).sum()) / (R * dual) == pytest.approx(1.0, abs=1e-6)
    assert path.converged == [True, True] and path.kkt_residual[-1] <= 1e-8
    # no feasible point nearby does better (a local minimizer on the ball)
    best = float(_dense_loss(W, X, Z, y, v))
    gen = torch.Generator().manual_seed(4)
    for _ in range(30):
        Y = _project(W + 0.05 * torch.randn(8, 8, dtype=torch.float64, generator=gen), R, norm)
        assert float(_dense_loss(Y, X, Z, y, v)) >= best - 1e-12


def test_path_of_a_single_pair_tends_to_the_svm_direction():
    # one sequence, two tokens: both SVMs are a z^T / (|a|^2 |z|^2) with a = x_alpha - x_other
    X, Z, y, v, alpha, _ = _problem(seed=5, n=1, T=2, d=4)
    svm = attention_svm(X, Z, alpha)
    path = attention_regularization_path(X, Z, y, v, [0.5 * svm.norm, 30 * svm.norm])
    corrs = [directional_correlation(W, svm.W) for W in path.solutions]
    assert corrs[-1] > 1 - 1e-9  # the gradient is a multiple of a z^T at every point


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(radii=[]), "radii"),
        (dict(radii=[2.0, 1.0]), "increasing"),
        (dict(radii=[-1.0]), "positive"),
        (dict(radii=[math.inf]), "finite"),
        (dict(radii=[1.0], norm="l1"), "norm"),
        (dict(radii=[1.0], max_iter=0), "max_iter"),
    ],
)
def test_bad_path_arguments_raise(kwargs, match):
    X, Z, y, v, _, _ = _problem()
    with pytest.raises(ValueError, match=match):
        attention_regularization_path(X, Z, y, v, **kwargs)
