r"""Principal angles between the principal subspaces of two representations."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_positive_int
from ..linalg.subspace import Subspace
from ._reps import _center, _check_pair, _unit_scale

__all__ = ["SubspaceSimilarityResult", "subspace_similarity"]


@dataclass(frozen=True)
class SubspaceSimilarityResult:
    """Result of :func:`subspace_similarity`.

    Attributes:
        angles: the principal angles in radians, ascending: ``min(k_x, k_y)`` of them, where
            ``k_x = min(k, rank X)`` and ``k_y = min(k, rank Y)`` (``k`` of each unless a
            representation has fewer numerically nonzero directions).
        similarity: mean squared cosine of the angles (the overlap
            ``||Q_x^T Q_y||_F^2 / min(k_x, k_y)``), in ``[0, 1]``.
        subspace_x: the top-``k_x`` principal subspace of ``X``, in ``R^N``.
        subspace_y: the top-``k_y`` principal subspace of ``Y``, in ``R^N``.

    Example:
        Two representations sharing one of their two principal directions (orthogonal,
        centred columns): one angle is 0, the other a right angle.

        >>> import math
        >>> import torch
        >>> from subspaces.representations import subspace_similarity
        >>> Q = torch.randn(60, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> Q, _ = torch.linalg.qr(Q - Q.mean(0))
        >>> X = torch.stack([3 * Q[:, 0], Q[:, 1]], 1)
        >>> Y = torch.stack([2 * Q[:, 0], Q[:, 2]], 1)
        >>> res = subspace_similarity(X, Y, 2)
        >>> [round(a / (math.pi / 2), 6) for a in res.angles.tolist()], round(float(res), 6)
        ([0.0, 1.0], 0.5)
        >>> res.subspace_x.dim, res.subspace_y.dim
        (2, 2)
    """

    angles: Tensor
    similarity: float
    subspace_x: Subspace
    subspace_y: Subspace

    def __float__(self) -> float:
        return self.similarity


def _principal_subspace(Xc: Tensor, k: int, dtype: torch.dtype, name: str) -> Subspace:
    """The top-``k`` left singular subspace of centered ``Xc`` (float64), null directions dropped.

    A singular value counts when it exceeds ``tol * s_max`` with ``tol = max(max(N, p) eps_64,
    10 eps)``, ``eps`` of the input's ``dtype``: the SVD's own rounding (numpy's rule) or the
    rounding of the data to its dtype, whichever is larger.

    Returns:
        The subspace, of dimension ``min(k, numerical rank)``.

    Raises:
        ValueError: if ``Xc`` is numerically zero (the representation is constant).
    """
    U, s, _ = torch.linalg.svd(Xc, full_matrices=False)
    tol = max(max(Xc.shape) * torch.finfo(torch.float64).eps, 10 * torch.finfo(dtype).eps)
    rank = int((s > tol * s[0]).sum()) if float(s[0]) > 0 else 0
    if rank == 0:
        raise ValueError(f"{name} is constant across rows: it has no principal subspace")
    return Subspace(U[:, : min(k, rank)])


def subspace_similarity(X: Tensor, Y: Tensor, k: int) -> SubspaceSimilarityResult:
    r"""Principal angles between the top-``k`` principal subspaces of two representations.

    Each centered representation's top-``k`` left singular vectors (its first ``k`` principal
    component score directions) span a ``k``-dimensional subspace of ``R^N``; as in SVCCA
    (Raghu et al., NeurIPS 2017) the two are comparable whatever ``p`` and ``q``. The angles come
    from :meth:`subspaces.Subspace.principal_angles` (Björck & Golub 1973; Knyazev & Argentati,
    SISC 2002). A representation of numerical rank ``r < k`` contributes only its ``r``
    nonzero directions (the others are an arbitrary basis of its null space, not part of the
    data): a singular value is kept when it exceeds ``max(max(N, p) eps_64, 10 eps) s_max``,
    ``eps`` of the input's dtype. So identical (or invertibly mixed) rank-deficient
    representations have similarity 1.

    Args:
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        k: dimension of each principal subspace, at most ``min(N, p, q)``.

    Returns:
        A :class:`SubspaceSimilarityResult` (``float()`` of it is the mean squared cosine).

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor or ``k`` is not an int.
        ValueError: if they are not 2-D, hold NaN/Inf, have different numbers of rows or fewer
            than 2, ``k`` is out of range, or a representation is constant.

    Example:
        >>> import torch
        >>> X = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
        >>> A = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
        >>> res = subspace_similarity(X, X @ A, 6)
        >>> float(res.angles.max()) < 1e-6, round(res.similarity, 6)
        (True, 1.0)
        >>> Z = X[:, :2] @ A[:2]  # rank 2: only two principal directions exist
        >>> res = subspace_similarity(Z, Z @ A, 4)
        >>> res.subspace_x.dim, round(res.similarity, 6)
        (2, 1.0)
    """
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    check_positive_int(k, "k")
    kmax = min(Xd.shape[0], Xd.shape[1], Yd.shape[1])
    if k > kmax:
        raise ValueError(f"k must be <= min(N, p, q) = {kmax}, got {k}")
    Sx = _principal_subspace(_center(_unit_scale(Xd)), k, X.dtype, "X")
    Sy = _principal_subspace(_center(_unit_scale(Yd)), k, Y.dtype, "Y")
    angles = Sx.principal_angles(Sy)
    return SubspaceSimilarityResult(angles, float(torch.cos(angles).pow(2).mean()), Sx, Sy)
