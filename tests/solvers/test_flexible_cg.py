"""Tests of flexible PCG (subspaces.solvers.flexible_cg)."""

import pytest
import torch

from subspaces.linalg import cg
from subspaces.solvers import IncompleteCholesky, disk_mask, flexible_cg, jacobi, poisson_2d

F64 = torch.float64


def _problem(n=20):
    A = poisson_2d(n, obstacle=disk_mask((n, n), (0.45, 0.55), 0.2))
    b = torch.randn(A.n, generator=torch.Generator().manual_seed(0), dtype=F64)
    return A, b


def test_unpreconditioned_equals_cg():
    A, b = _problem()
    ref = cg(A, b, rtol=1e-10)
    res = flexible_cg(A, b, rtol=1e-10, beta="fletcher_reeves")
    assert res.converged and ref.converged
    assert abs(res.iterations - ref.iterations) <= 1
    assert torch.allclose(res.x, ref.x, rtol=0, atol=1e-9 * float(ref.x.abs().max()))


def test_fixed_preconditioner_matches_pcg_and_history():
    A, b = _problem()
    M = IncompleteCholesky(A)
    ref = cg(A, b, M=M, rtol=1e-9)
    for beta in ("fletcher_reeves", "polak_ribiere"):
        res = flexible_cg(A, b, M=M, rtol=1e-9, beta=beta)
        assert res.converged
        assert abs(res.iterations - ref.iterations) <= 1
        true = float((b - A @ res.x).norm())
        assert true <= 1e-9 * float(b.norm())
        assert torch.isclose(res.residual_norm, torch.tensor(true, dtype=F64), rtol=1e-12)
        h = res.residual_history
        assert h is not None and h.shape == (res.iterations + 1,)
        assert float(h[0]) == pytest.approx(float(b.norm()), rel=1e-14)
        assert float(h[-1]) <= 1e-9 * float(b.norm())


def test_variable_preconditioner_converges_with_polak_ribiere():
    A, b = _problem(24)
    d = A.diagonal()
    inner_steps = [2, 5, 3, 7]

    def M(r, k):  # damped Jacobi sweeps on A z = r, a different number every iteration
        z = torch.zeros_like(r)
        for _ in range(inner_steps[k % 4]):
            z = z + (2 / 3) * (r - A @ z) / d
        return z

    res = flexible_cg(A, b, M=M, rtol=1e-8)
    plain = flexible_cg(A, b, rtol=1e-8)
    assert res.converged
    assert float((b - A @ res.x).norm()) <= 1e-8 * float(b.norm())
    assert res.iterations < plain.iterations / 2


def test_block_rhs_solves_each_column():
    A, b = _problem(12)
    B = torch.stack([b, 2 * b.flip(0), torch.zeros_like(b)], dim=1)
    res = flexible_cg(A, B, M=jacobi(A), rtol=1e-10)
    assert res.converged and res.x.shape == B.shape
    assert res.residual_history is not None and res.residual_history.shape[1] == 3
    for j in range(3):
        col = flexible_cg(A, B[:, j], M=jacobi(A), rtol=1e-10)
        assert torch.allclose(res.x[:, j], col.x, rtol=0, atol=1e-12)
    assert bool((res.x[:, 2] == 0).all())


def test_unconverged_is_reported_not_raised():
    A, b = _problem()
    res = flexible_cg(A, b, rtol=1e-10, max_iters=5)
    assert not res.converged and res.status == "max_iters" and res.iterations == 5
    assert float(res.residual_norm) == pytest.approx(float((b - A @ res.x).norm()), rel=1e-12)


def test_bad_input():
    indefinite = torch.diag(torch.tensor([1.0, -1.0, 2.0], dtype=F64))
    ones = torch.ones(3, dtype=F64)
    with pytest.raises(ValueError, match="not positive definite: p\\^T A p"):
        flexible_cg(indefinite, ones)
    with pytest.raises(ValueError, match="not positive definite"):
        cg(indefinite, ones)
    A, b = _problem(6)
    with pytest.raises(ValueError, match=f"b must have {A.n} rows"):
        flexible_cg(A, b[:-1])
    with pytest.raises(ValueError, match="non-finite"):
        flexible_cg(A, torch.full_like(b, float("nan")))
    with pytest.raises(ValueError, match=rf"M must have shape \({A.n}, {A.n}\)"):
        flexible_cg(A, b, M=torch.eye(5, dtype=F64))
    with pytest.raises(ValueError, match="preconditioner returned"):
        flexible_cg(A, b, M=lambda r, k: r[:-1])
    with pytest.raises(ValueError, match="preconditioner returned non-finite"):
        flexible_cg(A, b, M=lambda r, k: r * float("inf"))
    with pytest.raises(ValueError, match="preconditioner is not positive"):
        flexible_cg(A, b, M=lambda r, k: -r)
    with pytest.raises(ValueError, match="beta must be one of"):
        flexible_cg(A, b, beta="hestenes")
    with pytest.raises(TypeError, match="M must be a tensor"):
        flexible_cg(A, b, M=3)
    with pytest.raises(TypeError, match="float32 or float64"):
        flexible_cg(poisson_2d(3, dtype=torch.float16), torch.ones(9, dtype=torch.float16))
