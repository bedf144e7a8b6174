"""The CPU fast paths of CG on 2-D Poisson equal the general paths bit for bit.

The single-vector CG loop (NumPy element-wise updates on buffers shared with tensors, products
without input checks) must reproduce the block recurrence exactly with the grid operator's
compiled product and with each preconditioner; the IC(0) preconditioner's no-copy float64 path
must return what the conversion path returned.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import subspaces.linalg._cg as cg_module
from subspaces.linalg import cg
from subspaces.solvers import IncompleteCholesky, disk_mask, jacobi, poisson_2d

F64 = torch.float64


def _problem(n: int, dtype: torch.dtype = F64):
    A = poisson_2d(n, obstacle=disk_mask((n, n), (0.5, 0.5), 0.2), dtype=dtype)
    b = torch.randn(A.n, generator=torch.Generator().manual_seed(0), dtype=F64).to(dtype)
    return A, b


@pytest.mark.parametrize("precond", ["none", "jacobi", "ic0"])
def test_vector_loop_equals_block_loop_on_poisson(monkeypatch, precond):
    A, b = _problem(20)
    M = {"none": None, "jacobi": jacobi(A), "ic0": IncompleteCholesky(A)}[precond]
    rtol = 1e-9
    fast = cg(A, b, M=M, rtol=rtol)
    monkeypatch.setattr(cg_module, "_cg_cycle_vector", cg_module._cg_cycle)
    block = cg(A, b, M=M, rtol=rtol)
    assert fast.converged and block.converged and fast.status == "converged"
    assert (fast.iterations, fast.num_matvecs) == (block.iterations, block.num_matvecs)
    assert torch.equal(fast.x, block.x)
    assert torch.equal(fast.residual_norm, block.residual_norm)
    # converged is judged on the recomputed residual: recompute it here with the same product,
    # and against the dense matrix (the two products differ by rounding: <= 5 eps |A| |x|)
    again = (b - A.matmat(fast.x.unsqueeze(1))[:, 0]).norm()
    assert torch.equal(again, fast.residual_norm)
    D = A.to_dense()
    dense = float((b - D @ fast.x).norm())
    slack = 5 * torch.finfo(F64).eps * float((D.abs() @ fast.x.abs()).norm())
    assert dense <= rtol * float(b.norm()) + slack


def test_vector_loop_equals_block_loop_in_float32(monkeypatch):
    A, b = _problem(16, torch.float32)
    fast = cg(A, b, M=jacobi(A), rtol=1e-4)
    monkeypatch.setattr(cg_module, "_cg_cycle_vector", cg_module._cg_cycle)
    block = cg(A, b, M=jacobi(A), rtol=1e-4)
    assert fast.converged and fast.x.dtype == torch.float32
    assert fast.iterations == block.iterations and torch.equal(fast.x, block.x)


def test_vector_loop_raises_on_an_indefinite_preconditioner():
    A, b = _problem(8)
    with pytest.raises(ValueError, match="preconditioner M is not positive definite"):
        cg(A, b, M=-IncompleteCholesky(A).to_dense())


def test_ic0_no_copy_path_equals_the_conversion_path():
    A, _ = _problem(12)
    M = IncompleteCholesky(A)
    X = torch.randn(A.n, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    lu = M._lu
    for V in (X[:, :1], X, X[:, 1:2]):  # one column, a block, a strided column
        old = torch.as_tensor(
            np.asarray(lu.solve(lu.solve(V.detach().cpu().double().numpy()), trans="T")),
            dtype=F64,
        )
        assert torch.equal(M.matmat(V), old)
    with torch.no_grad():  # an input that requires grad is read without a copy too
        assert torch.equal(M.matmat(X.clone().requires_grad_()), M.matmat(X))
    # and M is (L L^T)^{-1}: L L^T (M x) = x to rounding (L well conditioned here)
    L = torch.as_tensor(M.L.toarray())
    Z = M.matmat(X)
    assert torch.allclose(L @ (L.T @ Z), X, rtol=0, atol=1e-12 * float(X.abs().max()))
