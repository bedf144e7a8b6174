"""Tests for CG and MINRES (``subspaces.linalg.solvers``), against ``torch.linalg.solve``."""

import math

import pytest
import torch

from subspaces.linalg.solvers import SolveResult, cg, minres
from subspaces.linops import Diagonal, MatmatOperator
from subspaces.testing import matrix_with_spectrum

F64 = torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed: int, dtype=F64) -> torch.Tensor:
    return torch.randn(*shape, generator=gen(seed), dtype=F64).to(dtype)


def counting(M: torch.Tensor):
    calls = []

    def mm(X):
        calls.append(X.shape[1])
        return M @ X

    return MatmatOperator(mm, tuple(M.shape), M.dtype, symmetric=True), calls


def test_cg_within_chebyshev_iteration_bound():
    n, kappa, eps = 400, 100.0, 1e-10
    A = matrix_with_spectrum(torch.linspace(1.0, kappa, n, dtype=F64), generator=gen(0))
    b = randn(n, seed=1)
    res = cg(A, b, rtol=eps)
    assert isinstance(res, SolveResult) and res.converged
    # ||e_k||_A <= 2 rho^k ||e_0||_A with rho = (sqrt(k) - 1) / (sqrt(k) + 1); with x0 = 0,
    # ||r_k|| <= sqrt(l_max) ||e_k||_A and ||e_0||_A <= ||r_0|| / sqrt(l_min), so
    # ||r_k|| / ||b|| <= 2 sqrt(kappa) rho^k: at most log(2 sqrt(kappa) / eps) / log(1 / rho) steps.
    rho = (math.sqrt(kappa) - 1) / (math.sqrt(kappa) + 1)
    bound = math.ceil(math.log(2 * math.sqrt(kappa) / eps) / math.log(1 / rho))
    assert res.iterations <= bound <= math.sqrt(kappa) * math.log(2 / eps) + math.sqrt(kappa)
    assert res.num_matvecs == res.iterations + 1  # + the product that certifies the residual
    assert float(res.residual_norm) <= eps * float(b.norm())
    # the true residual agrees with the recursive one, and ||x - x*|| <= kappa eps ||x*||
    assert float((b - A @ res.x).norm()) <= 2 * eps * float(b.norm())
    x_star = torch.linalg.solve(A, b)
    assert float((res.x - x_star).norm()) <= kappa * eps * float(x_star.norm())


def test_jacobi_preconditioner_cuts_iterations():
    n = 200
    d = torch.logspace(0, 6, n, dtype=F64)
    G = randn(n, n, seed=2)
    E = (G + G.T) / 2
    E = 0.9 * E / E.abs().sum(1).max()  # C = I + E strictly diagonally dominant, ||E|| <= 0.9
    C = torch.eye(n, dtype=F64) + E
    A = d.sqrt()[:, None] * C * d.sqrt()[None, :]  # badly scaled: diag from 1 to 1e6
    b = randn(n, seed=3)
    x_star = torch.linalg.solve(A, b)
    plain = cg(A, b, rtol=1e-10)
    jacobi = cg(A, b, M=Diagonal(1 / torch.diagonal(A)), rtol=1e-10)
    assert jacobi.converged
    # Jacobi-PCG is CG on C = D^{-1/2} A D^{-1/2} (kappa_C <= 1.9 / 0.1 = 19) with residual
    # D^{-1/2} r; changing norms costs a factor sqrt(max d / min d) = 1e3, so the Chebyshev bound
    # allows log(2e3 sqrt(19) / eps) / log((sqrt(19) + 1) / (sqrt(19) - 1)) iterations.
    kc = 19.0
    bound = math.log(2e3 * math.sqrt(kc) / 1e-10) / math.log(
        (math.sqrt(kc) + 1) / (math.sqrt(kc) - 1)
    )
    assert jacobi.iterations <= math.ceil(bound)
    assert plain.iterations > 5 * jacobi.iterations  # kappa(A) ~ 1e6: plain CG is slow
    assert float((jacobi.x - x_star).norm()) <= 1e-6 * float(x_star.norm())
    # a dense tensor preconditioner works the same
    dense = cg(A, b, M=torch.diag(1 / torch.diagonal(A)), rtol=1e-10)
    assert dense.iterations == jacobi.iterations
    assert torch.allclose(dense.x, jacobi.x, rtol=1e-12)


def test_cg_multiple_rhs_equals_separate_solves():
    n = 120
    A = matrix_with_spectrum(torch.logspace(0, 2, n, dtype=F64), generator=gen(4))  # kappa 100
    B = randn(n, 4, seed=5) * torch.tensor([1.0, 1e3, 1e-3, 0.0], dtype=F64)
    B[:, 3] = 0.0  # a zero column
    op, calls = counting(A)
    block = cg(op, B, rtol=1e-10)
    assert block.converged and block.x.shape == (n, 4) and block.residual_norm.shape == (4,)
    assert torch.equal(block.x[:, 3], torch.zeros(n, dtype=F64))
    # one matmat per iteration, only over the still-active columns, and one over all columns
    # at exit that recomputes the true residual
    assert len(calls) == block.iterations + 1 and sum(calls) == block.num_matvecs
    assert calls[-1] == 4
    total, iters = 0, 0
    for j in range(4):
        single = cg(A, B[:, j], rtol=1e-10)
        # Per column the block runs the same recurrence; only BLAS rounding differs (a matmat
        # of 4 columns vs a matvec), amplified at most by kappa = 100: agreement to 1e-10.
        gap = float((block.x[:, j] - single.x).norm())
        assert gap <= 1e-10 * float(single.x.norm())
        total += single.num_matvecs
        iters = max(iters, single.iterations)
    # a block product sums in a different order than a single one, so a column sitting on the
    # stopping threshold may take one iteration more or less
    assert abs(block.num_matvecs - total) <= 3 and abs(block.iterations - iters) <= 1
    X_star = torch.linalg.solve(A, B)
    assert torch.allclose(block.x, X_star, rtol=1e-6, atol=1e-10)


def test_cg_x0_atol_and_limits():
    n = 50
    A = matrix_with_spectrum(torch.linspace(1, 10, n, dtype=F64), generator=gen(6))
    b = randn(n, seed=7)
    x_star = torch.linalg.solve(A, b)
    x0 = x_star.clone()
    res = cg(A, b, x0=x0)
    assert res.iterations == 0 and res.num_matvecs == 1 and res.converged
    assert torch.equal(x0, x_star)  # not modified
    far = cg(A, b, x0=torch.ones(n, dtype=F64), rtol=1e-12)
    assert far.converged and torch.allclose(far.x, x_star, rtol=1e-9)
    loose = cg(A, b, rtol=0.0, atol=1e-3)
    assert loose.converged and float(loose.residual_norm) <= 1e-3
    capped = cg(A, b, rtol=1e-14, max_iters=3)
    assert not capped.converged and capped.iterations == 3
    zero = cg(A, torch.zeros(n, dtype=F64))
    assert (
        zero.converged and zero.iterations == 0 and torch.equal(zero.x, torch.zeros(n, dtype=F64))
    )
    # float32 with the default tolerance (1e-5)
    res32 = cg(A.float(), b.float())
    assert res32.converged and res32.x.dtype == torch.float32
    assert float((res32.x.double() - x_star).norm()) <= 1e-4 * float(x_star.norm())


def test_cg_errors():
    A = matrix_with_spectrum(torch.linspace(1, 2, 6, dtype=F64), generator=gen(8))
    b = torch.ones(6, dtype=F64)
    with pytest.raises(ValueError, match="square"):
        cg(torch.ones(4, 6, dtype=F64), b)
    with pytest.raises(ValueError, match="rows"):
        cg(A, torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="dimensions"):
        cg(A, torch.ones(6, 1, 1, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        cg(A, torch.full((6,), float("nan"), dtype=F64))
    with pytest.raises(TypeError, match="dtype"):
        cg(A, b.float())
    with pytest.raises(ValueError, match="x0"):
        cg(A, b, x0=torch.ones(5, dtype=F64))
    with pytest.raises(ValueError, match="M must have shape"):
        cg(A, b, M=torch.eye(5, dtype=F64))
    with pytest.raises(ValueError, match="rtol"):
        cg(A, b, rtol=-1.0)
    with pytest.raises(ValueError, match="max_iters"):
        cg(A, b, max_iters=-1)
    indefinite = matrix_with_spectrum(
        torch.tensor([3.0, 2.0, -1.0, 1.0], dtype=F64), generator=gen(9)
    )
    with pytest.raises(ValueError, match="not positive definite"):
        cg(indefinite, torch.ones(4, dtype=F64), rtol=1e-12)
    with pytest.raises(ValueError, match="preconditioner"):
        cg(A, b, M=-torch.eye(6, dtype=F64))
    bad = MatmatOperator(lambda X: X * float("nan"), (6, 6), F64, symmetric=True)
    with pytest.raises(ValueError, match="operator returned non-finite"):
        cg(bad, b)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("precondition", [False, True])
def test_single_vector_path_equals_block_path(monkeypatch, dtype, precondition):
    # One right-hand side runs a vector version of the block recurrence (in-place updates on
    # vectors) with the same floating-point operations: bit for bit the block path's result.
    import subspaces.linalg._cg as solvers

    n = 150
    d = torch.logspace(0, 3 if dtype == F64 else 2, n, dtype=F64)  # kappa 1e3 / 1e2
    A = matrix_with_spectrum(d, generator=gen(20)).to(dtype)
    b = randn(n, seed=21, dtype=dtype)
    M = Diagonal(1 / A.diagonal()) if precondition else None
    rtol = 1e-10 if dtype == F64 else 1e-4  # above eps * kappa, so no stagnation
    fast = cg(A, b, M=M, rtol=rtol)
    monkeypatch.setattr(solvers, "_cg_cycle_vector", solvers._cg_cycle)
    block = cg(A, b, M=M, rtol=rtol)
    assert fast.converged and block.converged
    assert (fast.iterations, fast.num_matvecs, fast.status) == (
        block.iterations,
        block.num_matvecs,
        block.status,
    )
    assert torch.equal(fast.x, block.x) and torch.equal(fast.residual_norm, block.residual_norm)
    # the certified residual is the recomputed one
    true = float((b.double() - A.double() @ fast.x.double()).norm())
    assert float(fast.residual_norm) <= rtol * float(b.norm())
    assert true <= 2 * rtol * float(b.double().norm())


def test_cg_reports_an_overflowed_curvature(monkeypatch):
    # A p finite but p^T A p = inf: a clear error on both paths, not a NaN iterate.
    import subspaces.linalg._cg as solvers

    A = 1e10 * torch.eye(4, dtype=F64)
    for b in (torch.full((4,), 1e149, dtype=F64), torch.full((4, 2), 1e149, dtype=F64)):
        with pytest.raises(ValueError, match="overflowed at CG iteration 1"):
            cg(A, b)
    monkeypatch.setattr(solvers, "_cg_cycle_vector", solvers._cg_cycle)
    with pytest.raises(ValueError, match="overflowed at CG iteration 1"):
        cg(A, torch.full((4,), 1e149, dtype=F64))


def test_minres_indefinite():
    n = 150
    lam = torch.cat(
        [-torch.logspace(0, 1, n // 2, dtype=F64), torch.logspace(0, 1, n - n // 2, dtype=F64)]
    )
    A = matrix_with_spectrum(lam, generator=gen(10))
    b = randn(n, seed=11)
    res = minres(A, b, rtol=1e-10)
    assert res.converged and res.num_matvecs == res.iterations + 1
    x_star = torch.linalg.solve(A, b)
    # kappa = 10, so ||x - x*|| <= kappa * rtol * ||x*|| up to the residual estimate's drift
    assert float((res.x - x_star).norm()) <= 2 * 10 * 1e-10 * float(x_star.norm())
    true_res = float((b - A @ res.x).norm())
    assert true_res <= 2e-10 * float(b.norm())
    assert abs(true_res - float(res.residual_norm)) <= 1e-10 * float(b.norm())


def test_minres_shift_block_zero_and_x0():
    n = 80
    A = matrix_with_spectrum(torch.linspace(0.0, 4.0, n, dtype=F64), generator=gen(12))
    shift = 2.01  # inside the spectrum: A - shift I is indefinite
    S = A - shift * torch.eye(n, dtype=F64)
    B = randn(n, 3, seed=13)
    B[:, 1] = 0.0
    res = minres(A, B, shift=shift, rtol=1e-11)
    assert res.converged and res.x.shape == (n, 3) and res.residual_norm.shape == (3,)
    X_star = torch.linalg.solve(S, B)
    assert torch.allclose(res.x, X_star, rtol=1e-6, atol=1e-8)
    assert torch.equal(res.x[:, 1], torch.zeros(n, dtype=F64))
    total = 0
    for j in range(3):
        single = minres(A, B[:, j], shift=shift, rtol=1e-11)
        assert torch.equal(single.x, res.x[:, j])
        total += single.num_matvecs
    assert total == res.num_matvecs
    # a starting guess at the solution needs no iteration (one product for its residual)
    x0 = X_star[:, 0].clone()
    warm = minres(A, B[:, 0], shift=shift, x0=x0, rtol=1e-8)
    assert warm.iterations == 0 and warm.num_matvecs == 1 and torch.equal(x0, X_star[:, 0])
    # a generic starting guess converges to the same solution
    cold = minres(A, B[:, 0], shift=shift, x0=torch.ones(n, dtype=F64), rtol=1e-11)
    assert cold.converged and torch.allclose(cold.x, X_star[:, 0], rtol=1e-6, atol=1e-8)
    # SPD case agrees with CG
    b = B[:, 0]
    assert torch.allclose(
        minres(A, b, shift=-1.0).x, cg(A + torch.eye(n, dtype=F64), b).x, rtol=1e-6
    )


@pytest.mark.parametrize("seed", range(12))
def test_minres_singular_incompatible_and_limits(seed):
    # Regression: the result depended on rounding (40 iterations, x of norm 1e16 on one machine).
    lam = torch.tensor([0.0, 1.0, 2.0, -3.0], dtype=F64)
    A = matrix_with_spectrum(lam, generator=gen(14 + seed))
    _, V = torch.linalg.eigh(A)
    b = V.sum(1)  # has a component in the null space: no exact solution
    res = minres(A, b)
    assert not res.converged and res.status == "least_squares" and res.iterations <= 4
    # the least-squares residual is the null-space component of b (norm 1), and A r = 0
    r = b - A @ res.x
    assert abs(float(res.residual_norm) - 1.0) < 1e-8
    assert abs(float(r.norm()) - 1.0) < 1e-8
    assert float((A @ r).norm()) < 1e-8
    capped = minres(
        matrix_with_spectrum(torch.linspace(-5, 5, 40, dtype=F64), generator=gen(15)),
        torch.ones(40, dtype=F64),
        rtol=1e-14,
        max_iters=5,
    )
    assert not capped.converged and capped.iterations == 5 and capped.status == "max_iters"


@pytest.mark.parametrize("n_null", [1, 5])
def test_minres_larger_singular_systems_stop_at_a_least_squares_solution(n_null):
    n = 120
    lam = torch.cat([torch.zeros(n_null, dtype=F64), torch.linspace(-3.0, 5.0, n - n_null)])
    A = matrix_with_spectrum(lam.to(F64), generator=gen(3))
    b = randn(n, seed=4)
    res = minres(A, b, max_iters=10 * n)
    assert not res.converged and res.status == "least_squares"
    # x is a least-squares solution: ||A r|| at rounding level relative to ||A|| ||r||, and the
    # residual is b's null-space component
    evals, V = torch.linalg.eigh(A)
    null = V[:, evals.abs().argsort()[:n_null]]
    r = b - A @ res.x
    assert float((A @ r).norm()) <= 1e-6 * 5.0 * float(r.norm())
    assert float(r.norm()) == pytest.approx(float((null.T @ b).norm()), rel=1e-6)
    assert bool(torch.isfinite(res.x).all())


def _true_relative_residual(A, b, x):
    return float((b.double() - A.double() @ x.double()).norm() / b.double().norm())


@pytest.mark.parametrize("solver", [cg, minres])
@pytest.mark.parametrize(
    ("dtype", "log_cond", "rtol"),
    [(F64, 8, 1e-6), (F64, 12, 1e-8), (torch.float32, 6, None), (torch.float32, 3, None)],
)
def test_converged_is_a_certificate_on_ill_conditioned_systems(solver, dtype, log_cond, rtol):
    # Regressions: minres on Q diag(logspace(0, -8)) Q^T with rtol 1e-6 claimed convergence with
    # a true residual 1215x the bound; cg in float32 at cond 1e6 claimed it from its recursive
    # residual with the true one 1000x larger; minres returned an x worse than x = 0.
    n = 30
    tol = 1e-5 if rtol is None else rtol
    for seed in range(4):
        lam = torch.logspace(0, -log_cond, n, dtype=F64)
        A = matrix_with_spectrum(lam, generator=gen(seed)).to(dtype)
        b = randn(n, seed=100 + seed, dtype=dtype)
        res = solver(A, b, rtol=rtol)
        true = _true_relative_residual(A, b, res.x)
        # the reported residual is the true one (computed in the working dtype)
        eps = torch.finfo(dtype).eps
        slack = 10 * eps * (1 + float(A.double().norm(2)) * float(res.x.double().norm()))
        assert abs(float(res.residual_norm) / float(b.double().norm()) - true) <= slack
        if res.converged:
            assert true <= tol + slack
            assert res.status == "converged"
        else:
            assert res.status in {"stagnated", "max_iters", "least_squares"}
        # never worse than the starting point x = 0
        assert true <= 1.0 + slack


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("solver", [cg, minres])
def test_half_precision_systems_run_in_float32_with_half_products(solver, dtype):
    n = 40
    A64 = matrix_with_spectrum(torch.linspace(1.0, 4.0, n, dtype=F64), generator=gen(7))
    A = A64.to(dtype)
    b = randn(n, seed=8).to(dtype)
    res = solver(A, b)
    assert res.x.dtype == dtype and res.x.shape == (n,)
    tol = 1e-2 if dtype == torch.float16 else 5e-2  # the documented defaults
    true = float((b.double() - A.double() @ res.x.double()).norm() / b.double().norm())
    # x is rounded to the half dtype on return, which costs up to cond * eps(dtype)
    rounding = 4.0 * torch.finfo(dtype).eps * math.sqrt(n)
    assert res.converged
    assert true <= tol + rounding


def test_solvers_reject_meta_tensors():
    A = torch.eye(3, dtype=F64, device="meta")
    b = torch.ones(3, dtype=F64, device="meta")
    for solver in (cg, minres):
        with pytest.raises(ValueError, match="meta"):
            solver(A, b)
        with pytest.raises(ValueError, match="meta"):
            solver(torch.eye(3, dtype=F64), b)


def test_minres_errors():
    A = torch.eye(5, dtype=F64)
    b = torch.ones(5, dtype=F64)
    with pytest.raises(ValueError, match="square"):
        minres(torch.ones(5, 4, dtype=F64), b)
    with pytest.raises(ValueError, match="rows"):
        minres(A, torch.ones(4, dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        minres(A, torch.tensor([1.0, float("inf"), 0, 0, 0], dtype=F64))
    with pytest.raises(ValueError, match="shift"):
        minres(A, b, shift=float("nan"))
    bad = MatmatOperator(lambda X: X * float("nan"), (5, 5), F64, symmetric=True)
    with pytest.raises(ValueError, match="operator returned non-finite"):
        minres(bad, b)


@pytest.mark.parametrize("solver", [cg, minres])
def test_empty_systems_and_blocks(solver):
    # Regression: minres with an (n, 0) block raised torch's "stack expects a non-empty TensorList"
    res = solver(torch.eye(3, dtype=F64), torch.zeros(3, 0, dtype=F64))
    assert res.x.shape == (3, 0) and res.residual_norm.shape == (0,) and res.converged
    res = solver(torch.zeros(0, 0, dtype=F64), torch.zeros(0, dtype=F64))
    assert res.x.shape == (0,) and res.converged and res.num_matvecs == 0
