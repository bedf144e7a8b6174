"""Tests for randomized range finder, SVD, eigh and Nyström (``subspaces.linalg.randomized``).

Error bounds used (Halko, Martinsson, Tropp, SIAM Review 2011, "HMT"), for a Gaussian test
matrix with ``l = k + p`` columns and ``q`` power iterations, ``P = Q Q^T``:

* expectation (HMT Thm 10.6 + Cor 10.10, ``p >= 2``)::

      E ||(I - P) A|| <= [(1 + sqrt(k / (p - 1))) s_{k+1}^{2q+1}
                          + e sqrt(k + p) / p * (sum_{j>k} s_j^{2(2q+1)})^{1/2}]^{1/(2q+1)}

* deviation (HMT Cor 10.9, ``p >= 4``, failure probability <= 6 e^{-p}, applied to
  ``(A A^T)^q A`` and then HMT Thm 9.2, ``||(I - P) A||^{2q+1} <= ||(I - P)(A A^T)^q A||``)::

      ||(I - P) A|| <= [(1 + 17 sqrt(1 + k / p)) s_{k+1}^{2q+1}
                        + 8 sqrt(k + p) / (p + 1) * (sum_{j>k} s_j^{2(2q+1)})^{1/2}]^{1/(2q+1)}

* the truncated SVD ``U S V^T = Q [Q^T A]_k`` satisfies
  ``||A - U S V^T|| <= ||(I - P) A|| + s_{k+1}(Q^T A) <= ||(I - P) A|| + s_{k+1}``.

Nyström (Tropp, Yurtsever, Udell, Cevher 2017, Thm 4.1; fixed rank ``k`` from a sketch of size
``l = k + p``): ``E ||A - [A_nys]_k||_* <= (1 + k / (p - 1)) ||A - [A]_k||_*``.
"""

import math

import pytest
import torch

from subspaces.linalg.randomized import (
    EighResult,
    RangeResult,
    SVDResult,
    nystrom,
    randomized_eigh,
    randomized_range_finder,
    randomized_svd,
)
from subspaces.linops import LowRank, MatmatOperator
from subspaces.testing import geometric_spectrum, matrix_with_spectrum, random_orthogonal

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def with_singular_values(m: int, n: int, s: torch.Tensor, seed: int) -> torch.Tensor:
    r = s.shape[0]
    U = random_orthogonal(m, generator=gen(seed))[:, :r]
    V = random_orthogonal(n, generator=gen(seed + 1000))[:, :r]
    return (U * s) @ V.T


def spec_norm(M: torch.Tensor) -> float:
    return float(torch.linalg.matrix_norm(M, ord=2))


def hmt_expected_bound(s: torch.Tensor, k: int, p: int, q: int) -> float:
    e = 2 * q + 1
    tail = float(s[k:].pow(2 * e).sum().sqrt())
    val = (1 + math.sqrt(k / (p - 1))) * float(s[k]) ** e + math.e * math.sqrt(k + p) / p * tail
    return val ** (1 / e)


def hmt_deviation_bound(s: torch.Tensor, k: int, p: int, q: int) -> float:
    e = 2 * q + 1
    tail = float(s[k:].pow(2 * e).sum().sqrt())
    val = (1 + 17 * math.sqrt(1 + k / p)) * float(s[k]) ** e + 8 * math.sqrt(k + p) / (p + 1) * tail
    return val ** (1 / e)


class Counter:
    """An operator that counts the columns it multiplies (both A and A^T)."""

    def __init__(self, M: torch.Tensor):
        self.M, self.cols, self.calls = M, 0, 0

        def mm(X):
            self.cols += X.shape[1]
            self.calls += 1
            return self.M @ X

        def rmm(X):
            self.cols += X.shape[1]
            self.calls += 1
            return self.M.T @ X

        self.op = MatmatOperator(mm, tuple(M.shape), M.dtype, rmatmat=rmm)


@pytest.mark.parametrize("q", [0, 1, 2])
def test_fast_decay_within_hmt_bounds(q):
    m, n, k, p = 150, 100, 10, 10
    s = geometric_spectrum(n, 0.7)
    A = with_singular_values(m, n, s, seed=1)
    errs, svd_errs = [], []
    for seed in range(4):
        Q = randomized_range_finder(A, k, oversample=p, power_iters=q, generator=gen(seed)).basis
        errs.append(spec_norm(A - Q @ (Q.T @ A)))
        res = randomized_svd(A, k, oversample=p, power_iters=q, generator=gen(seed))
        svd_errs.append(spec_norm(A - res.operator().to_dense()))
    dev = hmt_deviation_bound(s, k, p, q)
    # every draw: the deviation bound (failure probability <= 6 e^-10 each)
    assert max(errs) <= dev
    assert max(svd_errs) <= dev + float(s[k])
    # the average: the expectation bound
    assert sum(errs) / len(errs) <= hmt_expected_bound(s, k, p, q)
    # and the optimum sigma_{k+1} is a lower bound (Eckart-Young)
    assert min(svd_errs) >= float(s[k]) * (1 - 1e-10)
    if q == 2:  # fast decay + power iterations: essentially optimal
        assert max(svd_errs) <= 1.05 * float(s[k])


def test_exact_recovery_of_low_rank():
    A = torch.randn(60, 5, dtype=F64, generator=gen(2)) @ torch.randn(
        5, 40, dtype=F64, generator=gen(3)
    )
    scale = spec_norm(A)
    Q = randomized_range_finder(A, 5, power_iters=0, generator=gen(4)).basis
    assert spec_norm(A - Q @ (Q.T @ A)) <= 1e-10 * scale
    svd = randomized_svd(A, 5, power_iters=0, generator=gen(4))
    assert spec_norm(A - svd.operator().to_dense()) <= 1e-10 * scale
    lam = torch.tensor([6.0, -4.0, 3.0, 2.0, -1.0] + [0.0] * 45, dtype=F64)
    S = matrix_with_spectrum(lam, generator=gen(5))
    eig = randomized_eigh(S, 5, power_iters=0, generator=gen(6))
    assert spec_norm(S - eig.operator().to_dense()) <= 1e-10 * 6
    assert torch.allclose(eig.eigenvalues, lam[:5], atol=1e-10)
    P = matrix_with_spectrum(lam.abs(), generator=gen(7))
    nys = nystrom(P, 5, generator=gen(8))
    assert spec_norm(P - nys.operator().to_dense()) <= 1e-10 * 6


@pytest.mark.parametrize("shape", [(120, 50), (50, 120)])
def test_rectangular_svd_matches_torch(shape):
    m, n = shape
    s = geometric_spectrum(min(m, n), 0.5)
    A = with_singular_values(m, n, s, seed=9)
    k = 6
    res = randomized_svd(A, k, generator=gen(10))
    assert isinstance(res, SVDResult)
    assert res.U.shape == (m, k) and res.S.shape == (k,) and res.V.shape == (n, k)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    assert torch.allclose(res.S, S[:k], rtol=1e-10, atol=0)
    # singular vectors agree up to sign
    assert torch.allclose((res.U * U[:, :k]).sum(0).abs(), torch.ones(k, dtype=F64), atol=1e-9)
    assert torch.allclose((res.V * Vh[:k].T).sum(0).abs(), torch.ones(k, dtype=F64), atol=1e-9)
    assert torch.allclose(res.U.T @ res.U, torch.eye(k, dtype=F64), atol=1e-12)
    assert torch.allclose(res.V.T @ res.V, torch.eye(k, dtype=F64), atol=1e-12)
    op = res.operator()
    assert isinstance(op, LowRank) and op.shape == (m, n)
    assert torch.allclose(op.to_dense(), (res.U * res.S) @ res.V.T)


def test_nystrom_psd_and_near_optimal_in_nuclear_norm():
    n, k, p = 200, 10, 10
    lam = (torch.arange(n, dtype=F64) + 1) ** -2.0
    A = matrix_with_spectrum(lam, generator=gen(11))
    optimal = float(lam[k:].sum())  # ||A - [A]_k||_*
    errs = []
    for seed in range(5):
        res = nystrom(A, k, oversample=p, generator=gen(seed))
        assert isinstance(res, EighResult)
        assert bool((res.eigenvalues >= 0).all())
        assert bool((res.eigenvalues[:-1] >= res.eigenvalues[1:]).all())
        assert torch.allclose(
            res.eigenvectors.T @ res.eigenvectors, torch.eye(k, dtype=F64), atol=1e-12
        )
        E = A - res.operator().to_dense()
        # A_nys <= A in the Loewner order: A - A_hat is PSD (up to the stabilizing shift).
        evals = torch.linalg.eigvalsh((E + E.T) / 2)
        assert float(evals[0]) >= -1e-12
        errs.append(float(evals.abs().sum()))  # nuclear norm
    assert sum(errs) / len(errs) <= (1 + k / (p - 1)) * optimal
    assert min(errs) >= optimal * (1 - 1e-10)


def test_nystrom_rejects_indefinite():
    lam = torch.cat([torch.linspace(1, 2, 20, dtype=F64), torch.tensor([-0.5], dtype=F64)])
    A = matrix_with_spectrum(lam, generator=gen(12))
    with pytest.raises(ValueError, match="not positive semidefinite"):
        nystrom(A, 5, oversample=15, generator=gen(13))


def test_power_iterations_help_on_slow_decay():
    n, k = 200, 10
    s = (torch.arange(n, dtype=F64) + 1) ** -0.5
    A = with_singular_values(n, n, s, seed=14)
    errs = {}
    for q in (0, 1, 3):
        res = randomized_svd(A, k, power_iters=q, generator=gen(15))
        errs[q] = spec_norm(A - res.operator().to_dense())
        assert errs[q] <= hmt_deviation_bound(s, k, 10, q) + float(s[k])
    assert errs[3] < errs[1] < errs[0]
    # The excess over the optimum sigma_{k+1} shrinks by more than 10x (observed: ~1000x;
    # the deviation bound itself falls from 44 sigma_{k+1} at q = 0 to 1.6 sigma_{k+1} at q = 3).
    opt = float(s[k])
    assert errs[0] - opt > 10 * (errs[3] - opt)
    assert errs[0] > 1.2 * opt


def test_matvec_counts():
    k, p = 4, 3
    l = k + p
    M = torch.randn(30, 20, dtype=F64, generator=gen(16))
    for q in (0, 1, 2):
        c = Counter(M)
        res = randomized_range_finder(c.op, k, oversample=p, power_iters=q, generator=gen(17))
        assert isinstance(res, RangeResult) and res.basis.shape == (30, l)
        assert res.num_matvecs == c.cols == l * (1 + 2 * q)
        assert c.calls == 1 + 2 * q  # one block product per pass
        c = Counter(M)
        res = randomized_svd(c.op, k, oversample=p, power_iters=q, generator=gen(17))
        assert res.num_matvecs == c.cols == l * (2 + 2 * q)
    S = M.T @ M
    for q in (0, 2):
        c = Counter(S)
        res = randomized_eigh(c.op, k, oversample=p, power_iters=q, generator=gen(18))
        assert res.num_matvecs == c.cols == l * (2 + 2 * q)
    c = Counter(S)
    res = nystrom(c.op, k, oversample=p, generator=gen(19))
    assert res.num_matvecs == c.cols == l and c.calls == 1
    # the sketch is capped at min(m, n)
    c = Counter(M)
    res = randomized_range_finder(c.op, 15, oversample=10, power_iters=1, generator=gen(20))
    assert res.basis.shape == (30, 20) and res.num_matvecs == c.cols == 20 * 3


def test_randomized_eigh_which_and_accuracy():
    lam = torch.cat(
        [torch.tensor([10.0, -9.0, 8.0, -7.0, 6.0], dtype=F64), 0.01 * geometric_spectrum(95, 0.9)]
    )
    A = matrix_with_spectrum(lam, generator=gen(21))
    res = randomized_eigh(A, 4, generator=gen(22))
    assert torch.allclose(
        res.eigenvalues, torch.tensor([10.0, -9.0, 8.0, -7.0], dtype=F64), atol=1e-8
    )
    # Ritz vectors are eigenvectors: small residuals
    R = A @ res.eigenvectors - res.eigenvectors * res.eigenvalues
    assert float(R.norm(dim=0).max()) < 1e-7
    res = randomized_eigh(A, 3, which="largest", generator=gen(22))
    assert torch.allclose(res.eigenvalues[:2], torch.tensor([10.0, 8.0], dtype=F64), atol=1e-8)
    assert bool((res.eigenvalues[:-1] >= res.eigenvalues[1:]).all())
    # PSD: largest == largest_magnitude
    P = matrix_with_spectrum(lam.abs(), generator=gen(23))
    a = randomized_eigh(P, 3, which="largest", generator=gen(24))
    b = randomized_eigh(P, 3, generator=gen(24))
    assert torch.allclose(a.eigenvalues, b.eigenvalues)


def test_float32():
    A = with_singular_values(80, 60, geometric_spectrum(60, 0.5), seed=25).float()
    res = randomized_svd(A, 5, generator=gen(26))
    assert res.U.dtype == res.S.dtype == res.V.dtype == torch.float32
    S = torch.linalg.svdvals(A.double())[:5]
    assert torch.allclose(res.S.double(), S, rtol=1e-5)
    P = (A.T @ A).double()
    P = ((P + P.T) / 2).float()
    nys = nystrom(P, 5, generator=gen(27))
    assert nys.eigenvalues.dtype == torch.float32
    # error ~ the stabilizing shift nu = sqrt(n) eps_32 ||A Omega|| ~ 1e-6, plus float32 roundoff
    nu = math.sqrt(60) * torch.finfo(torch.float32).eps * 1.0
    assert torch.allclose(nys.eigenvalues.double(), S**2, rtol=1e-5, atol=10 * nu)


def test_errors_and_inputs_untouched():
    A = torch.randn(10, 8, dtype=F64, generator=gen(28))
    A0 = A.clone()
    with pytest.raises(ValueError, match="rank"):
        randomized_svd(A, 9)
    with pytest.raises(ValueError, match="rank"):
        randomized_range_finder(A, 0)
    with pytest.raises(ValueError, match="oversample"):
        randomized_svd(A, 2, oversample=-1)
    with pytest.raises(ValueError, match="power_iters"):
        randomized_svd(A, 2, power_iters=-1)
    with pytest.raises(ValueError, match="square"):
        randomized_eigh(A, 2)
    with pytest.raises(ValueError, match="square"):
        nystrom(A, 2)
    S = A.T @ A
    with pytest.raises(ValueError, match="which"):
        randomized_eigh(S, 2, which="smallest")
    with pytest.raises(ValueError, match="symmetric"):
        randomized_eigh(torch.randn(8, 8, dtype=F64, generator=gen(29)), 2)
    bad = MatmatOperator(lambda X: X * float("inf"), (8, 8), F64, symmetric=True)
    for fn in (randomized_range_finder, randomized_svd, randomized_eigh, nystrom):
        with pytest.raises(ValueError, match="non-finite"):
            fn(bad, 2)
    with pytest.raises(TypeError):
        randomized_svd("A", 2)
    assert torch.equal(A, A0)


def test_zero_matrix():
    Z = torch.zeros(12, 12, dtype=F64)
    assert torch.equal(nystrom(Z, 3, generator=gen(30)).eigenvalues, torch.zeros(3, dtype=F64))
    assert torch.equal(randomized_svd(Z, 3, generator=gen(30)).S, torch.zeros(3, dtype=F64))


# ----- issue 20: automatic power iterations, cheap normalization, float32 kept ------------------
class _Record(torch.overrides.TorchFunctionMode):
    """Records the names of torch functions called and the dtypes/sizes of their tensor outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []
        self.outputs: list[tuple[str, torch.dtype, int]] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        out = func(*args, **(kwargs or {}))
        name = getattr(func, "__name__", str(func))
        self.calls.append(name)
        for t in out if isinstance(out, tuple) else (out,):
            if isinstance(t, torch.Tensor):
                self.outputs.append((name, t.dtype, t.numel()))
        return out


def test_default_power_iters_follow_the_rank():
    # scikit-learn's n_iter="auto": 7 when rank < 0.1 min(m, n), else 4 (was: always 2).
    M = torch.randn(300, 200, dtype=F64, generator=gen(40))
    k, p = 5, 10  # 5 < 20: q = 7
    assert randomized_svd(M, k, generator=gen(41)).num_matvecs == (k + p) * (2 + 2 * 7)
    assert randomized_range_finder(M, k, generator=gen(41)).num_matvecs == (k + p) * (1 + 2 * 7)
    k = 20  # 20 = 0.1 * 200: q = 4
    assert randomized_svd(M, k, generator=gen(41)).num_matvecs == (k + p) * (2 + 2 * 4)
    S = M.T @ M
    assert randomized_eigh(S, 3, generator=gen(42)).num_matvecs == 13 * (2 + 2 * 7)
    assert randomized_eigh(S, 30, generator=gen(42)).num_matvecs == 40 * (2 + 2 * 4)


def test_default_is_accurate_on_slow_decay():
    # sigma_i = i^-0.5, rank 10 of 400 x 300. The default (q = 7) stays within the HMT deviation
    # bound for q = 7 (1.25 sigma_{k+1} for the range, plus sigma_{k+1} for the truncation), and
    # its excess over the optimum sigma_{k+1} is below a tenth of q = 2's (the old default): each
    # extra iteration shrinks the excess by about (sigma_{l+1} / sigma_k)^2 = 10 / 21, so five
    # more give < 0.03 in theory (observed on this draw: 1.5e-4 -> 1.2e-10 relative).
    m, n, k = 400, 300, 10
    s = (torch.arange(n, dtype=F64) + 1) ** -0.5
    A = with_singular_values(m, n, s, seed=43)
    opt = float(s[k])
    res = randomized_svd(A, k, generator=gen(44))
    err = spec_norm(A - res.operator().to_dense())
    assert err <= hmt_deviation_bound(s, k, 10, 7) + opt
    old = randomized_svd(A, k, power_iters=2, generator=gen(44))
    err_old = spec_norm(A - old.operator().to_dense())
    assert err - opt <= 0.1 * (err_old - opt)


def test_power_iterations_orthonormalize_only_at_the_end():
    # Between products the block is rescaled by LU (getrf + trsm), not orthonormalized: one QR
    # per call whatever q is (it was 1 + 2 q).
    A = with_singular_values(120, 80, geometric_spectrum(80, 0.8), seed=45)
    for q in (0, 3):
        rec = _Record()
        with rec:
            Q = randomized_range_finder(A, 6, power_iters=q, generator=gen(46)).basis
        assert rec.calls.count("linalg_qr") + rec.calls.count("qr") == 1
        torch.testing.assert_close(Q.T @ Q, torch.eye(Q.shape[1], dtype=F64), rtol=0, atol=1e-13)


@pytest.mark.parametrize("fn", ["svd", "eigh", "range"])
def test_float32_input_is_not_promoted(fn):
    # No tall (n x l or larger) float64 block is formed from a float32 input (the Rayleigh-Ritz
    # core of randomized_eigh was built from float64 copies of Q and A Q).
    n, k = 150, 4
    lam = geometric_spectrum(n, 0.7)
    A = matrix_with_spectrum(lam, generator=gen(47)).float()
    A = (A + A.T) / 2
    rec = _Record()
    with rec:
        if fn == "svd":
            res = randomized_svd(A, k, generator=gen(48))
            vals = res.S
        elif fn == "eigh":
            res = randomized_eigh(A, k, generator=gen(48))
            vals = res.eigenvalues
        else:
            vals = randomized_range_finder(A, k, generator=gen(48)).basis
    products = {
        "matmul",
        "__matmul__",
        "mm",
        "linalg_qr",
        "qr",
        "linalg_svd",
        "svd",
        "linalg_solve_triangular",
        "solve_triangular",
        "linalg_lu_factor_ex",
        "to",
    }
    big64 = [
        (name, numel)
        for name, dt, numel in rec.outputs
        if dt == torch.float64 and numel >= n * (k + 10) and name in products  # (n, l) or larger
    ]
    assert big64 == []
    assert vals.dtype == torch.float32
    if fn != "range":
        # float32 accuracy: rank-4 values of a fast-decaying spectrum to ~100 eps_32 relative
        tol = 100 * torch.finfo(torch.float32).eps
        torch.testing.assert_close(vals.double(), lam[:k], rtol=tol, atol=tol * float(lam[0]))


def test_lu_normalization_survives_a_rank_deficient_block():
    # rank 3 < l = 13: the trailing LU pivots are rounding noise or exact zeros; still finite
    # and exact on the range.
    A = torch.zeros(40, 30, dtype=F64)
    A[:3, :3] = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=F64))
    res = randomized_svd(A, 3, power_iters=3, generator=gen(49))
    torch.testing.assert_close(res.S, torch.tensor([3.0, 2.0, 1.0], dtype=F64))
    assert bool(torch.isfinite(res.U).all() and torch.isfinite(res.V).all())


def test_non_finite_dense_input_is_refused():
    # Tensors are no longer scanned up front (the scan cost as much as several products on a
    # 3000 x 2000 matrix); a NaN or Inf entry still makes the Gaussian products non-finite.
    for bad in (float("nan"), float("inf")):
        A = torch.randn(30, 20, dtype=F64, generator=gen(50))
        A[7, 3] = bad
        for fn in (randomized_range_finder, randomized_svd):
            with pytest.raises(ValueError, match="non-finite"):
                fn(A, 2, generator=gen(51))
        S = torch.randn(20, 20, dtype=F64, generator=gen(52))
        S = S + S.T
        S[4, 4] = bad
        for fn in (randomized_eigh, nystrom):
            with pytest.raises(ValueError, match="non-finite"):
                fn(S, 2, generator=gen(53))
    with pytest.raises(TypeError, match="floating"):
        randomized_svd(torch.ones(5, 4, dtype=torch.int64), 2)
    with pytest.raises(ValueError, match="dimensions"):
        randomized_svd(torch.ones(5, 4, 3, dtype=F64), 2)


def test_huge_finite_products_are_not_mistaken_for_non_finite():
    # The product check sums the block first; a sum that overflows while every entry is finite
    # must not be reported as a non-finite product.
    from subspaces.linalg.randomized import _apply, _operator

    big = torch.finfo(F64).max / 1.5
    M = torch.full((3, 2), big, dtype=F64)
    X = torch.eye(2, dtype=F64)
    assert not bool(torch.isfinite((M @ X).sum()))
    torch.testing.assert_close(_apply(_operator(M), X, "A @ X"), M)
    with pytest.raises(ValueError, match="non-finite"):
        _apply(_operator(M), torch.ones(2, 1, dtype=F64), "A @ X")  # 2 big overflows
