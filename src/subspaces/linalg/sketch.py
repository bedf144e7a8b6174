"""Sketching and l_p row sampling: embeddings, leverage scores, Lewis weights, sensitivity sampling.

Three oblivious sketches (CountSketch, SRHT, Gaussian) map a tall ``(n, d)`` matrix ``A`` to
``(m, d)`` while keeping ``||S A x||_2 ~ ||A x||_2`` for every ``x`` (a subspace embedding).
Row-sampling sketches keep a few reweighted rows of ``A`` chosen by importance scores: l_2
leverage scores (exact, or fast from a sketch), root leverage scores ``tau_i^{p/2}`` and l_p Lewis
weights, so that ``||S A x||_p ~ ||A x||_p``; :func:`lp_regression` then solves the l_p regression
on the sample and :func:`distortion` measures how well a sample preserves l_p norms.

References:
    Woodruff, Yasuda. "Sharper bounds for l_p sensitivity sampling." ICML 2023
    (arXiv:2306.00732).

    Cohen, Peng. "l_p row sampling by Lewis weights." STOC 2015.

    Drineas, Magdon-Ismail, Mahoney, Woodruff. "Fast approximation of matrix coherence and
    statistical leverage." JMLR 13, 2012.

    Woodruff. "Sketching as a tool for numerical linear algebra." Foundations and Trends in
    Theoretical Computer Science 10(1-2), 2014.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)
from ._random import random_matrix

__all__ = [
    "DistortionResult",
    "LewisResult",
    "LpRegressionResult",
    "SampleResult",
    "countsketch",
    "distortion",
    "gaussian_sketch",
    "leverage_scores",
    "lewis_weights",
    "lp_regression",
    "root_leverage_scores",
    "sensitivity_sample",
    "srht",
]

SketchKind = Literal["countsketch", "srht", "gaussian"]
SKETCHES: tuple[str, ...] = ("countsketch", "srht", "gaussian")
LeverageMethod = Literal["exact", "sketched"]
LEVERAGE_METHODS: tuple[str, ...] = ("exact", "sketched")
JL_FAILURE = 0.01  # per-row failure probability the automatic JL width is sized for


class LewisResult(NamedTuple):
    """Output of :func:`lewis_weights`.

    Attributes:
        weights: ``(n,)`` l_p Lewis weights (they sum to ``d``).
        num_iters: fixed-point iterations used.
        converged: whether the relative change fell below ``tol``.

    Example:
        >>> A = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> res = lewis_weights(A, 2.0)  # for p = 2 the Lewis weights are the leverage scores
        >>> res.converged, bool(torch.allclose(res.weights, leverage_scores(A)))
        (True, True)
    """

    weights: Tensor
    num_iters: int
    converged: bool


class SampleResult(NamedTuple):
    """Output of :func:`sensitivity_sample`: the sketch is ``weights[:, None] * A[indices]``.

    Attributes:
        indices: ``(k,)`` sampled row indices (``int64``).
        weights: ``(k,)`` row weights (``1`` for rows kept with certainty).

    Example:
        >>> A = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> scores = torch.tensor([100.0, 1, 1, 1, 1, 1], dtype=torch.float64)
        >>> s = sensitivity_sample(A, scores, 3, torch.Generator().manual_seed(0))
        >>> # row 0 is kept with certainty; 2 draws among 5 rows weigh (2 * 1/5)^-1 = 2.5 each
        >>> int(s.indices[0]), [round(float(w), 6) for w in s.weights]
        (0, [1.0, 2.5, 2.5])
    """

    indices: Tensor
    weights: Tensor


class LpRegressionResult(NamedTuple):
    """Output of :func:`lp_regression`.

    Attributes:
        x: ``(d,)`` solution.
        objective: ``||A x - b||_p^p`` on the full problem (``sum |r_i|`` for ``p = 1``).
        num_iters: IRLS iterations used.
        converged: whether the relative objective change fell below ``tol``.

    Example:
        >>> A = torch.ones(5, 1, dtype=torch.float64)
        >>> b = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0], dtype=torch.float64)
        >>> res = lp_regression(A, b, 1.0)  # the l1 fit of a constant is the median
        >>> res.converged, round(float(res.x[0]), 6)
        (True, 2.0)
        >>> abs(res.objective - float((A @ res.x - b).abs().sum())) < 1e-8
        True
    """

    x: Tensor
    objective: float
    num_iters: int
    converged: bool


class DistortionResult(NamedTuple):
    """Output of :func:`distortion`.

    Attributes:
        low: smallest ratio ``||S A x||_p / ||A x||_p`` seen.
        high: largest ratio seen.
        ratios: all ratios (random ``x`` first, then the ``d`` coordinate vectors).

    Example:
        >>> A = torch.randn(200, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> w = lewis_weights(A, 1.0).weights
        >>> s = sensitivity_sample(A, w, 100, torch.Generator().manual_seed(0))
        >>> g = torch.Generator().manual_seed(1)
        >>> res = distortion(A, s.indices, s.weights, 1.0, num_x=20, generator=g)
        >>> tuple(res.ratios.shape), 0.8 < res.low <= res.high < 1.2  # 20 random + 3 basis
        ((23,), True)
    """

    low: float
    high: float
    ratios: Tensor


def _check_matrix(A: object, name: str = "A") -> Tensor:
    A = check_float_tensor(A, name, ndim=2)
    # A finite sum proves every entry finite (NaN/Inf propagate); only then skip the full check.
    if not bool(torch.isfinite(A.sum())):
        check_finite(A, name)
    if A.shape[0] == 0 or A.shape[1] == 0:
        raise ValueError(f"{name} must be non-empty, got shape {tuple(A.shape)}")
    return A


def _work_dtype(A: Tensor) -> torch.dtype:
    return torch.float64 if A.dtype == torch.float64 else torch.float32


def _check_p(p: object, *, low: float = 1.0, high: float = 4.0) -> float:
    p = check_positive_float(p, "p")
    if not low <= p < high:
        raise ValueError(f"p must be in [{low}, {high}), got {p}")
    return p


def _gen_device(generator: torch.Generator | None) -> torch.device:
    return generator.device if generator is not None else torch.device("cpu")


def countsketch(A: Tensor, m: int, generator: torch.Generator | None = None) -> Tensor:
    """CountSketch ``S A``: every row of ``A`` is added, with a random sign, to one of ``m`` rows.

    Costs ``O(nnz(A))``; ``m = O(d^2 / eps^2)`` rows give a ``(1 +- eps)`` subspace embedding
    (Clarkson & Woodruff 2013; Woodruff 2014, Sec. 2.1).

    Args:
        A: ``(n, d)`` matrix.
        m: sketch rows.
        generator: source of randomness (CPU hashes, so results match across devices).

    Returns:
        ``(m, d)`` sketched matrix.

    Raises:
        TypeError: for a non-float ``A`` or a non-int ``m``.
        ValueError: for a non-finite ``A`` or ``m < 1``.

    Example:
        >>> g = torch.Generator().manual_seed(1)
        >>> A = torch.randn(1000, 3, dtype=torch.float64, generator=g)
        >>> SA = countsketch(A, 200, g)
        >>> SA.shape
        torch.Size([200, 3])
        >>> ratio = float(torch.linalg.matrix_norm(SA) / torch.linalg.matrix_norm(A))
        >>> 0.8 < ratio < 1.2
        True
    """
    A = _check_matrix(A)
    m = check_positive_int(m, "m")
    return _countsketch(A, m, generator)


def _countsketch(A: Tensor, m: int, generator: torch.Generator | None) -> Tensor:
    n = A.shape[0]
    dev = _gen_device(generator)
    buckets = torch.randint(0, m, (n,), generator=generator, device=dev).to(A.device)
    signs = (torch.randint(0, 2, (n,), generator=generator, device=dev) * 2 - 1).to(A.device)
    S = torch.sparse_coo_tensor(
        torch.stack((buckets, torch.arange(n, device=A.device))),
        signs.to(A.dtype),
        (m, n),
        check_invariants=False,
    )
    return S @ A


def _hadamard(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """The ``size x size`` Sylvester Hadamard matrix (entries ``+-1``), ``size`` a power of two.

    Returns:
        ``H`` with ``H[i, j] = (-1)^{popcount(i & j)}``.
    """
    H = torch.ones(1, 1, dtype=dtype, device=device)
    h2 = torch.tensor([[1.0, 1.0], [1.0, -1.0]], dtype=dtype, device=device)
    while H.shape[0] < size:
        H = torch.kron(H, h2)
    return H


def _hadamard_rows(rows: Tensor, size: int, dtype: torch.dtype) -> Tensor:
    """Rows ``rows`` of the ``size x size`` Sylvester Hadamard matrix, without forming it.

    ``H_size = H_a (x) H_b`` (Kronecker, ``a b = size``), so row ``i = i_a b + i_b`` is
    ``H_a[i_a] (x) H_b[i_b]``: two small tables and one outer product per row.

    Returns:
        ``(len(rows), size)`` matrix of ``+-1``.
    """
    k = size.bit_length() - 1
    a, b = 1 << (k // 2), 1 << (k - k // 2)
    Ha, Hb = _hadamard(a, dtype, rows.device), _hadamard(b, dtype, rows.device)
    hi = torch.div(rows, b, rounding_mode="floor")
    return (Ha[hi][:, :, None] * Hb[rows % b][:, None, :]).reshape(rows.shape[0], size)


def _fwht(X: Tensor, radix: int = 64) -> Tensor:
    """Unnormalized fast Walsh-Hadamard transform ``H_N X`` along dim 0 (``N`` a power of two).

    ``H_N`` is the Kronecker product of small Hadamard factors (``<= radix``); each factor is
    applied to its axis of ``X`` viewed as ``(pre, s, post)`` by one dense GEMM, so the
    ``O(N log N)`` butterfly runs as ``log_radix N`` BLAS passes instead of ``log2 N``
    memory-bound ones.

    Returns:
        ``H_N X``, same shape as ``X``.
    """
    N = X.shape[0]
    rest = X.shape[1:]
    Y = X.reshape(N, -1)
    cols = Y.shape[1]
    k, post = N.bit_length() - 1, 1
    step = radix.bit_length() - 1
    while k > 0:
        s = 1 << min(step, k)
        k -= min(step, k)
        H = _hadamard(s, X.dtype, X.device)
        Y = torch.matmul(H, Y.reshape(N // (s * post), s, post * cols)).reshape(N, cols)
        post *= s
    return Y.reshape(N, *rest)


def _subsampled_hadamard(X: Tensor, N: int, keep: Tensor) -> Tensor:
    """Rows ``keep`` of ``H_N [X; 0]`` (unnormalized): ``X`` is ``(n, d)``, zero-padded to ``N``.

    With ``H_N = H_B (x) H_C`` and the padded ``X`` viewed as ``(B, C d)``: ``Y = H_B X`` is one
    GEMM over the nonzero rows only (``2 B n d`` flops), then each kept row
    ``i = i_B C + i_C`` needs only ``H_C[i_C] Y[i_B]`` (``2 m C d`` flops in ``B`` GEMMs).
    ``B ~ sqrt(m N / n)`` balances the two: ``O(d sqrt(m n N))`` flops in BLAS, against
    ``O(N d log N)`` in ``log2 N`` memory-bound passes for the butterfly; the full transform
    (:func:`_fwht`) is used when it is cheaper (``m`` close to ``N``).

    Returns:
        ``(len(keep), d)`` rows of the transform.
    """
    n, d = X.shape
    m = keep.shape[0]
    k = N.bit_length() - 1
    B = 1 << min(k, max(0, round(math.log2(max(m * N / n, 1)) / 2)))
    C = N // B
    full = 64 * math.ceil(max(k, 1) / 6)  # flops per padded entry of the radix-64 transform
    if B * n / N + m / B >= full:
        pad = torch.zeros(N - n, d, dtype=X.dtype, device=X.device)
        return _fwht(torch.cat((X, pad)))[keep]
    HB = _hadamard(B, X.dtype, X.device)
    full_blocks, rest = divmod(n, C)
    Y = HB[:, :full_blocks] @ X[: full_blocks * C].reshape(full_blocks, C * d)
    if rest:  # the partly filled block: a rank-one update with its zero-padded rows
        last = torch.zeros(C, d, dtype=X.dtype, device=X.device)
        last[:rest] = X[full_blocks * C :]
        Y.addr_(HB[:, full_blocks], last.reshape(-1))
    Y = Y.reshape(B, C, d)
    i_b = torch.div(keep, C, rounding_mode="floor")
    H = _hadamard_rows(keep % C, C, X.dtype)  # (m, C)
    out = torch.empty(m, d, dtype=X.dtype, device=X.device)
    order = torch.argsort(i_b)
    counts = torch.bincount(i_b, minlength=B).tolist()
    start = 0
    for b, count in enumerate(counts):
        if count:
            idx = order[start : start + count]
            out[idx] = H[idx] @ Y[b]
            start += count
    return out


def srht(A: Tensor, m: int, generator: torch.Generator | None = None) -> Tensor:
    """Subsampled randomized Hadamard transform ``sqrt(N / m) P H D A`` (``N`` = padded rows).

    The rows of ``A`` are zero-padded to ``N = 2^ceil(log2 n)``, multiplied by random signs
    ``D``, mixed by the orthonormal Walsh-Hadamard matrix ``H`` and ``m`` of them are kept
    uniformly without replacement. Only the kept rows of ``H D A`` are computed: with
    ``H_N = H_B (x) H_C`` and ``B ~ sqrt(m N / n)``, one GEMM applies ``H_B`` to the nonzero rows
    and the kept rows of ``H_C`` finish (``O(d sqrt(m n N))`` flops, all in BLAS, the padding
    never formed; the full fast transform when ``m`` is close to ``N``).
    ``m = O(d log d / eps^2)`` gives a ``(1 +- eps)`` subspace embedding (Woodruff 2014,
    Sec. 2.1).

    Args:
        A: ``(n, d)`` matrix.
        m: sketch rows, at most ``N``.
        generator: source of randomness.

    Returns:
        ``(m, d)`` sketched matrix.

    Raises:
        TypeError: for a non-float ``A`` or a non-int ``m``.
        ValueError: for a non-finite ``A``, ``m < 1`` or ``m > N``.

    Example:
        >>> A = torch.eye(4, dtype=torch.float64)
        >>> SA = srht(A, 4, torch.Generator().manual_seed(0))
        >>> bool(torch.allclose(SA.T @ SA, torch.eye(4, dtype=torch.float64)))
        True
    """
    A = _check_matrix(A)
    m = check_positive_int(m, "m")
    n = A.shape[0]
    N = 1 << max(0, (n - 1).bit_length())
    if m > N:
        raise ValueError(f"m must be <= {N} (rows of A padded to a power of two), got {m}")
    dev = _gen_device(generator)
    signs = (torch.randint(0, 2, (n,), generator=generator, device=dev) * 2 - 1).to(A.device)
    keep = torch.randperm(N, generator=generator, device=dev)[:m].to(A.device)
    DA = A * signs.to(A.dtype)[:, None]
    return _subsampled_hadamard(DA, N, keep) / math.sqrt(m)


def gaussian_sketch(A: Tensor, m: int, generator: torch.Generator | None = None) -> Tensor:
    """Gaussian sketch ``G A / sqrt(m)`` with an ``(m, n)`` standard normal ``G``.

    ``m = O(d / eps^2)`` rows give a ``(1 +- eps)`` subspace embedding (Woodruff 2014, Thm. 6).

    Args:
        A: ``(n, d)`` matrix.
        m: sketch rows.
        generator: source of randomness.

    Returns:
        ``(m, d)`` sketched matrix.

    Raises:
        TypeError: for a non-float ``A`` or a non-int ``m``.
        ValueError: for a non-finite ``A`` or ``m < 1``.

    Example:
        >>> gaussian_sketch(torch.ones(10, 2), 5, torch.Generator().manual_seed(0)).shape
        torch.Size([5, 2])
    """
    A = _check_matrix(A)
    m = check_positive_int(m, "m")
    G = random_matrix(m, A.shape[0], dtype=A.dtype, device=A.device, generator=generator)
    return (G @ A) / math.sqrt(m)


def _sketch(A: Tensor, kind: str, m: int, generator: torch.Generator | None) -> Tensor:
    if kind == "countsketch":
        return _countsketch(A, check_positive_int(m, "sketch_size"), generator)
    if kind == "srht":
        return srht(A, m, generator)
    return gaussian_sketch(A, m, generator)


def _full_rank_r(A: Tensor, name: str) -> Tensor:
    """R of a thin QR of ``A``; raise if ``A`` does not have full column rank."""
    R = torch.linalg.qr(A, mode="r").R
    diag = R.diagonal().abs()
    scale = diag.max() if diag.numel() else diag.new_zeros(())
    rank = int(torch.linalg.matrix_rank(R))
    if A.shape[0] < A.shape[1] or rank < A.shape[1] or float(scale) == 0.0:
        raise ValueError(
            f"{name} must have full column rank {A.shape[1]}, got rank {rank} "
            f"(shape {tuple(A.shape)})"
        )
    return R


def _jl_dim_for(accuracy: float, failure: float = JL_FAILURE) -> int:
    """Columns ``k`` of an orthonormal JL step that keeps one row within ``1 +- accuracy``.

    With ``G`` a random ``(d, k)`` matrix with orthonormal columns, ``(d / k) ||v^T G||^2`` is
    the Dasgupta-Gupta projection estimate of ``||v||^2``: it falls below ``1 - e`` with
    probability ``<= exp(-k e^2 / 4)`` and above ``1 + e`` with probability
    ``<= exp(-k (e^2 / 2 - e^3 / 3) / 2)`` (Dasgupta & Gupta 2003, Lemma 2.2). Both are at most
    ``failure / 2`` for the returned ``k``, independently of ``d``.

    Args:
        accuracy: relative error ``e`` in ``(0, 1)``.
        failure: probability, per row, of a larger error.

    Returns:
        ``k``.

    Raises:
        ValueError: for ``accuracy`` or ``failure`` outside ``(0, 1)``.

    Example:
        >>> _jl_dim_for(0.25), _jl_dim_for(0.5)
        (407, 128)
    """
    e = check_positive_float(accuracy, "accuracy")
    if not e < 1:
        raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
    failure = check_positive_float(failure, "failure")
    if not failure < 1:
        raise ValueError(f"failure must be in (0, 1), got {failure}")
    log = math.log(2 / failure)
    return math.ceil(max(4 * log / e**2, 2 * log / (e**2 / 2 - e**3 / 3)))


def leverage_scores(
    A: Tensor,
    *,
    method: LeverageMethod = "exact",
    sketch: SketchKind = "countsketch",
    sketch_size: int | None = None,
    jl_dim: int | Literal["auto"] | None = "auto",
    accuracy: float = 0.25,
    generator: torch.Generator | None = None,
) -> Tensor:
    """l_2 leverage scores ``tau_i = a_i^T (A^T A)^{-1} a_i`` of a full-column-rank ``A``.

    ``exact``: squared row norms of ``Q`` from a thin QR of ``A`` (``O(n d^2)``). ``sketched``
    (Drineas, Magdon-Ismail, Mahoney & Woodruff 2012): ``R`` from a QR of a sketch ``S A``, then
    the squared row norms of ``A R^{-1}`` or, when a Johnson-Lindenstrauss step is cheaper,
    ``(d / k) ||a_i^T R^{-1} G||^2`` with a random ``(d, k)`` ``G`` with orthonormal columns
    (``O(nnz(A) k + poly(d))``). Two corrections make the estimate unbiased and feasible:

    * the sketch inflates every score by the same factor (``E (Q^T S^T S Q)^{-1} =
      m / (m - d - 1) I`` for a Gaussian ``S`` with ``m`` rows, about ``1 + d / m`` for
      CountSketch and SRHT: 3-6% at ``m = 20 d``); since exact scores sum to ``d``, the
      estimates are rescaled to sum to ``d``;
    * exact scores are at most 1, so estimates are clipped at 1 (always closer to the truth).

    ``jl_dim="auto"`` sizes ``k`` from ``accuracy`` (:func:`_jl_dim_for`: each row within
    ``1 +- accuracy`` of the un-projected estimate except with probability 1%) and skips the
    step when ``k >= d``; the sketch itself adds a relative error of about
    ``sqrt(2 / (m - d))`` per row. The final product is computed in blocks of rows fused with
    the row norms, in float32 when ``cond(R) <= 1e4`` (its rounding error is then below 1e-3,
    far under the sketch's).

    Args:
        A: ``(n, d)`` matrix of full column rank.
        method: ``"exact"`` or ``"sketched"``.
        sketch: ``"countsketch"``, ``"srht"`` or ``"gaussian"`` (``sketched`` only).
        sketch_size: rows of the sketch; default ``min(n, 20 d)`` (``max(20 d, d^2 / 2)``
            capped at ``n`` for CountSketch).
        jl_dim: columns ``k`` of the JL matrix: ``"auto"`` (from ``accuracy``), an int, or
            ``None`` for no JL step.
        accuracy: relative per-row error allowed to the JL step (``"auto"`` only), in ``(0, 1)``.
        generator: source of randomness (``sketched`` only).

    Returns:
        ``(n,)`` scores in ``A``'s dtype (at least float32); exact scores sum to ``d``, sketched
        ones to ``d`` up to the clipping at 1.

    Raises:
        TypeError: for a non-float ``A``.
        ValueError: for a non-finite or rank-deficient ``A`` (or sketch), or an unknown option.

    Example:
        >>> A = torch.randn(500, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> tau = leverage_scores(A)
        >>> round(float(tau.sum()), 10)
        4.0
        >>> H = A @ torch.linalg.solve(A.T @ A, A.T)
        >>> bool(torch.allclose(tau, H.diagonal()))
        True
        >>> g = torch.Generator().manual_seed(1)
        >>> approx = leverage_scores(A, method="sketched", sketch="gaussian", sketch_size=200,
        ...                          generator=g)
        >>> round(float(approx.sum()), 10), bool(((approx / tau - 1).abs() < 0.25).all())
        (4.0, True)
    """
    A = _check_matrix(A)
    check_choice(method, "method", LEVERAGE_METHODS)
    check_choice(sketch, "sketch", SKETCHES)
    n, d = A.shape
    A = A.to(_work_dtype(A))
    if method == "exact":
        _full_rank_r(A, "A")
        Q = torch.linalg.qr(A, mode="reduced").Q
        return Q.square().sum(dim=1)
    if isinstance(jl_dim, str):
        if jl_dim != "auto":
            raise ValueError(f"jl_dim must be 'auto', a positive int or None, got {jl_dim!r}")
        k = _jl_dim_for(accuracy)
    elif jl_dim is None:
        k = d
    else:
        k = check_positive_int(jl_dim, "jl_dim")
    if sketch_size is None:
        want = max(20 * d, d * d // 2) if sketch == "countsketch" else 20 * d
        sketch_size = min(n, want)
    sketch_size = check_positive_int(sketch_size, "sketch_size")
    R = _full_rank_r(_sketch(A, sketch, sketch_size, generator), "the sketch S A")
    if k >= d:
        eye = torch.eye(d, dtype=A.dtype, device=A.device)
        Z = torch.linalg.solve_triangular(R, eye, upper=True)  # d x d: one GEMM beats trsm
    else:
        G = random_matrix(d, k, dtype=A.dtype, device=A.device, generator=generator)
        G = torch.linalg.qr(G).Q * math.sqrt(d / k)  # orthonormal columns: Dasgupta-Gupta
        Z = torch.linalg.solve_triangular(R, G, upper=True)
    return _unbias(_row_norms_squared(A, Z, _fast_dtype(A, R)), d)


def _unbias(scores: Tensor, d: int) -> Tensor:
    """Rescale sketched leverage estimates to sum to ``d`` and clip them at 1.

    Returns:
        The corrected scores.
    """
    total = scores.sum()
    return (scores * (d / total)).clamp_max_(1.0)


def _fast_dtype(A: Tensor, R: Tensor) -> torch.dtype:
    """float32 for ``A R^{-1}`` when ``cond(R)`` keeps its float32 error far below the sketch's.

    A float32 product ``a_i^T Z`` has relative error about ``cond(R) * 6e-8``; below
    ``cond(R) = 1e4`` that is under 1e-3, much smaller than the sketch and JL distortions, and
    the product runs about twice as fast (half the memory traffic).

    Returns:
        ``torch.float32`` or ``A``'s dtype.
    """
    if A.dtype != torch.float64 or A.device.type != "cpu":
        return A.dtype
    s = torch.linalg.svdvals(R)
    return torch.float32 if float(s[0]) <= 1e4 * float(s[-1]) else torch.float64


def _row_norms_squared(A: Tensor, Z: Tensor, dtype: torch.dtype, chunk: int = 4096) -> Tensor:
    """Squared row norms of ``A Z``, in blocks of rows so each block stays in cache.

    Fusing the product with the norm avoids writing and re-reading the ``(n, k)`` product; each
    block is cast to ``dtype`` in cache.

    Returns:
        ``(n,)`` squared row norms in ``A``'s dtype.
    """
    Zc = Z.to(dtype)
    out = torch.empty(A.shape[0], dtype=dtype, device=A.device)
    for i in range(0, A.shape[0], chunk):
        block = A[i : i + chunk].to(dtype) @ Zc
        torch.linalg.vector_norm(block, dim=1, out=out[i : i + chunk])
    return out.square_().to(A.dtype)


def root_leverage_scores(A: Tensor, p: float = 1.0, **kwargs: object) -> Tensor:
    """Root leverage scores ``tau_i^{p/2}`` (``sqrt(tau_i)`` for ``p = 1``), Woodruff & Yasuda.

    Sampling rows with probability proportional to ``tau_i^{p/2}`` gives l_p subspace
    embeddings for ``1 <= p < 2`` (Woodruff & Yasuda 2023).

    Args:
        A: ``(n, d)`` matrix of full column rank.
        p: the l_p exponent, in ``[1, 4)``.
        **kwargs: passed to :func:`leverage_scores` (``method``, ``sketch``, ...).

    Returns:
        ``(n,)`` scores.

    Raises:
        ValueError: as :func:`leverage_scores`, or for ``p`` out of range.

    Example:
        >>> A = torch.eye(3, dtype=torch.float64)
        >>> root_leverage_scores(A).tolist()
        [1.0, 1.0, 1.0]
    """
    p = _check_p(p)
    return leverage_scores(A, **kwargs).clamp_min(0).pow(p / 2)  # type: ignore[arg-type]


def lewis_weights(
    A: Tensor, p: float, *, iters: int = 100, tol: float = 1e-6, init: Tensor | None = None
) -> LewisResult:
    """l_p Lewis weights by the Cohen-Peng fixed-point iteration (``0 < p < 4``).

    The map ``T(w)_i = (a_i^T (A^T W^{1-2/p} A)^{-1} a_i)^{p/2}`` is a contraction with factor
    ``|1 - p/2|`` in log-space for ``p < 4`` (Cohen & Peng 2015, Sec. 3); iterated (with an
    over-relaxed step ``beta = 4 / (2 + p)`` in log-space, which contracts by
    ``|p - 2| / (p + 2)`` near the fixed point) until ``max_i |T(w)_i - w_i| / w_i <= tol``, and
    ``T(w)`` is returned. Each iteration is one Cholesky of a ``d x d`` matrix and one
    triangular solve (``O(n d^2)``), in float64. The weights are the leverage scores of
    ``W^{1/2-1/p} A``, so they sum to ``d``; for ``p = 2`` they are the leverage scores.

    Args:
        A: ``(n, d)`` matrix of full column rank.
        p: exponent in ``(0, 4)``.
        iters: maximum iterations.
        tol: relative-change tolerance.
        init: optional positive ``(n,)`` starting weights (default: leverage scores).

    Returns:
        A :class:`LewisResult` (weights in ``A``'s dtype, at least float32).

    Raises:
        TypeError: for a non-float ``A``.
        ValueError: for a non-finite or rank-deficient ``A``, ``p`` outside ``(0, 4)`` or a bad
            ``init``.

    Example:
        >>> A = torch.randn(300, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> res = lewis_weights(A, 1.0)
        >>> res.converged, round(float(res.weights.sum()), 6)
        (True, 5.0)
    """
    A = _check_matrix(A)
    p = check_positive_float(p, "p")
    if not p < 4:
        raise ValueError(f"p must be in (0, 4) for the Lewis fixed-point iteration, got {p}")
    iters = check_positive_int(iters, "iters")
    tol = check_positive_float(tol, "tol")
    out_dtype = _work_dtype(A)
    A64 = A.to(torch.float64)
    _full_rank_r(A64, "A")
    if init is None:
        w = torch.linalg.qr(A64, mode="reduced").Q.square().sum(dim=1)
    else:
        init = check_float_tensor(init, "init", ndim=1)
        if init.shape[0] != A.shape[0] or not bool((init > 0).all()):
            raise ValueError(f"init must be {A.shape[0]} positive weights")
        w = init.to(A64)
    tiny = torch.finfo(torch.float64).tiny
    w = w.clamp_min(tiny)
    # Over-relaxed step in log-space, log w <- log w + beta (log T(w) - log w): near the fixed
    # point the Jacobian of log T has eigenvalues in [0, 1 - p/2] (p < 2) or [1 - p/2, 0]
    # (p > 2), and beta = 4 / (2 + p) shrinks the contraction factor from |1 - p/2| to
    # |p - 2| / (p + 2) (1/3 instead of 1/2 for p = 1). If the residual ever grows, plain
    # Cohen-Peng steps (beta = 1) take over; far from the fixed point (change >= 0.5) plain
    # steps are used.
    beta = 4 / (2 + p)
    converged = False
    previous = math.inf
    it = 0
    for it in range(1, iters + 1):  # noqa: B007
        B = A64 * w.pow(0.5 - 1 / p)[:, None]
        L, info = torch.linalg.cholesky_ex(B.T @ B)
        if int(info) != 0:
            raise ValueError("A^T W A is not positive definite: A is numerically rank deficient")
        tau = torch.linalg.vector_norm(torch.linalg.solve_triangular(L, B.T, upper=False), dim=0)
        image = (tau.square() * w.pow(2 / p - 1)).pow(p / 2).clamp_min(tiny)  # T(w)
        change = float(((image - w).abs() / w).max())
        if change <= tol:
            w = image
            converged = True
            break
        local = change < 0.5  # the over-relaxation is a local (linearized) argument
        if local and change > previous:
            beta = 1.0
        previous = change if local else math.inf
        w = (w * (image / w).pow(beta if local else 1.0)).clamp_min(tiny)
    return LewisResult(w.to(out_dtype), it, converged)


def sensitivity_sample(
    A: Tensor,
    scores: Tensor,
    m: int,
    generator: torch.Generator | None = None,
    *,
    p: float = 1.0,
) -> SampleResult:
    """Importance-sample ``m`` rows by ``scores`` with l_p reweighting (sensitivity sampling).

    Inclusion rates ``pi_i = min(1, c s_i)`` are calibrated so that ``sum pi_i = m``. Rows with
    ``pi_i = 1`` are kept once with weight 1; the remaining budget ``m' = m - #kept`` is drawn
    i.i.d. with probabilities ``q_i = s_i / sum s`` over the other rows, each with weight
    ``(m' q_i)^{-1/p}``, so ``||S A x||_p^p`` is unbiased for ``||A x||_p^p`` (Woodruff &
    Yasuda 2023; Cohen & Peng 2015). Uniform sampling is ``scores = torch.ones(n)``.

    Args:
        A: ``(n, d)`` matrix (used for its shape and device).
        scores: ``(n,)`` non-negative importance scores, not all zero.
        m: sample size, ``1 <= m <= n``.
        generator: source of randomness.
        p: the l_p exponent of the reweighting, in ``[1, 4)``.

    Returns:
        A :class:`SampleResult` with ``m`` indices and weights.

    Raises:
        TypeError: for non-float inputs or a non-int ``m``.
        ValueError: for mismatched shapes, negative/non-finite/all-zero scores, ``m > n`` or
            ``p`` out of range.

    Example:
        >>> A = torch.randn(100, 2)
        >>> s = sensitivity_sample(A, torch.ones(100), 10, torch.Generator().manual_seed(0))
        >>> s.indices.shape, bool(torch.allclose(s.weights, torch.full((10,), 10.0)))
        (torch.Size([10]), True)
    """
    A = _check_matrix(A)
    scores = check_float_tensor(scores, "scores", ndim=1)
    check_finite(scores, "scores")
    n = A.shape[0]
    if scores.shape[0] != n:
        raise ValueError(f"scores must have {n} entries (rows of A), got {scores.shape[0]}")
    if bool((scores < 0).any()) or not bool((scores > 0).any()):
        raise ValueError("scores must be non-negative and not all zero")
    m = check_positive_int(m, "m")
    if m > n:
        raise ValueError(f"m must be <= the number of rows {n}, got {m}")
    p = _check_p(p)
    s = scores.to(torch.float64)
    # Calibrate c so that sum min(1, c s) = m: rows capped at 1 are the largest ones.
    order = torch.sort(s, descending=True).values
    tail = order.flip(0).cumsum(0).flip(0)  # tail[j] = sum of order[j:]
    j = torch.arange(n, dtype=torch.float64, device=s.device)
    # With the top j rows capped: c = (m - j) / tail[j]; valid if c * order[j] <= 1.
    c = (m - j) / tail.clamp_min(torch.finfo(torch.float64).tiny)
    ok = (c * order <= 1) & (j < m)
    k = int(torch.nonzero(ok)[0]) if bool(ok.any()) else m
    kept = torch.argsort(s, descending=True)[:k]
    budget = m - k
    weights_kept = torch.ones(k, dtype=torch.float64, device=s.device)
    if budget == 0:
        idx, wts = kept, weights_kept
    else:
        rest = s.clone()
        rest[kept] = 0
        q = rest / rest.sum()
        dev = _gen_device(generator)
        draw = torch.multinomial(q.to(dev), budget, replacement=True, generator=generator)
        draw = draw.to(s.device)
        w_draw = (budget * q[draw]).pow(-1 / p)
        idx = torch.cat((kept, draw))
        wts = torch.cat((weights_kept, w_draw))
    return SampleResult(idx.to(A.device), wts.to(_work_dtype(A)).to(A.device))


def _lp_objective(r: Tensor, p: float) -> Tensor:
    return r.abs().pow(p).sum()


def lp_regression(
    A: Tensor,
    b: Tensor,
    p: float,
    *,
    rows: Tensor | None = None,
    weights: Tensor | None = None,
    iters: int = 200,
    tol: float = 1e-12,
) -> LpRegressionResult:
    """Solve ``min_x ||S (A x - b)||_p`` by iteratively reweighted least squares (IRLS).

    With ``rows``/``weights`` from :func:`sensitivity_sample` the problem is solved on the
    sampled, reweighted rows only (``S = diag(weights) P_rows``); the returned objective is always
    ``||A x - b||_p^p`` on the full problem. Each iteration solves a weighted least-squares problem
    by QR with weights ``(r_i^2 + delta^2)^{(p-2)/2}``, where the smoothing ``delta`` shrinks
    geometrically to ``1e-12`` of the residual scale; a backtracking step keeps the objective
    non-increasing (needed for ``p > 2``). Computed in float64.

    Args:
        A: ``(n, d)`` matrix of full column rank.
        b: ``(n,)`` right-hand side.
        p: exponent in ``[1, 4)``.
        rows: optional ``(k,)`` row indices of a sample.
        weights: optional ``(k,)`` (or ``(n,)`` without ``rows``) positive row weights.
        iters: maximum IRLS iterations.
        tol: stop when the relative decrease of the (sampled) objective is ``<= tol`` and the
            smoothing has reached its floor.

    Returns:
        An :class:`LpRegressionResult`.

    Raises:
        TypeError: for non-float inputs.
        ValueError: for mismatched shapes, non-finite values, ``p`` out of range or a
            rank-deficient (sampled) matrix.

    Example:
        >>> A = torch.ones(5, 1, dtype=torch.float64)
        >>> b = torch.tensor([0.0, 1.0, 2.0, 3.0, 100.0], dtype=torch.float64)
        >>> res = lp_regression(A, b, 1.0)  # the l1 fit of a constant is the median
        >>> round(float(res.x[0]), 6), round(res.objective, 6)
        (2.0, 102.0)
    """
    A = _check_matrix(A)
    b = check_float_tensor(b, "b", ndim=1)
    check_finite(b, "b")
    n = A.shape[0]
    if b.shape[0] != n:
        raise ValueError(f"b must have {n} entries (rows of A), got {b.shape[0]}")
    p = _check_p(p)
    iters = check_positive_int(iters, "iters")
    tol = check_positive_float(tol, "tol")
    A64, b64 = A.to(torch.float64), b.to(torch.float64)
    As, bs = A64, b64
    if rows is not None:
        rows = _check_indices(rows, "rows", n)
        As, bs = A64[rows], b64[rows]
    if weights is not None:
        weights = check_float_tensor(weights, "weights", ndim=1)
        check_finite(weights, "weights")
        if weights.shape[0] != As.shape[0] or not bool((weights > 0).all()):
            raise ValueError(f"weights must be {As.shape[0]} positive numbers (one per row used)")
        w64 = weights.to(torch.float64).to(A.device)
        As, bs = As * w64[:, None], bs * w64
    _full_rank_r(As, "the (sampled) matrix")

    def wls(D: Tensor) -> Tensor:
        sq = D.sqrt()
        Q, R = torch.linalg.qr(As * sq[:, None], mode="reduced")
        return torch.linalg.solve_triangular(R, (Q.T @ (bs * sq))[:, None], upper=True)[:, 0]

    x = wls(torch.ones_like(bs))
    f = _lp_objective(As @ x - bs, p)
    scale = float((As @ x - bs).abs().mean()) or 1.0
    delta, floor = 0.1 * scale, 1e-12 * scale
    converged = p == 2.0
    num_iters = 0
    while not converged and num_iters < iters:
        num_iters += 1
        r = As @ x - bs
        D = (r.square() + delta**2).pow((p - 2) / 2)
        x_new = wls(D)
        step = 1.0
        f_new = _lp_objective(As @ x_new - bs, p)
        while f_new > f and step > 1e-6:
            step /= 2
            f_new = _lp_objective(As @ (x + step * (x_new - x)) - bs, p)
        decrease = 0.0
        if f_new <= f:
            x = x + step * (x_new - x)
            decrease = float((f - f_new) / f.clamp_min(torch.finfo(torch.float64).tiny))
            f = f_new
        at_floor = delta <= floor
        delta = max(delta * 0.3, floor)
        converged = at_floor and decrease <= tol
    objective = float(_lp_objective(A64 @ x - b64, p))
    return LpRegressionResult(x.to(_work_dtype(A)), objective, num_iters, converged)


def _check_indices(rows: object, name: str, n: int) -> Tensor:
    """Check ``rows`` is a 1-D integer tensor of indices in ``[0, n)``."""
    if (
        not isinstance(rows, Tensor)
        or rows.ndim != 1
        or rows.dtype not in (torch.int32, torch.int64)
    ):
        raise TypeError(f"{name} must be a 1-D int32/int64 tensor")
    if rows.numel() == 0 or bool((rows < 0).any()) or bool((rows >= n).any()):
        raise ValueError(f"{name} must be non-empty indices in [0, {n})")
    return rows.long()


def distortion(
    A: Tensor,
    rows: Tensor,
    weights: Tensor,
    p: float,
    *,
    num_x: int = 200,
    generator: torch.Generator | None = None,
) -> DistortionResult:
    """Empirical l_p distortion of a row sample: ratios ``||S A x||_p / ||A x||_p``.

    ``x`` runs over ``num_x`` standard Gaussian vectors and the ``d`` coordinate vectors (the
    column basis, where planted heavy rows show up). A sample is a ``(1 +- eps)`` embedding on
    these directions when all ratios lie in ``[1 - eps, 1 + eps]``. This is a checker: the
    supremum over all ``x`` can only be larger.

    Args:
        A: ``(n, d)`` matrix.
        rows: ``(k,)`` sampled row indices.
        weights: ``(k,)`` row weights.
        p: exponent in ``[1, 4)``.
        num_x: random directions.
        generator: source of randomness.

    Returns:
        A :class:`DistortionResult`.

    Raises:
        TypeError: for non-float or non-integer inputs.
        ValueError: for mismatched shapes or values, or ``p`` out of range.

    Example:
        >>> A = torch.randn(50, 3, dtype=torch.float64)
        >>> res = distortion(A, torch.arange(50), torch.ones(50), 1.0, num_x=10)
        >>> round(res.low, 12), round(res.high, 12)
        (1.0, 1.0)
    """
    A = _check_matrix(A)
    n, d = A.shape
    rows = _check_indices(rows, "rows", n)
    weights = check_float_tensor(weights, "weights", ndim=1)
    check_finite(weights, "weights")
    if weights.shape[0] != rows.shape[0]:
        raise ValueError(f"weights must have {rows.shape[0]} entries, got {weights.shape[0]}")
    p = _check_p(p)
    num_x = check_positive_int(num_x, "num_x", minimum=0)
    A64 = A.to(torch.float64)
    X = torch.cat(
        (
            random_matrix(d, num_x, dtype=torch.float64, device=A.device, generator=generator),
            torch.eye(d, dtype=torch.float64, device=A.device),
        ),
        dim=1,
    )
    SA = A64[rows.to(A.device)] * weights.to(torch.float64).to(A.device)[:, None]
    full = (A64 @ X).abs().pow(p).sum(0).pow(1 / p)
    sk = (SA @ X).abs().pow(p).sum(0).pow(1 / p)
    ratios = sk / full.clamp_min(torch.finfo(torch.float64).tiny)
    return DistortionResult(float(ratios.min()), float(ratios.max()), ratios.to(_work_dtype(A)))
