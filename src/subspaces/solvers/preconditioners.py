"""Preconditioners for symmetric positive definite systems: Jacobi and incomplete Cholesky IC(0).

Both are :class:`~subspaces.linops.LinearOperator` s applying an approximate inverse
``M ~ A^{-1}``, so they plug into :func:`~subspaces.linalg.cg` (``M=``) and
:func:`~subspaces.solvers.flexible_cg`.

References:
    Meijerink, van der Vorst. "An iterative solution method for linear systems of which the
    coefficient matrix is a symmetric M-matrix." Math. Comp. 31(137), 1977.
    Saad. "Iterative Methods for Sparse Linear Systems", 2nd ed., SIAM 2003, section 10.3.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_finite, check_positive_float
from ..linops.base import LinearOperator
from ..linops.structured import Diagonal

__all__ = ["IncompleteCholesky", "jacobi"]


def _as_csr(A: Any) -> Any:
    """``A`` (scipy sparse, dense tensor/array, or an operator with ``to_scipy_sparse``) as CSR.

    Returns:
        ``scipy.sparse.csr_matrix`` in float64.

    Raises:
        TypeError: if ``A`` is none of these.
        ValueError: if ``A`` is not square or not finite.
    """
    import scipy.sparse as sp

    if hasattr(A, "to_scipy_sparse"):
        S = A.to_scipy_sparse()
    elif sp.issparse(A):
        S = A
    elif isinstance(A, Tensor):
        S = sp.csr_matrix(A.detach().cpu().double().numpy())
    elif isinstance(A, np.ndarray):
        S = sp.csr_matrix(A.astype(np.float64))
    else:
        raise TypeError(
            "A must be a scipy sparse matrix, a dense tensor/array or an operator with "
            f"to_scipy_sparse(), got {type(A).__name__}"
        )
    S = sp.csr_matrix(S, dtype=np.float64)
    if S.shape[0] != S.shape[1]:
        raise ValueError(f"A must be square, got shape {S.shape}")
    if not np.isfinite(S.data).all():
        raise ValueError("A contains non-finite entries")
    S.sum_duplicates()
    S.sort_indices()
    return S


def jacobi(A: Any, dtype: torch.dtype | None = None) -> Diagonal:
    """Jacobi (diagonal) preconditioner ``M = diag(A)^{-1}``.

    Args:
        A: an operator with a ``diagonal()`` method (e.g.
            :class:`~subspaces.solvers.GridDiffusion`), a dense tensor, or a scipy sparse
            matrix.
        dtype: dtype of the result; default that of ``A`` (float64 for scipy input).

    Returns:
        A :class:`~subspaces.linops.Diagonal` operator.

    Raises:
        ValueError: if a diagonal entry is not positive and finite (``A`` is then not SPD).
        TypeError: if ``A`` has an unsupported type.

    Example:
        >>> A = torch.tensor([[4.0, 1.0], [1.0, 2.0]], dtype=torch.float64)
        >>> jacobi(A).to_dense().diagonal().tolist()
        [0.25, 0.5]
    """
    import scipy.sparse as sp

    if isinstance(A, LinearOperator) and callable(getattr(A, "diagonal", None)):
        d = A.diagonal()  # type: ignore[attr-defined]
    elif isinstance(A, Tensor):
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {tuple(A.shape)}")
        d = A.diagonal()
    elif sp.issparse(A):
        d = torch.as_tensor(np.asarray(A.diagonal(), dtype=np.float64))
    else:
        raise TypeError(
            "A must be an operator with diagonal(), a dense tensor or a scipy sparse matrix, "
            f"got {type(A).__name__}"
        )
    d = check_finite(d, "diagonal of A")
    if not bool((d > 0).all()):
        raise ValueError(f"Jacobi needs a positive diagonal (A SPD), got minimum {float(d.min())}")
    d = d.to(dtype) if dtype is not None else d
    return Diagonal(1.0 / d)


class IncompleteCholesky(LinearOperator):
    """Zero fill-in incomplete Cholesky preconditioner, IC(0): ``M = (L L^T)^{-1}``.

    ``L`` is lower triangular with the sparsity pattern of the lower triangle of ``A`` and
    ``(L L^T)_{ij} = A_{ij}`` on that pattern. Applying ``M`` is one forward and one backward
    sparse triangular solve (compiled, via scipy's SuperLU). The factorisation exists for
    symmetric M-matrices (such as the Poisson and diffusion operators of
    :mod:`~subspaces.solvers.grids`); for a general SPD
    matrix it may break down (a non-positive pivot), which raises unless a diagonal ``shift``
    (``A + shift * diag(A)``, Manteuffel 1980) makes it succeed.

    Args:
        A: symmetric matrix: scipy sparse, dense tensor/array, or an operator with
            ``to_scipy_sparse()``.
        shift: relative diagonal shift ``>= 0``.
        dtype: dtype of the products (default float64).

    Attributes:
        L: the factor, ``scipy.sparse.csr_matrix``.

    Raises:
        ValueError: on a non-positive pivot, a non-square or non-finite ``A``, or a negative
            shift.

    Example:
        >>> from subspaces.solvers import poisson_2d
        >>> A = poisson_2d(6)
        >>> M = IncompleteCholesky(A)
        >>> L = torch.as_tensor(M.L.toarray())
        >>> pattern = A.to_dense().tril() != 0
        >>> bool(torch.allclose((L @ L.T)[pattern], A.to_dense()[pattern]))
        True

    References:
        Meijerink, van der Vorst, Math. Comp. 31(137), 1977.
    """

    SELF_ADJOINT = True

    def __init__(self, A: Any, shift: float = 0.0, dtype: torch.dtype = torch.float64) -> None:
        import scipy.sparse as sp

        shift = check_positive_float(shift, "shift", allow_zero=True)
        S = _as_csr(A)
        n = S.shape[0]
        super().__init__((n, n), dtype)
        lower = sp.tril(S, format="csr")
        lower.sort_indices()
        indptr, indices, data = lower.indptr, lower.indices, lower.data.copy()
        diag_pos = np.empty(n, dtype=np.int64)
        # Row dictionaries {column: position} for the sparse dot products of IC(0).
        rows: list[dict[int, int]] = []
        for i in range(n):
            start, end = indptr[i], indptr[i + 1]
            cols = indices[start:end]
            if end == start or cols[-1] != i:
                raise ValueError(f"A has no diagonal entry in row {i}")
            diag_pos[i] = end - 1
            data[end - 1] *= 1.0 + shift
            rows.append({int(c): int(p) for c, p in zip(cols, range(start, end), strict=True)})
        for i in range(n):
            row = rows[i]
            for col in indices[indptr[i] : indptr[i + 1] - 1]:
                k = int(col)
                rk = rows[k]
                # L_ik = (a_ik - sum_{j<k} L_ij L_kj) / L_kk over the common pattern.
                s = data[row[k]]
                for j, pj in row.items():
                    if j < k and j in rk:
                        s -= data[pj] * data[rk[j]]
                data[row[k]] = s / data[diag_pos[k]]
            pi = diag_pos[i]
            piv = data[pi] - sum(data[p] ** 2 for j, p in row.items() if j < i)
            if not (piv > 0 and math.isfinite(piv)):
                raise ValueError(
                    f"IC(0) breakdown: pivot {piv:.3e} <= 0 in row {i}; A is not an SPD "
                    "M-matrix: pass shift > 0 (e.g. 1e-2)"
                )
            data[pi] = math.sqrt(piv)
        self.L = sp.csr_matrix((data, indices.copy(), indptr.copy()), shape=(n, n))
        # The triangular solves run in SuperLU's compiled code: the LU factorisation of the
        # triangular L itself, with the natural ordering and no pivoting, is L (no fill-in),
        # so lu.solve(b) solves L y = b and trans="T" solves L^T z = y. Checked, not assumed.
        from scipy.sparse.linalg import splu

        self._lu = splu(
            self.L.tocsc(),
            permc_spec="NATURAL",
            diag_pivot_thresh=0.0,
            options={"SymmetricMode": True},
        )
        identity = np.arange(n)
        if not (
            np.array_equal(self._lu.perm_r, identity) and np.array_equal(self._lu.perm_c, identity)
        ):  # pragma: no cover - SuperLU pivoted despite the options
            raise RuntimeError("SuperLU permuted the triangular factor; cannot apply IC(0)")

    def _matmat(self, X: Tensor) -> Tensor:
        B = X.detach().cpu().double().numpy()
        Z = self._lu.solve(self._lu.solve(B), trans="T")
        return torch.as_tensor(np.asarray(Z), dtype=self.dtype, device=X.device)
