"""The gradient code of Tandon et al.: tolerate ``s`` stragglers among ``n`` workers.

The data set is split into ``n`` parts with gradients ``g_1 .. g_n``. Worker ``i`` computes the
coded combination ``sum_j B[i, j] g_j`` over the ``s + 1`` parts of its cyclic support
``{i, i+1, ..., i+s} (mod n)``, a normalized load of ``(s + 1) / n``. The encoding matrix ``B``
is built so that any ``n - s`` of its rows span the all-ones vector: for the rows ``F`` that
arrived, a decoding vector ``a`` with ``a^T B_F = 1^T`` gives ``sum_i a_i (B g)_i = sum_j g_j``,
the full gradient, whichever ``s`` workers straggled.

Construction (Tandon, Lei, Dimakis & Karampatziakis, "Gradient Coding: Avoiding Stragglers in
Distributed Learning", ICML 2017, arXiv:1612.03301, Algorithm 2): draw a random ``s x n`` matrix
``H`` with ``H 1 = 0``; row ``i`` of ``B`` is the vector of its cyclic support with ``B[i, i] = 1``
that ``H`` annihilates. Every row then lies in the ``(n - s)``-dimensional null space of ``H``,
which contains ``1``, and ``n - s`` rows span it almost surely.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["decoding_vector", "gradient_code"]


def _check_ns(n: int, s: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n (workers) must be an integer >= 1, got {n!r}")
    if isinstance(s, bool) or not isinstance(s, int) or not 0 <= s < n:
        raise ValueError(
            f"s (stragglers tolerated) must be an integer in [0, n - 1 = {n - 1}], got {s!r}"
        )


def gradient_code(
    n: int, s: int, *, generator: torch.Generator | None = None, dtype: torch.dtype = torch.float64
) -> Tensor:
    """The ``n x n`` encoding matrix of a gradient code tolerating ``s`` stragglers.

    Args:
        n: number of workers (and of data parts).
        s: stragglers tolerated, ``0 <= s < n`` (``s = 0``: the identity, no redundancy).
        generator: randomness of ``H`` (seed it so that every process builds the same code).
        dtype: floating dtype of the result.

    Returns:
        ``B`` with row ``i`` supported on ``{i, ..., i + s} (mod n)`` and ``B[i, i] = 1``.

    Raises:
        ValueError: for ``n < 1`` or ``s`` outside ``[0, n - 1]``.

    Example:
        >>> B = gradient_code(5, 2, generator=torch.Generator().manual_seed(0))
        >>> (B != 0).sum(dim=1).tolist()  # each worker computes s + 1 = 3 parts
        [3, 3, 3, 3, 3]
        >>> a = decoding_vector(B, [0, 2, 4])  # workers 1 and 3 straggled
        >>> bool(torch.allclose(a @ B[[0, 2, 4]], torch.ones(5, dtype=torch.float64)))
        True
    """
    _check_ns(n, s)
    if s == 0:
        return torch.eye(n, dtype=dtype)
    H = torch.randn(s, n, generator=generator, dtype=torch.float64)
    H[:, -1] = -H[:, :-1].sum(dim=1)  # H 1 = 0
    B = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        rest = [(i + j) % n for j in range(1, s + 1)]
        B[i, i] = 1.0
        B[i, rest] = torch.linalg.solve(H[:, rest], -H[:, i])
    return B.to(dtype)


def decoding_vector(B: Tensor, received: Sequence[int], *, rtol: float | None = None) -> Tensor:
    """Coefficients ``a`` with ``a^T B[received] = 1^T``, checked by their residual.

    Args:
        B: the encoding matrix (:func:`gradient_code`).
        received: indices of the workers whose coded results arrived (distinct).
        rtol: largest accepted ``||B_F^T a - 1|| / ||1||`` (default ``1e-8`` in float64,
            ``1e-4`` in float32).

    Returns:
        ``a`` of length ``len(received)``, in the order of ``received``.

    Raises:
        ValueError: for indices out of range or repeated, or a straggler pattern the code
            cannot decode (more stragglers than it tolerates), named in the message.

    Example:
        >>> B = gradient_code(4, 1, generator=torch.Generator().manual_seed(0))
        >>> decoding_vector(B, [0, 1])  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: cannot decode from workers [0, 1] of 4: stragglers [2, 3] ...
    """
    n = B.shape[1]
    idx = list(received)
    if len(set(idx)) != len(idx) or any(not 0 <= i < B.shape[0] for i in idx):
        raise ValueError(
            f"received must be distinct worker indices in [0, {B.shape[0]}), got {idx}"
        )
    if not idx:
        raise ValueError("cannot decode: no worker's result was received")
    if rtol is None:
        rtol = 1e-8 if B.dtype == torch.float64 else 1e-4
    BF = B[idx].to(torch.float64)
    ones = torch.ones(n, dtype=torch.float64)
    a = torch.linalg.lstsq(BF.T, ones.unsqueeze(1), driver="gelsd").solution.squeeze(1)
    residual = float(torch.linalg.norm(BF.T @ a - ones)) / float(torch.linalg.norm(ones))
    if not residual <= rtol:
        missing = [i for i in range(B.shape[0]) if i not in set(idx)]
        raise ValueError(
            f"cannot decode from workers {idx} of {B.shape[0]}: stragglers {missing} are more "
            f"than the code tolerates (relative residual {residual:.2e} > {rtol:g})"
        )
    return a.to(B.dtype)
