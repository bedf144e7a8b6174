"""Synthetic matrix-completion problems with a known answer.

:func:`low_rank_matrix` draws a rank-``r`` matrix ``M = A B^T`` from its factors (kept, so that the
error of a completion over *all* entries can be measured without forming ``M``), and
:func:`sample_entries` reveals a uniformly random set of its entries as :class:`Observations`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_choice, check_finite, check_float_tensor, check_positive_int

_ENTRY_CHUNK = 1 << 18  # gathered values per chunk in LowRankMatrix.entries

__all__ = ["LowRankMatrix", "Observations", "low_rank_matrix", "sample_entries"]

Coherence = Literal["incoherent", "coherent"]


@dataclass(frozen=True)
class Observations:
    """Revealed entries ``M[rows[k], cols[k]] = values[k]`` of an ``(m, n)`` matrix.

    Args:
        rows: ``(N,)`` integer row indices in ``[0, m)``.
        cols: ``(N,)`` integer column indices in ``[0, n)``.
        values: ``(N,)`` finite floating-point values.
        shape: ``(m, n)``.

    Raises:
        TypeError: if an index tensor is not integer or ``values`` is not floating point.
        ValueError: for an empty set, mismatched lengths, out-of-range indices or non-finite values.

    Example:
        >>> obs = Observations(torch.tensor([0, 1]), torch.tensor([2, 0]),
        ...                    torch.tensor([1.0, -2.0], dtype=torch.float64), (2, 3))
        >>> obs.num_observed, round(obs.fraction, 4)
        (2, 0.3333)
    """

    rows: Tensor
    cols: Tensor
    values: Tensor
    shape: tuple[int, int]

    def __post_init__(self) -> None:
        if not isinstance(self.shape, tuple) or len(self.shape) != 2:
            raise ValueError(f"shape must be a tuple (m, n), got {self.shape!r}")
        m = check_positive_int(self.shape[0], "shape[0]")
        n = check_positive_int(self.shape[1], "shape[1]")
        values = check_float_tensor(self.values, "values", ndim=1)
        for name, idx in (("rows", self.rows), ("cols", self.cols)):
            if not isinstance(idx, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(idx).__name__}")
            if idx.dtype.is_floating_point or idx.dtype.is_complex or idx.dtype == torch.bool:
                raise TypeError(f"{name} must be an integer tensor, got {idx.dtype}")
            if idx.ndim != 1 or idx.shape[0] != values.shape[0]:
                raise ValueError(
                    f"{name} must have shape ({values.shape[0]},) like values, "
                    f"got {tuple(idx.shape)}"
                )
        if values.shape[0] == 0:
            raise ValueError("the observation set is empty: at least one entry is needed")
        for name, idx, size in (("rows", self.rows, m), ("cols", self.cols, n)):
            lo, hi = int(idx.min()), int(idx.max())
            if lo < 0 or hi >= size:
                raise ValueError(f"{name} must lie in [0, {size}), got values in [{lo}, {hi}]")
        check_finite(values, "values")
        object.__setattr__(self, "rows", self.rows.long())
        object.__setattr__(self, "cols", self.cols.long())
        object.__setattr__(self, "shape", (m, n))

    @property
    def num_observed(self) -> int:
        """Number of revealed entries ``N``."""
        return int(self.values.shape[0])

    @property
    def fraction(self) -> float:
        """Fraction ``N / (m n)`` of the entries that are revealed."""
        return self.num_observed / (self.shape[0] * self.shape[1])

    def to_dense(self) -> tuple[Tensor, Tensor]:
        """Zero-filled matrix ``P_Omega(M)`` and the boolean mask of revealed entries.

        Returns:
            ``(filled, mask)``, both ``(m, n)``.
        """
        filled = self.values.new_zeros(self.shape)
        filled[self.rows, self.cols] = self.values
        mask = torch.zeros(self.shape, dtype=torch.bool, device=self.values.device)
        mask[self.rows, self.cols] = True
        return filled, mask


@dataclass(frozen=True)
class LowRankMatrix:
    """A rank-``r`` matrix ``M = A B^T`` together with its factors.

    Attributes:
        A: ``(m, r)`` left factor.
        B: ``(n, r)`` right factor.

    Example:
        >>> import torch
        >>> from subspaces.recovery import LowRankMatrix
        >>> M = LowRankMatrix(torch.tensor([[1.0], [2.0]]), torch.tensor([[3.0], [4.0], [5.0]]))
        >>> M.shape, M.rank
        ((2, 3), 1)
        >>> M.to_dense().tolist()
        [[3.0, 4.0, 5.0], [6.0, 8.0, 10.0]]
        >>> M.entries(torch.tensor([1, 0]), torch.tensor([2, 0])).tolist()  # M[1, 2], M[0, 0]
        [10.0, 3.0]
        >>> M.relative_error(2 * M.A, M.B)  # ||2M - M|| / ||M||
        1.0
    """

    A: Tensor
    B: Tensor

    @property
    def shape(self) -> tuple[int, int]:
        """``(m, n)``."""
        return (int(self.A.shape[0]), int(self.B.shape[0]))

    @property
    def rank(self) -> int:
        """The rank ``r`` (number of factor columns)."""
        return int(self.A.shape[1])

    def to_dense(self) -> Tensor:
        """The ``(m, n)`` matrix ``A B^T``."""
        return self.A @ self.B.T

    def entries(self, rows: Tensor, cols: Tensor) -> Tensor:
        """The entries ``M[rows[k], cols[k]]`` without forming ``M``.

        Computed in chunks of about ``2^18`` gathered values (each entry's sum is the same
        reduction of the same row, so the result does not depend on the chunking; gathering
        all ``len(rows) x rank`` values at once is several times slower for large samples).

        Args:
            rows: row indices.
            cols: column indices, as many as ``rows``.

        Returns:
            The entries, one per index pair.
        """
        step = max(1, _ENTRY_CHUNK // max(1, self.rank))
        if rows.numel() <= step:
            return (self.A[rows] * self.B[cols]).sum(1)
        return torch.cat(
            [
                (self.A[rows[i : i + step]] * self.B[cols[i : i + step]]).sum(1)
                for i in range(0, rows.numel(), step)
            ]
        )

    def relative_error(self, U: Tensor, V: Tensor) -> float:
        """``||U V^T - M||_F / ||M||_F`` over all entries, without forming either matrix.

        Uses QR factors of ``[U, -A]`` and ``[V, B]`` so that errors far below ``1e-8`` are
        measured accurately (no cancellation of squared norms).

        Args:
            U: ``(m, k)`` left factor of the estimate.
            V: ``(n, k)`` right factor of the estimate.

        Returns:
            The relative Frobenius error.

        Raises:
            ValueError: if the factors' shapes do not match ``M``.
        """
        if U.ndim != 2 or V.ndim != 2 or U.shape[0] != self.shape[0] or V.shape[0] != self.shape[1]:
            raise ValueError(
                f"U, V must be ({self.shape[0]}, k) and ({self.shape[1]}, k), "
                f"got {tuple(U.shape)} and {tuple(V.shape)}"
            )
        dtype = torch.float64
        R1 = torch.linalg.qr(torch.cat([U.to(dtype), -self.A.to(dtype)], 1), mode="r").R
        R2 = torch.linalg.qr(torch.cat([V.to(dtype), self.B.to(dtype)], 1), mode="r").R
        diff = torch.linalg.matrix_norm(R1 @ R2.T)
        S1 = torch.linalg.qr(self.A.to(dtype), mode="r").R
        S2 = torch.linalg.qr(self.B.to(dtype), mode="r").R
        return float(diff / torch.linalg.matrix_norm(S1 @ S2.T))


def low_rank_matrix(
    m: int,
    n: int,
    rank: int,
    *,
    coherence: Coherence = "incoherent",
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> LowRankMatrix:
    """Draw a random ``(m, n)`` matrix of exact rank ``rank`` with known factors.

    ``"incoherent"``: ``A, B`` have i.i.d. standard normal entries and ``M = A B^T / sqrt(rank)``,
    so the singular vectors are spread over all rows (incoherence ``mu = O(log n)``), the
    setting in which alternating minimization provably recovers ``M`` from few entries
    (Jain, Netrapalli, Sanghavi 2013). ``"coherent"``: additionally scale the rows of both factors
    by a power law ``(i + 1)^{-1}`` (after a random permutation), so a few rows and columns carry
    most of the mass and uniform sampling misses their information.

    Args:
        m: number of rows.
        n: number of columns.
        rank: the rank, ``1 <= rank <= min(m, n)``.
        coherence: ``"incoherent"`` or ``"coherent"``.
        dtype: floating dtype of the factors.
        generator: source of randomness.

    Returns:
        A :class:`LowRankMatrix` with factors ``A (m, rank)`` and ``B (n, rank)``.

    Raises:
        ValueError: if ``rank`` exceeds ``min(m, n)`` or ``coherence`` is unknown.
        TypeError: if a size is not an int or ``dtype`` is not a floating dtype.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> M = low_rank_matrix(30, 20, 3, generator=g)
        >>> M.shape, int(torch.linalg.matrix_rank(M.to_dense()))
        ((30, 20), 3)
    """
    m = check_positive_int(m, "m")
    n = check_positive_int(n, "n")
    rank = check_positive_int(rank, "rank")
    check_choice(coherence, "coherence", ("incoherent", "coherent"))
    if rank > min(m, n):
        raise ValueError(f"rank must be <= min(m, n) = {min(m, n)}, got {rank}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a real floating torch.dtype, got {dtype!r}")
    A = torch.randn(m, rank, dtype=dtype, generator=generator) / math.sqrt(rank)
    B = torch.randn(n, rank, dtype=dtype, generator=generator)
    if coherence == "coherent":
        wa = 1.0 / torch.arange(1, m + 1, dtype=dtype)[torch.randperm(m, generator=generator)]
        wb = 1.0 / torch.arange(1, n + 1, dtype=dtype)[torch.randperm(n, generator=generator)]
        A = A * (wa * math.sqrt(m) / wa.norm())[:, None]
        B = B * (wb * math.sqrt(n) / wb.norm())[:, None]
    return LowRankMatrix(A, B)


def _sample_linear(total: int, count: int, generator: torch.Generator | None) -> Tensor:
    """``count`` distinct integers drawn uniformly from ``[0, total)``, in random order."""
    if 4 * count >= total:
        return torch.randperm(total, generator=generator)[:count]
    picked = torch.empty(0, dtype=torch.long)
    while picked.numel() < count:
        extra = torch.randint(0, total, (int(1.1 * count) + 16,), generator=generator)
        picked = torch.unique(torch.cat([picked, extra]))
    keep = torch.randperm(picked.numel(), generator=generator)[:count]
    return picked[keep]


def sample_entries(
    M: Tensor | LowRankMatrix,
    fraction: float | None = None,
    *,
    count: int | None = None,
    generator: torch.Generator | None = None,
) -> Observations:
    """Reveal a uniformly random set of distinct entries of ``M`` (sampling without replacement).

    Args:
        M: an ``(m, n)`` floating tensor, or a :class:`LowRankMatrix` (entries computed from its
            factors, so ``M`` is never formed).
        fraction: fraction of the entries to reveal, in ``(0, 1]``; give this or ``count``.
        count: number of entries to reveal, in ``[1, m n]``.
        generator: source of randomness.

    Returns:
        :class:`Observations` of ``round(fraction * m * n)`` (or ``count``) entries.

    Raises:
        ValueError: if neither or both of ``fraction`` and ``count`` are given, either is out of
            range, or ``M`` holds NaN or Inf.
        TypeError: if ``M`` is neither a floating 2-d tensor nor a :class:`LowRankMatrix`.

    Example:
        >>> M = torch.arange(6.0, dtype=torch.float64).reshape(2, 3)
        >>> obs = sample_entries(M, 1.0, generator=torch.Generator().manual_seed(0))
        >>> obs.num_observed, bool(torch.equal(M[obs.rows, obs.cols], obs.values))
        (6, True)
    """
    if isinstance(M, LowRankMatrix):
        m, n = M.shape
    else:
        M = check_float_tensor(M, "M", ndim=2)
        check_finite(M, "M")
        m, n = int(M.shape[0]), int(M.shape[1])
        if m == 0 or n == 0:
            raise ValueError(f"M must be non-empty, got shape {(m, n)}")
    total = m * n
    if (fraction is None) == (count is None):
        raise ValueError("give exactly one of fraction= and count=")
    if fraction is not None:
        if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
            raise TypeError(f"fraction must be a number, got {type(fraction).__name__}")
        if not 0.0 < float(fraction) <= 1.0:
            raise ValueError(f"fraction must lie in (0, 1], got {fraction}")
        count = max(1, round(float(fraction) * total))
    count = check_positive_int(count, "count")
    if count > total:
        raise ValueError(f"count must be <= m * n = {total}, got {count}")
    linear = _sample_linear(total, count, generator)
    rows, cols = linear // n, linear % n
    values = M.entries(rows, cols) if isinstance(M, LowRankMatrix) else M[rows, cols]
    return Observations(rows, cols, values, (m, n))
