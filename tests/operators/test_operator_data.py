"""Darcy and Burgers generators: manufactured and exact solutions, caching, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

from subspaces.operators import (
    burgers,
    burgers_solve,
    darcy_coefficients,
    darcy_flow,
    darcy_solve,
)
from subspaces.operators import data as opdata


def manufactured_error(n: int) -> float:
    """Max nodal error for u = sin(pi x) sin(pi y), a = 1 + x + 2 y^2 (smooth, variable)."""
    x = np.arange(n + 1) / n
    X, Y = np.meshgrid(x, x, indexing="ij")
    a = 1 + X + 2 * Y**2
    u = np.sin(np.pi * X) * np.sin(np.pi * Y)
    ux = np.pi * np.cos(np.pi * X) * np.sin(np.pi * Y)
    uy = np.pi * np.sin(np.pi * X) * np.cos(np.pi * Y)
    f = -(1.0 * ux + 4 * Y * uy) + a * 2 * np.pi**2 * u  # -div(a grad u)
    return float(np.abs(darcy_solve(a, f) - u).max())


def test_darcy_solver_is_second_order_on_a_manufactured_solution():
    e16, e32 = manufactured_error(16), manufactured_error(32)
    assert e32 < 1e-3
    assert math.log2(e16 / e32) == pytest.approx(2.0, abs=0.1)


def test_darcy_solution_is_zero_on_the_boundary_and_symmetric():
    u = darcy_solve(np.full((17, 17), 5.0))
    assert np.all(u[0] == 0) and np.all(u[-1] == 0) and np.all(u[:, 0] == 0)
    np.testing.assert_allclose(u, u.T, atol=1e-15)
    # -5 Lap u = 1: the constant-1 Poisson value at the centre (0.07367) over 5
    assert u[8, 8] == pytest.approx(0.07367 / 5, rel=1e-2)


def test_coefficients_are_thresholded_fields_with_both_phases():
    a = darcy_coefficients(20, 32, seed=3)
    assert set(np.unique(a)) == {3.0, 12.0}
    share = float((a == 12.0).mean())
    assert 0.3 < share < 0.7  # a zero-mean field is positive about half the time
    np.testing.assert_array_equal(a, darcy_coefficients(20, 32, seed=3))


def test_darcy_flow_is_cached_under_a_parameter_hash(tmp_path, monkeypatch):
    first = darcy_flow(4, (4, 8), fine_grid=16, seed=0, cache_dir=tmp_path)
    files = list((tmp_path / "operators").glob("darcy-*.npz"))
    assert len(files) == 1
    # the second call reads the file: the solver is never called
    monkeypatch.setattr(opdata, "darcy_solve", lambda *a, **k: pytest.fail("solved again"))
    second = darcy_flow(4, (4, 8), fine_grid=16, seed=0, cache_dir=tmp_path)
    for n in (4, 8):
        assert (first[n][0] == second[n][0]).all() and (first[n][1] == second[n][1]).all()
    # the coarse grid is the fine one at every second point (the same physical points)
    assert (first[4][1] == first[8][1][:, :, ::2, ::2]).all()
    monkeypatch.undo()
    darcy_flow(4, (4, 8), fine_grid=16, seed=1, cache_dir=tmp_path)  # another seed, another file
    assert len(list((tmp_path / "operators").glob("darcy-*.npz"))) == 2


def cole_hopf(x: np.ndarray, t: float, nu: float, c: float) -> np.ndarray:
    """u = -2 nu phi_x / phi with phi = 2 + c e^{-4 pi^2 nu t} cos(2 pi x) (heat equation)."""
    e = c * math.exp(-4 * math.pi**2 * nu * t)
    return 4 * math.pi * nu * e * np.sin(2 * math.pi * x) / (2 + e * np.cos(2 * math.pi * x))


def test_burgers_matches_the_cole_hopf_solution():
    nu, n = 0.05, 128
    x = np.arange(n) / n
    u = burgers_solve(cole_hopf(x, 0.0, nu, 1.8), 0.3, viscosity=nu)
    exact = cole_hopf(x, 0.3, nu, 1.8)
    assert np.abs(exact).max() > 0.2  # a genuinely nonlinear profile
    assert np.abs(u - exact).max() < 1e-7


def test_burgers_conserves_the_mean_and_dissipates_energy(tmp_path):
    data = burgers(3, (32,), fine_grid=64, t_end=0.2, cache_dir=tmp_path)
    u0, u1 = (t.double().numpy()[:, 0] for t in data[32])
    np.testing.assert_allclose(u1.mean(1), u0.mean(1), atol=1e-6)  # float32 storage
    assert np.all((u1**2).mean(1) < (u0**2).mean(1))


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: darcy_solve(np.zeros((5, 5))), "positive"),
        (lambda: darcy_solve(np.ones((5, 4))), r"square"),
        (lambda: darcy_solve(np.ones((5, 5)), np.ones((4, 4))), r"f must be a number"),
        (lambda: darcy_flow(2, (12,), fine_grid=16), "resolution 12 must divide fine_grid=16"),
        (lambda: burgers_solve(np.array([0.0, np.nan, 1.0, 2.0])), "NaN"),
        (lambda: burgers_solve(np.zeros(8), -1.0), "t_end"),
        (lambda: burgers(2, (24,), fine_grid=64), "resolution 24 must divide"),
    ],
)
def test_bad_input_raises(call, match):
    with pytest.raises(ValueError, match=match):
        call()
