"""``Subspace``: an orthonormal basis as a value on the Grassmannian."""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)
from ..linops import LinearOperator, Projection
from ._precision import to_working_dtype

Metric = Literal["geodesic", "chordal", "projection"]
METRICS: tuple[str, ...] = ("geodesic", "chordal", "projection")


def _gram64(Q: Tensor) -> Tensor:
    """``Q^T Q`` accumulated in float64, over row blocks (no float64 copy of a tall ``Q``).

    Returns:
        The ``(k, k)`` float64 Gram matrix.
    """
    k = Q.shape[1]
    G = torch.zeros(k, k, dtype=torch.float64, device=Q.device)
    for i in range(0, Q.shape[0], _GRAM_ROWS):
        B = Q[i : i + _GRAM_ROWS].double()
        G += B.T @ B
    return G


#: Rows of a basis converted to float64 at a time by the orthonormality check.
_GRAM_ROWS = 1 << 16


class Subspace:
    r"""A ``k``-dimensional subspace of ``R^n``, held as an orthonormal basis ``Q (n, k)``.

    This is the common currency of the library: a Hessian top eigenspace, a low-rank optimizer's
    projector, a steering subspace or a continual-learning memory is a ``Subspace``, so
    questions like "how much of the gradient lies in the top eigenspace?" or "how far did the
    eigenspace move between checkpoints?" are one call each.

    Args:
        basis: ``(n, k)`` with orthonormal columns, ``0 < k <= n``: ``max |Q^T Q - I|`` (computed
            in float64) must be at most ``sqrt(eps)`` of the basis's dtype (``1.5e-8`` in
            float64, ``3.5e-4`` in float32). The basis is kept as given, not re-orthonormalized;
            use :meth:`from_vectors` for arbitrary spanning vectors. float16/bfloat16 bases are
            accepted; whatever needs an SVD (angles, distances, intersections) is computed in
            float32 and returned in the basis's dtype.

    Raises:
        ValueError: if the basis is not orthonormal, holds NaN/Inf, lives on the meta device,
            or ``k`` is 0 or > ``n``.
        TypeError: if it is not a 2-D floating tensor.

    Example:
        >>> import torch
        >>> S = Subspace.from_vectors(
        ...     torch.tensor([[1.0, 1.0], [0.0, 1.0], [0.0, 0.0]], dtype=torch.float64)
        ... )
        >>> S.dim, S.ambient_dim
        (2, 3)
        >>> S.project(torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).tolist()
        [1.0, 2.0, 0.0]
    """

    __slots__ = ("_basis",)

    def __init__(self, basis: Tensor) -> None:
        Q = check_finite(check_float_tensor(basis, "basis", ndim=2), "basis")
        n, k = Q.shape
        if k == 0 or k > n:
            raise ValueError(f"a subspace basis must have 0 < k <= n columns, got shape {(n, k)}")
        err = float((_gram64(Q) - torch.eye(k, dtype=torch.float64, device=Q.device)).abs().max())
        tol = torch.finfo(Q.dtype).eps ** 0.5
        if err > tol:
            raise ValueError(
                f"basis columns are not orthonormal (max |Q^T Q - I| = {err:.2e} > sqrt(eps) = "
                f"{tol:.1e} for {Q.dtype}); use Subspace.from_vectors to orthonormalize"
            )
        self._basis = Q

    # ----- construction ------------------------------------------------------------------------
    @classmethod
    def from_vectors(
        cls, vectors: Tensor, *, rtol: float | None = None, allow_rank_deficient: bool = False
    ) -> Subspace:
        """The span of the columns of ``vectors (n, m)`` (a single vector ``(n,)`` is allowed).

        The rank is decided from the singular values: ``s_i > rtol * s_max``, with ``rtol``
        defaulting to ``max(n, m) * eps`` (numpy's ``matrix_rank`` rule, ``eps`` of the dtype the
        SVD runs in) or, for float16/bfloat16 vectors (whose SVD runs in float32), to
        ``sqrt(m) * eps`` of their own dtype if that is larger: rounding the vectors to that
        dtype moves the singular values by up to ``eps / 2 * ||V||_F``. When the vectors are
        independent the basis is their QR factor, so ``basis[:, 0]`` is parallel to the first
        vector.

        Args:
            vectors: spanning vectors as columns.
            rtol: relative singular-value threshold for the rank, in ``[0, 1)``.
            allow_rank_deficient: return the span of dependent vectors (its dimension is the
                numerical rank) instead of raising.

        Returns:
            The subspace they span.

        Raises:
            ValueError: if the vectors are rank deficient (unless allowed), zero, empty or not
                finite, or ``rtol`` is outside ``[0, 1)``.
            TypeError: if ``vectors`` is not a floating tensor or ``rtol`` not a number.

        Example:
            >>> import torch
            >>> V = torch.tensor([[1.0, 2.0], [1.0, 2.0]], dtype=torch.float64)
            >>> Subspace.from_vectors(V, allow_rank_deficient=True).dim
            1
        """
        V = check_finite(check_float_tensor(vectors, "vectors", ndim=(1, 2)), "vectors")
        if V.ndim == 1:
            V = V.unsqueeze(-1)
        n, m = V.shape
        if m == 0 or n == 0:
            raise ValueError(f"need at least one non-empty vector, got shape {tuple(V.shape)}")
        if rtol is not None:
            rtol = check_positive_float(rtol, "rtol", allow_zero=True)
            if rtol >= 1.0:
                raise ValueError(f"rtol must be in [0, 1), got {rtol}")
        work = to_working_dtype(V)
        U, s, _ = torch.linalg.svd(work, full_matrices=False)
        if rtol is None:
            tol = max(
                max(n, m) * torch.finfo(work.dtype).eps, math.sqrt(m) * torch.finfo(V.dtype).eps
            )
        else:
            tol = rtol
        if float(s[0]) == 0.0:
            raise ValueError("vectors are all zero; they span no subspace")
        rank = int((s > tol * s[0]).sum())
        if rank < m and not allow_rank_deficient:
            raise ValueError(
                f"vectors are rank deficient: numerical rank {rank} < {m} columns "
                f"(singular values {s.tolist()[:8]}..., rtol {tol:.1e}); "
                "pass allow_rank_deficient=True to take their span"
            )
        Q = torch.linalg.qr(work).Q if rank == m and m <= n else U[:, :rank]
        return cls(Q.to(V.dtype))

    @classmethod
    def from_operator(cls, A: Tensor | LinearOperator, k: int, **lanczos_kwargs: Any) -> Subspace:
        """The top-``k`` eigenspace of a symmetric operator, by :func:`~subspaces.linalg.lanczos`.

        Args:
            A: symmetric tensor or operator.
            k: dimension.
            **lanczos_kwargs: passed on (``which``, ``tol``, ``block_size``, ``v0``,
                ``generator``...).

        Returns:
            The eigenspace; a ``RuntimeWarning`` is issued if Lanczos did not certify it.

        Example:
            >>> import torch
            >>> A = torch.diag(torch.tensor([3.0, 2.0, 1.0], dtype=torch.float64))
            >>> S = Subspace.from_operator(A, 1, generator=torch.Generator().manual_seed(0))
            >>> round(float(S.basis[0, 0].abs()), 8)
            1.0
        """
        from .lanczos import lanczos

        result = lanczos(A, k, **lanczos_kwargs)
        if not result.all_converged:
            warnings.warn(
                "eigenspace not certified: relative residuals "
                f"{result.relative_residuals.tolist()} > tol {result.tol}",
                RuntimeWarning,
                stacklevel=2,
            )
        return cls(result.eigenvectors)

    @classmethod
    def from_svd(cls, matrix: Tensor, k: int, side: Literal["left", "right"] = "left") -> Subspace:
        """The top-``k`` left (column) or right (row) singular subspace of a dense matrix.

        Args:
            matrix: ``(m, n)`` tensor.
            k: dimension, at most ``min(m, n)``.
            side: ``"left"`` (a subspace of ``R^m``) or ``"right"`` (of ``R^n``).

        Returns:
            The singular subspace.

        Raises:
            ValueError: if ``k`` is out of range or the matrix is empty.

        Example:
            >>> import torch
            >>> M = torch.diag(torch.tensor([1.0, 5.0], dtype=torch.float64))
            >>> Subspace.from_svd(M, 1).basis.abs().flatten().tolist()
            [0.0, 1.0]
        """
        M = check_finite(check_float_tensor(matrix, "matrix", ndim=2), "matrix")
        check_choice(side, "side", ("left", "right"))
        check_positive_int(k, "k")
        if min(M.shape) == 0:
            raise ValueError(
                f"matrix is empty (shape {tuple(M.shape)}): it has no singular vectors"
            )
        if k > min(M.shape):
            raise ValueError(f"k must be <= min(m, n) = {min(M.shape)}, got {k}")
        U, _, Vh = torch.linalg.svd(to_working_dtype(M), full_matrices=False)
        Q = U[:, :k] if side == "left" else Vh[:k].T.contiguous()
        return cls(Q.to(M.dtype))

    # ----- properties --------------------------------------------------------------------------
    @property
    def basis(self) -> Tensor:
        """The orthonormal basis ``Q`` of shape ``(n, k)``."""
        return self._basis

    @property
    def dim(self) -> int:
        """``k``, the dimension of the subspace."""
        return self._basis.shape[1]

    @property
    def ambient_dim(self) -> int:
        """``n``, the dimension of the space it lives in."""
        return self._basis.shape[0]

    @property
    def dtype(self) -> torch.dtype:
        """Dtype of the basis."""
        return self._basis.dtype

    @property
    def device(self) -> torch.device:
        """Device of the basis."""
        return self._basis.device

    def to(
        self, dtype: torch.dtype | None = None, device: torch.device | str | None = None
    ) -> Subspace:
        """The same subspace with its basis moved to another dtype and/or device.

        Moving to a more precise dtype (float32 to float64, say) re-orthonormalizes the basis
        there (a sign-fixed QR, which moves it by about the old dtype's ``eps``), since the
        orthonormality is checked to the new dtype's tolerance.

        Returns:
            The subspace in the new dtype/device.

        Example:
            >>> import torch
            >>> g = torch.Generator().manual_seed(0)
            >>> Q = torch.linalg.qr(torch.randn(100, 3, generator=g)).Q
            >>> S = Subspace(Q).to(torch.float64)
            >>> S.dtype, bool((S.basis - Q.double()).abs().max() < 1e-5)
            (torch.float64, True)
        """
        target = dtype or self.dtype
        Q = self._basis.to(dtype=target, device=device or self.device)
        if torch.finfo(target).eps < torch.finfo(self.dtype).eps:
            Q, R = torch.linalg.qr(to_working_dtype(Q))
            Q = torch.where(torch.diagonal(R) < 0, -Q, Q).to(target)  # keep the columns' signs
        return Subspace(Q)

    def projector(self, complement: bool = False) -> Projection:
        """The orthogonal projector ``Q Q^T`` (or ``I - Q Q^T``) as a linear operator."""
        return Projection(self._basis, complement=complement)

    # ----- acting on vectors -------------------------------------------------------------------
    def _as_columns(self, x: Tensor, name: str = "x") -> tuple[Tensor, bool]:
        x = check_float_tensor(x, name, ndim=(1, 2))
        X = x.unsqueeze(-1) if x.ndim == 1 else x
        if X.shape[0] != self.ambient_dim:
            raise ValueError(
                f"{name} has dimension {X.shape[0]}, the subspace lives in R^{self.ambient_dim}"
            )
        return X.to(self.dtype), x.ndim == 1

    def coordinates(self, x: Tensor) -> Tensor:
        """``Q^T x``: coordinates of ``x`` (``(n,)`` or ``(n, b)``) in the basis."""
        X, vec = self._as_columns(x)
        out = self._basis.T @ X
        return out.squeeze(-1) if vec else out

    def project(self, x: Tensor) -> Tensor:
        """``Q Q^T x``: the orthogonal projection of ``x`` (``(n,)`` or ``(n, b)``)."""
        X, vec = self._as_columns(x)
        out = self._basis @ (self._basis.T @ X)
        return out.squeeze(-1) if vec else out

    def reject(self, x: Tensor) -> Tensor:
        """``x - Q Q^T x``: the component of ``x`` orthogonal to the subspace."""
        X, vec = self._as_columns(x)
        out = X - self._basis @ (self._basis.T @ X)
        return out.squeeze(-1) if vec else out

    def captured_fraction(self, x: Tensor) -> Tensor:
        """``||Q^T x||^2 / ||x||^2`` per column: the share of ``x``'s energy in the subspace.

        This is the "fraction of the gradient in the top Hessian eigenspace" of Gur-Ari, Roberts
        and Dyer (2018) when ``x`` is a gradient.

        Returns:
            The fractions, in ``[0, 1]``: a 0-d tensor for a vector ``x`` ``(n,)``, a ``(b,)``
            tensor for a matrix ``x`` ``(n, b)``.

        Raises:
            ValueError: if a column of ``x`` is zero.

        Example:
            >>> import torch
            >>> S = Subspace(torch.eye(3, dtype=torch.float64)[:, :1])
            >>> float(S.captured_fraction(torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64)))
            0.5
        """
        X, vec = self._as_columns(x)
        # no overflow or lost digits in half precision
        X, Q = to_working_dtype(X), to_working_dtype(self._basis)
        total = (X * X).sum(0)
        if bool((total == 0).any()):
            raise ValueError("captured_fraction of a zero vector is undefined")
        out = (((Q.T @ X) ** 2).sum(0) / total).to(self.dtype)
        return out.squeeze(-1) if vec else out

    # ----- comparing subspaces -----------------------------------------------------------------
    def _check_other(self, other: Subspace) -> Tensor:
        if not isinstance(other, Subspace):
            raise TypeError(f"expected a Subspace, got {type(other).__name__}")
        if other.ambient_dim != self.ambient_dim:
            raise ValueError(
                f"subspaces live in different spaces: R^{self.ambient_dim} vs R^{other.ambient_dim}"
            )
        return other.basis.to(dtype=self.dtype, device=self.device)

    def principal_angles(self, other: Subspace) -> Tensor:
        r"""Principal angles between two subspaces, in radians, ascending (``min(k1, k2)`` of them).

        Computed as in Knyazev & Argentati (SISC 2002): cosines from the singular values of
        :math:`Q_1^T Q_2`, sines from those of the residual :math:`Q_2 - Q_1 Q_1^T Q_2`, each used
        where it is accurate (sines for angles below 45 degrees), so tiny angles are not lost to
        rounding.

        Returns:
            A tensor of ``min(k1, k2)`` angles in ``[0, pi/2]``.

        Example:
            >>> import torch
            >>> e = torch.eye(2, dtype=torch.float64)
            >>> S1 = Subspace(e[:, :1])
            >>> S2 = Subspace.from_vectors(torch.tensor([1.0, 1.0], dtype=torch.float64))
            >>> round(float(S1.principal_angles(S2)[0]), 12) == round(math.pi / 4, 12)
            True
        """
        Q1, Q2 = to_working_dtype(self._basis), to_working_dtype(self._check_other(other))
        if Q1.shape[1] < Q2.shape[1]:
            Q1, Q2 = Q2, Q1
        C = Q1.T @ Q2  # (k1, k2) with k1 >= k2
        cos = torch.linalg.svdvals(C).clamp(0.0, 1.0)  # descending cosines <-> ascending angles
        sin = torch.linalg.svdvals(Q2 - Q1 @ C).clamp(0.0, 1.0).flip(0)  # ascending sines
        angles = torch.where(cos**2 >= 0.5, torch.arcsin(sin), torch.arccos(cos))
        return angles.to(self.dtype)

    def overlap(self, other: Subspace) -> float:
        r"""The overlap ``||Q_1^T Q_2||_F^2 / min(k1, k2)`` of two subspaces.

        It is 1 when one subspace contains the other, 0 when they are orthogonal; for random
        ``k``-subspaces of ``R^n`` it is about ``k / n``.

        Returns:
            The overlap, a float in ``[0, 1]``.

        Raises:
            TypeError: if ``other`` is not a :class:`Subspace`.
            ValueError: if the two subspaces live in spaces of different dimension.

        Example:
            >>> import torch
            >>> e = torch.eye(3, dtype=torch.float64)
            >>> Subspace(e[:, :2]).overlap(Subspace(e[:, 1:]))
            0.5
        """
        Q2 = to_working_dtype(self._check_other(other))
        return float((to_working_dtype(self._basis).T @ Q2).pow(2).sum()) / min(self.dim, other.dim)

    def distance(self, other: Subspace, metric: Metric = "geodesic") -> float:
        r"""Grassmann distance between two subspaces of the same dimension.

        ``geodesic``: :math:`\sqrt{\sum_i \theta_i^2}` (arc length); ``chordal``:
        :math:`\sqrt{\sum_i \sin^2\theta_i} = \|Q_1Q_1^T - Q_2Q_2^T\|_F / \sqrt{2}`;
        ``projection``: :math:`\sin\theta_{\max} = \|Q_1Q_1^T - Q_2Q_2^T\|_2`.

        Returns:
            The distance in the chosen metric, a float ``>= 0``.

        Raises:
            ValueError: if the dimensions differ or the metric is unknown.

        Example:
            >>> import torch
            >>> e = torch.eye(2, dtype=torch.float64)
            >>> round(Subspace(e[:, :1]).distance(Subspace(e[:, 1:])), 12) == round(math.pi / 2, 12)
            True
        """
        metric = check_choice(metric, "metric", METRICS)  # type: ignore[assignment]
        if other.dim != self.dim:
            raise ValueError(
                f"distance needs subspaces of equal dimension, got {self.dim} and {other.dim}; "
                "compare with principal_angles or overlap instead"
            )
        theta = self.principal_angles(other)
        if metric == "geodesic":
            return float(theta.norm())
        if metric == "chordal":
            return float(torch.sin(theta).norm())
        return float(torch.sin(theta).max())

    def union(self, other: Subspace, *, rtol: float | None = None) -> Subspace:
        """The smallest subspace containing both (their sum), with dependent directions dropped.

        Args:
            other: the other subspace, in the same ambient space.
            rtol: relative singular-value threshold for the rank, as in :meth:`from_vectors`.

        Returns:
            The sum of the two subspaces; its dimension is the numerical rank of ``[Q_1, Q_2]``.

        Raises:
            TypeError: if ``other`` is not a :class:`Subspace`.
            ValueError: if the two subspaces live in spaces of different dimension.

        Example:
            >>> import torch
            >>> e = torch.eye(3, dtype=torch.float64)
            >>> Subspace(e[:, :2]).union(Subspace(e[:, 1:])).dim
            3
        """
        Q2 = self._check_other(other)
        return Subspace.from_vectors(
            torch.cat([self._basis, Q2], dim=1), rtol=rtol, allow_rank_deficient=True
        )

    def intersection(self, other: Subspace, *, angle_tol: float | None = None) -> Subspace | None:
        """The directions shared by both subspaces (principal angles at most ``angle_tol``).

        The decision is made on the sines of the principal angles, the singular values of the
        residual ``Q_2 - Q_1 Q_1^T Q_2``, which are accurate to rounding for small angles (as in
        :meth:`principal_angles`), not on cosines, which round to 1 below ``sqrt(eps)``.

        Args:
            other: the other subspace, in the same ambient space.
            angle_tol: largest principal angle, in radians, of a shared direction, in
                ``[0, pi/2]``; default ``sqrt(eps)`` of the less precise of the two dtypes (the
                orthonormality the bases are checked to, below which an angle cannot be told
                from 0): ``1.5e-8`` in float64, ``3.5e-4`` in float32.

        Returns:
            The intersection (a basis of the shared directions of ``other``), or ``None`` if
            the subspaces only meet at 0.

        Raises:
            TypeError: if ``other`` is not a :class:`Subspace` or ``angle_tol`` not a number.
            ValueError: if the two subspaces live in spaces of different dimension or
                ``angle_tol`` is outside ``[0, pi/2]``.

        Example:
            >>> import torch
            >>> e = torch.eye(3, dtype=torch.float64)
            >>> Subspace(e[:, :2]).intersection(Subspace(e[:, 1:])).dim
            1
        """
        Q2 = self._check_other(other)
        if angle_tol is None:
            tol = max(torch.finfo(self.dtype).eps, torch.finfo(other.dtype).eps) ** 0.5
        else:
            tol = check_positive_float(angle_tol, "angle_tol", allow_zero=True)
            if tol > math.pi / 2:
                raise ValueError(f"angle_tol must be in [0, pi/2], got {tol}")
        Q1w, Q2w = to_working_dtype(self._basis), to_working_dtype(Q2)
        _, sin, Vh = torch.linalg.svd(Q2w - Q1w @ (Q1w.T @ Q2w), full_matrices=False)
        keep = sin <= math.sin(tol)
        if not bool(keep.any()):
            return None
        return Subspace.from_vectors((Q2w @ Vh[keep].T).to(self.dtype))

    def __repr__(self) -> str:
        return f"Subspace(dim={self.dim}, ambient_dim={self.ambient_dim}, dtype={self.dtype})"
