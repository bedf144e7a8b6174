"""Tests for matrix sensing (factored GD, one-step re-balancing) and robust recovery (SubGM)."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.experiments.registry import get
from subspaces.recovery.robust import (
    l2_gradient_descent,
    outlier_measurements,
    subgradient_method,
)
from subspaces.recovery.sensing import (
    FactoredResult,
    Measurements,
    asymmetric_gd,
    gaussian_measurements,
    psd_target,
    symmetric_gd,
)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def problem(
    n: int = 10, r: int = 2, m: int = 400, *, symmetric: bool = True, seed: int = 0
) -> tuple[torch.Tensor, Measurements]:
    g = gen(seed)
    X = psd_target(n, r, generator=g)
    M = X @ X.T
    meas = gaussian_measurements(m, n, symmetric=symmetric, generator=g)
    return M, meas


# --- measurement operator ---------------------------------------------------------------------


@pytest.mark.parametrize("symmetric", [True, False])
def test_adjoint_identity(symmetric: bool) -> None:
    meas = gaussian_measurements(50, 6, symmetric=symmetric, generator=gen(1))
    M = torch.randn(6, 6, dtype=torch.float64, generator=gen(2))
    z = torch.randn(50, dtype=torch.float64, generator=gen(3))
    lhs = float(meas.apply(M) @ z)
    rhs = float((M * meas.adjoint(z)).sum())
    assert math.isclose(lhs, rhs, rel_tol=1e-12, abs_tol=1e-12)
    if symmetric:
        A = meas.adjoint(z)
        assert torch.allclose(A, A.T)


def test_apply_matches_loop_and_batches() -> None:
    meas = gaussian_measurements(7, 4, 5, symmetric=False, generator=gen(0))
    M = torch.randn(3, 4, 5, dtype=torch.float64, generator=gen(1))
    batched = meas.apply(M)
    loop = torch.stack(
        [torch.stack([(A * Mi).sum() for A in meas.matrices]) / math.sqrt(7) for Mi in M]
    )
    assert batched.shape == (3, 7) and torch.allclose(batched, loop)
    assert meas.adjoint(torch.ones(2, 7, dtype=torch.float64)).shape == (2, 4, 5)


def test_rip_scaling() -> None:
    meas = gaussian_measurements(3000, 8, generator=gen(0))
    X = psd_target(8, 2, generator=gen(1))
    M = X @ X.T
    ratio = float(meas.apply(M).norm() ** 2 / M.norm() ** 2)
    assert abs(ratio - 1) < 0.1


# --- factored gradient descent ----------------------------------------------------------------


def test_exact_parameterized_symmetric_gd_is_linear() -> None:
    M, meas = problem()
    res = symmetric_gd(meas, meas.apply(M), 2, steps=400, init_scale=0.5, target=M, generator=gen())
    assert isinstance(res, FactoredResult) and res.errors.shape == (401,)
    assert float(res.errors[-1]) < 1e-10
    # linear: the log-error falls by a steady amount per 50 steps while above the floor
    e = res.errors
    assert float(e[150]) < 1e-2 * float(e[50]) and float(e[250]) < 1e-2 * float(e[150])
    assert torch.allclose(res.estimate, M, atol=1e-8)


def test_overparameterized_symmetric_gd_is_sublinear() -> None:
    M, meas = problem()
    res = symmetric_gd(
        meas, meas.apply(M), 4, steps=1000, init_scale=0.5, target=M, generator=gen()
    )
    e = res.errors
    assert float(e[-1]) > 1e-5  # far from converged
    assert 0.2 < float(e[1000] / e[500]) < 0.9  # ~ 1/T: halves when T doubles


def test_rebalancing_step_keeps_product_and_speeds_up() -> None:
    M, meas = problem(symmetric=False)
    y = meas.apply(M)
    vanilla = asymmetric_gd(meas, y, 4, steps=700, init_scale=1e-2, target=M, generator=gen())
    fixed = asymmetric_gd(
        meas, y, 4, steps=700, init_scale=1e-2, rebalance_at=300, target=M, generator=gen()
    )
    assert torch.equal(vanilla.errors[:301], fixed.errors[:301])
    assert math.isclose(float(fixed.errors[301]), float(fixed.errors[300]), rel_tol=1e-8)
    assert fixed.rebalance_step == 300 and vanilla.rebalance_step is None
    assert float(fixed.errors[-1]) < 1e-10 < 1e-4 < float(vanilla.errors[-1])
    sv = torch.linalg.svdvals(fixed.G)
    assert float(sv.max()) < 2  # G stays near the isometry the re-balancing made it


def test_residual_history_without_target() -> None:
    M, meas = problem()
    res = symmetric_gd(meas, meas.apply(M), 2, steps=300, init_scale=0.5, generator=gen())
    assert float(res.errors[-1]) < 1e-10 and float(res.errors[0]) > 0.5


# --- robust recovery --------------------------------------------------------------------------


def test_subgm_beats_l2_with_outliers() -> None:
    M, meas = problem(10, 2, 640)
    y, bad = outlier_measurements(meas, M, 0.25, generator=gen(5))
    assert int(bad.sum()) == 160
    l1 = subgradient_method(meas, y, 10, target=M, generator=gen(6))
    l2 = l2_gradient_descent(meas, y, 10, steps=600, target=M, generator=gen(6))
    assert float(l1.errors[-1]) <= 1e-6
    assert float(l2.errors.min()) >= 1e-2


def test_outliers_zero_fraction_is_clean() -> None:
    M, meas = problem()
    y, bad = outlier_measurements(meas, M, 0.0, generator=gen())
    assert not bool(bad.any()) and torch.equal(y, meas.apply(M))


# --- validation -------------------------------------------------------------------------------


def test_bad_inputs_raise() -> None:
    M, meas = problem()
    y = meas.apply(M)
    with pytest.raises(ValueError, match="rank k must be <="):
        symmetric_gd(meas, y, 11)
    with pytest.raises(ValueError, match="rank k must be <="):
        subgradient_method(meas, y, 11)
    with pytest.raises(ValueError, match="rank must be <= n"):
        psd_target(5, 6)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        outlier_measurements(meas, M, 0.5)
    with pytest.raises(ValueError, match=r"\[0, 0.5\)"):
        outlier_measurements(meas, M, -0.1)
    bad = y.clone()
    bad[3] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        symmetric_gd(meas, bad, 2)
    with pytest.raises(ValueError, match="non-finite"):
        subgradient_method(meas, bad, 2)
    Mn = M.clone()
    Mn[0, 0] = float("inf")
    with pytest.raises(ValueError, match="non-finite"):
        outlier_measurements(meas, Mn, 0.1)
    with pytest.raises(ValueError, match="entries"):
        symmetric_gd(meas, y[:-1], 2)
    with pytest.raises(ValueError, match="rebalance_at"):
        asymmetric_gd(meas, y, 2, steps=10, rebalance_at=10)
    with pytest.raises(ValueError, match="decay"):
        subgradient_method(meas, y, 2, decay=1.5)
    with pytest.raises(ValueError, match="lr"):
        symmetric_gd(meas, y, 2, lr=0.0)
    with pytest.raises(TypeError, match="k must be an int"):
        symmetric_gd(meas, y, 2.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not symmetric"):
        Measurements(torch.randn(3, 4, 4, dtype=torch.float64, generator=gen()), symmetric=True)
    with pytest.raises(ValueError, match="square"):
        gaussian_measurements(5, 3, 4, symmetric=True)
    with pytest.raises(ValueError, match="trailing shape"):
        meas.apply(torch.zeros(3, 3, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_targets_and_rebalancing(dtype: torch.dtype) -> None:
    """float16/bfloat16 are accepted dtypes: the factorizations run in float32 (no CPU kernels)."""
    X = psd_target(6, 2, condition=4.0, dtype=dtype, generator=gen())
    assert X.dtype == dtype
    lam = torch.linalg.eigvalsh(X.double() @ X.double().T)[-2:]
    eps = torch.finfo(dtype).eps
    assert torch.allclose(lam, torch.tensor([0.25, 1.0], dtype=torch.float64), atol=20 * eps)
    meas = gaussian_measurements(60, 6, symmetric=False, dtype=dtype, generator=gen(1))
    y = meas.apply(X @ X.T)
    res = asymmetric_gd(meas, y, 3, steps=4, rebalance_at=1, generator=gen(2))
    assert res.F.dtype == dtype and bool(torch.isfinite(res.errors).all())


@pytest.mark.parametrize("dtype", [torch.int64, torch.bool, "float32"])
def test_non_float_dtypes_rejected(dtype) -> None:
    with pytest.raises(TypeError, match="dtype"):
        gaussian_measurements(5, 3, dtype=dtype)
    with pytest.raises(TypeError, match="dtype"):
        psd_target(4, 2, dtype=dtype)


@pytest.mark.parametrize(
    "run",
    [
        lambda meas, y: symmetric_gd(meas, y, 2, lr=50.0, steps=30),
        lambda meas, y: asymmetric_gd(meas, y, 2, lr=50.0, steps=30),
        lambda meas, y: l2_gradient_descent(meas, y, 2, lr=50.0, steps=30),
        lambda meas, y: subgradient_method(meas, y, 2, lr=1e30, steps=30),
    ],
)
def test_divergence_raises_instead_of_nan_history(run) -> None:
    """A step size that blows the iterate up is an error naming lr, not a history of inf/nan."""
    M, meas = problem()
    with pytest.raises(ValueError, match="lr"):
        run(meas, meas.apply(M))


def test_outlier_target_shape_named() -> None:
    M, meas = problem()
    with pytest.raises(ValueError, match="target"):
        outlier_measurements(meas, M[:, :-1], 0.1)


# --- reproductions ----------------------------------------------------------------------------


@pytest.mark.parametrize("eid", ["P29"])  # P23's fast run: tests/experiments/test_p17_p18_p23.py
def test_reproduction_fast(eid: str) -> None:
    result = get(eid).run(True, 0)
    assert result.passed, result.summary
