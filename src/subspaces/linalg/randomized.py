"""Randomized low-rank factorizations: range finder, SVD, symmetric eigendecomposition, Nyström.

All four multiply the operator by blocks of ``l = rank + oversample`` random or orthonormal columns
(Gaussian test matrices from :func:`~subspaces.linalg._random.random_matrix`) and finish with a
small dense factorization. Costs in columns multiplied (``num_matvecs``), with ``q = power_iters``
(by default 7 when ``rank < 0.1 min(m, n)``, else 4, as scikit-learn's ``n_iter="auto"``):

===============================  =======================
``randomized_range_finder``      ``l * (1 + 2 q)``
``randomized_svd``               ``l * (2 + 2 q)``
``randomized_eigh``              ``l * (2 + 2 q)``
``nystrom``                      ``l``
===============================  =======================

References:
    Halko, Martinsson, Tropp. "Finding structure with randomness: probabilistic algorithms for
    constructing approximate matrix decompositions." SIAM Review 53(2), 2011.

    Tropp, Yurtsever, Udell, Cevher. "Fixed-rank approximation of a positive-semidefinite matrix
    from streaming data." NeurIPS 2017 (and SIAM J. Matrix Anal. Appl. 38(4), 2017).

    Frangella, Tropp, Udell. "Randomized Nyström preconditioning." SIAM J. Matrix Anal. Appl.
    44(2), 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_choice, check_float_tensor, check_positive_int
from ..linops.base import LinearOperator, as_operator
from ..linops.structured import LowRank
from ._random import random_matrix

__all__ = [
    "EighResult",
    "RangeResult",
    "SVDResult",
    "nystrom",
    "randomized_eigh",
    "randomized_range_finder",
    "randomized_svd",
]

Which = Literal["largest_magnitude", "largest"]
WHICH: tuple[str, ...] = ("largest_magnitude", "largest")


@dataclass(frozen=True, eq=False)
class RangeResult:
    """Output of :func:`randomized_range_finder`.

    Attributes:
        basis: ``(m, l)`` orthonormal basis ``Q`` of the approximate range of ``A``.
        num_matvecs: columns multiplied by ``A`` and ``A^T`` together.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> F = torch.randn(12, 3, dtype=torch.float64, generator=g)
        >>> A = F @ torch.randn(3, 8, dtype=torch.float64, generator=g)  # rank 3
        >>> res = randomized_range_finder(A, 3, oversample=1, power_iters=0, generator=g)
        >>> tuple(res.basis.shape), res.num_matvecs
        ((12, 4), 4)
        >>> bool(torch.allclose(res.basis.T @ res.basis, torch.eye(4, dtype=torch.float64)))
        True
    """

    basis: Tensor
    num_matvecs: int


@dataclass(frozen=True, eq=False)
class SVDResult:
    """Output of :func:`randomized_svd`: ``A ≈ U diag(S) V^T``.

    Attributes:
        U: ``(m, rank)`` left singular vectors (orthonormal columns).
        S: ``(rank,)`` singular values, descending.
        V: ``(n, rank)`` right singular vectors (orthonormal columns).
        num_matvecs: columns multiplied by ``A`` and ``A^T`` together.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> F = torch.randn(12, 3, dtype=torch.float64, generator=g)
        >>> A = F @ torch.randn(3, 8, dtype=torch.float64, generator=g)  # rank 3
        >>> res = randomized_svd(A, 3, oversample=2, power_iters=1, generator=g)
        >>> res.num_matvecs, tuple(res.U.shape), tuple(res.S.shape), tuple(res.V.shape)
        (20, (12, 3), (3,), (8, 3))
        >>> bool(torch.allclose(res.operator().to_dense(), A, atol=1e-10))
        True
    """

    U: Tensor
    S: Tensor
    V: Tensor
    num_matvecs: int

    def operator(self) -> LowRank:
        """The approximation as a :class:`~subspaces.linops.LowRank` operator ``U diag(S) V^T``.

        Returns:
            ``LowRank(U, S, V)``.
        """
        return LowRank(self.U, self.S, self.V)


@dataclass(frozen=True, eq=False)
class EighResult:
    """Output of :func:`randomized_eigh` and :func:`nystrom`: ``A ≈ V diag(lambda) V^T``.

    Attributes:
        eigenvalues: ``(rank,)`` approximate eigenvalues, sorted by the selection rule
            (descending magnitude or descending value).
        eigenvectors: ``(n, rank)`` orthonormal approximate eigenvectors.
        num_matvecs: columns multiplied by ``A``.

    Example:
        >>> from subspaces.testing import matrix_with_spectrum
        >>> lam = torch.tensor([3.0, 1.0] + [0.0] * 8, dtype=torch.float64)
        >>> A = matrix_with_spectrum(lam, generator=torch.Generator().manual_seed(0))
        >>> res = nystrom(A, 2, oversample=0, generator=torch.Generator().manual_seed(1))
        >>> [round(float(x), 8) for x in res.eigenvalues], res.num_matvecs
        ([3.0, 1.0], 2)
        >>> bool(torch.allclose(res.operator().to_dense(), A, atol=1e-10))
        True
    """

    eigenvalues: Tensor
    eigenvectors: Tensor
    num_matvecs: int

    def operator(self) -> LowRank:
        """The approximation as a symmetric :class:`~subspaces.linops.LowRank` operator.

        Returns:
            ``LowRank(eigenvectors, eigenvalues)``.
        """
        return LowRank(self.eigenvectors, self.eigenvalues)


# ----- helpers ------------------------------------------------------------------------------------
class _Matrix(LinearOperator):
    """A dense tensor as an operator without ``Dense``'s full-matrix validation.

    ``Dense`` scans the whole matrix for NaN/Inf (and its transpose again for ``.T``), which on a
    ``3000 x 2000`` matrix costs as much as several block products. Here every product is checked
    instead (:func:`_apply`): a non-finite entry of ``A`` makes its Gaussian products
    non-finite, so the error is the same, at no extra pass.
    """

    def __init__(self, matrix: Tensor) -> None:
        super().__init__((int(matrix.shape[0]), int(matrix.shape[1])), matrix.dtype, matrix.device)
        self.matrix = matrix

    def _matmat(self, X: Tensor) -> Tensor:
        # (X^T M^T)^T: the same product, returned column-major (what LAPACK's LU/QR want), and
        # 10-25% faster than M @ X for a thin X in single-threaded MKL (measured at 3000 x 2000).
        return (X.T @ self.matrix.T).T

    def _adjoint(self) -> LinearOperator:
        return _Matrix(self.matrix.T)


def _operator(A: Tensor | LinearOperator) -> LinearOperator:
    """``A`` as an operator: tensors are wrapped without a validation pass.

    Returns:
        The operator.

    Raises:
        TypeError: if ``A`` is neither a real floating tensor nor a ``LinearOperator``.
        ValueError: if a tensor ``A`` is not 2-D.
    """
    if isinstance(A, Tensor):
        return _Matrix(check_float_tensor(A, "A", ndim=2))
    return as_operator(A)


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype for QR/SVD/eigh of blocks in ``dtype``.

    Returns:
        ``dtype`` if it is float32 or float64, else float32.
    """
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


def _orth(Y: Tensor) -> Tensor:
    """Orthonormalize the columns of ``Y`` (Householder QR in at least float32).

    Returns:
        ``Q`` with orthonormal columns spanning (at least) the columns of ``Y``, in ``Y``'s dtype.
    """
    return torch.linalg.qr(Y.to(_work_dtype(Y.dtype))).Q.to(Y.dtype)


def _lu_normalize(Y: Tensor) -> Tensor:
    """Rescale the columns of ``Y`` cheaply without changing their span (between power iterations).

    With ``Y = P L U`` (LU with partial pivoting), returns ``P L = Y U^{-1}``: unit lower
    trapezoidal up to a row permutation, entries bounded by 1, the same span as ``Y`` and a
    moderate condition number, at about half the cost of a Householder QR (``getrf`` + ``trsm``
    instead of ``geqrf`` + ``orgqr``). This is scikit-learn's ``power_iteration_normalizer="LU"``
    (Halko, Martinsson, Tropp 2011, Sec. 4.5: any basis of the same span will do between
    products; orthonormality is only needed at the end). A zero pivot (an exactly rank-deficient
    block, e.g. a zero operator) is replaced by 1, so the result is always finite; no
    host synchronization is needed.

    Returns:
        A basis of ``span(Y)`` in ``Y``'s dtype.
    """
    work = _work_dtype(Y.dtype)
    Yw = Y.to(work)
    LU, _pivots, _info = torch.linalg.lu_factor_ex(Yw)
    U = LU[: Yw.shape[1]].triu()
    diag = U.diagonal()
    tiny = torch.finfo(work).tiny / torch.finfo(work).eps
    fix = torch.where(diag.abs() <= tiny, 1 - diag, torch.zeros_like(diag))
    U = U + torch.diag(fix)
    return torch.linalg.solve_triangular(U, Yw, upper=True, left=False).to(Y.dtype)


def _apply(op: LinearOperator, X: Tensor, what: str) -> Tensor:
    """Multiply ``op.matmat(X)`` and check the product.

    Returns:
        The product.

    Raises:
        ValueError: if the product holds NaN or Inf.
    """
    Y = op.matmat(X)
    # A finite sum proves every entry finite (NaN/Inf propagate); only an overflowing sum needs
    # the entrywise check.
    if not bool(torch.isfinite(Y.sum())) and not bool(torch.isfinite(Y).all()):
        raise ValueError(f"operator returned non-finite values ({what})")
    return Y


def _sketch_size(op: LinearOperator, rank: int, oversample: int) -> int:
    """Validate ``rank`` and ``oversample`` and size the sketch.

    Returns:
        ``l = min(rank + oversample, m, n)``.

    Raises:
        ValueError: if ``rank`` is not in ``[1, min(m, n)]`` or ``oversample < 0``.
    """
    rank = check_positive_int(rank, "rank")
    oversample = check_positive_int(oversample, "oversample", minimum=0)
    m, n = op.shape
    if rank > min(m, n):
        raise ValueError(
            f"rank must be <= min(m, n) = {min(m, n)} for shape {op.shape}, got {rank}"
        )
    return min(rank + oversample, m, n)


def _auto_power_iters(rank: int, shape: tuple[int, int]) -> int:
    """The number of power iterations used when ``power_iters=None`` (scikit-learn's rule).

    Small ranks relative to the matrix leave a long tail of singular values whose sum swamps
    ``sigma_{rank+1}`` unless the spectrum is sharpened: 7 iterations when
    ``rank < 0.1 * min(shape)``, else 4 (scikit-learn's ``n_iter="auto"``; Halko, Martinsson,
    Tropp 2011, Sec. 4.5 and 10.4).

    Args:
        rank: target rank.
        shape: ``(m, n)`` of the operator.

    Returns:
        7 or 4.

    Example:
        >>> _auto_power_iters(50, (3000, 2000)), _auto_power_iters(300, (3000, 2000))
        (7, 4)
    """
    return 7 if rank < 0.1 * min(shape) else 4


def _power_iters(power_iters: int | None, rank: int, op: LinearOperator) -> int:
    """Validate ``power_iters`` or choose it from the rank (``None``).

    Returns:
        The number of power iterations.
    """
    if power_iters is None:
        return _auto_power_iters(rank, op.shape)
    return check_positive_int(power_iters, "power_iters", minimum=0)


def _range(
    op: LinearOperator,
    l: int,
    power_iters: int,
    generator: torch.Generator | None,
    opT: LinearOperator | None = None,
) -> tuple[Tensor, int]:
    """Halko-Martinsson-Tropp Algorithm 4.4 (randomized subspace iteration), LU-normalized.

    Between products the block is only rescaled (``P L`` of its LU factorization, which keeps
    the span); the last block is orthonormalized by QR. Everything stays in ``op.dtype`` (at
    least float32 for the factorizations).

    Returns:
        The ``(m, l)`` orthonormal basis and the number of columns multiplied.
    """
    Omega = random_matrix(op.shape[1], l, dtype=op.dtype, device=op.device, generator=generator)
    Y = _apply(op, Omega, "A @ Omega")
    opT = op.T if opT is None else opT
    for _ in range(power_iters):
        Z = _apply(opT, _lu_normalize(Y), "A^T @ Q")
        Y = _apply(op, _lu_normalize(Z), "A @ Q")
    return _orth(Y), l * (1 + 2 * power_iters)


# ----- public functions --------------------------------------------------------------------------
def randomized_range_finder(
    A: Tensor | LinearOperator,
    rank: int,
    *,
    oversample: int = 10,
    power_iters: int | None = None,
    generator: torch.Generator | None = None,
) -> RangeResult:
    """Orthonormal basis of the approximate dominant range of ``A`` (randomized subspace iteration).

    ``Y = A Omega`` for a Gaussian ``(n, l)`` test matrix, ``l = rank + oversample``, followed by
    ``power_iters`` rounds of ``Y <- A lu(A^T lu(Y))`` and a final ``Q = orth(Y)`` (Halko,
    Martinsson, Tropp 2011, Algorithm 4.4 with the cheap normalization of Sec. 4.5, as in
    scikit-learn: between products the block is only rescaled by its LU factors, which keeps its
    span; a Householder QR orthonormalizes the last block). Each power iteration raises the
    singular values to a higher odd power, sharpening the gap on slowly decaying spectra. The
    work stays in ``A``'s dtype (float32 inputs are not promoted).

    Costs ``l * (1 + 2 * power_iters)`` columns (products with ``A`` and ``A^T``).
    ``l`` is capped at ``min(m, n)``.

    Args:
        A: an ``(m, n)`` tensor or operator (``A.T`` is used for the power iterations).
        rank: target rank ``k`` (``1 <= k <= min(m, n)``).
        oversample: extra columns ``p`` (``>= 0``; 5-10 is the usual choice).
        power_iters: number of power iterations ``q`` (``>= 0``); ``None`` chooses 7 when
            ``rank < 0.1 * min(m, n)`` and 4 otherwise (scikit-learn's ``n_iter="auto"``).
        generator: source of randomness for the test matrix.

    Returns:
        A :class:`RangeResult` with the ``(m, l)`` basis and ``num_matvecs``.

    Raises:
        ValueError: if ``rank``/``oversample``/``power_iters`` is out of range or the operator
            returns non-finite values.
        TypeError: if ``A`` is neither a tensor nor a ``LinearOperator``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> F = torch.randn(30, 4, dtype=torch.float64, generator=g)
        >>> A = F @ torch.randn(4, 20, dtype=torch.float64, generator=g)  # rank 4
        >>> res = randomized_range_finder(A, 4, oversample=2, power_iters=1, generator=g)
        >>> Q = res.basis
        >>> err = torch.linalg.norm(A - Q @ (Q.T @ A)) / torch.linalg.norm(A)
        >>> bool(err < 1e-10), res.num_matvecs
        (True, 18)

    References:
        Halko, Martinsson, Tropp, SIAM Review 53(2), 2011, Algorithm 4.4.
    """
    op = _operator(A)
    l = _sketch_size(op, rank, oversample)
    power_iters = _power_iters(power_iters, rank, op)
    Q, cost = _range(op, l, power_iters, generator)
    return RangeResult(basis=Q, num_matvecs=cost)


def randomized_svd(
    A: Tensor | LinearOperator,
    rank: int,
    *,
    oversample: int = 10,
    power_iters: int | None = None,
    generator: torch.Generator | None = None,
) -> SVDResult:
    """Rank-``rank`` truncated SVD by randomized subspace iteration.

    With ``Q`` from :func:`randomized_range_finder`, forms ``B = Q^T A = (A^T Q)^T`` (``l`` adjoint
    products), computes ``B = U_B S V^T`` and returns ``U = Q U_B`` truncated to ``rank``
    (Halko, Martinsson, Tropp 2011, Algorithm 5.1). Since ``B``'s singular values are bounded by
    ``A``'s, ``||A - U S V^T|| <= sigma_{rank+1}(A) + ||A - Q Q^T A||``.

    Costs ``l * (2 + 2 * power_iters)`` columns with ``l = min(rank + oversample, m, n)``.

    Args:
        A: an ``(m, n)`` tensor or operator (need not be square).
        rank: number of singular triplets to return.
        oversample: extra sketch columns.
        power_iters: number of power iterations; ``None`` chooses 7 when
            ``rank < 0.1 * min(m, n)`` and 4 otherwise.
        generator: source of randomness for the test matrix.

    Returns:
        An :class:`SVDResult` (``U (m, rank)``, ``S (rank,)``, ``V (n, rank)``, ``num_matvecs``);
        ``.operator()`` gives ``LowRank(U, S, V)``.

    Raises:
        ValueError: if an argument is out of range or the operator returns non-finite values.
        TypeError: if ``A`` is neither a tensor nor a ``LinearOperator``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> F = torch.randn(40, 3, dtype=torch.float64, generator=g)
        >>> A = F @ torch.randn(3, 25, dtype=torch.float64, generator=g)  # rank 3
        >>> res = randomized_svd(A, 3, generator=g)
        >>> bool(torch.allclose(res.S, torch.linalg.svdvals(A)[:3], rtol=1e-10))
        True
        >>> bool(torch.allclose(res.operator().to_dense(), A, atol=1e-10))
        True

    References:
        Halko, Martinsson, Tropp, SIAM Review 53(2), 2011, Algorithms 4.4 and 5.1.
    """
    op = _operator(A)
    l = _sketch_size(op, rank, oversample)
    power_iters = _power_iters(power_iters, rank, op)
    opT = op.T  # built once (a dense wrapper validates its matrix)
    Q, cost = _range(op, l, power_iters, generator, opT)
    Bt = _apply(opT, Q, "A^T @ Q")  # (n, l) = B^T
    work = _work_dtype(op.dtype)
    # B^T = V S U_B^T  =>  B = U_B S V^T.
    V, S, UBt = torch.linalg.svd(Bt.to(work), full_matrices=False)
    U = Q.to(work) @ UBt.T[:, :rank]
    return SVDResult(
        U=U.to(op.dtype),
        S=S[:rank].to(op.dtype),
        V=V[:, :rank].to(op.dtype),
        num_matvecs=cost + l,
    )


def _select(evals: Tensor, which: str, rank: int) -> Tensor:
    """Rank eigenvalues by the ``which`` rule.

    Returns:
        Indices of the ``rank`` preferred eigenvalues, best first.
    """
    key = evals.abs() if which == "largest_magnitude" else evals
    return torch.argsort(key, descending=True)[:rank]


def randomized_eigh(
    A: Tensor | LinearOperator,
    rank: int,
    *,
    oversample: int = 10,
    power_iters: int | None = None,
    which: Which = "largest_magnitude",
    generator: torch.Generator | None = None,
) -> EighResult:
    """Dominant eigenpairs of a symmetric operator by randomized subspace iteration + Rayleigh-Ritz.

    With ``Q`` from :func:`randomized_range_finder` (which captures the largest-*magnitude*
    eigenspace), forms ``T = Q^T A Q`` (``l`` more products; the product in ``A``'s dtype, the
    small ``l x l`` eigenproblem in float64), and returns the Ritz pairs
    of ``T`` selected by ``which``: ``largest_magnitude`` (descending ``|lambda|``) or ``largest``
    (descending ``lambda``; accurate when the algebraically largest eigenvalues are also dominant in
    magnitude, e.g. for positive semidefinite ``A``). The symmetry of ``T`` is checked for free.

    Costs ``l * (2 + 2 * power_iters)`` columns with ``l = min(rank + oversample, n)``.

    Args:
        A: a symmetric ``(n, n)`` tensor or operator.
        rank: number of eigenpairs to return.
        oversample: extra sketch columns.
        power_iters: number of power iterations; ``None`` chooses 7 when
            ``rank < 0.1 * min(m, n)`` and 4 otherwise.
        which: ``"largest_magnitude"`` or ``"largest"``.
        generator: source of randomness for the test matrix.

    Returns:
        An :class:`EighResult` (``eigenvalues (rank,)``, ``eigenvectors (n, rank)``,
        ``num_matvecs``); ``.operator()`` gives ``LowRank(eigenvectors, eigenvalues)``.

    Raises:
        ValueError: if ``A`` is not square or detectably not symmetric (``Q^T A Q`` asymmetric by
            more than ``sqrt(eps)`` relative), an argument is out of range, or the operator
            returns non-finite values.
        TypeError: if ``A`` is neither a tensor nor a ``LinearOperator``.

    Example:
        >>> from subspaces.testing import matrix_with_spectrum
        >>> lam = torch.tensor([5.0, -4.0, 3.0] + [0.0] * 27, dtype=torch.float64)
        >>> A = matrix_with_spectrum(lam, generator=torch.Generator().manual_seed(0))
        >>> res = randomized_eigh(A, 3, generator=torch.Generator().manual_seed(1))
        >>> [round(float(x), 8) for x in res.eigenvalues]
        [5.0, -4.0, 3.0]

    References:
        Halko, Martinsson, Tropp, SIAM Review 53(2), 2011, Algorithms 4.4 and 5.3.
    """
    op = _operator(A)
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"A must be square (symmetric), got shape {op.shape}")
    rule = check_choice(which, "which", WHICH)
    l = _sketch_size(op, rank, oversample)
    power_iters = _power_iters(power_iters, rank, op)
    Q, cost = _range(op, l, power_iters, generator)
    AQ = _apply(op, Q, "A @ Q")
    work = _work_dtype(op.dtype)
    T = (Q.to(work).T @ AQ.to(work)).to(torch.float64)  # (l, l): only the small core in float64
    asym = float(torch.linalg.norm(T - T.T))
    size = float(torch.linalg.norm(T))
    tol = math.sqrt(torch.finfo(op.dtype).eps)
    if asym > tol * size:
        raise ValueError(
            f"A does not look symmetric: ||Q^T A Q - (Q^T A Q)^T|| / ||Q^T A Q|| = "
            f"{asym / size:.2e} > {tol:.1e}; use randomized_svd for non-symmetric A"
        )
    evals, W = torch.linalg.eigh((T + T.T) / 2)
    idx = _select(evals, rule, rank)
    vecs = Q.to(_work_dtype(op.dtype)) @ W[:, idx].to(_work_dtype(op.dtype))
    return EighResult(
        eigenvalues=evals[idx].to(op.dtype),
        eigenvectors=vecs.to(op.dtype),
        num_matvecs=cost + l,
    )


def nystrom(
    A: Tensor | LinearOperator,
    rank: int,
    *,
    oversample: int = 10,
    generator: torch.Generator | None = None,
) -> EighResult:
    """Randomized Nyström approximation of a positive semidefinite operator (one pass).

    For an orthonormalized Gaussian test matrix ``Omega (n, l)``, ``l = rank + oversample``:
    ``Y = A Omega``; shift ``nu = sqrt(n) * eps * ||Y||_2`` (``eps`` of ``A``'s dtype);
    ``Y_nu = Y + nu Omega``; Cholesky ``C^T C = Omega^T Y_nu``; ``B = Y_nu C^{-1}``;
    ``B = U Sigma W^T``; eigenvalues ``max(Sigma^2 - nu, 0)``. The rank-``l`` approximation
    ``A<Omega> = (A Omega)(Omega^T A Omega)^+(A Omega)^T`` is truncated to ``rank`` (Tropp,
    Yurtsever, Udell, Cevher 2017, Algorithm 3; Frangella, Tropp, Udell 2023, Algorithm 2.1).
    The result is PSD and, up to the shift, below ``A`` in the Loewner order. In expectation
    ``||A - A_hat||_* <= (1 + rank / (oversample - 1)) * ||A - [A]_rank||_*``.

    Costs ``l`` columns. Dense work is done in float64.

    Args:
        A: a symmetric positive semidefinite ``(n, n)`` tensor or operator.
        rank: rank of the returned approximation.
        oversample: extra sketch columns (``l = min(rank + oversample, n)``).
        generator: source of randomness for the test matrix.

    Returns:
        An :class:`EighResult` with non-negative descending ``eigenvalues (rank,)``,
        ``eigenvectors (n, rank)`` and ``num_matvecs = l``; ``.operator()`` gives
        ``LowRank(U, S)``.

    Raises:
        ValueError: if ``A`` is not square, is detectably indefinite (the shifted core
            ``Omega^T A Omega + nu I`` has no Cholesky factor), an argument is out of range, or
            the operator returns non-finite values.
        TypeError: if ``A`` is neither a tensor nor a ``LinearOperator``.

    Example:
        >>> from subspaces.testing import matrix_with_spectrum
        >>> lam = torch.tensor([4.0, 2.0, 1.0] + [0.0] * 37, dtype=torch.float64)
        >>> A = matrix_with_spectrum(lam, generator=torch.Generator().manual_seed(0))
        >>> res = nystrom(A, 3, generator=torch.Generator().manual_seed(1))
        >>> bool(torch.allclose(res.eigenvalues, lam[:3])), res.num_matvecs
        (True, 13)
        >>> bool(torch.allclose(res.operator().to_dense(), A, atol=1e-10))
        True

    References:
        Tropp, Yurtsever, Udell, Cevher, NeurIPS 2017 / SIAM J. Matrix Anal. Appl. 2017;
        Frangella, Tropp, Udell, SIAM J. Matrix Anal. Appl. 44(2), 2023.
    """
    op = _operator(A)
    n = op.shape[0]
    if n != op.shape[1]:
        raise ValueError(f"A must be square (positive semidefinite), got shape {op.shape}")
    l = _sketch_size(op, rank, oversample)
    G = random_matrix(n, l, dtype=torch.float64, device=op.device, generator=generator)
    Omega = torch.linalg.qr(G).Q
    Y = _apply(op, Omega.to(op.dtype), "A @ Omega").to(torch.float64)
    eps = torch.finfo(op.dtype).eps
    nu = math.sqrt(n) * eps * float(torch.linalg.matrix_norm(Y, ord=2))
    if nu == 0.0:  # A @ Omega == 0: the approximation is zero
        zeros = torch.zeros(rank, dtype=op.dtype, device=op.device)
        return EighResult(
            eigenvalues=zeros, eigenvectors=Omega[:, :rank].to(op.dtype), num_matvecs=l
        )
    Y_nu = Y + nu * Omega
    core = Omega.T @ Y_nu
    C, info = torch.linalg.cholesky_ex((core + core.T) / 2, upper=True)
    if int(info) != 0:
        lam_min = float(torch.linalg.eigvalsh((core + core.T) / 2)[0]) - nu
        raise ValueError(
            "A is not positive semidefinite: the sketched core Omega^T A Omega has eigenvalue "
            f"{lam_min:.3e} < 0 (beyond the stabilizing shift {nu:.1e}); use randomized_eigh "
            "for indefinite A or shift it first"
        )
    # B = Y_nu C^{-1}  <=>  C^T B^T = Y_nu^T.
    B = torch.linalg.solve_triangular(C.T, Y_nu.T, upper=False).T
    U, Sigma, _ = torch.linalg.svd(B, full_matrices=False)
    lam = (Sigma**2 - nu).clamp_min(0.0)
    return EighResult(
        eigenvalues=lam[:rank].to(op.dtype),
        eigenvectors=U[:, :rank].to(op.dtype),
        num_matvecs=l,
    )
