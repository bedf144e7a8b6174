"""Tests of stochastic trace and diagonal estimation on matrices of known spectrum (float64).

Tolerances come from the estimators' theory: Hutchinson's variance in closed form, chi-square
bands for mean squares over independent seeds (two-sided, 99.9 %), t-tests at 4 standard errors
for unbiasedness, and exactness (1e-10) where the algorithm is exact.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
from scipy import stats

from subspaces.linalg._random import random_matrix
from subspaces.linalg.trace import (
    DiagonalResult,
    TraceResult,
    _Products,
    _XTraceState,
    diagonal,
    hutchinson_trace,
    hutchpp_trace,
    xtrace,
)
from subspaces.linops import Dense, LinearOperator, MatmatOperator
from subspaces.testing import (
    KnownSpectrumOperator,
    check_estimator_convergence,
    geometric_spectrum,
    matrix_with_spectrum,
)

F64 = torch.float64
ESTIMATORS = {"hutchinson": hutchinson_trace, "hutch++": hutchpp_trace, "xtrace": xtrace}


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def chi2_band(N: int, p: float = 1e-3) -> tuple[float, float]:
    """Two-sided (1 - p) band of mean(z^2) over N independent standard normals."""
    return stats.chi2.ppf(p / 2, N) / N, stats.chi2.ppf(1 - p / 2, N) / N


@pytest.fixture(scope="module")
def geo() -> torch.Tensor:
    """n = 300, eigenvalues 0.9**i: fast decay, trace ~ 10."""
    return matrix_with_spectrum(geometric_spectrum(300, 0.9), generator=gen(0))


@pytest.fixture(scope="module")
def indef() -> torch.Tensor:
    """n = 200: five outliers over an indefinite bulk in [-0.5, 1] carrying most of the trace."""
    lam = torch.cat(
        [torch.tensor([5.0, 4, 3, 2, 1], dtype=F64), torch.linspace(-0.5, 1.0, 195, dtype=F64)]
    )
    return matrix_with_spectrum(lam, generator=gen(1))


def low_rank(n: int = 120, seed: int = 0) -> torch.Tensor:
    """Indefinite rank-5 matrix."""
    U = torch.randn(n, 5, dtype=F64, generator=gen(seed))
    return U @ torch.diag(torch.tensor([3.0, 2, 1, -1, -2], dtype=F64)) @ U.T


def naive_xtrace(A: torch.Tensor, Om: torch.Tensor, improved: bool) -> torch.Tensor:
    """Leave-one-out estimates from scratch: each P_i from its own SVD of Y without column i."""
    n, s = Om.shape
    Y = A @ Om
    top = float(torch.linalg.svdvals(Y)[0])
    out = []
    for i in range(s):
        Yi = torch.cat([Y[:, :i], Y[:, i + 1 :]], 1)
        U, sv, _ = torch.linalg.svd(Yi, full_matrices=False)
        Qi = U[:, : int((sv > 1.5e-8 * top).sum())]
        P = Qi @ Qi.T
        z = Om[:, i] - P @ Om[:, i]
        if improved:
            z = z * math.sqrt(n - Qi.shape[1]) / z.norm()
        out.append(float(torch.trace(A @ P) + z @ A @ z))
    return torch.tensor(out, dtype=F64)


# ----- unbiasedness ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_unbiased(name, indef, geo):
    f, N = ESTIMATORS[name], 200
    for A, m in ((indef, 21), (geo, 30)):
        truth = float(A.trace())
        op = Dense(A, symmetric=True)  # wrap once: the loops below then cost only products
        spent = check_estimator_convergence(
            lambda g, op=op, m=m: f(op, m, generator=g), truth, target_rel_error=1e-2
        )
        assert spent <= 100_000
        # t-test: the mean of N independent runs is within 4 standard errors of the truth
        est = torch.tensor([f(op, m, generator=gen(1000 + s)).estimate for s in range(N)])
        t = (float(est.mean()) - truth) / (float(est.std()) / math.sqrt(N))
        assert abs(t) < 4, t


@pytest.mark.parametrize("method", ["hutchinson", "diag++"])
def test_diagonal_unbiased(method, indef):
    d = indef.diagonal()
    w = torch.randn(d.shape[0], dtype=F64, generator=gen(5))  # a fixed linear functional

    def run(g):
        r = diagonal(indef, 30, method=method, generator=g)
        return SimpleNamespace(estimate=float(w @ r.estimate), num_matvecs=r.num_matvecs)

    check_estimator_convergence(run, float(w @ d), target_rel_error=1e-2)
    runs = torch.stack(
        [diagonal(indef, 30, method=method, generator=gen(s)).estimate for s in range(200)]
    )
    t = (runs.mean(0) - d) / (runs.std(0) / math.sqrt(200))
    # 200 entries, |t| < 4.5 each: family-wise false-alarm probability ~ 1e-3 (Bonferroni)
    assert float(t.abs().max()) < 4.5


# ----- Hutchinson variance theory and stderr calibration ---------------------------------------
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian"])
def test_hutchinson_rms_error_matches_theory(distribution, indef):
    A, m, N = indef, 50, 100
    fro2 = float((A * A).sum())
    var = (
        2 * (fro2 - float((A.diagonal() ** 2).sum())) / m
        if distribution == "rademacher"
        else 2 * fro2 / m
    )
    truth = float(A.trace())
    err = torch.tensor(
        [
            hutchinson_trace(A, m, distribution=distribution, generator=gen(s)).estimate - truth
            for s in range(N)
        ]
    )
    lo, hi = chi2_band(N)
    ratio = float(err.pow(2).mean()) / var  # ~ chi2(N) / N: the estimate is a mean of 50 samples
    assert lo < ratio < hi, (ratio, lo, hi)


@pytest.mark.parametrize("name", ["hutchinson", "hutch++"])
def test_stderr_is_calibrated(name, indef):
    f, m, N = ESTIMATORS[name], 60, 200
    truth = float(indef.trace())
    z = []
    for s in range(N):
        r = f(indef, m, generator=gen(s))
        z.append((r.estimate - truth) / r.stderr)
    ms = float(torch.tensor(z).pow(2).mean())
    h = m if name == "hutchinson" else m - 2 * (m // 3)  # probes behind the stderr
    lo, hi = chi2_band(N)
    hi *= (h - 1) / (h - 3)  # z is Student-t with h - 1 degrees of freedom: E z^2 = nu / (nu - 2)
    assert lo < ms < hi, (ms, lo, hi)


def test_xtrace_stderr_is_the_right_order(indef, geo):
    # XTrace's error estimate std(t_i)/sqrt(s) treats dependent leave-one-out estimates as
    # independent (Epperly-Tropp-Webber use it as a heuristic); measured RMS z 1.2-1.6. We require
    # the right order of magnitude, not calibration.
    for A in (indef, geo):
        truth = float(A.trace())
        z = torch.tensor(
            [
                (r.estimate - truth) / r.stderr
                for r in (xtrace(A, 60, generator=gen(s)) for s in range(100))
            ]
        )
        rms = float(z.pow(2).mean().sqrt())
        assert 0.8 < rms < 2.0, rms


# ----- sketching wins on fast decay ------------------------------------------------------------
def test_sketching_beats_hutchinson_on_fast_decay(geo):
    # Theory at m = 120 on 0.9**i: Hutchinson sd = sqrt(2 sum lam^2 / m) ~ 0.30; Hutch++ with
    # k = 40 sketch vectors and h = 40 probes: sd ~ sqrt(2 sum_{i >= 35} lam_i^2 / h) ~ 0.013,
    # a factor ~ 23 (XTrace uses all 60 vectors for both roles and does better still).
    truth, m = float(geo.trace()), 120
    rms = {
        name: math.sqrt(
            sum((f(geo, m, generator=gen(s)).estimate - truth) ** 2 for s in range(20)) / 20
        )
        for name, f in ESTIMATORS.items()
    }
    assert rms["hutchinson"] / rms["hutch++"] > 10, rms
    assert rms["hutchinson"] / rms["xtrace"] > 10, rms
    assert rms["xtrace"] < rms["hutch++"], rms


def test_diag_pp_beats_hutchinson_on_fast_decay(geo):
    d = geo.diagonal()
    err = {
        method: math.sqrt(
            sum(
                float(
                    (diagonal(geo, 120, method=method, generator=gen(s)).estimate - d).pow(2).mean()
                )
                for s in range(10)
            )
            / 10
        )
        for method in ("hutchinson", "diag++")
    }
    assert err["hutchinson"] / err["diag++"] > 3, err


# ----- XTrace: fast formula, rank deficiency ---------------------------------------------------
@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "sphere"])
def test_xtrace_fast_formula_matches_naive(distribution):
    n, s = 60, 12
    A = matrix_with_spectrum(torch.randn(n, dtype=F64, generator=gen(2)), generator=gen(3))
    r = xtrace(A, 2 * s, distribution=distribution, generator=gen(7))
    # xtrace's first draw from the generator is its test matrix
    Om = random_matrix(n, s, dtype=F64, generator=gen(7), distribution=distribution)
    want = naive_xtrace(A, Om, improved=distribution == "sphere")
    assert r.samples is not None
    assert float((r.samples - want).abs().max()) <= 1e-10 * float(want.abs().max())
    assert r.estimate == pytest.approx(float(want.mean()), rel=1e-10, abs=1e-12)
    assert r.num_matvecs == 2 * s


@pytest.mark.parametrize("distribution", ["rademacher", "sphere"])
@pytest.mark.parametrize("case", ["full", "low_rank", "dependent_vectors"])
def test_xtrace_grown_by_blocks_matches_naive(distribution, case):
    """The adaptive path (block Gram-Schmidt updates of Q, R, AQ) and the rank-deficient path."""
    n = 40
    A = (
        low_rank(n)
        if case == "low_rank"
        else matrix_with_spectrum(torch.randn(n, dtype=F64, generator=gen(4)), generator=gen(6))
    )
    prod = _Products(A, distribution, gen(5))
    Om = prod.probes(12)
    if case == "dependent_vectors":
        Om[:, 3] = Om[:, 7]
        Om[:, 5] = Om[:, 1] + Om[:, 2]
    state = _XTraceState(prod)
    for cols in (slice(0, 3), slice(3, 7), slice(7, 12)):
        state.add(Om[:, cols])
    assert prod.count == 24
    assert torch.allclose(state.Q.T @ state.Q, torch.eye(12, dtype=F64), atol=1e-12)
    assert torch.allclose(state.Q @ state.R, A @ Om, atol=1e-10)
    got, deficient = state.estimates()
    assert deficient == (case != "full")
    want = naive_xtrace(A, Om, improved=distribution == "sphere")
    assert float((got - want).abs().max()) <= 1e-10 * float(want.abs().max())


@pytest.mark.parametrize("distribution", ["rademacher", "gaussian", "sphere"])
def test_xtrace_exact_when_rank_below_test_vectors(distribution):
    A = low_rank(120)
    truth = float(A.trace())
    r = xtrace(A, 20, distribution=distribution, generator=gen(0))  # 10 test vectors, rank 5
    assert abs(r.estimate - truth) <= 1e-10 * abs(truth)
    assert r.stderr <= 1e-10 * abs(truth)
    r = xtrace(A, rtol=1e-8, distribution=distribution, generator=gen(0))
    assert abs(r.estimate - truth) <= 1e-10 * abs(truth)
    assert r.num_matvecs == 16  # the first round of 8 test vectors is already exact


def test_xtrace_edge_cases():
    # s >= n: Q spans R^n, the trace is exact
    A = matrix_with_spectrum(torch.randn(10, dtype=F64, generator=gen(0)), generator=gen(1))
    for seed in range(5):  # includes singular 10 x 10 Rademacher test matrices
        r = xtrace(A, 30, generator=gen(seed))
        assert abs(r.estimate - float(A.trace())) < 1e-12 and r.stderr < 1e-13
        assert r.num_matvecs == 20
    r = xtrace(torch.tensor([[2.5]], dtype=F64), 4, generator=gen(0))  # n = 1
    # exact: the standard error is the rounding floor sqrt(n) eps |estimate|
    assert (r.estimate, r.num_matvecs) == (2.5, 2)
    assert r.stderr == pytest.approx(torch.finfo(F64).eps * 2.5)
    # Hutch++ and Diag++ whose sketch spans R^n stop there, exact
    r = hutchpp_trace(A, 40, generator=gen(0))
    assert abs(r.estimate - float(A.trace())) < 1e-12 and r.stderr < 1e-13
    assert r.num_matvecs == 20
    r = hutchpp_trace(A, rtol=1e-3, generator=gen(0))
    assert r.stderr < 1e-13 and r.num_matvecs == 20
    r = diagonal(A, 40, method="diag++", generator=gen(0))
    assert torch.allclose(r.estimate, A.diagonal(), atol=1e-12) and r.num_matvecs == 20
    assert float(r.stderr.abs().max()) == 0
    # the zero matrix
    r = xtrace(torch.zeros(20, 20, dtype=F64), 8, generator=gen(0))
    assert (r.estimate, r.stderr, r.num_matvecs) == (0.0, 0.0, 8)
    # a spectrum falling below sqrt(eps) * ||A||: the rank-deficient path stays accurate
    B = matrix_with_spectrum(geometric_spectrum(200, 0.3), generator=gen(2))
    r = xtrace(B, 80, generator=gen(3))
    assert math.isfinite(r.stderr) and abs(r.estimate - float(B.trace())) < 1e-7


# ----- diagonal exactness -----------------------------------------------------------------------
def test_diagonal_exact_cases():
    d = torch.linspace(-3, 5, 50, dtype=F64)
    r = diagonal(torch.diag(d), 3, generator=gen(0))
    assert torch.allclose(r.estimate, d, rtol=4e-16, atol=0)  # exact up to the rounding of a mean
    assert float(r.stderr.abs().max()) < 1e-15 and r.num_matvecs == 3
    A = low_rank(80)
    r = diagonal(A, 18, method="diag++", generator=gen(0))  # sketch of 6 >= rank 5
    assert torch.allclose(
        r.estimate, A.diagonal(), rtol=0, atol=1e-10 * float(A.diagonal().abs().max())
    )
    assert r.num_matvecs == 18
    assert isinstance(r, DiagonalResult) and "diag++" in str(r)


def test_diagonal_stderr_is_calibrated(indef):
    d = indef.diagonal()
    for method in ("hutchinson", "diag++"):
        z = torch.stack(
            [
                (r.estimate - d) / r.stderr
                for r in (diagonal(indef, 60, method=method, generator=gen(s)) for s in range(30))
            ]
        )
        # 6000 z-scores, dependent across entries of one run: a loose band around 1
        rms = float(z.pow(2).mean().sqrt())
        assert 0.9 < rms < 1.15, (method, rms)


# ----- adaptive mode -----------------------------------------------------------------------------
def test_adaptive_meets_rtol_and_stops_early(indef, geo):
    truth = float(indef.trace())
    r = hutchinson_trace(indef, rtol=0.02, generator=gen(0))
    assert r.stderr <= 0.02 * abs(r.estimate) and r.num_matvecs < 10_000
    assert abs(r.estimate - truth) < 4 * 0.02 * abs(truth)
    r = hutchinson_trace(
        torch.diag(torch.arange(1.0, 30.0, dtype=F64)), rtol=1e-3, generator=gen(0)
    )
    # exact samples: only the rounding floor sqrt(n) eps |trace| (n = 29, trace 435)
    assert r.stderr == pytest.approx(29**0.5 * torch.finfo(F64).eps * 435.0)
    assert r.num_matvecs == 64  # two batches of 32, the minimum
    truth = float(geo.trace())
    for f, tol in ((hutchpp_trace, 1e-3), (xtrace, 1e-4)):
        r = f(geo, rtol=tol, generator=gen(0))
        assert r.stderr <= tol * abs(r.estimate), r
        assert r.num_matvecs <= 600, r
        assert abs(r.estimate - truth) < 4 * tol * truth, r
    # adaptive XTrace spends exactly two products per test vector
    r = xtrace(geo, rtol=1e-4, generator=gen(0))
    assert r.samples is not None and r.num_matvecs == 2 * r.samples.shape[0]


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_adaptive_budget_exhausted_warns(name, indef):
    with pytest.warns(RuntimeWarning, match="max_matvecs=50"):
        r = ESTIMATORS[name](indef, rtol=1e-9, max_matvecs=50, generator=gen(0))
    assert r.num_matvecs <= 50 and r.num_matvecs >= 48


# ----- operators, blocks, dtypes, results --------------------------------------------------------
class Recording(LinearOperator):
    SELF_ADJOINT = True

    def __init__(self, A):
        super().__init__(tuple(A.shape), A.dtype)
        self.A, self.calls = A, []

    def _matmat(self, X):
        self.calls.append(X.shape[1])
        return self.A @ X


def test_products_are_blocks_and_counted(indef):
    for f, m, kw, calls in (
        (hutchinson_trace, 100, {"batch_size": 32}, [32, 32, 32, 4]),
        (hutchinson_trace, 100, {}, [100]),  # fixed mode, default: one wide block
        (hutchpp_trace, 30, {}, [10, 10, 10]),
        (xtrace, 41, {}, [20, 20]),
    ):
        op = Recording(indef)
        r = f(op, m, generator=gen(0), **kw)
        assert op.calls == calls and r.num_matvecs == sum(calls)
    op = Recording(indef)
    r = diagonal(op, 40, method="diag++", generator=gen(0))
    assert op.calls == [13, 13, 14] and r.num_matvecs == 40
    op = Recording(indef)
    with pytest.warns(RuntimeWarning):  # adaptive mode multiplies batches of 32
        hutchinson_trace(op, rtol=1e-9, max_matvecs=70, generator=gen(0))
    assert op.calls == [32, 32, 6]


def test_matrix_free_operator():
    lam = geometric_spectrum(1000, 0.95)
    op = KnownSpectrumOperator(lam, generator=gen(0))
    r = xtrace(op, 200, generator=gen(1))
    assert abs(r.estimate - float(lam.sum())) < 1e-3 * float(lam.sum())


def test_float32():
    # Same seed, same test vectors (drawn in float64 and rounded): a float32 run must agree with
    # the float64 run to single-precision accuracy.
    A = matrix_with_spectrum(geometric_spectrum(200, 0.8), generator=gen(0))
    for f in ESTIMATORS.values():
        r64 = f(A, 80, generator=gen(1))
        r32 = f(A.float(), 80, generator=gen(1))
        assert abs(r32.estimate - r64.estimate) < 1e-4 * abs(r64.estimate), (f.__name__, r32, r64)
    r = diagonal(A.float(), 10, method="diag++", generator=gen(0))
    assert r.estimate.dtype == torch.float32 and r.stderr.dtype == torch.float32
    r64 = diagonal(A, 10, method="diag++", generator=gen(0))
    assert torch.allclose(r.estimate.double(), r64.estimate, atol=1e-4)


def test_trace_result_format():
    r = TraceResult(16.3684, 0.3512, 100, "xtrace")
    assert str(r) == "trace 16.37 ± 0.35 (100 matvecs, xtrace)"
    with pytest.raises(AttributeError):
        r.estimate = 1.0  # type: ignore[misc]
    r = hutchinson_trace(torch.eye(5, dtype=F64), 1, generator=gen(0))
    assert r.estimate == 5.0 and math.isnan(r.stderr)  # one sample: no spread to measure


# ----- bad inputs --------------------------------------------------------------------------------
def test_bad_inputs():
    A = torch.eye(6, dtype=F64)
    with pytest.raises(ValueError, match="square"):
        hutchinson_trace(torch.ones(4, 5, dtype=F64), 4)
    with pytest.raises(ValueError, match="exactly one of num_matvecs"):
        xtrace(A)
    with pytest.raises(ValueError, match="exactly one of num_matvecs"):
        hutchpp_trace(A, 9, rtol=0.1)
    with pytest.raises(ValueError, match="hutchpp_trace needs num_matvecs >= 3, got 2"):
        hutchpp_trace(A, 2)
    with pytest.raises(ValueError, match="xtrace needs num_matvecs >= 4, got 3"):
        xtrace(A, 3)
    with pytest.raises(ValueError, match="xtrace needs max_matvecs >= 4, got 2"):
        xtrace(A, rtol=0.1, max_matvecs=2)
    with pytest.raises(ValueError, match=r"diag\+\+'\) needs num_matvecs >= 3"):
        diagonal(A, 2, method="diag++")
    with pytest.raises(ValueError, match="num_matvecs must be >= 1, got 0"):
        hutchinson_trace(A, 0)
    with pytest.raises(TypeError, match="num_matvecs must be an int"):
        hutchinson_trace(A, 10.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="rtol must be a finite number > 0"):
        hutchinson_trace(A, rtol=-0.1)
    with pytest.raises(ValueError, match="distribution must be one of"):
        xtrace(A, 4, distribution="uniform")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="method must be one of"):
        diagonal(A, 4, method="xdiag")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"torch\.Tensor or LinearOperator"):
        hutchinson_trace([[1.0]], 4)  # type: ignore[arg-type]
    nan_op = MatmatOperator(lambda X: X * float("nan"), (6, 6), F64, symmetric=True)
    for f in (hutchinson_trace, hutchpp_trace, xtrace):
        with pytest.raises(ValueError, match="operator returned non-finite values"):
            f(nan_op, 6)
    with pytest.raises(ValueError, match="operator returned non-finite values"):
        diagonal(nan_op, 6)


# ----- issue 17: adaptive stopping in O(batch) per batch, half precision, meta ----------------
def _old_sample_until(draw, budget, batch_size, rtol, offset=0.0):
    """The pre-issue-17 loop: every sample re-summarized after every batch."""
    from subspaces.linalg.trace import _MIN_ADAPTIVE_SAMPLES, _converged, _mean_stderr

    chunks = []
    m = 0
    min_samples = max(2 * batch_size, _MIN_ADAPTIVE_SAMPLES)
    while m < budget:
        b = min(batch_size, budget - m)
        chunks.append(draw(b))
        m += b
        if rtol is not None and m >= min_samples:
            est, err = _mean_stderr(torch.cat(chunks))
            if _converged(offset + est, err, rtol):
                break
    return torch.cat(chunks)


@pytest.mark.parametrize("name", ["hutchinson", "hutch++"])
@pytest.mark.parametrize(("rtol", "batch_size"), [(0.02, 4), (0.05, None), (1e-4, 16)])
def test_adaptive_results_equal_the_old_computation(name, rtol, batch_size, indef, monkeypatch):
    import warnings

    import subspaces.linalg.trace as trace_mod

    fn = ESTIMATORS[name]
    for seed in range(3):
        kwargs = dict(rtol=rtol, max_matvecs=600, batch_size=batch_size, generator=gen(seed))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # rtol=1e-4 runs out of budget
            new = fn(indef, **kwargs)
            with monkeypatch.context() as m:
                m.setattr(trace_mod, "_sample_until", _old_sample_until)
                kwargs["generator"] = gen(seed)
                old = fn(indef, **kwargs)
        assert (new.estimate, new.stderr, new.num_matvecs) == (
            old.estimate,
            old.stderr,
            old.num_matvecs,
        )
        assert torch.equal(new.samples, old.samples)


@pytest.mark.parametrize("name", ["hutchinson", "hutch++"])
def test_adaptive_work_per_batch_does_not_grow(name, indef, monkeypatch):
    """Count the samples each statistic touches: linear in the samples, not quadratic."""
    import subspaces.linalg.trace as trace_mod

    summarized: list[int] = []
    updated: list[int] = []
    real_summary, real_update = trace_mod._mean_stderr, trace_mod._RunningStats.update

    def summary(samples):
        summarized.append(samples.shape[0])
        return real_summary(samples)

    def update(self, x):
        updated.append(x.shape[0])
        return real_update(self, x)

    monkeypatch.setattr(trace_mod, "_mean_stderr", summary)
    monkeypatch.setattr(trace_mod._RunningStats, "update", update)
    with pytest.warns(RuntimeWarning, match="max_matvecs"):  # unreachable: about 200 batches
        res = ESTIMATORS[name](indef, rtol=1e-9, max_matvecs=800, batch_size=4, generator=gen(0))
    m = res.samples.shape[0]
    assert len(updated) == math.ceil(m / 4) >= 150 and max(updated) <= 4  # one batch at a time
    assert sum(summarized) == m  # one summary, at the end (the old loop touched ~m^2 / 8)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", ["hutchinson", "hutch++", "xtrace"])
def test_half_precision_operators(name, dtype):
    # products in the half dtype, the algebra in float32: the estimate is the float64 one (same
    # probes) up to the rounding of the operator (diag(1..32) is exact in both dtypes)
    d = torch.arange(1.0, 33.0, dtype=F64)
    fn = ESTIMATORS[name]
    r = fn(torch.diag(d).to(dtype), 24, generator=gen(0))
    ref = fn(torch.diag(d), 24, generator=gen(0))
    assert r.estimate == pytest.approx(ref.estimate, rel=8 * torch.finfo(dtype).eps)
    r = diagonal(torch.diag(d).to(dtype), 8, generator=gen(0))
    assert r.estimate.dtype == dtype and torch.equal(r.estimate.double(), d)


def test_meta_and_empty_operators_are_rejected():
    op = MatmatOperator(lambda X: X, (4, 4), torch.float32, device="meta", symmetric=True)
    for fn in (hutchinson_trace, hutchpp_trace, xtrace):
        with pytest.raises(ValueError, match="meta device"):
            fn(op, 6)
        with pytest.raises(ValueError, match="meta device"):
            fn(torch.eye(4, device="meta"), 6)
        with pytest.raises(ValueError, match="empty"):
            fn(torch.zeros(0, 0), 6)
    with pytest.raises(ValueError, match="meta device"):
        diagonal(op, 6)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_exact_estimates_report_their_rounding_not_zero(dtype):
    # An exact trace still carries rounding: reporting stderr 0 made +-2 stderr intervals miss
    # the truth computed in higher precision (found by the curvature coverage test).
    n = 200
    lam = torch.linspace(1.0, 3.0, n, dtype=F64)
    A = torch.diag(lam).to(dtype)  # Rademacher probes are exact on a diagonal
    truth = float(lam.to(dtype).double().sum())
    r = hutchinson_trace(A, 40, generator=gen(0))
    floor = n**0.5 * torch.finfo(dtype).eps * abs(r.estimate)
    assert floor <= r.stderr <= 1.5 * floor
    assert abs(r.estimate - truth) <= 2 * r.stderr
    # a Hutch++ / XTrace sketch that spans the space is exact too
    B = matrix_with_spectrum(lam[:12], generator=gen(1)).to(dtype)
    truth = float(B.double().trace())
    for fn in (hutchpp_trace, xtrace):
        r = fn(B, 40, generator=gen(2))
        floor = 12**0.5 * torch.finfo(dtype).eps * abs(r.estimate)
        assert floor <= r.stderr <= 1.5 * floor
        assert abs(r.estimate - truth) <= 2 * r.stderr
