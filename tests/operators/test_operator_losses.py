"""LpLoss and H1Loss against hand-computed values and closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.operators import H1Loss, LpLoss, central_gradient


def test_relative_l2_by_hand():
    pred = torch.tensor([[1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    target = torch.ones(1, 4, dtype=torch.float64)
    # ||(0, 1, 2, 3)|| / ||(1, 1, 1, 1)|| = sqrt(14) / 2
    assert float(LpLoss(d=1)(pred, target)) == pytest.approx(math.sqrt(14) / 2, rel=1e-15)
    # L1: (0 + 1 + 2 + 3) / 4
    assert float(LpLoss(d=1, p=1)(pred, target)) == pytest.approx(1.5, rel=1e-15)


def test_absolute_norm_is_the_integral_at_every_resolution():
    # ||3||_{L2((0, 2) x (0, 1))} = 3 sqrt(2), whatever the grid
    for n in (4, 16):
        zero, three = torch.zeros(2, 1, n, n), torch.full((2, 1, n, n), 3.0)
        loss = LpLoss(d=2, lengths=(2.0, 1.0), relative=False)
        assert float(loss(zero, three)) == pytest.approx(3 * math.sqrt(2), rel=1e-6)


def test_reductions():
    pred = torch.tensor([[2.0, 2.0], [1.0, 1.0]])
    target = torch.ones(2, 2)
    assert float(LpLoss(d=1, reduction="sum")(pred, target)) == pytest.approx(1.0)
    assert float(LpLoss(d=1, reduction="mean")(pred, target)) == pytest.approx(0.5)


def test_h1_norm_of_a_sine_matches_the_discrete_closed_form():
    # v = sin(2 pi x) on n points: ||v||^2 = 1/2 and the central difference is exactly
    # cos(2 pi x) sin(2 pi h) / h, so ||Dv||^2 = (sin(2 pi h) / h)^2 / 2.
    n = 16
    h = 1.0 / n
    x = torch.arange(n, dtype=torch.float64) * h
    v = torch.sin(2 * math.pi * x)[None]
    expected = math.sqrt(0.5 + (math.sin(2 * math.pi * h) / h) ** 2 / 2)
    loss = H1Loss(d=1, relative=False)
    assert float(loss(torch.zeros_like(v), v)) == pytest.approx(expected, rel=1e-12)
    assert float(H1Loss(d=1)(2 * v, v)) == pytest.approx(1.0, rel=1e-12)


def test_h1_sees_derivatives_that_l2_misses():
    n = 64
    x = torch.arange(n, dtype=torch.float64) / n
    v = torch.sin(2 * math.pi * x)[None]
    wiggle = v + 0.01 * torch.sin(2 * math.pi * 16 * x)[None]
    assert float(H1Loss(d=1)(wiggle, v)) > 5 * float(LpLoss(d=1)(wiggle, v))


def test_nonperiodic_gradient_is_exact_on_a_linear_function():
    x = torch.arange(8, dtype=torch.float64) / 8
    u = (3 * x[:, None] + 0 * x[None, :])[None]
    gx, gy = central_gradient(u, 2, periodic=False)
    torch.testing.assert_close(gx, torch.full_like(u, 3.0), rtol=0, atol=1e-12)
    torch.testing.assert_close(gy, torch.zeros_like(u), rtol=0, atol=1e-12)
    periodic = central_gradient(u, 2)[0]
    assert float((periodic - 3).abs().max()) > 1  # the wrap-around jump


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: LpLoss(d=1)(torch.ones(2, 4), torch.ones(2, 5)), ValueError, "one shape"),
        (lambda: LpLoss(d=1)(torch.ones(2, 4), torch.zeros(2, 4)), ValueError, "zero norm"),
        (lambda: H1Loss(d=1)(torch.ones(2, 4), torch.zeros(2, 4)), ValueError, "zero norm"),
        (
            lambda: LpLoss(d=1)(torch.full((1, 4), float("nan")), torch.ones(1, 4)),
            ValueError,
            "non-finite",
        ),
        (lambda: LpLoss(d=2)(torch.ones(4, 4), torch.ones(4, 4)), ValueError, "grid dims"),
        (lambda: LpLoss(p=0.5), ValueError, "p must be >= 1"),
        (lambda: LpLoss(reduction="max"), ValueError, "'max'"),
        (lambda: H1Loss(d=2, lengths=(1.0,)), ValueError, "one domain length per dimension"),
        (
            lambda: LpLoss(d=1)(torch.ones(1, 4, dtype=torch.int64), torch.ones(1, 4)),
            TypeError,
            "floating",
        ),
    ],
)
def test_bad_input_raises(call, error, match):
    with pytest.raises(error, match=match):
        call()
