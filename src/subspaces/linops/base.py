"""The matrix-free :class:`LinearOperator` and its lazy algebra (sum, scaling, composition).

A subclass implements ``_matmat(X)`` for a matrix ``X`` of shape ``(n, b)`` and either sets
``SELF_ADJOINT = True`` or implements ``_adjoint()``. Everything else (products with vectors,
matrices and parameter dictionaries, ``+``, ``-``, scalar ``*``, ``@`` composition, ``.T``,
``to_dense()``, ``to_scipy()``) comes from this base class.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_positive_float, check_positive_int
from .._tensorlist import ParamLayout


class LinearOperator:
    """A linear map ``R^n -> R^m`` known only through products with matrices.

    Args:
        shape: ``(m, n)``.
        dtype: the floating dtype of its products.
        device: the device of its products.
        layout: optional :class:`~subspaces._tensorlist.ParamLayout` so that ``A @ {name: tensor}``
            works on parameter dictionaries (curvature operators set it).

    Example:
        >>> import torch
        >>> from subspaces.linops import Dense
        >>> M = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
        >>> A = Dense(M)
        >>> B = 2 * A - A @ A
        >>> torch.allclose(B.to_dense(), 2 * M - M @ M)
        True
    """

    SELF_ADJOINT: bool = False

    def __init__(
        self,
        shape: tuple[int, int],
        dtype: torch.dtype,
        device: torch.device | str = "cpu",
        layout: ParamLayout | None = None,
    ) -> None:
        if len(shape) != 2 or any(int(s) < 0 for s in shape):
            raise ValueError(f"shape must be a pair of non-negative ints, got {shape!r}")
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.shape = (int(shape[0]), int(shape[1]))
        self.dtype = dtype
        self.device = torch.device(device)
        self.layout = layout
        if layout is not None and layout.numel != self.shape[1]:
            raise ValueError(
                f"layout has {layout.numel} entries but the operator has {self.shape[1]} columns"
            )

    # ----- what subclasses provide -------------------------------------------------------------
    def _matmat(self, X: Tensor) -> Tensor:
        """Multiply by a matrix ``X`` of shape ``(n, b)``; return ``(m, b)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _matmat")

    def _adjoint(self) -> LinearOperator:
        """Return the adjoint operator (needed unless ``SELF_ADJOINT``)."""
        raise NotImplementedError(
            f"{type(self).__name__} is not SELF_ADJOINT and does not implement _adjoint"
        )

    # ----- products ----------------------------------------------------------------------------
    def matmat(self, X: Tensor) -> Tensor:
        """Multiply by a matrix ``X`` of shape ``(n, b)``, with validation.

        Returns:
            The product ``A @ X``, of shape ``(m, b)``.

        Raises:
            ValueError: if ``X`` has the wrong shape.
            TypeError: if ``X`` is not a tensor of the operator's dtype, or the product is
                complex (operators are real; see :meth:`to_scipy` for complex vectors).
        """
        if not isinstance(X, Tensor):
            raise TypeError(f"expected a torch.Tensor, got {type(X).__name__}")
        if X.ndim != 2 or X.shape[0] != self.shape[1]:
            raise ValueError(
                f"expected a matrix of shape ({self.shape[1]}, b), got {tuple(X.shape)}"
            )
        if X.dtype != self.dtype:
            raise TypeError(f"operator has dtype {self.dtype}, input has dtype {X.dtype}")
        if X.shape[1] == 0:
            return X.new_zeros(self.shape[0], 0)
        out = self._matmat(X)
        if isinstance(out, Tensor) and out.is_complex():
            raise TypeError(
                f"{type(self).__name__} returned a complex product ({out.dtype}); a "
                "LinearOperator is real: apply it to the real and imaginary parts separately"
            )
        return out

    def matvec(self, x: Tensor) -> Tensor:
        """Multiply by a vector of shape ``(n,)``."""
        return self.matmat(x.unsqueeze(-1) if isinstance(x, Tensor) else x).squeeze(-1)

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, LinearOperator):
            return _Chain(self, other)
        if isinstance(other, Mapping):
            if self.layout is None:
                raise TypeError(
                    f"{type(self).__name__} has no parameter layout; pass a flat tensor"
                )
            flat = self.layout.flatten(other)
            out = self.matmat(flat if flat.ndim == 2 else flat.unsqueeze(-1))
            out = out if flat.ndim == 2 else out.squeeze(-1)
            return self.layout.unflatten(out) if self.shape[0] == self.shape[1] else out
        if isinstance(other, Tensor):
            if other.ndim == 1:
                return self.matvec(other)
            return self.matmat(other)
        return NotImplemented

    def __rmatmul__(self, other: Any) -> Any:
        if isinstance(other, Tensor):
            if other.ndim == 1:
                return self.T.matvec(other)
            if other.ndim == 2:
                return self.T.matmat(other.T).T
            raise ValueError(f"expected a vector or matrix, got shape {tuple(other.shape)}")
        return NotImplemented

    # ----- algebra -----------------------------------------------------------------------------
    @property
    def T(self) -> LinearOperator:
        """The adjoint (transpose) operator."""
        return self if self.SELF_ADJOINT else self._adjoint()

    def adjoint(self) -> LinearOperator:
        """The adjoint (transpose) operator; same as :attr:`T`."""
        return self.T

    def __add__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _Sum(self, other)

    def __sub__(self, other: Any) -> LinearOperator:
        if not isinstance(other, LinearOperator):
            return NotImplemented
        return _Sum(self, _Scaled(other, -1.0))

    def __neg__(self) -> LinearOperator:
        return _Scaled(self, -1.0)

    def __mul__(self, scalar: Any) -> LinearOperator:
        if isinstance(scalar, bool) or not isinstance(scalar, (int, float)):
            return NotImplemented
        return _Scaled(self, float(scalar))

    __rmul__ = __mul__

    def __truediv__(self, scalar: Any) -> LinearOperator:
        if isinstance(scalar, bool) or not isinstance(scalar, (int, float)):
            return NotImplemented
        return _Scaled(self, 1.0 / float(scalar))

    # ----- conversions and checks --------------------------------------------------------------
    def to_dense(self) -> Tensor:
        """Materialize the operator as a dense ``(m, n)`` tensor (``n`` products)."""
        eye = torch.eye(self.shape[1], dtype=self.dtype, device=self.device)
        return self.matmat(eye)

    def to_scipy(self, dtype: Any = np.float64) -> Any:
        """Wrap as a :class:`scipy.sparse.linalg.LinearOperator` (numpy in, numpy out).

        The operator is real, so a complex input ``X = R + iJ`` is applied by linearity
        (``A R + i A J``, two real products) and gives a complex output: no imaginary part is
        dropped.

        Args:
            dtype: the numpy dtype scipy sees (the dtype of products with real inputs; complex
                inputs give its complex counterpart); products are computed in the operator's
                dtype.

        Returns:
            A scipy ``LinearOperator`` usable with ``eigsh``, ``cg``, ``svds``, ...

        Example:
            >>> import numpy as np
            >>> from subspaces.linops import Dense
            >>> A = Dense(torch.tensor([[2.0, 1.0], [0.0, 3.0]], dtype=torch.float64))
            >>> S = A.to_scipy()
            >>> (S @ np.array([1.0, 1.0])).tolist(), (S.H @ np.array([1.0, 1j])).tolist()
            ([3.0, 3.0], [(2+0j), (1+3j)])
        """
        from scipy.sparse.linalg import LinearOperator as ScipyLinearOperator

        out_dtype = np.dtype(dtype)

        def _real(op: LinearOperator, X: np.ndarray) -> np.ndarray:
            Xt = torch.as_tensor(np.ascontiguousarray(X), device=self.device).to(self.dtype)
            out = op.matmat(Xt).detach().cpu()
            if out.dtype in (torch.float16, torch.bfloat16):  # numpy has no bfloat16
                out = out.float()
            return out.numpy()

        def _apply(op: LinearOperator, X: np.ndarray) -> np.ndarray:
            X = np.asarray(X)
            squeeze = X.ndim == 1
            X2 = X[:, None] if squeeze else X
            if np.iscomplexobj(X2):
                out = _real(op, X2.real) + 1j * _real(op, X2.imag)
                out = out.astype(np.result_type(out_dtype, np.complex64), copy=False)
            else:
                out = _real(op, X2).astype(out_dtype, copy=False)
            return out[:, 0] if squeeze else out

        def _mm(X: np.ndarray) -> np.ndarray:
            return _apply(self, X)

        def _rmm(X: np.ndarray) -> np.ndarray:
            return _apply(self.T, X)

        return ScipyLinearOperator(
            shape=self.shape, matvec=_mm, rmatvec=_rmm, matmat=_mm, rmatmat=_rmm, dtype=out_dtype
        )

    def check_symmetric(
        self,
        rtol: float | None = None,
        num_probes: int = 2,
        generator: torch.Generator | None = None,
    ) -> float:
        """Check ``x^T A y == y^T A x`` on random probes (``2 * num_probes`` products).

        The probes are drawn in the operator's dtype and the inner products are accumulated in
        at least float32, so a half-precision operator is judged by its own rounding, not by
        that of the check.

        Args:
            rtol: tolerance on the relative asymmetry; default ``1e-10`` in float64, ``1e-4``
                in float32 and ``10 eps`` in float16/bfloat16 (their products alone are only
                accurate to about ``eps``).
            num_probes: number of random probe pairs.
            generator: random generator for the probes.

        Returns:
            The largest measured relative asymmetry
            ``|x^T A y - y^T A x| / (|x| |A y| + |y| |A x|)``.

        Raises:
            ValueError: if the operator is not square, the asymmetry exceeds ``rtol``, or
                ``rtol``/``num_probes`` is out of range.
            TypeError: if ``rtol`` is not a number or ``num_probes`` not an int.

        Example:
            >>> from subspaces.linops import Dense
            >>> M = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.bfloat16)
            >>> Dense(M).check_symmetric(generator=torch.Generator().manual_seed(0)) <= 0.08
            True
        """
        if self.shape[0] != self.shape[1]:
            raise ValueError(f"a symmetric operator must be square, got shape {self.shape}")
        check_positive_int(num_probes, "num_probes")
        if rtol is not None:
            check_positive_float(rtol, "rtol", allow_zero=True)
        if rtol is None:
            eps = torch.finfo(self.dtype).eps
            tol = 1e-10 if self.dtype == torch.float64 else max(1e-4, 10 * eps)
        else:
            tol = rtol
        n = self.shape[1]
        X = torch.randn(n, 2 * num_probes, generator=generator, dtype=self.dtype).to(self.device)
        work = torch.float64 if self.dtype == torch.float64 else torch.float32
        AX = self.matmat(X).to(work)
        X = X.to(work)
        x, y, Ax, Ay = X[:, :num_probes], X[:, num_probes:], AX[:, :num_probes], AX[:, num_probes:]
        diff = ((x * Ay).sum(0) - (y * Ax).sum(0)).abs()
        scale = x.norm(dim=0) * Ay.norm(dim=0) + y.norm(dim=0) * Ax.norm(dim=0)
        asym = float((diff / scale.clamp_min(torch.finfo(work).tiny)).max())
        if asym > tol:
            raise ValueError(
                f"operator is not symmetric: relative asymmetry {asym:.3e} > rtol {tol:.1e}"
            )
        return asym

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(shape={self.shape}, dtype={self.dtype}, device={self.device})"
        )


def _check_same_space(a: LinearOperator, b: LinearOperator, what: str) -> None:
    if a.dtype != b.dtype or a.device != b.device:
        raise TypeError(
            f"cannot {what} operators with dtype/device {a.dtype}/{a.device} "
            f"and {b.dtype}/{b.device}"
        )


class _Sum(LinearOperator):
    """Lazy ``A + B``."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        if a.shape != b.shape:
            raise ValueError(f"cannot add operators of shapes {a.shape} and {b.shape}")
        _check_same_space(a, b, "add")
        super().__init__(a.shape, a.dtype, a.device, a.layout or b.layout)
        self.terms = (a, b)
        self.SELF_ADJOINT = a.SELF_ADJOINT and b.SELF_ADJOINT

    def _matmat(self, X: Tensor) -> Tensor:
        return self.terms[0].matmat(X) + self.terms[1].matmat(X)

    def _adjoint(self) -> LinearOperator:
        return _Sum(self.terms[0].T, self.terms[1].T)


class _Scaled(LinearOperator):
    """Lazy ``c * A``."""

    def __init__(self, a: LinearOperator, c: float) -> None:
        super().__init__(a.shape, a.dtype, a.device, a.layout)
        self.op, self.c = a, c
        self.SELF_ADJOINT = a.SELF_ADJOINT

    def _matmat(self, X: Tensor) -> Tensor:
        return self.op.matmat(X) * self.c

    def _adjoint(self) -> LinearOperator:
        return _Scaled(self.op.T, self.c)


class _Chain(LinearOperator):
    """Lazy ``A @ B`` (``B`` applied first); nested chains are flattened."""

    def __init__(self, a: LinearOperator, b: LinearOperator) -> None:
        if a.shape[1] != b.shape[0]:
            raise ValueError(f"cannot compose operators of shapes {a.shape} and {b.shape}")
        _check_same_space(a, b, "compose")
        super().__init__((a.shape[0], b.shape[1]), a.dtype, a.device, b.layout)
        left = a.factors if isinstance(a, _Chain) else (a,)
        right = b.factors if isinstance(b, _Chain) else (b,)
        self.factors: tuple[LinearOperator, ...] = left + right

    def _matmat(self, X: Tensor) -> Tensor:
        for op in reversed(self.factors):
            X = op.matmat(X)
        return X

    def _adjoint(self) -> LinearOperator:
        ops = [op.T for op in reversed(self.factors)]
        out = ops[0]
        for op in ops[1:]:
            out = _Chain(out, op)
        return out


def as_operator(A: Tensor | LinearOperator) -> LinearOperator:
    """Return ``A`` as a :class:`LinearOperator` (a dense tensor is wrapped in ``Dense``).

    Raises:
        TypeError: if ``A`` is neither a 2-D tensor nor a ``LinearOperator``.
    """
    if isinstance(A, LinearOperator):
        return A
    if isinstance(A, Tensor):
        from .structured import Dense

        return Dense(A)
    raise TypeError(f"expected a torch.Tensor or LinearOperator, got {type(A).__name__}")
