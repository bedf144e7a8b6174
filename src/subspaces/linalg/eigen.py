"""The result type shared by the eigensolvers, and their common input handling."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from .._checks import check_finite, check_positive_float, check_positive_int, default_tol
from ..linops import LinearOperator, as_operator
from ..linops.structured import relative_asymmetry
from ._precision import in_working_precision

if TYPE_CHECKING:
    from .subspace import Subspace


@dataclass(frozen=True)
class EigenResult:
    """Eigenpairs of a symmetric operator with their certificates.

    Attributes:
        eigenvalues: ``(k,)`` Ritz values, ordered as the solver documents.
        eigenvectors: ``(n, k)`` orthonormal Ritz vectors.
        residuals: ``(k,)`` absolute residual norms ``||A x - theta x||``, computed explicitly from
            stored products (not extrapolated). For a symmetric ``A`` each ``theta`` is within
            ``residual`` of a true eigenvalue.
        converged: ``(k,)`` bools, ``residuals <= tol * scale``.
        num_matvecs: products with ``A`` spent (each column of a block counts once).
        tol: the relative tolerance used.
        scale: the estimate of ``||A||_2`` the tolerance is relative to (largest ``|theta|`` seen).
        num_restarts: number of thick restarts (Lanczos only).
        basis_size: the largest Krylov basis held, in columns (Lanczos only; memory is about
            ``2 * basis_size * n`` numbers: the basis and its products).
        method: name of the algorithm.
        num_samples: data samples behind the operator, when it is a curvature operator (a
            one-batch sharpness can overstate the full-data one).
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    residuals: Tensor
    converged: Tensor
    num_matvecs: int
    tol: float
    scale: float
    num_restarts: int = 0
    basis_size: int = 0
    method: str = "lanczos"
    num_samples: int | None = None

    @property
    def all_converged(self) -> bool:
        """Whether every returned eigenpair met the tolerance."""
        return bool(self.converged.all())

    @property
    def relative_residuals(self) -> Tensor:
        """``residuals / scale``."""
        return self.residuals / max(self.scale, torch.finfo(self.residuals.dtype).tiny)

    @property
    def subspace(self) -> Subspace:
        """The span of the eigenvectors as a :class:`~subspaces.Subspace`."""
        from .subspace import Subspace

        return Subspace(self.eigenvectors)

    def __str__(self) -> str:
        vals = ", ".join(f"{v:.6g}" for v in self.eigenvalues.tolist())
        conv = int(self.converged.sum())
        return (
            f"{self.method}: eigenvalues [{vals}], {conv}/{len(self.eigenvalues)} converged "
            f"(max rel. residual {float(self.relative_residuals.max()):.1e}, tol {self.tol:.0e}), "
            f"{self.num_matvecs} matvecs"
        )


def prepare_symmetric(
    A: Tensor | LinearOperator, k: int, tol: float | None
) -> tuple[LinearOperator, int, float]:
    """Validate ``A`` (square), ``k`` (``1 <= k <= n``) and ``tol``; return ``(op, n, tol)``.

    Returns:
        ``(op, n, tol)``: ``A`` as a linear operator (a float32 view of a half-precision one,
        whose products stay in half), its dimension, and ``tol`` (the dtype's default tolerance
        when ``None`` was given).

    Raises:
        ValueError: if ``A`` is not square, a dense ``A`` is clearly not symmetric, ``k`` is out
            of range, ``tol`` is not positive or ``A`` is on the meta device.
    """
    op = as_operator(A)
    m, n = op.shape
    if m != n:
        raise ValueError(f"A must be square (symmetric), got shape {op.shape}")
    if n == 0:
        raise ValueError("A is empty (shape (0, 0))")
    check_positive_int(k, "k")
    if k > n:
        raise ValueError(f"k must be <= n = {n} (the dimension of A), got k = {k}")
    tol = default_tol(op.dtype) if tol is None else check_positive_float(tol, "tol")
    if isinstance(A, Tensor) and A.device.type != "meta":
        # A dense matrix is cheap to check: refuse one that is clearly not symmetric (rounding
        # asymmetry, far below sqrt(eps), is fine: the projected problem is symmetrized).
        asym = relative_asymmetry(A)
        limit = torch.finfo(A.dtype).eps ** 0.5
        if asym > limit:
            raise ValueError(
                f"A must be symmetric: ||A - A^T||_F / ||A||_F = {asym:.3g} > {limit:.1e} "
                f"(sqrt(eps) of {A.dtype}); eigensolvers here are for symmetric matrices"
            )
    return in_working_precision(op), n, tol


def checked_matmat(op: LinearOperator, X: Tensor) -> Tensor:
    """``op @ X``, raising if the operator returned NaN/Inf.

    Returns:
        The product ``op @ X``.

    Raises:
        ValueError: if the product is not finite.
    """
    out = op.matmat(X)
    try:
        check_finite(out, "A @ X")
    except ValueError as err:
        raise ValueError(f"the operator returned non-finite values: {err}") from None
    return out


def start_block(
    v0: Any,
    n: int,
    b: int,
    dtype: torch.dtype,
    device: torch.device,
    generator: torch.Generator | None,
) -> Tensor:
    """Orthonormal starting block from ``v0`` (vector, matrix or Subspace) or at random.

    Returns:
        An ``(n, c)`` matrix with orthonormal columns: the QR factor of ``v0`` or, when ``v0`` is
        ``None``, of a random Gaussian ``(n, b)`` block, with the columns whose ``R`` diagonal
        is numerically zero dropped (so ``c`` can be smaller than the number of columns given).

    Raises:
        ValueError: if ``v0`` has the wrong shape, is not finite or is numerically zero.
        TypeError: if ``v0`` is of an unsupported type.
    """
    from ._random import random_matrix
    from .subspace import Subspace

    if v0 is None:
        X = random_matrix(n, b, dtype=dtype, device=device, generator=generator)
    elif isinstance(v0, Subspace):
        X = v0.basis.to(dtype=dtype, device=device)
    elif isinstance(v0, Tensor):
        X = v0.unsqueeze(-1) if v0.ndim == 1 else v0
        if X.ndim != 2 or X.shape[0] != n:
            raise ValueError(f"v0 must have shape ({n},) or ({n}, c), got {tuple(v0.shape)}")
        X = check_finite(X, "v0").to(dtype=dtype, device=device)
    else:
        raise TypeError(f"v0 must be None, a Tensor or a Subspace, got {type(v0).__name__}")
    if X.shape[0] != n:
        raise ValueError(f"v0 has dimension {X.shape[0]}, A has {n}")
    Q, R = torch.linalg.qr(X)
    keep = torch.diagonal(R).abs() > 1e-10 * max(float(torch.diagonal(R).abs().max()), 1e-300)
    if not bool(keep.any()):
        raise ValueError("v0 is numerically zero")
    return Q[:, keep]
