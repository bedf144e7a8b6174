"""Matrices and operators of known spectrum, for testing eigensolvers and estimators.

Every generator is seeded; the eigenvalues you pass are exactly the spectrum of what you get.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_int
from ..linops import LinearOperator


def random_orthogonal(
    n: int, *, dtype: torch.dtype = torch.float64, generator: torch.Generator | None = None
) -> Tensor:
    """A Haar-distributed random orthogonal ``n x n`` matrix (QR of a Gaussian, signs fixed).

    Returns:
        The ``(n, n)`` orthogonal matrix, in ``dtype`` (drawn and factored in float64).

    Example:
        >>> Q = random_orthogonal(4, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(Q.T @ Q, torch.eye(4, dtype=torch.float64))
        True
    """
    check_positive_int(n, "n")
    G = torch.randn(n, n, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(R)).where(torch.diagonal(R) != 0, torch.ones(()))
    return Q.to(dtype)


def matrix_with_spectrum(
    eigenvalues: Tensor, *, generator: torch.Generator | None = None
) -> Tensor:
    """The dense symmetric matrix ``Q diag(eigenvalues) Q^T`` with a random orthogonal ``Q``.

    Returns:
        The ``(n, n)`` symmetric matrix, in the dtype of ``eigenvalues``.

    Example:
        >>> lam = torch.tensor([3.0, 1.0, -2.0], dtype=torch.float64)
        >>> A = matrix_with_spectrum(lam, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(torch.linalg.eigvalsh(A), lam.sort().values)
        True
    """
    lam = check_finite(check_float_tensor(eigenvalues, "eigenvalues", ndim=1), "eigenvalues")
    Q = random_orthogonal(lam.shape[0], dtype=lam.dtype, generator=generator)
    A = (Q * lam) @ Q.T
    return (A + A.T) / 2


class KnownSpectrumOperator(LinearOperator):
    """A matrix-free symmetric operator ``Q diag(eigenvalues) Q^T`` for large ``n``.

    ``Q`` is a product of ``reflections`` random Householder reflections composed with a random
    permutation, so each product costs ``O(n * reflections)`` and the eigenvectors are dense,
    not coordinate vectors. Memory is ``O(n * reflections)``.

    Args:
        eigenvalues: the spectrum, a 1-D floating tensor.
        reflections: number of Householder reflections in ``Q``.
        generator: source of randomness.

    Example:
        >>> lam = torch.linspace(1, 10, 10, dtype=torch.float64)
        >>> A = KnownSpectrumOperator(lam, generator=torch.Generator().manual_seed(0))
        >>> torch.allclose(torch.linalg.eigvalsh(A.to_dense()), lam)
        True
    """

    SELF_ADJOINT = True

    def __init__(
        self, eigenvalues: Tensor, reflections: int = 4, generator: torch.Generator | None = None
    ) -> None:
        lam = check_finite(check_float_tensor(eigenvalues, "eigenvalues", ndim=1), "eigenvalues")
        check_positive_int(reflections, "reflections", minimum=0)
        n = lam.shape[0]
        super().__init__((n, n), lam.dtype, lam.device)
        self.eigenvalues = lam
        V = torch.randn(n, reflections, generator=generator, dtype=torch.float64)
        self._householder = (V / V.norm(dim=0, keepdim=True)).to(lam.dtype).to(lam.device)
        self._perm = torch.randperm(n, generator=generator).to(lam.device)
        self._inv_perm = torch.argsort(self._perm)

    def _apply_q(self, X: Tensor, transpose: bool) -> Tensor:
        # Q = H_1 H_2 ... H_r P, with P a row permutation; Q^T = P^T H_r ... H_1.
        cols = range(self._householder.shape[1])
        if transpose:
            for j in cols:
                v = self._householder[:, j : j + 1]
                X = X - 2 * v @ (v.T @ X)
            return X.index_select(0, self._inv_perm)
        X = X.index_select(0, self._perm)
        for j in reversed(cols):
            v = self._householder[:, j : j + 1]
            X = X - 2 * v @ (v.T @ X)
        return X

    def _matmat(self, X: Tensor) -> Tensor:
        return self._apply_q(self.eigenvalues.unsqueeze(-1) * self._apply_q(X, True), False)

    def eigenvectors(self, idx: Tensor | list[int]) -> Tensor:
        """The eigenvectors of the eigenvalues at positions ``idx`` (columns of ``Q``)."""
        idx_t = torch.as_tensor(idx, dtype=torch.long, device=self.device)
        E = torch.zeros(self.shape[0], idx_t.numel(), dtype=self.dtype, device=self.device)
        E[idx_t, torch.arange(idx_t.numel(), device=self.device)] = 1
        return self._apply_q(E, False)


# ----- spectra ------------------------------------------------------------------------------------
def geometric_spectrum(n: int, ratio: float, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Eigenvalues ``ratio**i`` for ``i = 0..n-1`` (fast decay for small ``ratio``), descending.

    Returns:
        The ``(n,)`` tensor of eigenvalues.

    Example:
        >>> geometric_spectrum(3, 0.5).tolist()
        [1.0, 0.5, 0.25]
    """
    check_positive_int(n, "n")
    return ratio ** torch.arange(n, dtype=dtype)


def polynomial_spectrum(n: int, power: float, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """Eigenvalues ``(i + 1)**(-power)`` (slow decay for small ``power``), descending.

    Returns:
        The ``(n,)`` tensor of eigenvalues.

    Example:
        >>> polynomial_spectrum(3, 1.0).tolist()
        [1.0, 0.5, 0.3333333333333333]
    """
    check_positive_int(n, "n")
    return (torch.arange(n, dtype=dtype) + 1) ** (-power)


def gap_spectrum(n: int, k: int, gap_ratio: float, *, dtype: torch.dtype = torch.float64) -> Tensor:
    """A hard spectrum: a geometric top of ``k + 1`` eigenvalues above a bulk. Descending.

    ``lambda_1 = 1`` and ``lambda_{i+1} / lambda_i = gap_ratio`` for the top ``k + 1``
    eigenvalues, then a bulk uniformly in ``[0, 0.5 * lambda_{k+1}]``.

    With ``gap_ratio=0.98`` power iteration needs hundreds of products per eigenvalue while a
    Krylov method needs tens.

    Returns:
        The ``(n,)`` tensor of eigenvalues.

    Raises:
        ValueError: if ``n < 1`` or ``k`` is not in ``(0, n)``.

    Example:
        >>> lam = gap_spectrum(100, 5, 0.98)
        >>> round(float(lam[1] / lam[0]), 10)
        0.98
    """
    check_positive_int(n, "n")
    if not 0 < k < n:
        raise ValueError(f"k must be in (0, n={n}), got {k}")
    top = gap_ratio ** torch.arange(min(k + 1, n), dtype=dtype)
    bulk = torch.linspace(0.5 * float(top[-1]), 0.0, n - top.shape[0], dtype=dtype)
    return torch.cat([top, bulk])


def clustered_spectrum(
    n: int,
    centers: list[float],
    cluster_size: int,
    *,
    spread: float = 1e-6,
    bulk: tuple[float, float] = (0.0, 0.1),
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Clusters of nearly equal eigenvalues around given centers, above a uniform bulk.

    Each center gets ``cluster_size`` eigenvalues uniform in a window of width ``spread``
    around it; the rest are uniform in ``bulk``. Sorted descending.

    Returns:
        The ``(n,)`` tensor of eigenvalues, in ``dtype``.

    Raises:
        ValueError: if ``n < 1`` or the clusters hold more than ``n`` eigenvalues.

    Example:
        >>> lam = clustered_spectrum(50, [2.0, 1.0], 3, generator=torch.Generator().manual_seed(0))
        >>> int(((lam - 2.0).abs() < 1e-5).sum())
        3
    """
    check_positive_int(n, "n")
    m = len(centers) * cluster_size
    if m > n:
        raise ValueError(f"{len(centers)} clusters of {cluster_size} need n >= {m}, got {n}")
    parts = [
        c + spread * (torch.rand(cluster_size, generator=generator, dtype=torch.float64) - 0.5)
        for c in centers
    ]
    lo, hi = bulk
    parts.append(lo + (hi - lo) * torch.rand(n - m, generator=generator, dtype=torch.float64))
    return torch.cat(parts).sort(descending=True).values.to(dtype)


def marchenko_pastur_spectrum(
    n: int,
    aspect: float,
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float64,
) -> Tensor:
    """Eigenvalues of a Wishart matrix ``X^T X / m`` with ``n / m = aspect``, sorted descending.

    ``X`` is an ``(m, n)`` standard Gaussian matrix, so the spectrum follows the
    Marchenko-Pastur law: a bulk with a soft edge at ``(1 + sqrt(aspect))**2``.

    Returns:
        The ``(n,)`` tensor of eigenvalues, in ``dtype``.

    Example:
        >>> import math
        >>> lam = marchenko_pastur_spectrum(200, 0.5, generator=torch.Generator().manual_seed(0))
        >>> bool(lam.max() < (1 + math.sqrt(0.5)) ** 2 * 1.2)
        True
    """
    check_positive_int(n, "n")
    m = max(1, round(n / aspect))
    X = torch.randn(m, n, generator=generator, dtype=torch.float64)
    return torch.linalg.eigvalsh(X.T @ X / m).flip(0).to(dtype)
