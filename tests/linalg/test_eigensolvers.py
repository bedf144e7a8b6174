"""Lanczos and power iteration against numpy.linalg.eigh on matrices of known spectrum."""

import numpy as np
import pytest
import torch

from subspaces.linalg.lanczos import lanczos
from subspaces.linalg.power import power_iteration
from subspaces.linalg.subspace import Subspace
from subspaces.linops import MatmatOperator
from subspaces.testing import (
    KnownSpectrumOperator,
    clustered_spectrum,
    gap_spectrum,
    geometric_spectrum,
    matrix_with_spectrum,
)

F64 = torch.float64


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def dense_reference(A, k, which):
    w = np.linalg.eigh(A.numpy())[0]
    if which == "largest":
        return np.sort(w)[::-1][:k]
    if which == "smallest":
        return np.sort(w)[:k]
    hi, lo = (k + 1) // 2, k // 2
    return np.sort(np.concatenate([np.sort(w)[::-1][:hi], np.sort(w)[:lo]]))[::-1]


def true_residuals(A, r):
    X = r.eigenvectors
    return (A @ X - X * r.eigenvalues).norm(dim=0)


def check_certified(A, r, k, which, rtol=None):
    """Sorted as documented, eigenvalues within the residual bound, residuals honest."""
    ref = dense_reference(A, k, which)
    assert r.all_converged
    vals = r.eigenvalues.numpy()
    # symmetric A: each Ritz value is within its residual norm of an eigenvalue
    bound = r.residuals.numpy() + 1e-12 * r.scale
    assert np.all(np.abs(vals - ref) <= bound), (vals, ref, bound)
    if which == "smallest":
        assert np.all(np.diff(vals) >= 0)
    else:
        assert np.all(np.diff(vals) <= 0)
    # the reported residuals are real: recomputed independently, and below tol * scale
    torch.testing.assert_close(true_residuals(A, r), r.residuals, rtol=1e-6, atol=1e-12 * r.scale)
    assert torch.all(r.residuals <= r.tol * r.scale)
    torch.testing.assert_close(
        r.eigenvectors.T @ r.eigenvectors, torch.eye(k, dtype=F64), atol=1e-10, rtol=0
    )


SPECTRA = {
    "gap_0.98": lambda: gap_spectrum(300, 5, 0.98),
    "geometric": lambda: geometric_spectrum(300, 0.95),
    "clustered": lambda: clustered_spectrum(
        300, [3.0, 2.0, -2.5], 2, spread=1e-3, generator=gen(1)
    ),
    "indefinite": lambda: torch.linspace(-4.0, 3.0, 300, dtype=F64),
}


@pytest.mark.parametrize("spectrum", sorted(SPECTRA))
@pytest.mark.parametrize("which", ["largest", "smallest", "both_ends"])
@pytest.mark.parametrize("block_size", [1, 3])
def test_lanczos_matches_eigh(spectrum, which, block_size):
    if spectrum == "geometric" and which != "largest":
        pytest.skip("the small end of 0.95**i is a cluster of width 1e-7: not a Lanczos problem")
    lam = SPECTRA[spectrum]()
    A = matrix_with_spectrum(lam, generator=gen(2))
    r = lanczos(A, 4, which, block_size=block_size, generator=gen(3))
    check_certified(A, r, 4, which)


def test_lanczos_exactly_repeated_eigenvalue_needs_a_block():
    lam = clustered_spectrum(200, [5.0, 4.0], 3, spread=0.0, generator=gen(1))
    A = matrix_with_spectrum(lam, generator=gen(2))
    r = lanczos(A, 6, block_size=3, generator=gen(0))
    check_certified(A, r, 6, "largest")
    np.testing.assert_allclose(r.eigenvalues.numpy(), [5, 5, 5, 4, 4, 4], atol=1e-8)


def test_lanczos_restarts_and_stays_certified():
    lam = gap_spectrum(400, 6, 0.99)
    A = matrix_with_spectrum(lam, generator=gen(5))
    r = lanczos(A, 6, max_basis=14, generator=gen(0))
    assert r.num_restarts > 0
    check_certified(A, r, 6, "largest")


def test_lanczos_small_and_degenerate_operators():
    r = lanczos(torch.diag(torch.arange(5.0, dtype=F64)), 5)
    np.testing.assert_allclose(r.eigenvalues.numpy(), [4, 3, 2, 1, 0], atol=1e-12)
    assert r.num_matvecs == 5
    r = lanczos(torch.eye(50, dtype=F64), 3, generator=gen(0))  # every vector is an eigenvector
    assert r.all_converged and r.num_matvecs == 3
    r = lanczos(torch.zeros(20, 20, dtype=F64), 2, generator=gen(0))
    assert r.all_converged and torch.all(r.eigenvalues == 0)


def test_lanczos_matrix_free_large_operator_float32():
    lam = gap_spectrum(20_000, 5, 0.98, dtype=torch.float32)
    A = KnownSpectrumOperator(lam, generator=gen(0))
    r = lanczos(A, 5, generator=gen(1))
    assert r.all_converged and r.tol == 1e-5
    assert torch.all((r.eigenvalues - lam[:5]).abs() <= r.residuals + 1e-6)
    assert r.num_matvecs < 60


def test_lanczos_takes_far_fewer_matvecs_than_power_iteration():
    lam = gap_spectrum(2000, 5, 0.98)
    A = KnownSpectrumOperator(lam, generator=gen(0))
    lz = lanczos(A, 5, tol=1e-6, generator=gen(1))
    pw = power_iteration(A, 5, tol=1e-6, generator=gen(1))
    assert lz.all_converged and pw.all_converged
    assert pw.num_matvecs >= 3 * lz.num_matvecs
    torch.testing.assert_close(lz.eigenvalues, lam[:5], atol=1e-9, rtol=0)


def test_warm_start_spends_fewer_matvecs_than_cold():
    lam = gap_spectrum(1000, 5, 0.95)
    Q = torch.linalg.qr(torch.randn(1000, 1000, generator=gen(0), dtype=F64)).Q
    A = (Q * lam) @ Q.T
    # a nearby operator: the previous checkpoint's eigenspace is a good start
    E = torch.randn(1000, 1000, generator=gen(1), dtype=F64) * 1e-4
    B = A + (E + E.T) / 2
    prev = lanczos(A, 5, generator=gen(2))
    cold = lanczos(B, 5, tol=1e-6, generator=gen(3))
    warm = lanczos(B, 5, tol=1e-6, v0=prev.subspace)
    assert cold.all_converged and warm.all_converged
    torch.testing.assert_close(warm.eigenvalues, cold.eigenvalues, atol=1e-5, rtol=0)
    assert warm.num_matvecs < cold.num_matvecs


def test_budget_exhaustion_is_reported_not_hidden():
    A = matrix_with_spectrum(gap_spectrum(300, 5, 0.999), generator=gen(0))
    r = lanczos(A, 5, max_matvecs=8, generator=gen(1))
    assert r.num_matvecs <= 8 and not r.all_converged
    p = power_iteration(A, 2, max_matvecs=10, generator=gen(1))
    assert p.num_matvecs == 10 and not p.all_converged


def test_power_iteration_matches_eigh():
    lam = geometric_spectrum(100, 0.7)
    A = matrix_with_spectrum(lam, generator=gen(4))
    r = power_iteration(A, 3, generator=gen(0))
    assert r.all_converged
    assert torch.all((r.eigenvalues - lam[:3]).abs() <= r.residuals + 1e-12)
    torch.testing.assert_close(true_residuals(A, r), r.residuals, rtol=1e-6, atol=1e-14)


def test_deterministic_given_a_generator():
    A = matrix_with_spectrum(geometric_spectrum(100, 0.9), generator=gen(4))
    a, b = lanczos(A, 3, generator=gen(7)), lanczos(A, 3, generator=gen(7))
    assert torch.equal(a.eigenvalues, b.eigenvalues) and a.num_matvecs == b.num_matvecs


def test_str_reports_certificate():
    r = lanczos(torch.diag(torch.arange(1.0, 11.0, dtype=F64)), 2, generator=gen(0))
    assert "2/2 converged" in str(r) and "matvecs" in str(r)


@pytest.mark.parametrize(
    ("call", "error", "match"),
    [
        (lambda: lanczos(torch.ones(3, 4, dtype=F64), 1), ValueError, "square"),
        (lambda: lanczos(torch.eye(3, dtype=F64), 4), ValueError, "k must be <= n = 3"),
        (lambda: lanczos(torch.eye(3, dtype=F64), 0), ValueError, "k must be >= 1"),
        (lambda: lanczos(torch.eye(3, dtype=F64), 1.5), TypeError, "k must be an int"),
        (lambda: lanczos(torch.eye(3, dtype=F64), 1, "top"), ValueError, "which must be one of"),
        (lambda: lanczos(torch.eye(3, dtype=F64), 1, tol=-1.0), ValueError, "tol"),
        (lambda: lanczos(torch.eye(3, dtype=F64), 1, block_size=4), ValueError, "block_size"),
        (
            lambda: lanczos(torch.eye(3, dtype=F64), 1, v0=torch.ones(4, dtype=F64)),
            ValueError,
            "v0",
        ),
        (
            lambda: lanczos(torch.eye(3, dtype=F64), 1, v0=torch.zeros(3, dtype=F64)),
            ValueError,
            "zero",
        ),
        (lambda: lanczos(torch.eye(3, dtype=F64), 1, v0=[1, 2, 3]), TypeError, "v0"),
        (
            lambda: lanczos(
                MatmatOperator(lambda X: X * float("nan"), (3, 3), F64, symmetric=True), 1
            ),
            ValueError,
            "non-finite",
        ),
        (lambda: power_iteration(torch.ones(2, 3, dtype=F64), 1), ValueError, "square"),
        (lambda: lanczos(torch.empty(0, 0, dtype=F64), 1), ValueError, "empty"),
    ],
)
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_from_operator_builds_the_eigenspace():
    lam = geometric_spectrum(60, 0.8)
    A = matrix_with_spectrum(lam, generator=gen(1))
    S = Subspace.from_operator(A, 3, generator=gen(0))
    V = torch.linalg.eigh(A)[1][:, -3:]
    assert S.distance(Subspace(V)) < 1e-7


def _check_certificate(A, r):
    """Recompute every claim of an EigenResult in float64 from scratch."""
    A64 = A.double()
    X = r.eigenvectors.double()
    eps = torch.finfo(r.eigenvectors.dtype).eps
    k = X.shape[1]
    # eigenvectors orthonormal to working precision
    gram_err = float((X.T @ X - torch.eye(k, dtype=F64)).abs().max())
    assert gram_err <= 100 * eps * max(k, 1) + 10 * eps * A.shape[0] ** 0.5
    # every converged pair: ||A v - theta v|| with v normalized, from a fresh product
    V = X / X.norm(dim=0)
    res = (A64 @ V - V * r.eigenvalues.double()).norm(dim=0)
    anorm = float(torch.linalg.matrix_norm(A64, 2))
    slack = 10 * eps * anorm * A.shape[0] ** 0.5  # rounding of one product in the dtype
    for j in range(k):
        if bool(r.converged[j]):
            assert float(res[j]) <= r.tol * r.scale + slack


def test_lanczos_float32_block_on_identity_plus_rank_one():
    # Regression: the breakdown threshold was dtype-blind (1e-12), so float32 noise entered the
    # basis; eigenvalues near 0 (true: 1) came back "converged" with eigenvectors of norm 6e-6.
    torch.manual_seed(0)
    u = torch.randn(10, 1, dtype=F64)
    A = (torch.eye(10, dtype=F64) + u @ u.T).float()
    r = lanczos(A, 3, "smallest", block_size=2, generator=gen(0))
    assert torch.allclose(r.eigenvalues, torch.ones(3), atol=1e-4)
    assert torch.allclose(r.eigenvectors.norm(dim=0), torch.ones(3), atol=1e-5)
    _check_certificate(A, r)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("n", [1, 2, 13])
def test_lanczos_identity_full_spectrum(dtype, n):
    # Regression: lanczos(torch.eye(13), 13) in float32 returned a 10 among the eigenvalues.
    r = lanczos(torch.eye(n, dtype=dtype), n, generator=gen(1))
    assert torch.allclose(r.eigenvalues, torch.ones(n, dtype=dtype), atol=1e-5)
    assert r.all_converged
    _check_certificate(torch.eye(n, dtype=dtype), r)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("which", ["largest", "smallest", "both_ends"])
def test_lanczos_certificates_hold_on_random_low_rank_and_repeated_spectra(dtype, which):
    for seed in range(6):
        g = gen(seed)
        n = int(torch.randint(3, 40, (1,), generator=g))
        rank = int(torch.randint(1, n + 1, (1,), generator=g))
        lam = torch.zeros(n, dtype=F64)
        lam[:rank] = torch.randn(rank, generator=g, dtype=F64).round()  # repeats and zeros
        A = matrix_with_spectrum(lam, generator=g).to(dtype)
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        b = int(torch.randint(1, min(3, n) + 1, (1,), generator=g))
        r = lanczos(A, k, which, block_size=b, generator=g)
        _check_certificate(A, r)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_lanczos_half_precision_operator(dtype):
    lam = torch.linspace(1.0, 10.0, 50, dtype=F64)
    A = matrix_with_spectrum(lam, generator=gen(0)).to(dtype)
    r = lanczos(A, 3, generator=gen(2))
    # algebra in float32, products in half: the values are float32 and certified in half's
    # default tolerance
    assert r.eigenvalues.dtype == torch.float32
    assert r.all_converged
    _check_certificate(A, r)
    # each value is within its residual of an eigenvalue of the half matrix
    true = torch.linalg.eigvalsh(A.double())
    for theta, res in zip(r.eigenvalues.tolist(), r.residuals.tolist(), strict=True):
        assert float((true - theta).abs().min()) <= res + 1e-3


def test_eigensolvers_reject_meta():
    with pytest.raises(ValueError, match="meta"):
        lanczos(torch.eye(4, device="meta"), 2)
    with pytest.raises(ValueError, match="meta"):
        power_iteration(torch.eye(4, device="meta"), 2)


@pytest.mark.parametrize(
    ("budget", "error"), [(0, ValueError), (-5, ValueError), ("10", TypeError)]
)
def test_power_iteration_budget_validated(budget, error) -> None:
    """max_matvecs=-5 used to return zero vectors flagged unconverged; "10" was int()-ed."""
    with pytest.raises(error, match="max_matvecs"):
        power_iteration(torch.eye(3, dtype=F64), 1, max_matvecs=budget)


def test_clearly_non_symmetric_dense_input_is_refused():
    # Found by the property tests: a visibly non-symmetric tensor ran silently.
    A = torch.randn(6, 6, generator=gen(0), dtype=F64)
    with pytest.raises(ValueError, match="symmetric"):
        lanczos(A, 2)
    with pytest.raises(ValueError, match="symmetric"):
        power_iteration(A, 2)
    # rounding-level asymmetry (a float32 Gram matrix) is accepted
    X = torch.randn(300, 40, generator=gen(1))
    G = X.T @ X
    G[0, 1] += 1e-6 * float(G.abs().max())
    assert lanczos(G, 2, generator=gen(2)).all_converged
