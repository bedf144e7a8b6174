"""Properties of subspaces.recovery: problems, completion, sensing and robust recovery.

Reported errors and histories are recomputed in float64 from the returned factors; every
``converged=True`` is re-verified that way.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from prop_helpers import (
    DTYPES,
    F64,
    HALF,
    NONFINITE_WORDS,
    Rejected,
    dtypes,
    eps,
    gen,
    general,
    must_reject,
    outcome,
    poison,
    seeds,
    work_dtype,
)

from subspaces.recovery import (
    LowRankMatrix,
    Measurements,
    Observations,
    altmin_complete,
    asymmetric_gd,
    gaussian_measurements,
    l2_gradient_descent,
    low_rank_matrix,
    outlier_measurements,
    psd_target,
    sample_entries,
    soft_impute,
    subgradient_method,
    symmetric_gd,
)


# ----- problems -----------------------------------------------------------------------------------
@given(
    m=st.integers(0, 5),
    n=st.integers(0, 5),
    N=st.integers(0, 8),
    defect=st.sampled_from(
        ("none", "none", "negative", "too_big", "float_idx", "length", "nan", "shape", "int_values")
    ),
    dtype=dtypes,
    seed=seeds,
)
def test_observations_validate(m, n, N, defect, dtype, seed):
    g = gen(seed)
    rows = torch.randint(0, max(m, 1), (N,), generator=g)
    cols = torch.randint(0, max(n, 1), (N,), generator=g)
    values = general(N, 1, g, dtype)[:, 0]
    shape: object = (m, n)
    if defect == "negative" and N:
        rows[0] = -1
    elif defect == "too_big" and N:
        cols[-1] = n
    elif defect == "float_idx":
        rows = rows.double()
    elif defect == "length":
        cols = cols[:-1] if N else torch.zeros(1, dtype=torch.long)
    elif defect == "nan" and N:
        values = poison(values, float("nan"), g)
    elif defect == "shape":
        shape = [m, n]
    elif defect == "int_values":
        values = values.to(torch.int64)
    call = lambda: Observations(rows, cols, values, shape)  # noqa: E731
    reasons = []
    if m < 1 or n < 1:
        reasons += ["shape[0]", "shape[1]", "shape"]
    if N == 0:
        reasons += ["empty", "rows", "cols"]
    if defect == "negative" and N:
        reasons += ["rows"]
    if defect == "too_big" and N:
        reasons += ["cols"]
    if defect == "float_idx":
        reasons += ["rows"]
    if defect == "length":
        reasons += ["cols"]
    if defect == "nan" and N:
        reasons += ["values", *NONFINITE_WORDS]
    if defect == "shape":
        reasons += ["shape"]
    if defect == "int_values":
        reasons += ["values"]
    if reasons:
        must_reject(call, reasons)
        return
    obs = outcome(call)
    assert obs.num_observed == N and obs.fraction == N / (m * n)
    _, mask = obs.to_dense()
    assert bool(mask[obs.rows, obs.cols].all()) and int(mask.sum()) == len(
        set(zip(rows.tolist(), cols.tolist(), strict=True))
    )


@given(
    m=st.integers(0, 6),
    n=st.integers(0, 6),
    rank=st.integers(0, 4),
    dtype=st.sampled_from((*DTYPES, torch.int64)),
    coherence=st.sampled_from(("incoherent", "coherent", "weird")),
    seed=seeds,
)
def test_low_rank_matrix(m, n, rank, dtype, coherence, seed):
    call = lambda: low_rank_matrix(  # noqa: E731
        m, n, rank, coherence=coherence, dtype=dtype, generator=gen(seed)
    )
    reasons = []
    if m < 1:
        reasons += ["m"]
    if n < 1:
        reasons += ["n"]
    if rank < 1 or rank > min(m, n):
        reasons += ["rank"]
    if coherence == "weird":
        reasons += ["coherence"]
    if not dtype.is_floating_point:
        reasons += ["dtype"]
    if reasons:
        must_reject(call, reasons)
        return
    M = outcome(call)
    assert M.shape == (m, n) and M.rank == rank and M.A.dtype == dtype
    D = M.A.to(F64) @ M.B.to(F64).T
    assert int(torch.linalg.matrix_rank(D)) == rank
    # relative_error against the dense reference, for a perturbed estimate
    U = M.A.to(F64) + 0.01 * general(m, rank, gen(seed + 1), F64)
    ref = float(torch.linalg.matrix_norm(U @ M.B.to(F64).T - D) / torch.linalg.matrix_norm(D))
    assert abs(M.relative_error(U, M.B.to(F64)) - ref) <= 1e-10 * (1 + ref)
    assert M.relative_error(M.A, M.B) <= 1e-12


@given(
    m=st.integers(0, 6),
    n=st.integers(0, 6),
    dtype=dtypes,
    fraction=st.sampled_from((None, 0.3, 1.0, 0.0, 1.5)),
    count=st.sampled_from((None, 1, 5, 0, 100)),
    lowrank=st.booleans(),
    seed=seeds,
)
def test_sample_entries(m, n, dtype, fraction, count, lowrank, seed):
    g = gen(seed)
    if lowrank and m and n:
        src = low_rank_matrix(m, n, 1, dtype=dtype, generator=g)
        D = src.A.to(F64) @ src.B.to(F64).T
    else:
        src = general(m, n, g, dtype)
        D = src.to(F64)
    call = lambda: sample_entries(src, fraction, count=count, generator=gen(seed))  # noqa: E731
    reasons = []
    if m == 0 or n == 0:
        reasons += ["empty", "non-empty", "m"]
    if (fraction is None) == (count is None):
        reasons += ["fraction", "count"]
    if fraction is not None and not 0 < fraction <= 1:
        reasons += ["fraction"]
    if count is not None and not 1 <= count <= m * n:
        reasons += ["count"]
    if reasons:
        must_reject(call, reasons)
        return
    obs = outcome(call)
    want = count if count is not None else max(1, round(fraction * m * n))
    assert obs.num_observed == want
    pairs = set(zip(obs.rows.tolist(), obs.cols.tolist(), strict=True))
    assert len(pairs) == want, "entries are sampled without replacement"
    ref = D[obs.rows, obs.cols]
    tol = 4 * eps(dtype) * float(D.abs().max()) * (1 if not lowrank else 4)
    assert float((obs.values.to(F64) - ref).abs().max()) <= tol + 1e-300


# ----- completion ---------------------------------------------------------------------------------
@st.composite
def completion_problems(draw):
    m, n = draw(st.integers(1, 10)), draw(st.integers(1, 10))
    r = draw(st.integers(1, min(m, n, 3)))
    dtype = draw(dtypes)
    g = gen(draw(seeds))
    M = low_rank_matrix(m, n, r, dtype=F64, generator=g)
    big = 1e2 if dtype == torch.float16 else 1e6  # float16 overflows at 65504
    scale = draw(st.sampled_from((1.0, 1.0, 1 / big, big)))
    M = LowRankMatrix((M.A * scale).to(dtype), M.B.to(dtype))
    fraction = draw(st.sampled_from((0.5, 0.8, 1.0)))
    obs = sample_entries(M, fraction, generator=g)
    return M, obs, r


def observed_error64(obs: Observations, U: torch.Tensor, V: torch.Tensor) -> float:
    est = (U.to(F64)[obs.rows] * V.to(F64)[obs.cols]).sum(1)
    vals = obs.values.to(F64)
    return float((est - vals).norm() / vals.norm())


@given(
    prob=completion_problems(),
    rank=st.integers(0, 4),
    solver=st.sampled_from(("exact", "sketched")),
    init=st.sampled_from(("spectral", "random")),
    tol=st.sampled_from((1e-10, 1e-4)),
    seed=seeds,
)
def test_altmin_complete(prob, rank, solver, init, tol, seed):
    M, obs, r = prob
    m, n = M.shape
    call = lambda: altmin_complete(  # noqa: E731
        obs, rank, iters=30, tol=tol, solver=solver, init=init, generator=gen(seed)
    )
    if not 1 <= rank <= min(m, n):
        must_reject(call, ["rank"])
        return
    res = outcome(call)
    dtype = obs.values.dtype
    assert res.U.shape == (m, rank) and res.V.shape == (n, rank)
    assert all(math.isfinite(h) for h in res.history), res.history
    err = observed_error64(obs, res.U, res.V)
    # the history is that of the working-precision iterate; returning the factors in the
    # input dtype rounds them (half precision: computed in float32, rounded on return)
    slack = 100 * (eps(work_dtype(dtype)) * math.sqrt(m * n) + eps(dtype)) * (1 + rank)
    assert abs(err - res.history[-1]) <= slack + 1e-6 * err, (err, res.history[-1])
    if res.converged:
        assert err <= tol + slack, (err, tol)
    if obs.fraction == 1.0 and rank >= r and dtype == F64 and solver == "exact":
        # every entry observed: the matrix itself is returned
        assert res.converged and M.relative_error(res.U, res.V) <= 1e-6


@given(prob=completion_problems(), max_rank=st.integers(1, 3), seed=seeds)
def test_soft_impute_history_is_honest(prob, max_rank, seed):
    M, obs, _ = prob
    m, n = M.shape
    call = lambda: soft_impute(obs, max_rank, iters=20, generator=gen(seed))  # noqa: E731
    if max_rank > min(m, n):
        must_reject(call, ["rank", "max_rank"])
        return
    res = outcome(call)
    assert all(math.isfinite(h) for h in res.history), res.history
    err = observed_error64(obs, res.U, res.V)
    dtype = obs.values.dtype
    slack = 100 * (eps(work_dtype(dtype)) * math.sqrt(m * n) + eps(dtype)) * (1 + max_rank)
    assert abs(err - res.history[-1]) <= slack * (1 + err), (err, res.history[-1])


# ----- sensing ------------------------------------------------------------------------------------
@st.composite
def measurements(draw, square: bool | None = None, max_n: int = 5):
    m = draw(st.integers(1, 30))
    n1 = draw(st.integers(1, max_n))
    sym = draw(st.booleans()) if square is None else square
    n2 = n1 if sym else draw(st.integers(1, max_n))
    dtype = draw(dtypes)
    return gaussian_measurements(m, n1, n2, symmetric=sym, dtype=dtype, generator=gen(draw(seeds)))


@given(meas=measurements(), seed=seeds, batch=st.booleans())
def test_measurements_apply_and_adjoint(meas, seed, batch):
    """``A(M)_i = <A_i, M> / sqrt(m)`` and ``<A(M), z> = <M, A*(z)>``, against float64."""
    g = gen(seed)
    n1, n2 = meas.shape
    m = meas.num_measurements
    dtype = meas.matrices.dtype
    shape = (2, n1, n2) if batch else (n1, n2)
    X = torch.randn(*shape, generator=g, dtype=F64).to(dtype)
    z = torch.randn(m, generator=g, dtype=F64).to(dtype)
    A64 = meas.matrices.to(F64)
    ref = torch.einsum("kij,...ij->...k", A64, X.to(F64)) / math.sqrt(m)
    out = meas.apply(X)
    tol = (
        10
        * eps(dtype)
        * math.sqrt(n1 * n2)
        * float(A64.abs().max())
        * float(X.abs().max().to(F64) + 1)
    )
    assert float((out.to(F64) - ref).abs().max()) <= tol, (out, ref)
    adj = meas.adjoint(z).to(F64)
    ref_adj = torch.einsum("k,kij->ij", z.to(F64), A64) / math.sqrt(m)
    assert float((adj - ref_adj).abs().max()) <= tol * math.sqrt(m) * float(
        z.abs().max().to(F64) + 1
    )
    must_reject(lambda: meas.apply(torch.ones(n1 + 1, n2, dtype=dtype)), ["m", "shape"])
    must_reject(lambda: meas.adjoint(torch.ones(m + 1, dtype=dtype)), ["z", "dimension"])


@given(
    m=st.integers(0, 4),
    n=st.integers(0, 4),
    n2=st.sampled_from((None, 3)),
    sym=st.booleans(),
    dtype=st.sampled_from(
        (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)
    ),
)
def test_gaussian_measurements_validate(m, n, n2, sym, dtype):
    call = lambda: gaussian_measurements(m, n, n2, symmetric=sym, dtype=dtype, generator=gen(0))  # noqa: E731
    reasons = []
    if m < 1:
        reasons += ["m"]
    if n < 1:
        reasons += ["n"]
    if sym and n2 is not None and n2 != n:
        reasons += ["square", "n2"]
    if not dtype.is_floating_point:
        reasons += ["dtype"]
    if reasons:
        must_reject(call, reasons)
        return
    meas = outcome(call)
    A = meas.matrices
    assert A.dtype == dtype and A.shape == (m, n, n if n2 is None else n2)
    if sym:
        assert torch.equal(A, A.transpose(1, 2))
    # symmetric measurements declared on a non-symmetric stack are refused
    if n >= 2:
        B = torch.randn(m, n, n, dtype=F64).to(dtype)
        must_reject(lambda: Measurements(B, symmetric=True), ["symmetric"])


@given(
    n=st.integers(0, 6),
    rank=st.integers(0, 6),
    condition=st.sampled_from((1.0, 10.0, 0.5, float("inf"), float("nan"))),
    dtype=st.sampled_from(
        (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64)
    ),
    seed=seeds,
)
def test_psd_target_spectrum(n, rank, condition, dtype, seed):
    call = lambda: psd_target(n, rank, condition=condition, dtype=dtype, generator=gen(seed))  # noqa: E731
    reasons = []
    if n < 1:
        reasons += ["n"]
    if rank < 1 or rank > n:
        reasons += ["rank"]
    if not (math.isfinite(condition) and condition >= 1):
        reasons += ["condition"]
    if not dtype.is_floating_point:
        reasons += ["dtype"]
    if reasons:
        must_reject(call, reasons)
        return
    X = outcome(call)
    assert X.shape == (n, rank) and X.dtype == dtype
    X64 = X.to(F64)
    lam = torch.linalg.eigvalsh(X64 @ X64.T).flip(0)
    want = torch.zeros(n, dtype=F64)
    want[:rank] = torch.linspace(1.0, 1.0 / condition, rank, dtype=F64) if rank > 1 else 1.0
    assert float((lam - want).abs().max()) <= 20 * eps(dtype) * math.sqrt(n), (lam, want)


def _check_factored(res, meas, y, target, steps):
    """The error history is finite and its last entry is the recomputed float64 error."""
    errs = res.errors
    assert errs.shape == (steps + 1,) and errs.dtype == F64
    assert bool(torch.isfinite(errs).all()), errs
    est = res.F.to(F64) @ res.G.to(F64).T
    if target is not None:
        T = target.to(F64)
        ref = float(torch.linalg.matrix_norm(est - T) / torch.linalg.matrix_norm(T))
    else:
        A64 = meas.matrices.to(F64)
        pred = torch.einsum("kij,ij->k", A64, est) / math.sqrt(meas.num_measurements)
        ref = float((pred - y.to(F64)).norm() / y.to(F64).norm().clamp_min(1e-300))
    dtype = meas.matrices.dtype
    n = meas.shape[0]
    assert abs(float(errs[-1]) - ref) <= 100 * eps(dtype) * n * (1 + ref) * (
        1 + float(est.abs().max())
    ), (
        float(errs[-1]),
        ref,
    )


@given(
    meas=measurements(square=True),
    k=st.integers(0, 6),
    lr=st.sampled_from((0.1, 0.2, 5.0, 1e4)),
    with_target=st.booleans(),
    method=st.sampled_from(("symmetric", "asymmetric", "subgradient", "l2")),
    rebalance=st.sampled_from((None, 0, 3, 30)),
    seed=seeds,
)
def test_factored_gradient_methods(meas, k, lr, with_target, method, rebalance, seed):
    n = meas.shape[0]
    dtype = meas.matrices.dtype
    g = gen(seed)
    X = psd_target(n, 1, dtype=F64, generator=g).to(dtype)
    target = X @ X.T
    y = meas.apply(target)
    steps = 8
    tgt = target if with_target else None
    if method == "symmetric":
        call = lambda: symmetric_gd(meas, y, k, lr=lr, steps=steps, target=tgt, generator=g)  # noqa: E731
    elif method == "asymmetric":
        call = lambda: asymmetric_gd(  # noqa: E731
            meas, y, k, lr=lr, steps=steps, target=tgt, rebalance_at=rebalance, generator=g
        )
    elif method == "subgradient":
        call = lambda: subgradient_method(meas, y, k, lr=lr, steps=steps, target=tgt, generator=g)  # noqa: E731
    else:
        call = lambda: l2_gradient_descent(meas, y, k, lr=lr, steps=steps, target=tgt, generator=g)  # noqa: E731
    reasons = []
    if not 1 <= k <= n:
        reasons += ["k"]
    if method == "asymmetric" and rebalance is not None and rebalance >= steps:
        reasons += ["rebalance_at"]
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=("lr", "diverged", *NONFINITE_WORDS))
    if res is Rejected:
        assert lr >= 1.0 or dtype in HALF, "a small step was refused as divergent"
        return
    _check_factored(res, meas, y, tgt, steps)


@given(
    meas=measurements(square=True),
    fraction=st.sampled_from((0.0, 0.2, 0.49, 0.5, -0.1)),
    magnitude=st.sampled_from((10.0, 0.0)),
    bad_target=st.sampled_from(("none", "none", "shape", "nan")),
    seed=seeds,
)
def test_outlier_measurements(meas, fraction, magnitude, bad_target, seed):
    n = meas.shape[0]
    dtype = meas.matrices.dtype
    g = gen(seed)
    target = torch.randn(n, n, generator=g, dtype=F64).to(dtype)
    if bad_target == "shape":
        target = target[:, :-1] if n > 1 else torch.ones(2, 2, dtype=dtype)
    elif bad_target == "nan":
        target = poison(target, float("nan"), g)
    call = lambda: outlier_measurements(meas, target, fraction, magnitude=magnitude, generator=g)  # noqa: E731
    reasons = []
    if not 0 <= fraction < 0.5:
        reasons += ["fraction"]
    if magnitude <= 0:
        reasons += ["magnitude"]
    if bad_target == "shape":
        reasons += ["target", "shape"]
    if bad_target == "nan":
        reasons += ["target", *NONFINITE_WORDS]
    if reasons:
        must_reject(call, reasons)
        return
    y, bad = outcome(call)
    m = meas.num_measurements
    assert y.shape == (m,) and bad.shape == (m,) and int(bad.sum()) == round(fraction * m)
    clean = meas.apply(target)
    assert torch.equal(y[~bad], clean[~bad])


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
