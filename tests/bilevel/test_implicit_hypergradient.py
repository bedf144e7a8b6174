"""The CG implicit hypergradient against the closed form on a quadratic bilevel problem."""

import pytest
import torch

from subspaces.bilevel import Box, aid_solve, implicit_hypergradient

f64 = torch.float64


def quadratic(seed=0, n=6, d=4):
    gen = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=f64))
    H = Q @ torch.diag(torch.logspace(0, 2, n, dtype=f64)) @ Q.T  # known spectrum [1, 100]
    Bm = torch.randn(n, d, generator=gen, dtype=f64)
    t = torch.randn(n, generator=gen, dtype=f64)
    D = torch.diag(torch.linspace(0.5, 1.5, d, dtype=f64))

    def g(x, y):
        return 0.5 * y @ H @ y - y @ (Bm @ x)

    def F(x, y):
        return 0.5 * ((y - t) ** 2).sum() + 0.5 * x @ D @ x

    def y_star(x):
        return torch.linalg.solve(H, Bm @ x)

    def hypergrad(x):  # d/dx of F(x, H^-1 B x)
        return Bm.T @ torch.linalg.solve(H, y_star(x) - t) + D @ x

    return F, g, y_star, hypergrad, (H, Bm, t, D)


def test_matches_closed_form():
    F, g, y_star, hypergrad, _ = quadratic()
    x = torch.tensor([0.3, -1.0, 2.0, 0.5], dtype=f64)
    h, solve = implicit_hypergradient(F, g, x, y_star(x), rtol=1e-13)
    assert solve.converged
    # ||e|| <= cond(H) ||r|| / ||b||-type bound: rtol 1e-13 with cond 100 leaves ~1e-11
    torch.testing.assert_close(h, hypergrad(x), atol=1e-8, rtol=0)


def test_aid_reaches_the_optimum():
    F, g, _, hypergrad, (H, Bm, t, D) = quadratic()
    # optimum: Bm^T H^-1 (H^-1 Bm x - t) + D x = 0
    Hinv_B = torch.linalg.solve(H, Bm)
    x_opt = torch.linalg.solve(Hinv_B.T @ Hinv_B + D, Hinv_B.T @ t)
    z = torch.zeros(4, dtype=f64)
    r = aid_solve(
        F,
        g,
        z,
        torch.zeros(6, dtype=f64),
        outer_iters=300,
        lr=0.5,
        inner_steps=20,
        inner_lr=0.015,
        cg_iters=30,
        cg_rtol=1e-12,
        record_every=100,
    )
    assert float((r.x - x_opt).abs().max()) < 1e-6
    assert float(hypergrad(r.x).norm()) < 1e-6
    assert r.history.grad_norm[-1] < 1e-5


def test_aid_projects_onto_upper_set():
    F, g, *_ = quadratic()
    z = torch.zeros(4, dtype=f64)
    r = aid_solve(
        F,
        g,
        z,
        torch.zeros(6, dtype=f64),
        upper_set=Box(0.0, 0.01),
        outer_iters=5,
        inner_lr=lambda x: 0.01,
    )
    assert bool((r.x >= 0).all() and (r.x <= 0.01).all())


def test_bad_input():
    F, g, y_star, *_ = quadratic()
    x = torch.zeros(4, dtype=f64)
    with pytest.raises(ValueError, match="non-finite"):
        implicit_hypergradient(lambda a, b: b.sum() * float("inf"), g, x, y_star(x))
    with pytest.raises(TypeError, match="dtype"):
        implicit_hypergradient(F, g, x, y_star(x).float())
    with pytest.raises(ValueError, match="scalar"):
        implicit_hypergradient(lambda a, b: b, g, x, y_star(x))
    with pytest.raises(ValueError, match="positive definite"):
        implicit_hypergradient(
            F, lambda a, b: -0.5 * (b * b).sum() + b @ a.sum().expand(6), x, y_star(x) + 1
        )
    with pytest.raises(ValueError, match="lr"):
        aid_solve(F, g, x, y_star(x), lr=0.0)
    with pytest.raises(ValueError, match="inner_lr"):
        aid_solve(F, g, x, y_star(x), inner_lr=lambda a: -1.0)
    with pytest.raises(ValueError, match="grad_y g"):
        aid_solve(F, lambda a, b: (b * b).sum() * 1e308 * 1e308, x, y_star(x), outer_iters=1)
