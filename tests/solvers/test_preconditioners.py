"""Tests of the Jacobi and IC(0) preconditioners (subspaces.solvers.preconditioners)."""

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from subspaces.linalg import cg
from subspaces.solvers import GridDiffusion, IncompleteCholesky, disk_mask, jacobi, poisson_2d

F64 = torch.float64


def _dense_ic0(A: torch.Tensor) -> torch.Tensor:
    """Textbook IC(0) on a dense matrix: Cholesky with entries outside the pattern dropped."""
    n = A.shape[0]
    pattern = A != 0
    L = torch.zeros_like(A)
    for j in range(n):
        L[j, j] = math.sqrt(float(A[j, j] - (L[j, :j] ** 2).sum()))
        for i in range(j + 1, n):
            if pattern[i, j]:
                L[i, j] = (A[i, j] - (L[i, :j] * L[j, :j]).sum()) / L[j, j]
    return L


def test_ic0_matches_dense_reference():
    g = torch.Generator().manual_seed(0)
    k = 0.5 + torch.rand(5, 6, generator=g, dtype=F64)
    A = GridDiffusion((5, 6), obstacle=disk_mask((5, 6), (0.5, 0.5), 0.15), coefficient=k)
    M = IncompleteCholesky(A)
    ref = _dense_ic0(A.to_dense())
    L = torch.as_tensor(M.L.toarray())
    assert float((L - ref).abs().max()) <= 1e-12 * float(ref.abs().max())
    # Applying M is two triangular solves: M (L L^T) x = x.
    x = torch.randn(A.n, generator=g, dtype=F64)
    assert torch.allclose(M @ (L @ (L.T @ x)), x, rtol=1e-11, atol=1e-11)


def test_ic0_is_exact_cholesky_without_fill_in():
    A = poisson_2d((1, 12))  # a 1-D Laplacian: tridiagonal, Cholesky has no fill-in
    M = IncompleteCholesky(A)
    MA = M @ A.to_dense()
    assert torch.allclose(MA, torch.eye(A.n, dtype=F64), atol=1e-12)


def test_ic0_accepts_sparse_dense_and_shift():
    A = poisson_2d(5)
    S = A.to_scipy_sparse()
    L1 = IncompleteCholesky(S).L.toarray()
    L2 = IncompleteCholesky(A.to_dense()).L.toarray()
    L3 = IncompleteCholesky(S.toarray()).L.toarray()
    assert np.allclose(L1, L2, rtol=1e-14, atol=0) and np.allclose(L1, L3, rtol=1e-14, atol=0)
    shifted = IncompleteCholesky(S, shift=0.5).L.toarray()
    ref = _dense_ic0(torch.as_tensor((S + 0.5 * sp.diags(S.diagonal())).toarray()))
    assert np.allclose(shifted, ref.numpy(), rtol=1e-12, atol=0)


def _rowwise_ic0(S: sp.csr_matrix) -> np.ndarray:
    """IC(0) by the sequential row-by-row loop (the reference the vectorised factor must match).

    Raises ValueError(row) on breakdown. Returns the data of the lower CSR triangle.
    """
    L = sp.tril(S, format="csr")
    L.sort_indices()
    indptr, indices, data = L.indptr, L.indices, L.data.copy()
    n = S.shape[0]
    rows = [{int(indices[p]): p for p in range(indptr[i], indptr[i + 1])} for i in range(n)]
    for i in range(n):
        for k in (int(c) for c in indices[indptr[i] : indptr[i + 1] - 1]):
            s = data[rows[i][k]]
            for j, pj in rows[i].items():  # ascending columns j < k common to rows i and k
                if j < k and j in rows[k]:
                    s -= data[pj] * data[rows[k][j]]
            data[rows[i][k]] = s / data[indptr[k + 1] - 1]
        piv = data[indptr[i + 1] - 1] - sum(data[p] ** 2 for j, p in rows[i].items() if j < i)
        if not (piv > 0 and math.isfinite(piv)):
            raise ValueError(f"row {i}")
        data[indptr[i + 1] - 1] = math.sqrt(piv)
    return data


def _random_m_matrix(n: int, density: float, seed: int) -> sp.csr_matrix:
    R = sp.random(n, n, density=density, random_state=seed, format="csr")
    R = R + R.T
    R.data = -np.abs(R.data)
    return sp.csr_matrix(R + sp.diags(np.asarray(-R.sum(axis=1)).ravel() + 0.1))


def test_vectorised_ic0_equals_the_rowwise_loop_bit_for_bit():
    # Level-scheduled IC(0) must do the loop's floating-point operations in the loop's order:
    # a 5-point grid (no update terms), a random M-matrix (rows with several update terms) and
    # a dense SPD matrix (every entry updated by all earlier columns).
    g = torch.Generator().manual_seed(5)
    k = 0.5 + torch.rand(9, 11, generator=g, dtype=F64)
    grid = GridDiffusion((9, 11), obstacle=disk_mask((9, 11), (0.5, 0.5), 0.2), coefficient=k)
    G = torch.randn(30, 30, generator=g, dtype=F64)
    dense = sp.csr_matrix((G @ G.T + 30 * torch.eye(30, dtype=F64)).numpy())
    for S in (grid.to_scipy_sparse(), _random_m_matrix(200, 0.04, 1), dense):
        ours = IncompleteCholesky(S).L
        assert np.array_equal(ours.data, _rowwise_ic0(S))
    # breakdown is reported at the loop's first failing row
    S = _random_m_matrix(60, 0.1, 2).tolil()
    S[40, 40] = 1e-3
    S[50, 50] = -1.0
    with pytest.raises(ValueError, match="row 40"):
        _rowwise_ic0(S.tocsr())
    with pytest.raises(ValueError, match=r"breakdown: pivot .* in row 40;"):
        IncompleteCholesky(S.tocsr())


def test_jacobi():
    A = poisson_2d(4, obstacle=disk_mask((4, 4), (0.4, 0.4), 0.2))
    ref = 1 / A.to_dense().diagonal()
    for src in (A, A.to_dense(), A.to_scipy_sparse()):
        assert torch.allclose(jacobi(src).to_dense().diagonal(), ref, rtol=1e-15, atol=0)
    assert jacobi(A, dtype=torch.float32).dtype == torch.float32


def test_preconditioners_cut_cg_iterations_on_poisson():
    A = poisson_2d(32, obstacle=disk_mask((32, 32), (0.5, 0.5), 0.2))
    b = torch.ones(A.n, dtype=F64)
    plain = cg(A, b, rtol=1e-8)
    jac = cg(A, b, M=jacobi(A), rtol=1e-8)
    ic = cg(A, b, M=IncompleteCholesky(A), rtol=1e-8)
    assert plain.converged and jac.converged and ic.converged
    # k = 1 with Dirichlet obstacles: every diagonal entry is 4 / h^2, so Jacobi is a scaling
    # and CG's iterates are unchanged (up to rounding); IC(0) cuts them about threefold.
    assert abs(jac.iterations - plain.iterations) <= 1  # equal in exact arithmetic
    assert ic.iterations <= 0.65 * plain.iterations
    for res in (plain, jac, ic):
        assert float((b - A @ res.x).norm()) <= 1e-8 * float(b.norm())


def test_bad_input():
    with pytest.raises(ValueError, match="IC\\(0\\) breakdown"):
        IncompleteCholesky(torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="must be square"):
        IncompleteCholesky(np.ones((2, 3)))
    with pytest.raises(ValueError, match="non-finite"):
        IncompleteCholesky(np.array([[1.0, np.nan], [np.nan, 1.0]]))
    with pytest.raises(ValueError, match="no diagonal entry in row 1"):
        IncompleteCholesky(sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0]])))
    with pytest.raises(ValueError, match="shift must be"):
        IncompleteCholesky(np.eye(2), shift=-1.0)
    with pytest.raises(TypeError, match="scipy sparse matrix"):
        IncompleteCholesky([[1.0]])
    with pytest.raises(ValueError, match="positive diagonal"):
        jacobi(torch.tensor([[1.0, 0.0], [0.0, -1.0]], dtype=F64))
    with pytest.raises(ValueError, match="non-finite"):
        jacobi(torch.tensor([[float("nan"), 0.0], [0.0, 1.0]], dtype=F64))
    with pytest.raises(ValueError, match="square matrix"):
        jacobi(torch.ones(2, 3, dtype=F64))
    with pytest.raises(TypeError, match="diagonal"):
        jacobi("A")
