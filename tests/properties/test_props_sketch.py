"""Properties of subspaces.linalg's sketches, leverage scores, Lewis weights and l_p regression."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from prop_helpers import (
    F64,
    NONFINITE_WORDS,
    Rejected,
    dtypes,
    eps,
    gen,
    general,
    lay_out,
    layouts,
    must_reject,
    nonfinite,
    norm2,
    outcome,
    poison,
    scales,
    seeds,
    slack,
    work_dtype,
)

from subspaces.linalg import (
    countsketch,
    distortion,
    gaussian_sketch,
    lewis_weights,
    lp_regression,
    root_leverage_scores,
    sensitivity_sample,
    srht,
)


@st.composite
def tall(draw, max_n: int = 12, max_d: int = 4, allow_bad: bool = True):
    """``(A, finite)``: an ``(n, d)`` matrix, full rank, rank deficient, empty or poisoned."""
    n = draw(st.integers(0, max_n))
    d = draw(st.integers(0, max_d))
    dtype = draw(dtypes)
    g = gen(draw(seeds))
    kind = draw(st.sampled_from(("gauss", "gauss", "deficient", "heavy")))
    A = general(n, d, g, F64, draw(scales))
    if kind == "deficient" and d >= 2:
        A[:, -1] = A[:, 0]
    elif kind == "heavy" and n:
        A[0] *= 100.0  # one heavy row
    A = A.to(dtype)
    if not bool(torch.isfinite(A).all()):  # float16 overflow: scale down to stay finite
        A = general(n, d, g, dtype)
    finite = True
    if allow_bad and n and d and draw(st.sampled_from((False,) * 5 + (True,))):
        A = poison(A, draw(nonfinite), g)
        finite = False
    return lay_out(A, draw(layouts)), finite


def matrix_reasons(A: torch.Tensor, finite: bool) -> list[str]:
    reasons = []
    if A.shape[0] == 0 or A.shape[1] == 0:
        reasons += ["empty", "non-empty", "a"]
    if not finite:
        reasons += NONFINITE_WORDS
    return reasons


def cond(A64: torch.Tensor) -> float:
    s = torch.linalg.svdvals(A64)
    return float(s[0] / s[-1]) if float(s[-1]) > 0 else math.inf


SKETCHES = {"countsketch": countsketch, "srht": srht, "gaussian": gaussian_sketch}


@given(case=tall(), m=st.integers(-1, 20), kind=st.sampled_from(tuple(SKETCHES)), seed=seeds)
def test_sketch_is_a_fixed_linear_map(case, m, kind, seed):
    """``sketch(A) = S A`` with ``S = sketch(I)`` for the same seed, checked in float64."""
    A, finite = case
    n, d = A.shape
    fn = SKETCHES[kind]
    call = lambda: fn(A, m, gen(seed))  # noqa: E731
    reasons = matrix_reasons(A, finite)
    if m < 1:
        reasons += ["m"]
    N = 1 << max(0, (n - 1).bit_length())
    if kind == "srht" and m > N:
        reasons += ["m"]
    if reasons:
        must_reject(call, reasons)
        return
    SA = outcome(call)
    assert tuple(SA.shape) == (m, d) and SA.dtype == A.dtype
    S = fn(torch.eye(n, dtype=A.dtype), m, gen(seed)).to(F64)
    ref = S @ A.to(F64)
    sl = slack(A.dtype, norm2(S) * norm2(A.to(F64)), n)
    err = float((SA.to(F64) - ref).abs().max()) if SA.numel() else 0.0
    assert err <= sl, (err, sl)
    if kind == "srht" and m == N:  # every row kept: an orthonormal transform
        G = SA.to(F64).T @ SA.to(F64)
        G0 = A.to(F64).T @ A.to(F64)
        assert float((G - G0).abs().max()) <= 10 * sl * norm2(A.to(F64)) + 1e-300


@given(case=tall(), p=st.sampled_from((1.0, 2.0, 0.5, 4.0)))
def test_leverage_scores_exact(case, p):
    A, finite = case
    n, d = A.shape
    call = lambda: root_leverage_scores(A, p)  # noqa: E731
    reasons = matrix_reasons(A, finite)
    if not 1 <= p < 4:
        reasons += ["p"]
    if reasons:
        must_reject(call, reasons)
        return
    A64 = A.to(F64)
    c = cond(A64) if n >= d else math.inf
    wd = work_dtype(A.dtype)
    res = outcome(call, may_reject=("rank",))
    if res is Rejected:
        assert n < d or c > 1e-3 / eps(wd), f"full-rank A (cond {c:.2e}) rejected"
        return
    assert n >= d, "an (n, d) matrix with n < d has no full column rank"
    Q = torch.linalg.qr(A64).Q
    ref = Q.square().sum(1)
    tau = res.to(F64) ** (2 / p)
    tol = 100 * eps(wd) * c * c * math.sqrt(n * d)
    assert float((tau - ref).abs().max()) <= tol, (tau, ref, tol)
    assert abs(float(tau.sum()) - d) <= tol * n


@given(case=tall(allow_bad=False), p=st.sampled_from((0.5, 1.0, 1.5, 2.0, 3.0, 4.0)))
def test_lewis_weights_fixed_point(case, p):
    """``converged`` re-verified: ``T(w) = w`` to the tolerance, recomputed in float64."""
    A, _ = case
    n, d = A.shape
    call = lambda: lewis_weights(A, p, tol=1e-6, iters=200)  # noqa: E731
    reasons = matrix_reasons(A, True)
    if not 0 < p < 4:
        reasons += ["p"]
    if reasons:
        must_reject(call, reasons)
        return
    A64 = A.to(F64)
    res = outcome(call, may_reject=("rank",))
    if res is Rejected:
        assert n < d or cond(A64) > 1e-3 / eps(F64) or cond(A64) > 1e10
        return
    w = res.weights.to(F64)
    assert bool((w > 0).all()) and w.shape == (n,)
    B = A64 * w.pow(0.5 - 1 / p)[:, None]
    M = torch.linalg.pinv(B.T @ B)
    lev = ((B @ M) * B).sum(1)  # leverage scores of W^{1/2-1/p} A
    image = (lev * w.pow(2 / p - 1)).pow(p / 2)
    change = float(((image - w).abs() / w).max())
    out_eps = eps(work_dtype(A.dtype))
    if res.converged:
        assert change <= 1e-6 * (1 + 1e-3) + 100 * out_eps * cond(A64) ** 2, change
        assert abs(float(w.sum()) - d) <= 1e-5 * d + 100 * out_eps * n
    if p == 2.0:
        ref = torch.linalg.qr(A64).Q.square().sum(1)
        assert float((w - ref).abs().max()) <= 1e3 * out_eps * cond(A64) ** 2


def _lp_reference(A64: torch.Tensor, b64: torch.Tensor, p: float) -> float:
    """The optimal objective ``min_x ||A x - b||_p^p`` by scipy (LP for p = 1)."""
    import scipy.optimize

    An, bn = A64.numpy(), b64.numpy()
    n, d = An.shape
    if p == 1.0:
        c = np.concatenate([np.zeros(d), np.ones(n)])
        A_ub = np.block([[An, -np.eye(n)], [-An, -np.eye(n)]])
        b_ub = np.concatenate([bn, -bn])
        res = scipy.optimize.linprog(
            c, A_ub=A_ub, b_ub=b_ub, bounds=[(None, None)] * d + [(0, None)] * n
        )
        return float(res.fun)
    x0 = np.linalg.lstsq(An, bn, rcond=None)[0]
    f = lambda x: float(np.sum(np.abs(An @ x - bn) ** p))  # noqa: E731
    grad = lambda x: An.T @ (p * np.sign(An @ x - bn) * np.abs(An @ x - bn) ** (p - 1))  # noqa: E731
    res = scipy.optimize.minimize(f, x0, jac=grad, method="BFGS", options={"gtol": 1e-12})
    return min(float(res.fun), f(x0))


@given(case=tall(allow_bad=False), p=st.sampled_from((1.0, 1.5, 2.0, 3.0)), seed=seeds)
def test_lp_regression_objective(case, p, seed):
    A, _ = case
    n, d = A.shape
    b = torch.randn(n, generator=gen(seed), dtype=F64).to(A.dtype)
    call = lambda: lp_regression(A, b, p)  # noqa: E731
    reasons = matrix_reasons(A, True)
    if reasons:
        must_reject(call, reasons)
        return
    A64, b64 = A.to(F64), b.to(F64)
    res = outcome(call, may_reject=("rank",))
    if res is Rejected:
        assert n < d or cond(A64) > 1e10
        return
    x = res.x.to(F64)
    obj = float((A64 @ x - b64).abs().pow(p).sum())
    wd = work_dtype(A.dtype)
    rel = 10 * eps(wd) * cond(A64) * p
    # the reported objective is the full-problem objective of the returned x
    assert abs(res.objective - obj) <= rel * (obj + float(b64.norm()) ** p) + 1e-12
    ref = _lp_reference(A64, b64, p)
    if res.converged:
        assert res.objective <= ref * (1 + 1e-6) + rel * (ref + 1) + 1e-12, (res.objective, ref)


@given(
    n=st.integers(0, 12),
    m=st.integers(-1, 14),
    p=st.sampled_from((1.0, 2.0, 0.5)),
    kind=st.sampled_from(("uniform", "skewed", "negative", "zero", "nan")),
    seed=seeds,
)
def test_sensitivity_sample(n, m, p, kind, seed):
    g = gen(seed)
    A = torch.randn(n, 2, generator=g, dtype=F64)
    if kind == "uniform":
        s = torch.ones(n, dtype=F64)
    elif kind == "skewed":
        s = torch.rand(n, generator=g, dtype=F64) ** 4
        if n:
            s[0] = 100.0
    elif kind == "negative":
        s = -torch.ones(n, dtype=F64)
    elif kind == "zero":
        s = torch.zeros(n, dtype=F64)
    else:
        s = torch.full((n,), float("nan"), dtype=F64)
    call = lambda: sensitivity_sample(A, s, m, gen(seed), p=p)  # noqa: E731
    reasons = []
    if n == 0:
        reasons += ["empty", "non-empty", "a"]
    if kind in ("negative", "zero") and n:
        reasons += ["scores"]
    if kind == "nan" and n:
        reasons += ["scores", *NONFINITE_WORDS]
    if not 1 <= m <= max(n, 1) or m > n:
        reasons += ["m"]
    if not 1 <= p < 4:
        reasons += ["p"]
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call)
    assert res.indices.shape == (m,) and res.weights.shape == (m,)
    assert bool(((res.indices >= 0) & (res.indices < n)).all())
    assert bool((res.weights > 0).all())
    if kind == "uniform" and m < n:
        torch.testing.assert_close(
            res.weights.to(F64), torch.full((m,), (n / m) ** (1 / p), dtype=F64)
        )


@given(case=tall(allow_bad=False), p=st.sampled_from((1.0, 2.0, 3.0)))
def test_distortion_of_the_full_sample_is_one(case, p):
    A, _ = case
    n = A.shape[0]
    call = lambda: distortion(A, torch.arange(n), torch.ones(n), p, num_x=5)  # noqa: E731
    reasons = matrix_reasons(A, True)
    if reasons:
        must_reject(call, [*reasons, "rows"])
        return
    res = outcome(call)
    nz = A.to(F64).abs().sum(0) > 0  # a zero column gives 0/0 ratios
    if bool(nz.all()):
        assert abs(res.low - 1) <= 1e-12 and abs(res.high - 1) <= 1e-12, (res.low, res.high)


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
