"""Projections against scipy's constrained minimizer and their KKT conditions (float64)."""

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from subspaces.bilevel import (
    Box,
    L1Ball,
    L2Ball,
    NonNegative,
    Polyhedron,
    Product,
    Reals,
    Simplex,
    split_projector,
)

f64 = torch.float64


def _scipy_projection(v, constraints=(), bounds=None):
    v = v.numpy()
    common = {"jac": lambda u: u - v, "bounds": bounds, "constraints": constraints}
    res = minimize(
        lambda u: 0.5 * np.sum((u - v) ** 2),
        np.zeros_like(v),
        method="SLSQP",
        options={"ftol": 1e-14, "maxiter": 500},
        **common,
    )
    if not res.success:  # older SLSQP (scipy 1.11) can stop in its line search: a second solver
        res = minimize(
            lambda u: 0.5 * np.sum((u - v) ** 2),
            res.x,
            method="trust-constr",
            hess=lambda u: np.eye(len(v)),
            options={"gtol": 1e-12, "xtol": 1e-14, "maxiter": 5000},
            **common,
        )
    assert res.success, res.message
    return torch.from_numpy(res.x)


@pytest.fixture
def vecs():
    gen = torch.Generator().manual_seed(0)
    return [3 * torch.randn(6, generator=gen, dtype=f64) for _ in range(5)]


def test_box_matches_scipy(vecs):
    lo = torch.tensor([-1.0, 0.0, -2.0, -0.5, 0.0, 1.0], dtype=f64)
    hi = lo + torch.tensor([2.0, 0.5, 1.0, 1.0, 3.0, 0.1], dtype=f64)
    S = Box(lo, hi)
    for v in vecs:
        ref = _scipy_projection(v, bounds=list(zip(lo.tolist(), hi.tolist(), strict=True)))
        torch.testing.assert_close(S.project(v), ref, atol=1e-7, rtol=0)


def test_simplex_kkt_and_scipy(vecs):
    S = Simplex(2.0)
    for v in vecs:
        u = S.project(v)
        # KKT: u >= 0, sum u = r, v - u = tau on the support and v_i <= tau off it.
        assert bool((u >= 0).all()) and abs(float(u.sum()) - 2.0) < 1e-12
        supp = u > 0
        tau = (v - u)[supp]
        assert float(tau.max() - tau.min()) < 1e-12
        assert bool((v[~supp] <= tau[0] + 1e-12).all())
        cons = [{"type": "eq", "fun": lambda z: z.sum() - 2.0}]
        ref = _scipy_projection(v, cons, bounds=[(0, None)] * 6)
        torch.testing.assert_close(u, ref, atol=1e-6, rtol=0)


def test_l1_ball_kkt_and_scipy(vecs):
    S = L1Ball(1.5)
    for v in vecs:
        u = S.project(v)
        assert abs(float(u.abs().sum()) - 1.5) < 1e-12  # these v lie outside the ball
        supp = u != 0
        theta = ((v - u) * torch.sign(u))[supp]
        assert float(theta.max() - theta.min()) < 1e-12 and float(theta.min()) > 0
        assert bool((v[~supp].abs() <= theta[0] + 1e-12).all())
        # independent reference: soft-threshold at the level found by bisection on ||.||_1 = r
        lo, hi = 0.0, float(v.abs().max())
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            lo, hi = (mid, hi) if float((v.abs() - mid).clamp_min(0).sum()) > 1.5 else (lo, mid)
        ref = torch.sign(v) * (v.abs() - 0.5 * (lo + hi)).clamp_min(0)
        torch.testing.assert_close(u, ref, atol=1e-12, rtol=0)
    inside = torch.tensor([0.1, -0.2], dtype=f64)
    assert torch.equal(S.project(inside), inside)


def test_l2_ball_and_center(vecs):
    c = torch.ones(6, dtype=f64)
    S = L2Ball(2.0, center=c)
    for v in vecs:
        u = S.project(v)
        if float((v - c).norm()) > 2.0:
            assert abs(float((u - c).norm()) - 2.0) < 1e-12
            # u - c is parallel to v - c
            cos = float((u - c) @ (v - c)) / (float((u - c).norm()) * float((v - c).norm()))
            assert abs(cos - 1.0) < 1e-12
        else:
            assert torch.equal(u, v)


def test_product_nonnegative_reals():
    S = Product(((2, NonNegative()), (3, Simplex()), (1, Reals())))
    v = torch.tensor([-1.0, 2.0, 0.2, 0.2, 0.2, -7.0], dtype=f64)
    u = S.project(v)
    torch.testing.assert_close(u[:2], torch.tensor([0.0, 2.0], dtype=f64))
    torch.testing.assert_close(u[2:5], torch.full((3,), 1 / 3, dtype=f64))
    assert float(u[5]) == -7.0
    assert S.violation(u) < 1e-15 and S.violation(v) > 1.0


def test_polyhedron_matches_scipy_and_kkt():
    gen = torch.Generator().manual_seed(1)
    G = torch.randn(4, 7, generator=gen, dtype=f64)
    h = torch.randn(4, generator=gen, dtype=f64)
    P = Polyhedron(G, h)
    for _ in range(5):
        v = 3 * torch.randn(7, generator=gen, dtype=f64)
        u = P.project(v)
        cons = [{"type": "ineq", "fun": lambda z: h.numpy() - G.numpy() @ z}]
        torch.testing.assert_close(u, _scipy_projection(v, cons), atol=1e-6, rtol=0)
        assert P.violation(u) < 1e-10 and P.last_kkt_residual < 1e-10
    inside = torch.linalg.lstsq(G, h - 1.0).solution  # G u = h - 1 < h
    assert torch.equal(P.project(inside), inside)


def test_polyhedron_degenerate_boundary_point():
    # SVM-type constraints with many rows exactly active: the projection must leave the point
    G = torch.cat([-torch.eye(3, dtype=f64), -torch.eye(3, dtype=f64)], dim=1)
    P = Polyhedron(G, -torch.ones(3, dtype=f64))
    v = torch.tensor([1.0, 0.5, 2.0, 0.0, 0.5, 0.0], dtype=f64)  # rows 1, 2 active, row 3 slack
    torch.testing.assert_close(P.project(v), v, atol=1e-10, rtol=0)


def test_split_projector():
    G = torch.tensor([[-0.5, 1.0]], dtype=f64)
    proj = split_projector(Polyhedron(G, torch.zeros(1, dtype=f64)), 1)
    x, y = proj(torch.tensor([2.0], dtype=f64), torch.tensor([3.0], dtype=f64))
    assert float(y - x / 2) <= 1e-12
    with pytest.raises(TypeError, match="ConvexSet"):
        split_projector("box", 1)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Box(1.0, 0.0), "empty"),
        (lambda: Box(float("nan"), 1.0), "NaN"),
        (lambda: Simplex(0.0), "radius"),
        (lambda: L2Ball(-1.0), "radius"),
        (lambda: L1Ball(float("inf")), "radius"),
        (lambda: Product(()), "at least one"),
        (lambda: Polyhedron(torch.ones(2, 3, dtype=f64), torch.ones(2, dtype=f64)), "independent"),
        (lambda: Polyhedron(torch.ones(2, 3, dtype=f64), torch.ones(3, dtype=f64)), "entries"),
    ],
)
def test_bad_sets(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_vectors():
    with pytest.raises(ValueError, match="non-finite"):
        Box(0.0, 1.0).project(torch.tensor([float("nan")], dtype=f64))
    with pytest.raises(ValueError, match="dimensions"):
        L2Ball(1.0).project(torch.ones(2, 2, dtype=f64))
    with pytest.raises(TypeError, match="floating"):
        Simplex().project(torch.ones(3, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        Simplex().project(torch.ones(0, dtype=f64))
    with pytest.raises(ValueError, match="do not match"):
        Box(torch.zeros(2), torch.ones(2)).project(torch.ones(3, dtype=f64))
    with pytest.raises(ValueError, match="coordinates"):
        Product(((2, Reals()),)).project(torch.ones(3, dtype=f64))
