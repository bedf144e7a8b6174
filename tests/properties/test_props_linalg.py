"""Properties of subspaces.linalg: eigensolvers, randomized factorizations, solvers, traces, SLQ.

Every ``converged`` flag is re-verified from a residual recomputed in float64 from the returned
values (``A v - theta v`` with ``v`` normalized, ``b - A x``) against the result's own tolerance
plus the rounding slack of one product in the input dtype (``10 eps ||A|| sqrt(n)``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest
import torch
from hypothesis import assume, given
from hypothesis import strategies as st
from prop_helpers import (
    F64,
    HALF,
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
    spectra,
    spectrum,
    symmetric,
    work_dtype,
)

from subspaces._checks import default_tol
from subspaces.linalg import (
    cg,
    diagonal,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    minres,
    nystrom,
    power_iteration,
    randomized_eigh,
    randomized_range_finder,
    randomized_svd,
    slq_density,
    xtrace,
)


@dataclass
class SymCase:
    A: torch.Tensor  # in its dtype and layout
    lam: torch.Tensor  # float64 eigenvalues of A as drawn (before any poisoning)
    kind: str
    finite: bool
    symmetric: bool

    @property
    def n(self) -> int:
        return self.A.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        return self.A.dtype

    @property
    def A64(self) -> torch.Tensor:
        return self.A.to(F64)


@st.composite
def sym_cases(draw, max_n: int = 10, min_n: int = 0, allow_bad: bool = True, kinds=spectra):
    n = draw(st.integers(min_n, max_n))
    dtype = draw(dtypes)
    kind = draw(kinds)
    scale = draw(scales)
    g = gen(draw(seeds))
    A = symmetric(spectrum(kind, n, g, scale), g, dtype)
    lam = torch.linalg.eigvalsh(A.to(F64)) if n else torch.zeros(0, dtype=F64)
    finite, sym = True, True
    if allow_bad:
        bad = draw(st.sampled_from(("none",) * 6 + ("nonfinite", "asymmetric")))
        if bad == "nonfinite" and n:
            A = poison(A, draw(nonfinite), g, sym=True)
            finite = False
        elif bad == "asymmetric" and n >= 2:
            E = torch.triu(torch.randn(n, n, generator=g, dtype=F64), 1)
            A = (A.to(F64) + (0.3 * max(scale, 1e-300)) * E).to(dtype)
            sym = bool(torch.equal(A, A.T))
    finite = finite and bool(torch.isfinite(A).all())
    A = lay_out(A, draw(layouts))
    return SymCase(A, lam, kind, finite, sym)


def eig_reference(case: SymCase) -> torch.Tensor:
    return torch.linalg.eigvalsh(case.A64)


def check_eigen_result(case: SymCase, res, k: int, *, which: str | None, symmetric_A: bool):
    """Shapes, orthonormality, certificates re-verified in float64, eigenvalue inclusion."""
    n, dtype = case.n, case.dtype
    A64 = case.A64
    V = res.eigenvectors.to(F64)
    th = res.eigenvalues.to(F64)
    assert tuple(V.shape) == (n, k) and tuple(th.shape) == (k,)
    assert tuple(res.converged.shape) == (k,) and tuple(res.residuals.shape) == (k,)
    assert res.converged.dtype == torch.bool
    normA = norm2(A64)
    sl = slack(dtype, normA, n)
    # the scale the tolerance is relative to must not exceed ||A|| (an inflated scale would
    # certify anything); Ritz values of a symmetric A are bounded by ||A||
    if symmetric_A:
        assert res.scale <= normA + sl, (res.scale, normA)
    lam = eig_reference(case) if symmetric_A else None
    for i in torch.nonzero(res.converged).flatten().tolist():
        v = V[:, i]
        nv = float(v.norm())
        assert nv > 0.5, f"converged eigenvector {i} has norm {nv}"
        v = v / nv
        r = float((A64 @ v - th[i] * v).norm())
        bound = res.tol * res.scale + sl
        assert r <= bound, (
            f"pair {i} claimed converged: true residual {r:.3e} > tol*scale + slack = {bound:.3e}"
            f" (theta {float(th[i]):.6g}, dtype {dtype}, n {n})"
        )
        if lam is not None:  # symmetric A: theta is within r of an eigenvalue
            gap = float((lam - th[i]).abs().min())
            assert gap <= r + sl, (gap, r, sl)
    if which == "largest" or which == "both_ends":
        assert bool((th[1:] <= th[:-1]).all()), th
    elif which == "smallest":
        assert bool((th[1:] >= th[:-1]).all()), th


eig_k = st.integers(-1, 12)


# ----- Lanczos ------------------------------------------------------------------------------------
@given(
    case=sym_cases(),
    k=eig_k,
    which=st.sampled_from(("largest", "smallest", "both_ends")),
    b=st.integers(1, 3),
    tol=st.sampled_from((None, None, 1e-3, 1e-10)),
    seed=seeds,
)
def test_lanczos(case, k, which, b, tol, seed):
    n = case.n
    call = lambda: lanczos(case.A, k, which, tol=tol, block_size=b, generator=gen(seed))  # noqa: E731
    reasons = []
    if n == 0:
        reasons += ["empty", "k"]
    if not 1 <= k <= max(n, 1) or k > n:
        reasons += ["k"]
    if b > n:
        reasons += ["block_size"]
    if not case.finite:
        reasons += NONFINITE_WORDS
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=() if case.symmetric else ("symmetric",))
    if res is Rejected:
        return
    check_eigen_result(case, res, k, which=which, symmetric_A=case.symmetric)
    # orthonormal Ritz vectors (as documented), to the working precision
    V = res.eigenvectors.to(F64)
    err = float((V.T @ V - torch.eye(k, dtype=F64)).abs().max())
    assert err <= 1e3 * eps(work_dtype(case.dtype)) * max(k, 1), err


@given(case=sym_cases(), k=eig_k, tol=st.sampled_from((None, 1e-3)), seed=seeds)
def test_power_iteration(case, k, tol, seed):
    n = case.n
    call = lambda: power_iteration(case.A, k, tol=tol, max_matvecs=300, generator=gen(seed))  # noqa: E731
    reasons = []
    if n == 0 or not 1 <= k <= n:
        reasons += ["k", "empty"]
    if not case.finite:
        reasons += NONFINITE_WORDS
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=() if case.symmetric else ("symmetric",))
    if res is Rejected:
        return
    check_eigen_result(case, res, k, which=None, symmetric_A=case.symmetric)
    assert res.num_matvecs <= 300


# ----- randomized factorizations ------------------------------------------------------------------
@dataclass
class GenCase:
    A: torch.Tensor
    finite: bool

    @property
    def A64(self):
        return self.A.to(F64)


@st.composite
def gen_cases(draw, max_n: int = 9, allow_bad: bool = True):
    m = draw(st.integers(0, max_n))
    n = draw(st.integers(0, max_n))
    dtype = draw(dtypes)
    g = gen(draw(seeds))
    scale = draw(scales)
    rank = draw(st.integers(0, max(min(m, n), 0)))
    kind = draw(st.sampled_from(("full", "low_rank")))
    if kind == "low_rank":
        A = (general(m, rank, g, F64, scale) @ general(rank, n, g, F64)).to(dtype)
    else:
        A = general(m, n, g, dtype, scale)
    finite = True
    if allow_bad and m and n and draw(st.sampled_from((False,) * 6 + (True,))):
        A = poison(A, draw(nonfinite), g)
        finite = False
    return GenCase(lay_out(A, draw(layouts)), finite)


def orth_err(Q: torch.Tensor) -> float:
    Q = Q.to(F64)
    if Q.shape[1] == 0:
        return 0.0
    return float((Q.T @ Q - torch.eye(Q.shape[1], dtype=F64)).abs().max())


def rand_reasons(case_A: torch.Tensor, finite: bool, rank: int, oversample: int, q: int | None):
    m, n = case_A.shape
    reasons = []
    if not 1 <= rank <= min(m, n):
        reasons += ["rank"]
    if oversample < 0:
        reasons += ["oversample"]
    if q is not None and q < 0:
        reasons += ["power_iters"]
    if not finite:
        reasons += NONFINITE_WORDS
    return reasons


@given(
    case=gen_cases(),
    rank=st.integers(-1, 10),
    oversample=st.integers(-1, 4),
    q=st.integers(-1, 2),
    seed=seeds,
)
def test_randomized_range_finder(case, rank, oversample, q, seed):
    A, A64 = case.A, case.A64
    m, n = A.shape
    call = lambda: randomized_range_finder(  # noqa: E731
        A, rank, oversample=oversample, power_iters=q, generator=gen(seed)
    )
    reasons = rand_reasons(A, case.finite, rank, oversample, q)
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=NONFINITE_WORDS)  # half products may overflow
    if res is Rejected:
        assert A.dtype in HALF
        return
    ell = min(rank + oversample, m, n)
    Q = res.basis
    assert tuple(Q.shape) == (m, ell)
    assert orth_err(Q) <= 50 * eps(A.dtype) * math.sqrt(m), orth_err(Q)
    assert res.num_matvecs == ell * (1 + 2 * q)
    # When the sketch is as wide as the range can be, it captures A up to rounding.
    normA = norm2(A64)
    sv = torch.linalg.svdvals(A64)
    if ell == min(m, n) or (ell < sv.numel() and float(sv[ell]) <= 1e-12 * normA):
        Qd = Q.to(F64)
        err = norm2(A64 - Qd @ (Qd.T @ A64))
        assert err <= 1e3 * eps(A.dtype) * normA * math.sqrt(m * n) + 1e-300, (err, normA)


@given(case=gen_cases(), rank=st.integers(-1, 10), oversample=st.integers(0, 4), seed=seeds)
def test_randomized_svd(case, rank, oversample, seed):
    A, A64 = case.A, case.A64
    m, n = A.shape
    call = lambda: randomized_svd(A, rank, oversample=oversample, generator=gen(seed))  # noqa: E731
    reasons = rand_reasons(A, case.finite, rank, oversample, None)
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=NONFINITE_WORDS)
    if res is Rejected:
        assert A.dtype in HALF
        return
    U, S, V = res.U.to(F64), res.S.to(F64), res.V.to(F64)
    assert tuple(U.shape) == (m, rank) and tuple(S.shape) == (rank,) and tuple(V.shape) == (n, rank)
    tol_o = 50 * eps(A.dtype) * math.sqrt(max(m, n))
    assert orth_err(U) <= tol_o and orth_err(V) <= tol_o, (orth_err(U), orth_err(V))
    normA = norm2(A64)
    sl = slack(A.dtype, normA, max(m, n))
    assert bool((S >= 0).all()) and bool((S[1:] <= S[:-1] + sl).all()), S
    # S are the singular values of Q^T A: bounded by A's (interlacing) ...
    sv = torch.linalg.svdvals(A64)[:rank]
    assert bool((sv + sl >= S).all()), (S, sv)
    # ... and A^T U = V diag(S) holds exactly (B^T = V S U_B^T with U = Q U_B)
    resid = norm2(A64.T @ U - V * S)
    assert resid <= sl * 10, (resid, sl)
    ell = min(rank + oversample, m, n)
    if ell == min(m, n):  # the sketch spans the range: the top singular values are exact
        assert float((S - sv).abs().max()) <= sl * 10, (S, sv)


@given(
    case=sym_cases(),
    rank=st.integers(-1, 10),
    oversample=st.integers(0, 4),
    which=st.sampled_from(("largest_magnitude", "largest")),
    seed=seeds,
)
def test_randomized_eigh(case, rank, oversample, which, seed):
    A, A64, n = case.A, case.A64, case.n
    call = lambda: randomized_eigh(  # noqa: E731
        A, rank, oversample=oversample, which=which, generator=gen(seed)
    )
    reasons = rand_reasons(A, case.finite, rank, oversample, None)
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=("symmetric", *NONFINITE_WORDS))
    if res is Rejected:
        assert not case.symmetric or A.dtype in HALF
        return
    lam, V = res.eigenvalues.to(F64), res.eigenvectors.to(F64)
    assert tuple(lam.shape) == (rank,) and tuple(V.shape) == (n, rank)
    assert orth_err(V) <= 50 * eps(A.dtype) * math.sqrt(n), orth_err(V)
    normA = norm2(A64)
    sl = slack(A.dtype, normA, n)
    key = lam.abs() if which == "largest_magnitude" else lam
    assert bool((key[1:] <= key[:-1] + sl).all()), lam
    if case.symmetric:
        # Rayleigh-Ritz: V^T A V = diag(lambda)
        assert norm2(V.T @ A64 @ V - torch.diag(lam)) <= 10 * sl, lam
        ell = min(rank + oversample, n)
        if ell == n:  # the sketch spans R^n: the selected eigenvalues are exact
            ref = eig_reference(case)
            key_ref = ref.abs() if which == "largest_magnitude" else ref
            want = key_ref.sort(descending=True).values[:rank]
            assert float((key - want).abs().max()) <= 10 * sl, (lam, ref)


@given(case=sym_cases(), rank=st.integers(-1, 10), oversample=st.integers(0, 4), seed=seeds)
def test_nystrom(case, rank, oversample, seed):
    A, A64, n = case.A, case.A64, case.n
    call = lambda: nystrom(A, rank, oversample=oversample, generator=gen(seed))  # noqa: E731
    reasons = rand_reasons(A, case.finite, rank, oversample, None)
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=("semidefinite", "symmetric", *NONFINITE_WORDS))
    normA = norm2(A64)
    sl = slack(A.dtype, normA, n)
    if res is Rejected:
        # only an indefinite (or asymmetric) A may be refused
        lam = eig_reference(case)
        assert not case.symmetric or float(lam.min()) < 0 or A.dtype in HALF, lam
        return
    lam, V = res.eigenvalues.to(F64), res.eigenvectors.to(F64)
    assert tuple(lam.shape) == (rank,) and tuple(V.shape) == (n, rank)
    assert bool((lam >= 0).all()) and bool((lam[1:] <= lam[:-1]).all()), lam
    assert orth_err(V) <= 50 * eps(A.dtype) * math.sqrt(n), orth_err(V)
    ref = eig_reference(case)
    if case.symmetric and float(ref.min()) >= 0:
        # PSD A: the approximation lies below A in the Loewner order, up to the shift
        Ahat = (V * lam) @ V.T
        low = float(torch.linalg.eigvalsh(A64 - Ahat).min())
        assert low >= -10 * sl, (low, sl)
        if min(rank + oversample, n) == n:  # the sketch spans R^n
            want = ref.flip(0)[:rank]
            assert float((lam - want).abs().max()) <= 100 * sl, (lam, want)


# ----- solvers ------------------------------------------------------------------------------------
@st.composite
def rhs(draw, case: SymCase, cols: int | None = None):
    n = case.n
    g = gen(draw(seeds))
    shape = (n,) if cols is None else (n, cols)
    kind = draw(st.sampled_from(("random", "random", "zero", "range")))
    if kind == "zero":
        b = torch.zeros(shape, dtype=F64)
    elif kind == "range" and n:
        b = case.A64 @ torch.randn(shape, generator=g, dtype=F64)
    else:
        b = torch.randn(shape, generator=g, dtype=F64)
    b = b.to(case.dtype)
    return lay_out(b, draw(layouts)) if b.ndim == 2 else b


def check_solve(case: SymCase, b, res, *, rtol, atol=0.0, shift=0.0):
    """``converged`` re-verified on ``b - (A - shift I) x`` in float64 from the returned x."""
    dtype, n = case.dtype, case.n
    A64 = case.A64 - shift * torch.eye(n, dtype=F64)
    assert res.x.shape == b.shape and res.x.dtype == b.dtype
    assert res.status in ("converged",) or all(
        s in ("max_iters", "stagnated", "least_squares") for s in res.status.split(", ")
    ), res.status
    assert res.converged == (res.status == "converged")
    X = res.x.to(F64)
    X = X.unsqueeze(1) if X.ndim == 1 else X
    B = b.to(F64)
    B = B.unsqueeze(1) if B.ndim == 1 else B
    true = (B - A64 @ X).norm(dim=0)
    normA = norm2(A64)
    tol = default_tol(dtype) if rtol is None else rtol
    thresh = torch.clamp(tol * B.norm(dim=0), min=atol)
    # rounding of one product in the input dtype, with x of the size it has
    sl = torch.tensor(
        [
            slack(dtype, normA, n) * float(X[:, j].norm())
            + slack(dtype, 1, n) * float(B[:, j].norm())
            for j in range(X.shape[1])
        ],
        dtype=F64,
    )
    reported = res.residual_norm.to(F64).reshape(-1)
    assert bool(((reported - true).abs() <= sl + 1e-6 * true + 1e-300).all()), (reported, true)
    if res.converged:
        assert bool((true <= thresh + sl).all()), (
            f"converged=True but the true residual {true.tolist()} > threshold "
            f"{thresh.tolist()} + slack {sl.tolist()} ({dtype}, n={n})"
        )
    # never worse than the start x0 = 0
    assert bool((true <= B.norm(dim=0) + sl).all()), (true, B.norm(dim=0))


solver_rtol = st.sampled_from((None, None, 1e-4, 1e-12, 0.0))


@given(data=st.data(), case=sym_cases(max_n=8), rtol=solver_rtol, cols=st.sampled_from((None, 2)))
def test_cg(data, case, rtol, cols):
    n = case.n
    b = data.draw(rhs(case, cols))
    call = lambda: cg(case.A, b, rtol=rtol)  # noqa: E731
    if not case.finite:
        must_reject(call, NONFINITE_WORDS)
        return
    # SPD to working precision (a float32 matrix with eigenvalues 1e-13 is numerically singular)
    lam = eig_reference(case) if n else None
    spd = (
        case.symmetric
        and n > 0
        and float(lam.min()) > 100 * n * eps(work_dtype(case.dtype)) * float(lam.abs().max())
    )
    res = outcome(call, may_reject=("positive", "definite", "symmetric", *NONFINITE_WORDS))
    if res is Rejected:
        assert not spd or case.dtype in HALF, "cg rejected an SPD system"
        return
    check_solve(case, b, res, rtol=rtol)


@given(
    data=st.data(),
    case=sym_cases(max_n=8),
    rtol=solver_rtol,
    cols=st.sampled_from((None, 2)),
    shift=st.sampled_from((0.0, 0.0, 0.5, float("nan"))),
)
def test_minres(data, case, rtol, cols, shift):
    b = data.draw(rhs(case, cols))
    call = lambda: minres(case.A, b, rtol=rtol, shift=shift)  # noqa: E731
    reasons = []
    if not case.finite:
        reasons += NONFINITE_WORDS
    if math.isnan(shift):
        reasons += ["shift"]
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=() if case.symmetric else ("symmetric",))
    if res is Rejected:
        return
    check_solve(case, b, res, rtol=rtol, shift=shift)


def test_solver_arguments_named():
    A = torch.eye(3, dtype=F64)
    b = torch.ones(3, dtype=F64)
    must_reject(lambda: cg(A, b, rtol=-1.0), ["rtol"])
    must_reject(lambda: cg(A, b, max_iters=-1), ["max_iters"])
    must_reject(lambda: cg(A, b.float()), ["dtype", "b"])
    must_reject(lambda: cg(A, torch.ones(4, dtype=F64)), ["b"])
    must_reject(lambda: minres(A, b, x0=torch.ones(2, dtype=F64)), ["x0"])
    must_reject(lambda: minres(torch.ones(2, 3, dtype=F64), torch.ones(2, dtype=F64)), ["square"])


# ----- trace and diagonal estimation --------------------------------------------------------------
@given(case=sym_cases(max_n=8), m=st.integers(-1, 12), seed=seeds)
def test_hutchinson_exact_on_diagonal(case, m, seed):
    """Rademacher probes: z^T D z = tr(D) for a diagonal D, so every estimate is exact."""
    D = torch.diag(torch.diagonal(case.A))
    call = lambda: hutchinson_trace(D, m, generator=gen(seed))  # noqa: E731
    reasons = []
    if m < 1:
        reasons += ["num_matvecs"]
    if not bool(torch.isfinite(D).all()):
        reasons += NONFINITE_WORDS
    if case.n == 0:
        reasons += ["empty", "a", "n"]
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call)
    D64 = D.to(F64)
    sl = slack(D.dtype, norm2(D64), case.n) * case.n
    assert abs(res.estimate - float(D64.trace())) <= sl, (res.estimate, float(D64.trace()))
    assert res.num_matvecs == m
    # internal consistency: the estimate is the mean of the samples
    assert res.samples is not None and res.samples.numel() == m
    assert abs(float(res.samples.mean()) - res.estimate) <= 1e-12 * (1 + abs(res.estimate))


@given(case=sym_cases(max_n=8, allow_bad=False), extra=st.integers(0, 3), seed=seeds)
def test_hutchpp_and_xtrace_exact_when_sketch_spans(case, extra, seed):
    """With at least n sketch vectors the sketch spans R^n and both estimators are exact."""
    n = case.n
    assume(n >= 1)
    A64 = case.A64
    tr = float(A64.trace())
    sl = slack(case.dtype, norm2(A64), n) * n
    for fn, budget in ((hutchpp_trace, 3 * n + extra), (xtrace, max(2 * n + extra, 4))):
        res = outcome(lambda fn=fn, budget=budget: fn(case.A, budget, generator=gen(seed)))
        assert abs(res.estimate - tr) <= sl + 1e-12 * abs(tr), (fn.__name__, res.estimate, tr)
        assert res.num_matvecs <= budget


@given(
    case=sym_cases(max_n=8),
    m=st.integers(-1, 12),
    method=st.sampled_from(("hutchinson", "diag++")),
    seed=seeds,
)
def test_diagonal_estimates(case, m, method, seed):
    n = case.n
    call = lambda: diagonal(case.A, m, method=method, generator=gen(seed))  # noqa: E731
    reasons = []
    if m < (1 if method == "hutchinson" else 3):
        reasons += ["num_matvecs"]
    if not case.finite:
        reasons += NONFINITE_WORDS
    if n == 0:
        reasons += ["empty", "a", "n"]
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call)
    assert tuple(res.estimate.shape) == (n,)
    A64 = case.A64
    sl = slack(case.dtype, norm2(A64), n) * math.sqrt(n)
    exact = (
        method == "hutchinson" and bool(torch.equal(A64, torch.diag(torch.diagonal(A64))))
    ) or (method == "diag++" and m // 3 >= n)
    if exact:
        err = float((res.estimate.to(F64) - torch.diagonal(A64)).abs().max())
        assert err <= sl, (err, sl)


# ----- stochastic Lanczos quadrature --------------------------------------------------------------
@given(case=sym_cases(max_n=8), runs=st.integers(1, 3), steps=st.integers(0, 10), seed=seeds)
def test_slq_quadrature(case, runs, steps, seed):
    """Nodes lie in the spectrum's range; with explicit probes the quadrature reproduces the
    moments q^T A^j q of degree j < 2 k exactly (Gauss quadrature), checked in float64."""
    n = case.n
    g = gen(seed)
    probes = torch.randn(max(n, 0), runs, generator=g, dtype=F64).to(case.dtype)
    call = lambda: slq_density(case.A, steps=steps, probes=probes)  # noqa: E731
    reasons = []
    if n == 0:
        reasons += ["empty", "a", "shape", "probes"]
    if steps < 1:
        reasons += ["steps"]
    if not case.finite:
        reasons += NONFINITE_WORDS
    if n and bool((probes.to(F64).norm(dim=0) == 0).any()):
        reasons += ["probes"]
    if reasons:
        must_reject(call, reasons)
        return
    res = outcome(call, may_reject=() if case.symmetric else ("symmetric",))
    if res is Rejected:
        return
    assert bool(torch.allclose(res.weights.sum(1), torch.ones(runs, dtype=F64), atol=1e-6))
    if not case.symmetric:
        return
    lam = eig_reference(case)
    A64 = case.A64
    normA = norm2(A64)
    sl = slack(case.dtype, normA, n)
    live = res.weights > 0
    nodes = res.nodes[live]
    assert (
        float(nodes.min()) >= float(lam.min()) - 10 * sl
        and float(nodes.max()) <= float(lam.max()) + 10 * sl
    ), (nodes, lam)
    k = res.nodes.shape[1]
    Q = probes.to(work_dtype(case.dtype)).to(F64)
    Q = Q / Q.norm(dim=0, keepdim=True)
    for j in range(1, min(2 * k, 4)):
        ref = float(((torch.linalg.matrix_power(A64, j) @ Q) * Q).sum(0).mean())
        got = float(res.moments(j))
        tol = 1e3 * eps(work_dtype(case.dtype)) * max(normA, 1e-300) ** j * math.sqrt(n) + (
            j * 10 * sl * max(normA, 1e-300) ** (j - 1)
        )
        assert abs(got - ref) <= tol, (j, got, ref, tol)


pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


def test_cg_rtol_zero_without_preconditioner():
    """Found by test_cg (slow profile): once the residual is exactly 0, r^T r = 0 is not a
    preconditioner breakdown."""
    A = torch.tensor([[0.6614]])
    b = torch.tensor([0.4374])
    res = cg(A, b, rtol=0.0)
    assert res.converged and abs(float(res.x[0]) - 0.4374 / 0.6614) <= 1e-6
