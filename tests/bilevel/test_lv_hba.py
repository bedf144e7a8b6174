"""LV-HBA reaches the closed-form solution of a bilevel problem with coupled constraints."""

import pytest
import torch

from subspaces.bilevel import L2Ball, Polyhedron, lv_hba, split_projector

f64 = torch.float64
A = torch.tensor([2.0, -1.0, 0.5], dtype=f64)
C = torch.tensor([0.0, 0.0, 1.0], dtype=f64)
# Lower level: min_t |t - x|^2 / 2  s.t.  t - x / 2 - C <= 0, so y*(x) = min(x, x / 2 + C) with
# multiplier max(0, x - y*). Upper level F = |x - A|^2 / 2 + |y - y*(A)|^2 / 2 is minimized over
# the feasible set at x* = A, y* = y*(A) = (1, -1, 0.5) (constraint active in coordinate 0 only),
# with lower-level multipliers (1, 0, 0).
Y_STAR = torch.minimum(A, A / 2 + C)
LAM_STAR = (A - Y_STAR).clamp_min(0)


def F(x, y):
    return 0.5 * ((x - A) ** 2).sum() + 0.5 * ((y - Y_STAR) ** 2).sum()


def f(x, y):
    return 0.5 * ((y - x) ** 2).sum()


def g(x, y):
    return y - x / 2 - C


def coupled_set():
    G = torch.cat([-0.5 * torch.eye(3, dtype=f64), torch.eye(3, dtype=f64)], dim=1)
    return split_projector(Polyhedron(G, C.clone()), 3)


def test_reaches_closed_form_solution():
    z = torch.zeros(3, dtype=f64)
    r = lv_hba(
        F,
        f,
        z,
        z,
        g=g,
        project_xy=coupled_set(),
        iters=400,
        alpha=0.2,
        eta=0.5,
        beta=0.5,
        record_every=50,
    )
    assert float((r.x - A).abs().max()) < 1e-4
    assert float((r.y - Y_STAR).abs().max()) < 1e-4
    assert float((r.state["lam"] - LAM_STAR).abs().max()) < 1e-4
    assert float((r.state["theta"] - Y_STAR).abs().max()) < 1e-4
    h = r.history
    assert h.iteration == [0, 50, 100, 150, 200, 250, 300, 350, 400]
    assert max(h.violation) < 1e-10  # (x, y) is projected onto C every step
    assert all(b >= a for a, b in zip(h.time, h.time[1:], strict=False))
    assert h.upper[-1] < 1e-8 < h.upper[0]


def test_without_coupled_projection_the_penalty_is_unbounded():
    # the reformulation needs (x, y) in C: projecting only onto X x Y lets g(x, y) > 0 and the
    # iterates run away (documented in lv_hba's docstring)
    z = torch.zeros(3, dtype=f64)
    r = lv_hba(F, f, z, z, g=g, iters=300, alpha=0.2, eta=0.5, beta=0.5)
    assert float((r.x - A).abs().max()) > 1e-2


def test_lower_set_is_respected():
    z = torch.zeros(3, dtype=f64)
    r = lv_hba(F, f, z, z, lower_set=L2Ball(0.5), iters=50, alpha=0.2, eta=0.5)
    assert float(r.y.norm()) <= 0.5 + 1e-12 and float(r.state["theta"].norm()) <= 0.5 + 1e-12


def test_stops_at_max_seconds():
    z = torch.zeros(3, dtype=f64)
    r = lv_hba(F, f, z, z, g=g, project_xy=coupled_set(), iters=10**6, max_seconds=0.05)
    assert r.iterations < 10**6 and r.history.iteration[-1] == r.iterations


def test_bad_input():
    z = torch.zeros(3, dtype=f64)
    with pytest.raises(ValueError, match="alpha"):
        lv_hba(F, f, z, z, alpha=0.0)
    with pytest.raises(ValueError, match="gamma1"):
        lv_hba(F, f, z, z, gamma1=-1.0)
    with pytest.raises(ValueError, match="p must be"):
        lv_hba(F, f, z, z, p=0.7)
    with pytest.raises(TypeError, match="dtype"):
        lv_hba(F, f, z, z.float())
    with pytest.raises(ValueError, match="non-finite"):
        lv_hba(F, f, torch.full((3,), float("nan"), dtype=f64), z)
    with pytest.raises(ValueError, match="non-finite"):
        lv_hba(lambda x, y: (x * float("nan")).sum(), f, z, z, iters=2)
    with pytest.raises(ValueError, match="lam0"):
        lv_hba(F, f, z, z, g=g, lam0=torch.zeros(2, dtype=f64))
    with pytest.raises(TypeError, match="callable"):
        lv_hba(F, 3, z, z)  # type: ignore[arg-type]
