"""Structured operators.

``Dense``, ``Identity``, ``Diagonal``, ``LowRank``, ``Projection`` and ``MatmatOperator``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor
from .base import LinearOperator


class Dense(LinearOperator):
    """A dense matrix as an operator.

    Args:
        matrix: a 2-D floating tensor ``(m, n)``. It is not copied; it must not be edited in place
            while the operator is in use.
        symmetric: declare the matrix symmetric (``SELF_ADJOINT``); checked cheaply (one
            comparison with its transpose, in at least float32): the asymmetry
            ``||M - M^T||_F`` may be at most ``10 eps ||M||_F`` (``eps`` of the matrix's dtype,
            the size of the rounding of one product), so a wrong declaration raises. ``None``
            (default) declares it symmetric when it equals its transpose exactly.

    Raises:
        ValueError: if the matrix holds NaN/Inf or is declared symmetric but is not.

    Example:
        >>> A = Dense(torch.eye(3, dtype=torch.float64), symmetric=True)
        >>> (A @ torch.ones(3, dtype=torch.float64)).tolist()
        [1.0, 1.0, 1.0]
    """

    def __init__(self, matrix: Tensor, symmetric: bool | None = None) -> None:
        matrix = check_finite(check_float_tensor(matrix, "matrix", ndim=2), "matrix")
        super().__init__(tuple(matrix.shape), matrix.dtype, matrix.device)  # type: ignore[arg-type]
        self.matrix = matrix
        square = matrix.shape[0] == matrix.shape[1]
        if symmetric is None:
            symmetric = square and bool(torch.equal(matrix, matrix.T))
        elif symmetric:
            if not square:
                raise ValueError(
                    f"matrix was declared symmetric but is not square: shape {tuple(matrix.shape)}"
                )
            asym, tol = relative_asymmetry(matrix), 10 * torch.finfo(matrix.dtype).eps
            if asym > tol:
                raise ValueError(
                    "matrix was declared symmetric but is not: ||M - M^T||_F / ||M||_F = "
                    f"{asym:.3e} > {tol:.1e} (10 eps of {matrix.dtype})"
                )
        self.SELF_ADJOINT = symmetric

    def _matmat(self, X: Tensor) -> Tensor:
        return self.matrix @ X

    def _adjoint(self) -> LinearOperator:
        # The transpose of a validated matrix needs no second scan for NaN/Inf or symmetry.
        T = Dense.__new__(Dense)
        LinearOperator.__init__(T, (self.shape[1], self.shape[0]), self.dtype, self.device)
        T.matrix = self.matrix.T
        T.SELF_ADJOINT = False  # (a symmetric Dense is its own adjoint and never gets here)
        return T

    def to_dense(self) -> Tensor:
        """Return the stored matrix (no products needed)."""
        return self.matrix


def relative_asymmetry(M: Tensor) -> float:
    """``||M - M^T||_F / ||M||_F`` in at least float32 (0 for a zero or empty matrix).

    The matrix is divided by its largest magnitude first, so the squares cannot overflow.

    Returns:
        The relative asymmetry, a float.

    Example:
        >>> relative_asymmetry(torch.tensor([[1.0, 2.0], [2.0, 1.0]]))
        0.0
        >>> round(relative_asymmetry(torch.tensor([[0.0, 1.0], [0.0, 0.0]])), 6)  # sqrt(2) / 1
        1.414214
    """
    work = torch.float64 if M.dtype == torch.float64 else torch.float32
    Mw = M.to(work)
    scale = Mw.abs().amax() if Mw.numel() else Mw.new_zeros(())
    if float(scale) == 0.0:
        return 0.0
    Mw = Mw / scale  # no overflow in the squares
    return float(torch.linalg.matrix_norm(Mw - Mw.T) / torch.linalg.matrix_norm(Mw))


class Identity(LinearOperator):
    """The ``n x n`` identity.

    Example:
        >>> I = Identity(3, dtype=torch.float64)
        >>> torch.equal(I.to_dense(), torch.eye(3, dtype=torch.float64))
        True
    """

    SELF_ADJOINT = True

    def __init__(
        self, n: int, dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"
    ):
        super().__init__((n, n), dtype, device)

    def _matmat(self, X: Tensor) -> Tensor:
        return X.clone()


class Diagonal(LinearOperator):
    """A diagonal matrix ``diag(d)``.

    Args:
        diagonal: a 1-D floating tensor.

    Example:
        >>> D = Diagonal(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
        >>> (D @ torch.ones(3, dtype=torch.float64)).tolist()
        [1.0, 2.0, 3.0]
    """

    SELF_ADJOINT = True

    def __init__(self, diagonal: Tensor) -> None:
        d = check_finite(check_float_tensor(diagonal, "diagonal", ndim=1), "diagonal")
        super().__init__((d.shape[0], d.shape[0]), d.dtype, d.device)
        self.diagonal = d

    def _matmat(self, X: Tensor) -> Tensor:
        return self.diagonal.unsqueeze(-1) * X


class LowRank(LinearOperator):
    """``U diag(S) V^T`` with ``U (m, r)``, ``S (r,)``, ``V (n, r)``; ``V`` defaults to ``U``.

    With ``V`` omitted the operator is symmetric (an eigendecomposition-like factorization, e.g.
    the output of :func:`~subspaces.linalg.nystrom`).

    Example:
        >>> U = torch.linalg.qr(torch.randn(5, 2, dtype=torch.float64)).Q
        >>> L = LowRank(U, torch.tensor([3.0, 1.0], dtype=torch.float64))
        >>> torch.allclose(
        ...     L.to_dense(), U @ torch.diag(torch.tensor([3.0, 1.0], dtype=torch.float64)) @ U.T
        ... )
        True
    """

    def __init__(self, U: Tensor, S: Tensor | None = None, V: Tensor | None = None) -> None:
        U = check_finite(check_float_tensor(U, "U", ndim=2), "U")
        r = U.shape[1]
        S = torch.ones(r, dtype=U.dtype, device=U.device) if S is None else S
        S = check_finite(check_float_tensor(S, "S", ndim=1), "S")
        if S.shape[0] != r:
            raise ValueError(f"S must have {r} entries (columns of U), got {S.shape[0]}")
        if V is not None:
            V = check_finite(check_float_tensor(V, "V", ndim=2), "V")
            if V.shape[1] != r:
                raise ValueError(f"V must have {r} columns (like U), got shape {tuple(V.shape)}")
        n = U.shape[0] if V is None else V.shape[0]
        super().__init__((U.shape[0], n), U.dtype, U.device)
        self.U, self.S, self.V = U, S, V
        self.SELF_ADJOINT = V is None

    def _matmat(self, X: Tensor) -> Tensor:
        V = self.U if self.V is None else self.V
        return self.U @ (self.S.unsqueeze(-1) * (V.T @ X))

    def _adjoint(self) -> LinearOperator:
        return LowRank(self.U if self.V is None else self.V, self.S, self.U)


class Projection(LinearOperator):
    """Orthogonal projector ``Q Q^T`` onto the span of an orthonormal basis ``Q (n, k)``.

    Args:
        basis: ``(n, k)`` with orthonormal columns (checked to ``sqrt(eps)``); use
            :meth:`subspaces.Subspace.from_vectors` to orthonormalize arbitrary vectors first.
        complement: project onto the orthogonal complement instead (``I - Q Q^T``).

    Example:
        >>> P = Projection(torch.eye(3, dtype=torch.float64)[:, :1])
        >>> (P @ torch.ones(3, dtype=torch.float64)).tolist()
        [1.0, 0.0, 0.0]
    """

    SELF_ADJOINT = True

    def __init__(self, basis: Tensor, complement: bool = False) -> None:
        Q = check_finite(check_float_tensor(basis, "basis", ndim=2), "basis")
        Qd = Q.double()  # the Gram in float64: the check measures Q, not its own rounding
        gram = Qd.T @ Qd
        err = (
            float((gram - torch.eye(Q.shape[1], dtype=Qd.dtype, device=Q.device)).abs().max())
            if Q.numel()
            else 0.0
        )
        if err > torch.finfo(Q.dtype).eps ** 0.5:
            raise ValueError(f"basis columns are not orthonormal (max |Q^T Q - I| = {err:.2e})")
        super().__init__((Q.shape[0], Q.shape[0]), Q.dtype, Q.device)
        self.basis, self.complement = Q, complement

    def _matmat(self, X: Tensor) -> Tensor:
        PX = self.basis @ (self.basis.T @ X)
        return X - PX if self.complement else PX


class MatmatOperator(LinearOperator):
    """An operator defined by a function computing ``A @ X`` for ``X (n, b)``.

    Args:
        matmat: callable mapping ``(n, b)`` to ``(m, b)``.
        shape: ``(m, n)``.
        dtype: dtype of the products.
        device: device of the products.
        rmatmat: callable for ``A^T @ X``; omit for a symmetric operator.
        symmetric: declare ``A`` symmetric (then ``rmatmat`` is not needed).

    Example:
        >>> d = torch.arange(1.0, 4.0, dtype=torch.float64)
        >>> A = MatmatOperator(lambda X: d[:, None] * X, (3, 3), torch.float64, symmetric=True)
        >>> torch.equal(A.to_dense(), torch.diag(d))
        True
    """

    def __init__(
        self,
        matmat: Callable[[Tensor], Tensor],
        shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        rmatmat: Callable[[Tensor], Tensor] | None = None,
        symmetric: bool = False,
    ) -> None:
        if not callable(matmat):
            raise TypeError(f"matmat must be callable, got {type(matmat).__name__}")
        super().__init__(shape, dtype, device)
        self.fn, self.rfn = matmat, rmatmat
        self.SELF_ADJOINT = symmetric

    def _matmat(self, X: Tensor) -> Tensor:
        out = self.fn(X)
        if not isinstance(out, Tensor) or tuple(out.shape) != (self.shape[0], X.shape[1]):
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"matmat returned {got}, expected shape ({self.shape[0]}, {X.shape[1]})"
            )
        return out

    def _adjoint(self) -> LinearOperator:
        if self.rfn is None:
            raise NotImplementedError(
                "MatmatOperator needs rmatmat= (or symmetric=True) for its adjoint"
            )
        return MatmatOperator(
            self.rfn, (self.shape[1], self.shape[0]), self.dtype, self.device, self.fn
        )
