r"""Similarity measures between two representations of the same ``N`` inputs.

Every measure is a pure function of an ``(N, p)`` and an ``(N, q)`` tensor (same rows, any
widths), computed in float64 internally: linear and RBF CKA (biased or unbiased), an exact
streaming unbiased linear CKA that never forms an ``N x N`` Gram (for one pair, or for every pair
of many layers at once, sharing the products; optionally with float32 products accumulated in
float64), SVCCA, PWCCA, orthogonal Procrustes distance, principal angles between principal
subspaces, and a row bootstrap for confidence intervals of any of them.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple

import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)
from ..linalg._precision import pow2_exponent
from ..linalg.subspace import Subspace

__all__ = [
    "BootstrapResult",
    "CCAResult",
    "StreamingCKAMatrix",
    "StreamingLinearCKA",
    "SubspaceSimilarityResult",
    "bootstrap_ci",
    "cka_matrix",
    "linear_cka",
    "procrustes_distance",
    "pwcca",
    "rbf_cka",
    "subspace_similarity",
    "svcca",
]


# ----- validation ------------------------------------------------------------------------------
def _check_finite_fast(x: Tensor, name: str) -> Tensor:
    """:func:`check_finite` with one reduction: a finite sum means no NaN/Inf entry."""
    if x.numel() and not bool(torch.isfinite(x.sum())):
        check_finite(x, name)  # names the bad values, or passes if the sum merely overflowed
    return x


def _as_matrix(x: Any, name: str, cast: bool = True) -> Tensor:
    x = _check_finite_fast(check_float_tensor(x, name, ndim=2), name)
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(x.shape)}")
    return x.to(torch.float64) if cast else x


def _check_pair(
    X: Any, Y: Any, *, min_rows: int, why: str = "", cast: bool = True
) -> tuple[Tensor, Tensor]:
    """Validate two representations of the same inputs and return them (in float64 if ``cast``)."""
    Xd, Yd = _as_matrix(X, "X", cast), _as_matrix(Y, "Y", cast)
    if Xd.shape[0] != Yd.shape[0]:
        raise ValueError(
            "X and Y must have the same number of rows (inputs), got "
            f"X {tuple(Xd.shape)} and Y {tuple(Yd.shape)}"
        )
    if Xd.device != Yd.device:
        raise ValueError(f"X and Y must be on the same device, got {Xd.device} and {Yd.device}")
    if Xd.shape[0] < min_rows:
        raise ValueError(
            f"need at least {min_rows} rows{why}, got N = {Xd.shape[0]} "
            f"(X {tuple(Xd.shape)}, Y {tuple(Yd.shape)})"
        )
    return Xd, Yd


def _center(X: Tensor) -> Tensor:
    return X - X.mean(dim=0, keepdim=True)


def _unit_scale(X: Tensor) -> Tensor:
    """``X`` divided by a power of two so that its largest magnitude is in ``[0.5, 1)``.

    Exact (a power of two), and every measure it is used for is invariant to the scale of each
    representation, so results are unchanged except that squares and products of ``X`` can no
    longer overflow (``1e200``) or underflow (``1e-200``).

    Returns:
        The rescaled ``X`` (``X`` itself when no rescaling is needed).
    """
    e = pow2_exponent(float(torch.linalg.vector_norm(X, ord=math.inf))) if X.numel() else 0
    return X if e == 0 else X * math.ldexp(1.0, -e)


def _ratio(scaled: Tensor, original: Tensor) -> float:
    """The power of two ``scaled / original`` (1.0 when :func:`_unit_scale` left it alone).

    Returns:
        The factor, a float.
    """
    if scaled is original:
        return 1.0
    e = pow2_exponent(float(torch.linalg.vector_norm(original, ord=math.inf)))
    return math.ldexp(1.0, -e)


def _inv_pow2_scales(reps: list[Tensor]) -> list[float]:
    """The factor (a power of two) that brings each representation's largest entry near 1.

    Returns:
        One float per representation (1.0 for a zero or non-finite one).
    """
    device = reps[0].device
    maxabs = torch.stack(
        [torch.linalg.vector_norm(R, ord=math.inf).to(device, torch.float64) for R in reps]
    ).tolist()
    return [math.ldexp(1.0, -pow2_exponent(v)) for v in maxabs]


# ----- HSIC and CKA on Gram matrices -----------------------------------------------------------
def _hsic(K: Tensor, L: Tensor, unbiased: bool) -> Tensor:
    r"""HSIC of two ``(N, N)`` Gram matrices, up to a factor common to every pair.

    Biased: :math:`\mathrm{tr}(KHLH)/(N-1)^2`. Unbiased (HSIC_1 of Song et al. 2012):
    :math:`[\mathrm{tr}(\tilde K\tilde L) + \frac{1^T\tilde K1\,1^T\tilde L1}{(N-1)(N-2)}
    - \frac{2}{N-2}1^T\tilde K\tilde L1] / (N(N-3))` with zeroed diagonals.

    Returns:
        The HSIC estimate, a 0-d tensor.
    """
    n = K.shape[0]
    if not unbiased:
        Kc = _center(_center(K).T)
        Lc = _center(_center(L).T)
        return (Kc * Lc).sum() / (n - 1) ** 2
    Kt = K - torch.diag_embed(torch.diagonal(K))
    Lt = L - torch.diag_embed(torch.diagonal(L))
    k1, l1 = Kt.sum(dim=1), Lt.sum(dim=1)
    trace = (Kt * Lt).sum()
    return (trace + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 * (k1 @ l1) / (n - 2)) / (
        n * (n - 3)
    )


def _cka_from_hsic(hxy: Tensor, hxx: Tensor, hyy: Tensor) -> float:
    """``HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L))`` with a clear error when undefined."""
    for value, name in ((hxx, "X"), (hyy, "Y")):
        if not float(value) > 0.0:
            raise ValueError(
                f"CKA is undefined: the self-similarity HSIC({name}, {name}) = {float(value):.3e} "
                f"is not positive ({name} is constant across rows, or too few rows for the "
                "unbiased estimator)"
            )
    return float(hxy / torch.sqrt(hxx * hyy))


def _cka_grams(K: Tensor, L: Tensor, unbiased: bool) -> float:
    return _cka_from_hsic(_hsic(K, L, unbiased), _hsic(K, K, unbiased), _hsic(L, L, unbiased))


def linear_cka(X: Tensor, Y: Tensor, *, unbiased: bool = False) -> float:
    r"""Linear centered kernel alignment between two representations.

    Biased: :math:`\|Y_c^TX_c\|_F^2 / (\|X_c^TX_c\|_F\|Y_c^TY_c\|_F)` on column-centered
    representations (Kornblith et al., "Similarity of Neural Network Representations Revisited",
    ICML 2019). Unbiased: the same ratio of the unbiased HSIC_1 estimator (Song et al., JMLR 2012;
    Nguyen, Raghu & Kornblith, ICLR 2021), which is not inflated when ``p, q >> N``. Invariant to
    orthogonal transforms and isotropic scaling of either side, not to general invertible maps.

    When ``N >= max(p, q)`` it is computed in feature space (``O(N (p + q)^2)``, the unbiased
    value through the sums :class:`StreamingLinearCKA` accumulates), so no ``N x N`` Gram is
    formed; for wider representations from the two ``N x N`` Grams (``O(N^2 (p + q))``).

    Args:
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        unbiased: use the unbiased HSIC estimator (needs ``N >= 4``).

    Returns:
        The CKA, a float; in ``[0, 1]`` when biased, and close to 0 for independent
        representations when unbiased (it can then be slightly negative).

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: if they are not 2-D, hold NaN/Inf, have different numbers of rows, too few
            rows (2, or 4 when unbiased), or a side is constant so that CKA is undefined.

    Example:
        >>> import torch
        >>> X = torch.randn(50, 8, generator=torch.Generator().manual_seed(0))
        >>> Q = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1))).Q
        >>> round(linear_cka(X, 3.0 * X @ Q), 6), round(linear_cka(X, X, unbiased=True), 6)
        (1.0, 1.0)
    """
    Xd, Yd = _check_pair(
        X, Y, min_rows=4 if unbiased else 2, why=" for the unbiased estimator" if unbiased else ""
    )
    Xd, Yd = _unit_scale(Xd), _unit_scale(Yd)  # CKA is scale invariant: no over/underflow
    n, p, q = Xd.shape[0], Xd.shape[1], Yd.shape[1]
    if n < max(p, q):  # wide representations: two N x N Grams are cheaper than p x p, q x q
        Xc, Yc = _center(Xd), _center(Yd)  # both estimators are invariant to a shift of rows
        return _cka_grams(Xc @ Xc.T, Yc @ Yc.T, unbiased)
    if unbiased:
        return StreamingLinearCKA().update(Xd, Yd).value(unbiased=True)
    Xc, Yc = _center(Xd), _center(Yd)
    hxy = (Yc.T @ Xc).pow(2).sum()
    hxx = (Xc.T @ Xc).pow(2).sum()
    hyy = (Yc.T @ Yc).pow(2).sum()
    return _cka_from_hsic(hxy, hxx, hyy)


def _rbf_gram(X: Tensor, sigma: float | None) -> Tensor:
    sq = torch.cdist(X, X).pow(2)
    if sigma is None:
        n = X.shape[0]
        iu = torch.triu_indices(n, n, offset=1, device=X.device)
        med = float(torch.quantile(sq[iu[0], iu[1]], 0.5))  # numpy's median (averaged)
        if med <= 0.0:
            raise ValueError(
                "the median heuristic gives sigma = 0 (most rows are identical); pass sigma"
            )
        two_sigma2 = 2.0 * med
    else:
        two_sigma2 = 2.0 * sigma**2
    return torch.exp(-sq / two_sigma2)


def rbf_cka(X: Tensor, Y: Tensor, *, sigma: float | None = None, unbiased: bool = False) -> float:
    r"""CKA with Gaussian (RBF) kernels :math:`k(x, x') = \exp(-\|x - x'\|^2 / 2\sigma^2)`.

    Kornblith et al., "Similarity of Neural Network Representations Revisited" (ICML 2019); the
    unbiased variant uses HSIC_1 (Song et al., JMLR 2012). With ``sigma=None`` each side uses
    the median heuristic, ``sigma^2 = median_{i<j} ||x_i - x_j||^2`` (Kornblith et al.'s
    threshold 1), which makes the measure invariant to isotropic scaling. Forms two ``N x N``
    Grams: ``O(N^2 (p + q))`` time, ``O(N^2)`` memory.

    Args:
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        sigma: kernel bandwidth shared by both sides, or ``None`` for the median heuristic.
        unbiased: use the unbiased HSIC estimator (needs ``N >= 4``).

    Returns:
        The CKA, a float (in ``[0, 1]`` when biased).

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor, or ``sigma`` is not a number.
        ValueError: for the bad inputs of :func:`linear_cka`, a non-positive ``sigma``, or a
            median distance of 0.

    Example:
        >>> import torch
        >>> X = torch.randn(40, 5, generator=torch.Generator().manual_seed(0))
        >>> round(rbf_cka(X, 2.0 * X), 6), round(rbf_cka(X, X, unbiased=True), 6)
        (1.0, 1.0)
    """
    Xd, Yd = _check_pair(
        X, Y, min_rows=4 if unbiased else 2, why=" for the unbiased estimator" if unbiased else ""
    )
    s = None if sigma is None else check_positive_float(sigma, "sigma")
    # each side divided by a power of two c (exact); a fixed sigma is divided by the same c
    Xs, Ys = _unit_scale(Xd), _unit_scale(Yd)
    sx = None if s is None else s * _ratio(Xs, Xd)
    sy = None if s is None else s * _ratio(Ys, Yd)
    return _cka_grams(_rbf_gram(Xs, sx), _rbf_gram(Ys, sy), unbiased)


# ----- streaming exact linear CKA: one engine for a pair and for all pairs of layers ----------
_MATMUL_DTYPES = (torch.float32, torch.float64)


def _check_matmul_dtype(dtype: Any) -> torch.dtype | None:
    if dtype is None:
        return None
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"matmul_dtype must be None or a torch.dtype, got {type(dtype).__name__}")
    if dtype not in _MATMUL_DTYPES:
        raise ValueError(f"matmul_dtype must be torch.float32 or torch.float64, got {dtype}")
    return dtype


def _hsic1_from_sums(
    n: int, cross: Tensor, s1: Tensor, s2: Tensor, sa: Tensor, sb: Tensor, sab: Tensor,
    a_on_2: Tensor, b_on_1: Tensor,
) -> Tensor:  # fmt: skip
    r"""Unbiased HSIC_1 (Song et al. 2012) from feature-space sums (see StreamingCKAMatrix)."""
    trace = torch.linalg.vector_norm(cross) ** 2 - sab
    k1 = s1 @ s1 - sa
    l1 = s2 @ s2 - sb
    kl1 = s1 @ (cross @ s2) - s2 @ a_on_2 - s1 @ b_on_1 + sab
    return (trace + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 * kl1 / (n - 2)) / (n * (n - 3))


def _hsic0_from_sums(n: int, cross: Tensor, s1: Tensor, s2: Tensor) -> Tensor:
    """Biased HSIC times ``(N - 1)^2``: ``||X^T Y - s_x s_y^T / N||_F^2 = ||X_c^T Y_c||_F^2``."""
    return torch.linalg.vector_norm(cross - torch.outer(s1, s2) / n) ** 2


def _as_reps(reps: Any, name: str) -> list[Tensor]:
    """Validate a non-empty sequence of 2-D finite floating tensors with equal row counts."""
    if isinstance(reps, Tensor) or not isinstance(reps, (list, tuple)) or not reps:
        raise TypeError(
            f"{name} must be a non-empty list or tuple of (N, p_i) tensors, got "
            f"{type(reps).__name__}"
        )
    out = []
    for i, rep in enumerate(reps):
        label = f"{name}[{i}]"
        R = check_float_tensor(rep, label, ndim=2)  # NaN/Inf: one check per chunk, later
        if R.shape[1] == 0:
            raise ValueError(f"{label} must have at least one column, got shape {tuple(R.shape)}")
        out.append(R)
    rows = {int(R.shape[0]) for R in out}
    if len(rows) != 1:
        shapes = [tuple(R.shape) for R in out]
        raise ValueError(f"every tensor of {name} must have the same number of rows, got {shapes}")
    return out


class StreamingCKAMatrix:
    r"""Exact linear CKA between every pair of many representations, streaming over rows.

    Given ``L_a`` representations :math:`X_1, \dots, X_{L_a}` (e.g. the layers of one network,
    ``(N, p_i)`` each) and ``L_b`` representations :math:`Y_1, \dots, Y_{L_b}` of the same ``N``
    inputs (the layers of another network), :meth:`value` returns the ``L_a x L_b`` matrix of
    linear CKA (Kornblith et al., ICML 2019), biased or unbiased (HSIC_1 of Song et al., JMLR
    2012; Nguyen, Raghu & Kornblith, ICLR 2021), equal to :func:`linear_cka` on the concatenated
    rows of every pair. Without ``reps_b`` it is the symmetric ``L_a x L_a`` self-similarity
    matrix of the ``X_i``.

    Every term of HSIC is a sum over rows of feature-space quantities (see
    :class:`StreamingLinearCKA` for the formulas), so rows are accumulated chunk by chunk: the
    cross products :math:`X_i^TY_j` of all pairs come from one product
    :math:`X_i^T[Y_1, \dots, Y_{L_b}]` per ``i`` and the self products :math:`X_i^TX_i`,
    :math:`Y_j^TY_j` are shared by all pairs (for the symmetric matrix only the
    :math:`X_i^TX_j`, ``j >= i``, are formed). Time ``O(N (P_a P_b + sum p_i^2 + sum q_j^2))``,
    memory ``O(P_a P_b + sum p_i^2 + sum q_j^2)`` with ``P_a = sum p_i``, ``P_b = sum q_j``,
    independent of ``N``: never an ``N x N`` Gram, never all activations at once.

    Batches are buffered up to ``chunk_rows`` rows, so small batches do not pay the
    ``O(P_a P_b)`` accumulation cost each. Each representation is divided by a power of two
    near its largest magnitude in the first batch (exact, and CKA is invariant to it), so
    activations of any scale (``1e-25`` or ``1e20`` in float32) neither overflow nor underflow
    in the products; a later batch more than about ``1e18`` times larger than the first could
    still overflow, which :meth:`value` reports. Rows are shifted by the first chunk's mean (both
    estimators are shift invariant). Products run in ``matmul_dtype`` and are accumulated in
    float64 across chunks: ``torch.float64`` is exact to float64 rounding; ``torch.float32`` is
    about 4x faster on CPUs (single-precision GEMM, inputs rounded to float32) and agrees with the
    float64 result to about 1e-7 on float32 activations. ``None`` (default) takes the inputs'
    precision: float64 if the first batch holds a float64 tensor, else float32.

    Args:
        matmul_dtype: ``None`` (the inputs' precision), ``torch.float64`` or ``torch.float32``,
            the dtype of the per-chunk products.
        chunk_rows: rows buffered before they are accumulated (larger: faster, more memory).

    Raises:
        TypeError: if ``matmul_dtype`` is not a dtype or ``chunk_rows`` not an int.
        ValueError: if ``matmul_dtype`` is not float32/float64 or ``chunk_rows < 1``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = [torch.randn(60, 5, generator=g) for _ in range(3)]
        >>> Y = [X[0] @ torch.randn(5, 4, generator=g), torch.randn(60, 2, generator=g)]
        >>> acc = StreamingCKAMatrix()  # float32 inputs: float32 products, float64 sums
        >>> for i in range(0, 60, 16):
        ...     _ = acc.update([x[i : i + 16] for x in X], [y[i : i + 16] for y in Y])
        >>> S = acc.value(unbiased=True)
        >>> S.shape, abs(float(S[0, 1]) - linear_cka(X[0], Y[1], unbiased=True)) < 1e-6
        (torch.Size([3, 2]), True)
    """

    def __init__(self, *, matmul_dtype: torch.dtype | None = None, chunk_rows: int = 4096) -> None:
        self.matmul_dtype = _check_matmul_dtype(matmul_dtype)
        self.chunk_rows = check_positive_int(chunk_rows, "chunk_rows")
        self.reset()

    @property
    def _dt(self) -> torch.dtype:
        """The dtype of the products (resolved from the first batch when ``matmul_dtype=None``)."""
        assert self._resolved_dtype is not None
        return self._resolved_dtype

    def reset(self) -> StreamingCKAMatrix:
        """Forget every batch seen so far.

        Returns:
            ``self``.
        """
        self.n_samples_ = 0
        self._resolved_dtype: torch.dtype | None = self.matmul_dtype
        self._widths: tuple[list[int], list[int] | None] | None = None
        self._buf_a: Tensor | None = None  # chunk buffers of (chunk_rows, P_a), (chunk_rows, P_b)
        self._buf_b: Tensor | None = None
        self._pending_rows = 0
        self._acc: dict[str, Any] = {}
        # per representation: the power of two each is multiplied by (fixed by the first rows)
        self._inv_scales: tuple[list[float], list[float] | None] | None = None
        return self

    def _set_scales(self, A: list[Tensor], B: list[Tensor] | None) -> None:
        """Fix each representation's scale factor from ``A``/``B`` (no-op once fixed or empty)."""
        if self._inv_scales is not None or A[0].shape[0] == 0:
            return
        self._inv_scales = (_inv_pow2_scales(A), None if B is None else _inv_pow2_scales(B))

    @property
    def symmetric(self) -> bool | None:
        """Whether ``reps_b`` was omitted (one set compared with itself); ``None`` before data."""
        return None if self._widths is None else self._widths[1] is None

    def update(self, reps_a: Any, reps_b: Any = None) -> StreamingCKAMatrix:
        """Accumulate a batch of rows (the same inputs in every representation).

        Args:
            reps_a: list of ``(b, p_i)`` tensors, the first set of representations (rows of
                the result).
            reps_b: list of ``(b, q_j)`` tensors (columns), or ``None`` to compare ``reps_a``
                with itself; must be given (or omitted) consistently across batches.

        Returns:
            ``self``, so calls chain.

        Raises:
            TypeError: if a set is not a list/tuple of floating tensors.
            ValueError: if a tensor is not 2-D, holds NaN/Inf, the row counts differ, or the
                number of representations, their widths, or the use of ``reps_b`` differ from
                earlier batches.
        """
        A = _as_reps(reps_a, "reps_a")
        B = None if reps_b is None else _as_reps(reps_b, "reps_b")
        if B is not None and B[0].shape[0] != A[0].shape[0]:
            raise ValueError(
                f"reps_a and reps_b must have the same number of rows, got {A[0].shape[0]} "
                f"and {B[0].shape[0]}"
            )
        self._update_checked(A, B)
        return self

    def _update_checked(self, A: list[Tensor], B: list[Tensor] | None) -> None:
        widths = ([int(R.shape[1]) for R in A], None if B is None else [int(R.shape[1]) for R in B])
        if self._widths is None:
            self._widths = widths
            if self._resolved_dtype is None:
                wide = any(R.dtype == torch.float64 for R in A + (B or []))
                self._resolved_dtype = torch.float64 if wide else torch.float32
        elif widths != self._widths:
            raise ValueError(
                f"representation widths {widths[0]} / {widths[1]} (None: reps_b omitted) "
                f"differ from earlier batches: {self._widths[0]} / {self._widths[1]}"
            )
        device = self._acc["device"] if self._acc else A[0].device
        m = int(A[0].shape[0])
        self._set_scales(A, B)
        inv_a = None if self._inv_scales is None else self._inv_scales[0]
        inv_b = None if self._inv_scales is None else self._inv_scales[1]
        if self._pending_rows and self._pending_rows + m > self.chunk_rows:
            self._flush()
        if m >= self.chunk_rows:  # a large batch is accumulated at once, from one copy
            ZA = self._copy_into(None, 0, A, device, inv_a)
            ZB = None if B is None else self._copy_into(None, 0, B, device, inv_b)
            self._check_rows(ZA, ZB, A, B)
            self.n_samples_ += m
            self._flush(ZA, ZB)
            return
        # Small batches are copied into the chunk buffer (so the caller may reuse its tensors).
        r0 = self._pending_rows
        self._buf_a = self._copy_into(self._buf_a, r0, A, device, inv_a)
        if B is not None:
            self._buf_b = self._copy_into(self._buf_b, r0, B, device, inv_b)
        ZB = None if self._buf_b is None or B is None else self._buf_b[r0 : r0 + m]
        self._check_rows(self._buf_a[r0 : r0 + m], ZB, A, B)
        self._pending_rows += m
        self.n_samples_ += m
        if self._pending_rows >= self.chunk_rows:
            self._flush()

    def _copy_into(
        self,
        buf: Tensor | None,
        r0: int,
        reps: list[Tensor],
        device: torch.device,
        inv_scales: list[float] | None,
    ) -> Tensor:
        """Copy ``reps`` side by side into rows ``r0:`` of ``buf`` (converting dtype and device).

        Each representation is multiplied by its power-of-two factor on the way, in its own
        dtype (exact), so a value that overflows the product dtype unscaled is never formed.

        Returns:
            ``buf``, or when it is ``None`` a fresh ``(max(m, chunk_rows), sum p_i)`` matrix.
        """
        m = int(reps[0].shape[0])
        width = sum(int(R.shape[1]) for R in reps)
        if buf is None:
            rows = m if m >= self.chunk_rows else self.chunk_rows
            buf = torch.empty(rows, width, dtype=self._dt, device=device)
        c0 = 0
        for i, R in enumerate(reps):
            dst = buf[r0 : r0 + m, c0 : c0 + R.shape[1]]
            inv = 1.0 if inv_scales is None else inv_scales[i]
            if inv == 1.0:
                dst.copy_(R)
            else:
                torch.mul(R.to(device), inv, out=dst)
            c0 += R.shape[1]
        return buf

    @staticmethod
    def _check_rows(ZA: Tensor, ZB: Tensor | None, A: list[Tensor], B: list[Tensor] | None) -> None:
        """One reduction per side; on NaN/Inf, name the offending representation."""
        for Z, reps, name in ((ZA, A, "reps_a"), (ZB, B, "reps_b")):
            if Z is None or reps is None or bool(torch.isfinite(Z.sum())):
                continue
            for i, R in enumerate(reps):
                check_finite(R, f"{name}[{i}]")

    @staticmethod
    def _offsets(widths: list[int]) -> list[tuple[int, int]]:
        out, c0 = [], 0
        for w in widths:
            out.append((c0, c0 + w))
            c0 += w
        return out

    def _flush(self, ZA: Tensor | None = None, ZB: Tensor | None = None) -> None:
        """Accumulate the buffered rows, or the given fresh ``ZA``/``ZB`` (modified in place)."""
        assert self._widths is not None
        wa, wb = self._widths
        if ZA is None:
            if not self._pending_rows:
                return
            m = self._pending_rows
            assert self._buf_a is not None
            ZA = self._buf_a[:m]
            ZB = None if wb is None or self._buf_b is None else self._buf_b[:m]
            self._pending_rows = 0
        m = int(ZA.shape[0])
        f64, dt = torch.float64, self._dt
        acc = self._acc
        if not acc:  # shift by the first chunk's mean; allocate the float64 accumulators
            acc["device"] = ZA.device
            acc["oa"] = self._offsets(wa)
            acc["ob"] = None if wb is None else self._offsets(wb)
            z = lambda *shape: torch.zeros(*shape, dtype=f64, device=ZA.device)  # noqa: E731
            for key, Z, w in (("a", ZA, wa), ("b", ZB, wb)):
                if Z is None or w is None:
                    continue
                acc[f"shift_{key}"] = (Z.sum(dim=0, dtype=f64) / m).to(dt)
                acc[f"s_{key}"] = z(sum(w))  # column sums
                acc[f"r_{key}"] = z(len(w))  # sums of squared row norms a_i
            la, pa = len(wa), sum(wa)
            if wb is None:
                acc["g"] = [z(hi - lo, pa - lo) for lo, hi in acc["oa"]]  # X_i^T [X_i..X_L]
                acc["aa"] = z(la, la)  # sum_k a_i(k) a_j(k)
                acc["a_za"] = z(la, pa)  # sum_k a_i(k) x(k)
            else:
                lb, pb = len(wb), sum(wb)
                acc["c"] = [z(hi - lo, pb) for lo, hi in acc["oa"]]  # X_i^T [Y_1..Y_Lb]
                acc["ga"] = [z(w, w) for w in wa]
                acc["gb"] = [z(w, w) for w in wb]
                acc["ab"], acc["aa"], acc["bb"] = z(la, lb), z(la), z(lb)
                acc["a_za"], acc["a_zb"] = z(la, pa), z(la, pb)
                acc["b_za"], acc["b_zb"] = z(lb, pa), z(lb, pb)
        ZA.sub_(acc["shift_a"])
        ones = torch.ones(m, dtype=dt, device=ZA.device)
        ra = self._row_norms(ZA, acc["oa"])
        acc["s_a"] += (ones @ ZA).to(f64)
        acc["r_a"] += ra.sum(dim=0)
        acc["a_za"] += (ra.to(dt).T @ ZA).to(f64)

        def add_product(target: Tensor, left: Tensor, right: Tensor) -> None:
            if dt == f64:
                target.addmm_(left.T, right)
            else:  # single-precision product, float64 accumulation across chunks
                target.add_(torch.mm(left.T, right))

        if ZB is None:
            acc["aa"] += ra.T @ ra
            for (lo, hi), g in zip(acc["oa"], acc["g"], strict=True):
                add_product(g, ZA[:, lo:hi], ZA[:, lo:])
            return
        ZB.sub_(acc["shift_b"])
        rb = self._row_norms(ZB, acc["ob"])
        acc["s_b"] += (ones @ ZB).to(f64)
        acc["r_b"] += rb.sum(dim=0)
        acc["ab"] += ra.T @ rb
        acc["aa"] += ra.pow(2).sum(dim=0)
        acc["bb"] += rb.pow(2).sum(dim=0)
        acc["a_zb"] += (ra.to(dt).T @ ZB).to(f64)
        acc["b_za"] += (rb.to(dt).T @ ZA).to(f64)
        acc["b_zb"] += (rb.to(dt).T @ ZB).to(f64)
        for (lo, hi), c, g in zip(acc["oa"], acc["c"], acc["ga"], strict=True):
            add_product(c, ZA[:, lo:hi], ZB)
            self._add_gram(g, ZA[:, lo:hi])
        for (lo, hi), g in zip(acc["ob"], acc["gb"], strict=True):
            self._add_gram(g, ZB[:, lo:hi])

    _GRAM_BLOCK = 1024  # column block of the symmetric products

    @classmethod
    def _gram_blocks(cls, width: int) -> list[tuple[int, int]]:
        nb = max(1, width // cls._GRAM_BLOCK)
        edges = [round(k * width / nb) for k in range(nb + 1)]
        return list(itertools.pairwise(edges))

    def _add_gram(self, target: Tensor, Z: Tensor) -> None:
        """``target += Z^T Z``, only the upper block triangle for wide ``Z`` (see _full_gram)."""
        if self._dt == torch.float64:
            target.addmm_(Z.T, Z)
            return
        for lo, hi in self._gram_blocks(Z.shape[1]):  # symmetric: about half the flops
            target[lo:hi, lo:].add_(torch.mm(Z[:, lo:hi].T, Z[:, lo:]))

    def _full_gram(self, upper: Tensor) -> Tensor:
        """The symmetric matrix whose upper block triangle :meth:`_add_gram` accumulated."""
        blocks = self._gram_blocks(upper.shape[0])
        if self._dt == torch.float64 or len(blocks) == 1:
            return upper
        full = upper.clone()
        for i, (lo, hi) in enumerate(blocks):
            for lo2, hi2 in blocks[i + 1 :]:
                full[lo2:hi2, lo:hi] = upper[lo:hi, lo2:hi2].T
        return full

    @staticmethod
    def _row_norms(Z: Tensor, offsets: list[tuple[int, int]]) -> Tensor:
        """``(m, L)`` float64 squared row norms of each block of columns."""
        sq = Z.square()
        return torch.stack([sq[:, lo:hi].sum(dim=1) for lo, hi in offsets], 1).to(torch.float64)

    # -- read-out -------------------------------------------------------------------------------
    def _hsic_matrices(self, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
        """``HSIC(X_i, Y_j)`` (``L_a x L_b``), ``HSIC(X_i, X_i)``, ``HSIC(Y_j, Y_j)``."""
        self._flush()
        acc, n = self._acc, self.n_samples_
        oa, ob = acc["oa"], acc["ob"]
        s_a, r_a, a_za = acc["s_a"], acc["r_a"], acc["a_za"]

        def hsic(
            cross: Tensor, s1: Tensor, s2: Tensor, sa: Tensor, sb: Tensor, sab: Tensor,
            a_on_2: Tensor, b_on_1: Tensor,
        ) -> Tensor:  # fmt: skip
            if not unbiased:
                return _hsic0_from_sums(n, cross, s1, s2)
            return _hsic1_from_sums(n, cross, s1, s2, sa, sb, sab, a_on_2, b_on_1)

        if ob is None:  # symmetric: X_i^T X_j for j >= i is stored in g[i][:, lo_j - lo_i:]
            la = len(oa)
            H = torch.empty(la, la, dtype=torch.float64, device=s_a.device)
            for i, (lo_i, hi_i) in enumerate(oa):
                for j in range(i, la):
                    lo_j, hi_j = oa[j]
                    cross = acc["g"][i][:, lo_j - lo_i : hi_j - lo_i]
                    H[i, j] = H[j, i] = hsic(
                        cross, s_a[lo_i:hi_i], s_a[lo_j:hi_j], r_a[i], r_a[j], acc["aa"][i, j],
                        a_za[i, lo_j:hi_j], a_za[j, lo_i:hi_i],
                    )  # fmt: skip
            diag = H.diagonal().clone()
            return H, diag, diag
        s_b, r_b = acc["s_b"], acc["r_b"]
        a_zb, b_za = acc["a_zb"], acc["b_za"]
        H = torch.empty(len(oa), len(ob), dtype=torch.float64, device=s_a.device)
        for i, (lo_i, hi_i) in enumerate(oa):
            for j, (lo_j, hi_j) in enumerate(ob):
                H[i, j] = hsic(
                    acc["c"][i][:, lo_j:hi_j], s_a[lo_i:hi_i], s_b[lo_j:hi_j], r_a[i], r_b[j],
                    acc["ab"][i, j], a_zb[i, lo_j:hi_j], b_za[j, lo_i:hi_i],
                )  # fmt: skip

        def self_hsic(key: str, offsets: list[tuple[int, int]]) -> Tensor:
            s, r, sq, r_z = acc[f"s_{key}"], acc[f"r_{key}"], acc[key * 2], acc[f"{key}_z{key}"]
            out = [
                hsic(
                    self._full_gram(g),
                    s[lo:hi],
                    s[lo:hi],
                    r[i],
                    r[i],
                    sq[i],
                    r_z[i, lo:hi],
                    r_z[i, lo:hi],
                )
                for i, ((lo, hi), g) in enumerate(zip(offsets, acc[f"g{key}"], strict=True))
            ]
            return torch.stack(out)

        return H, self_hsic("a", oa), self_hsic("b", ob)

    def value(self, unbiased: bool = True) -> Tensor:
        """The CKA matrix of all rows seen so far.

        Args:
            unbiased: the unbiased HSIC_1 estimator (default) or the biased one.

        Returns:
            ``(L_a, L_b)`` float64 tensor (``(L_a, L_a)`` and symmetric without ``reps_b``)
            with ``CKA(X_i, Y_j)`` at ``[i, j]``.

        Raises:
            ValueError: if fewer than 4 rows (2 when biased) have been seen, or a
                representation is constant so that CKA is undefined.
        """
        need = 4 if unbiased else 2
        if self.n_samples_ < need:
            raise ValueError(
                f"need at least {need} rows{' for the unbiased estimator' if unbiased else ''}, "
                f"seen {self.n_samples_}"
            )
        H, hx, hy = self._hsic_matrices(unbiased)
        if not bool(torch.isfinite(H).all() & torch.isfinite(hx).all() & torch.isfinite(hy).all()):
            raise ValueError(
                "the accumulated products overflowed: each representation is scaled by its "
                "largest magnitude in the first batch, and a later batch was more than about "
                "1e18 times larger; pass batches of comparable scale (or rescale them yourself: "
                "CKA is invariant to the scale of each representation)"
            )
        for h, side in (
            (hx, "reps_a"),
            (hy, "reps_b" if self._acc["ob"] is not None else "reps_a"),
        ):
            bad = [i for i, v in enumerate(h.tolist()) if not v > 0.0]
            if bad:
                raise ValueError(
                    f"CKA is undefined for {side}{bad}: its self-similarity HSIC is not positive "
                    "(constant across rows, or too few rows for the unbiased estimator)"
                )
        return H / torch.sqrt(torch.outer(hx, hy))

    def __repr__(self) -> str:
        shape = "?" if self._widths is None else self._shape_str()
        return f"StreamingCKAMatrix(n_samples_={self.n_samples_}, shape={shape})"

    def _shape_str(self) -> str:
        assert self._widths is not None
        wa, wb = self._widths
        return f"({len(wa)}, {len(wa if wb is None else wb)})"


def cka_matrix(
    reps_a: Any,
    reps_b: Any = None,
    *,
    unbiased: bool = False,
    matmul_dtype: torch.dtype | None = None,
    chunk_rows: int = 4096,
) -> Tensor:
    r"""Linear CKA between every pair of representations of the same inputs.

    ``[i, j]`` is :func:`linear_cka` of ``reps_a[i]`` and ``reps_b[j]`` (Kornblith et al.,
    "Similarity of Neural Network Representations Revisited", ICML 2019; unbiased: HSIC_1 of
    Song et al., JMLR 2012), computed with :class:`StreamingCKAMatrix` over chunks of
    ``chunk_rows`` rows, so the products and self-similarities are shared across pairs. To
    avoid holding all activations, feed batches to :class:`StreamingCKAMatrix` yourself or use
    :func:`~subspaces.representations.layer_similarity_matrix` on models.

    Args:
        reps_a: list of ``(N, p_i)`` tensors (rows of the result).
        reps_b: list of ``(N, q_j)`` tensors (columns), or ``None`` for the symmetric
            self-similarity matrix of ``reps_a``.
        unbiased: use the unbiased HSIC estimator (needs ``N >= 4``).
        matmul_dtype: ``None`` (default: the inputs' precision), ``torch.float64`` or
            ``torch.float32`` (about 4x faster on CPU, about 1e-7 from the float64 value).
        chunk_rows: rows per accumulated chunk.

    Returns:
        ``(len(reps_a), len(reps_b))`` float64 tensor of CKA values.

    Raises:
        TypeError: for a set that is not a list/tuple of floating tensors or a bad option type.
        ValueError: for tensors that are not 2-D, hold NaN/Inf or have different row counts,
            too few rows, a constant representation, or a bad option value.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(40, 6, generator=g)
        >>> S = cka_matrix([X, 2.0 * X, torch.randn(40, 3, generator=g)])
        >>> [round(float(v), 6) for v in S[0, :2]], bool((S - S.T).abs().max() == 0)
        ([1.0, 1.0], True)
    """
    acc = StreamingCKAMatrix(matmul_dtype=matmul_dtype, chunk_rows=chunk_rows)
    A = _as_reps(reps_a, "reps_a")
    B = None if reps_b is None else _as_reps(reps_b, "reps_b")
    n = A[0].shape[0]
    if B is not None and B[0].shape[0] != n:
        raise ValueError(
            f"reps_a and reps_b must have the same number of rows, got {n} and {B[0].shape[0]}"
        )
    acc._set_scales(A, B)  # from every row, not only the first chunk
    for i in range(0, n, acc.chunk_rows):
        acc._update_checked(
            [R[i : i + acc.chunk_rows] for R in A],
            None if B is None else [R[i : i + acc.chunk_rows] for R in B],
        )
    return acc.value(unbiased=unbiased)


class StreamingLinearCKA:
    r"""Exact linear CKA over data seen in batches, in ``O(N d^2)`` time and ``O(d^2)`` memory.

    With :math:`K = XX^T`, :math:`L = YY^T`, zeroed diagonals :math:`\tilde K, \tilde L`, row
    norms :math:`a_i = \|x_i\|^2`, :math:`b_i = \|y_i\|^2` and column sums :math:`s_x = X^T1`,
    :math:`s_y = Y^T1`, every term of the unbiased HSIC_1 (Song et al., JMLR 2012) is a sum over
    rows:

    - :math:`\mathrm{tr}(\tilde K\tilde L) = \|X^TY\|_F^2 - \sum_i a_ib_i`,
    - :math:`1^T\tilde K1 = \|s_x\|^2 - \sum_i a_i`,
    - :math:`1^T\tilde K\tilde L1 = s_x^T(X^TY)s_y - s_y^T\sum_i a_iy_i - s_x^T\sum_i b_ix_i
      + \sum_i a_ib_i`,

    and likewise for :math:`(K, K)` and :math:`(L, L)`. So accumulating :math:`X^TY`,
    :math:`X^TX`, :math:`Y^TY`, the column sums, :math:`\sum a_i`, :math:`\sum a_i^2`,
    :math:`\sum a_ib_i`, :math:`\sum a_ix_i`, :math:`\sum a_iy_i` (and the ``b`` analogues)
    gives the same number as the ``N x N`` formula, independent of how rows are batched. The
    biased CKA (Kornblith et al., ICML 2019) comes from the same sums. Rows are shifted by the
    first chunk's mean before accumulating (both estimators are shift invariant), which keeps
    the sums well conditioned for uncentered activations. This is the ``1 x 1`` case of
    :class:`StreamingCKAMatrix`: batches are buffered to ``chunk_rows`` rows, products run in
    ``matmul_dtype`` (by default the inputs' precision; float32 is about 4x faster on CPU and
    about 1e-7 from the float64 value) and are accumulated in float64.

    Unlike minibatch CKA (Nguyen et al., ICLR 2021; torch-cka), which averages HSIC over
    batches and so depends on the batch size, this is the full-data estimator.

    Args:
        matmul_dtype: ``None`` (the inputs' precision), ``torch.float64`` or ``torch.float32``,
            the dtype of the per-chunk products.
        chunk_rows: rows buffered before they are accumulated.

    Raises:
        TypeError: if ``matmul_dtype`` is not a dtype or ``chunk_rows`` not an int.
        ValueError: if ``matmul_dtype`` is not float32/float64 or ``chunk_rows < 1``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X, Y = torch.randn(100, 6, generator=g), torch.randn(100, 4, generator=g)
        >>> cka = StreamingLinearCKA(matmul_dtype=torch.float64)
        >>> for i in range(0, 100, 32):
        ...     _ = cka.update(X[i : i + 32], Y[i : i + 32])
        >>> abs(cka.value() - linear_cka(X, Y, unbiased=True)) < 1e-12
        True
    """

    def __init__(self, *, matmul_dtype: torch.dtype | None = None, chunk_rows: int = 4096) -> None:
        self._engine = StreamingCKAMatrix(matmul_dtype=matmul_dtype, chunk_rows=chunk_rows)
        self.reset()

    def reset(self) -> StreamingLinearCKA:
        """Forget every batch seen so far.

        Returns:
            ``self``.
        """
        self._engine.reset()
        self.n_samples_ = 0
        self._width: tuple[int, int] | None = None
        return self

    def update(self, X_batch: Tensor, Y_batch: Tensor) -> StreamingLinearCKA:
        """Accumulate a batch of rows (the same inputs in both representations).

        Args:
            X_batch: ``(b, p)`` rows of the first representation.
            Y_batch: ``(b, q)`` rows of the second; ``p`` and ``q`` must match earlier batches.

        Returns:
            ``self``, so calls chain.

        Raises:
            TypeError: if a batch is not a floating tensor.
            ValueError: if a batch is not 2-D, holds NaN/Inf, the two batches have different
                numbers of rows, or the widths differ from earlier batches.
        """
        X, Y = _check_pair(X_batch, Y_batch, min_rows=1, cast=False)
        width = (int(X.shape[1]), int(Y.shape[1]))
        if self._width is None:
            self._width = width
        else:
            for B, name, w in ((X, "X_batch", self._width[0]), (Y, "Y_batch", self._width[1])):
                if B.shape[1] != w:
                    raise ValueError(f"{name} has {B.shape[1]} columns, earlier batches had {w}")
        self._engine._update_checked([X], [Y])
        self.n_samples_ = self._engine.n_samples_
        return self

    def value(self, unbiased: bool = True) -> float:
        """The CKA of all rows seen so far.

        Args:
            unbiased: the unbiased HSIC_1 estimator (default) or the biased one.

        Returns:
            The CKA, a float.

        Raises:
            ValueError: if fewer than 4 rows (2 when biased) have been seen, or a side is
                constant so that CKA is undefined.
        """
        need = 4 if unbiased else 2
        if self.n_samples_ < need:
            raise ValueError(
                f"need at least {need} rows{' for the unbiased estimator' if unbiased else ''}, "
                f"seen {self.n_samples_}"
            )
        H, hx, hy = self._engine._hsic_matrices(unbiased)
        return _cka_from_hsic(H[0, 0], hx[0], hy[0])

    def __repr__(self) -> str:
        return f"StreamingLinearCKA(n_samples_={self.n_samples_})"


# ----- CCA family ------------------------------------------------------------------------------
@dataclass(frozen=True)
class CCAResult:
    """Result of :func:`svcca` or :func:`pwcca`.

    Attributes:
        mean: the summary similarity (mean, or PWCCA-weighted mean, canonical correlation).
        correlations: the canonical correlations, descending, in ``[0, 1]``.
        weights: the PWCCA weights of each correlation (summing to 1), or ``None`` for SVCCA.
        dims: the number of directions kept for ``X`` and ``Y``.
    """

    mean: float
    correlations: Tensor
    weights: Tensor | None
    dims: tuple[int, int]

    def __float__(self) -> float:
        return self.mean


def _column_basis(Xc: Tensor, keep: float | None) -> Tensor:
    """Orthonormal basis of the top singular directions of ``Xc`` (``(N, r)``, in ``R^N``)."""
    U, s, _ = torch.linalg.svd(Xc, full_matrices=False)
    tol = max(Xc.shape) * torch.finfo(s.dtype).eps * float(s[0])
    rank = int((s > tol).sum())
    if rank == 0:
        raise ValueError("a representation is constant across rows; CCA is undefined")
    r = rank
    if keep is not None and keep < 1.0:
        energy = torch.cumsum(s[:rank] ** 2, 0) / (s[:rank] ** 2).sum()
        r = min(rank, int((energy < keep).sum()) + 1)
    return U[:, :r]


def svcca(X: Tensor, Y: Tensor, *, keep: float = 0.99) -> CCAResult:
    r"""Singular vector canonical correlation analysis.

    Raghu, Gilmer, Yosinski & Sohl-Dickstein, "SVCCA: Singular Vector Canonical Correlation
    Analysis for Deep Learning Dynamics and Interpretability" (NeurIPS 2017): center each side,
    keep the fewest top singular directions holding a fraction ``keep`` of its variance, then
    run CCA between the two reduced representations. The canonical correlations are the
    cosines of the principal angles between the two reduced column spaces in ``R^N``. When a
    kept dimension reaches ``N - 1`` every correlation is trivially 1: use ``N >> p, q``.

    Args:
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        keep: fraction of variance to keep, in ``(0, 1]``; 1 keeps the numerical rank.

    Returns:
        A :class:`CCAResult` whose ``mean`` is the mean canonical correlation (``float()`` of it
        gives the same).

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: if they are not 2-D, hold NaN/Inf, have different numbers of rows or fewer
            than 2, ``keep`` is outside ``(0, 1]``, or a side is constant.

    Example:
        >>> import torch
        >>> X = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
        >>> A = torch.randn(5, 5, generator=torch.Generator().manual_seed(1))
        >>> round(svcca(X, X @ A, keep=1.0).mean, 6)
        1.0
    """
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    keep = check_positive_float(keep, "keep")
    if keep > 1.0:
        raise ValueError(f"keep must be in (0, 1], got {keep}")
    Xd, Yd = _unit_scale(Xd), _unit_scale(Yd)  # scale invariant: no over/underflow
    Ux, Uy = _column_basis(_center(Xd), keep), _column_basis(_center(Yd), keep)
    rho = torch.linalg.svdvals(Ux.T @ Uy).clamp(0.0, 1.0)
    return CCAResult(float(rho.mean()), rho, None, (Ux.shape[1], Uy.shape[1]))


def pwcca(X: Tensor, Y: Tensor) -> CCAResult:
    r"""Projection-weighted CCA.

    Morcos, Raghu & Bengio, "Insights on representational similarity in neural networks with
    canonical correlation" (NeurIPS 2018): the canonical correlations :math:`\rho_i` between the
    centered representations, averaged with weights :math:`\alpha_i \propto \sum_j |\langle h_i,
    x_j\rangle|`, how much of ``X``'s columns each (unit-norm) canonical variate :math:`h_i` of
    ``X`` accounts for. It is asymmetric: ``X`` provides the weights.

    Args:
        X: ``(N, p)`` representation (the one weighting the correlations).
        Y: ``(N, q)`` representation of the same ``N`` inputs.

    Returns:
        A :class:`CCAResult` whose ``mean`` is the weighted mean canonical correlation.

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: if they are not 2-D, hold NaN/Inf, have different numbers of rows or fewer
            than 2, or a side is constant.

    Example:
        >>> import torch
        >>> X = torch.randn(100, 5, generator=torch.Generator().manual_seed(0))
        >>> A = torch.randn(5, 3, generator=torch.Generator().manual_seed(1))
        >>> round(pwcca(X, X @ A).mean, 6)
        1.0
    """
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    Xd, Yd = _unit_scale(Xd), _unit_scale(Yd)  # scale invariant: no over/underflow
    Xc = _center(Xd)
    Ux, Uy = _column_basis(Xc, None), _column_basis(_center(Yd), None)
    A, rho, _ = torch.linalg.svd(Ux.T @ Uy, full_matrices=False)
    rho = rho.clamp(0.0, 1.0)
    H = Ux @ A  # orthonormal canonical variates of X, (N, min(rx, ry))
    alpha = (H.T @ Xc).abs().sum(dim=1)
    alpha = alpha / alpha.sum()
    return CCAResult(float(alpha @ rho), rho, alpha, (Ux.shape[1], Uy.shape[1]))


# ----- Procrustes and principal subspaces ------------------------------------------------------
def procrustes_distance(
    X: Tensor, Y: Tensor, *, metric: Literal["euclidean", "angular"] = "euclidean"
) -> float:
    r"""Orthogonal Procrustes distance between centered, Frobenius-normalized representations.

    With :math:`\|X_c\|_F = \|Y_c\|_F = 1` (the narrower side zero-padded to the wider),
    :math:`\min_{Q^TQ=I}\|X_c - Y_cQ\|_F^2 = 2 - 2\|X_c^TY_c\|_*` (Schönemann 1966). ``euclidean``
    returns the square root of that, in ``[0, 2]`` (Ding, Denain & Steinhardt, NeurIPS 2021
    use its square); ``angular`` returns :math:`\arccos\|X_c^TY_c\|_*`, in ``[0, pi/2]``, the
    shape metric of Williams et al., "Generalized Shape Metrics on Neural Representations"
    (NeurIPS 2021). Both are 0 exactly when ``Y`` is a rotated and rescaled copy of ``X``.

    Args:
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        metric: ``"euclidean"`` or ``"angular"``.

    Returns:
        The distance, a float ``>= 0``.

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: if they are not 2-D, hold NaN/Inf, have different numbers of rows or fewer
            than 2, a side is constant, or ``metric`` is unknown.

    Example:
        >>> import torch
        >>> X = torch.randn(30, 4, generator=torch.Generator().manual_seed(0))
        >>> Q = torch.linalg.qr(torch.randn(4, 4, generator=torch.Generator().manual_seed(1))).Q
        >>> procrustes_distance(X, 5.0 * X @ Q + 1.0) < 1e-6
        True
    """
    check_choice(metric, "metric", ("euclidean", "angular"))
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    Xc, Yc = _center(_unit_scale(Xd)), _center(_unit_scale(Yd))  # no over/underflow
    for M, name in ((Xc, "X"), (Yc, "Y")):
        if float(M.norm()) == 0.0:
            raise ValueError(
                f"{name} is constant across rows; the Procrustes distance is undefined"
            )
    nuc = float(torch.linalg.matrix_norm(Xc.T @ Yc, ord="nuc") / (Xc.norm() * Yc.norm()))
    nuc = min(max(nuc, 0.0), 1.0)
    if metric == "angular":
        return math.acos(nuc)
    return math.sqrt(max(2.0 - 2.0 * nuc, 0.0))


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


# ----- bootstrap -------------------------------------------------------------------------------
class BootstrapResult(NamedTuple):
    """``(estimate, low, high)`` from :func:`bootstrap_ci`."""

    estimate: float
    low: float
    high: float


def bootstrap_ci(
    measure: Callable[[Tensor, Tensor], Any],
    X: Tensor,
    Y: Tensor,
    *,
    num_samples: int = 200,
    level: float = 0.95,
    generator: torch.Generator | None = None,
) -> BootstrapResult:
    """Percentile bootstrap confidence interval of a similarity measure, resampling rows.

    Efron & Tibshirani, "An Introduction to the Bootstrap" (1993): the same ``N`` row indices,
    drawn with replacement, are applied to ``X`` and ``Y``; the interval is the
    ``(1 - level) / 2`` and ``(1 + level) / 2`` quantiles of the resampled values. Resampling
    duplicates rows, which unbiased estimators treat as distinct inputs; read intervals of
    unbiased CKA as approximate.

    Args:
        measure: ``measure(X, Y)`` returning something ``float()`` accepts (every measure in
            this module does).
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        num_samples: number of bootstrap resamples (at least 2).
        level: confidence level, in ``(0, 1)``.
        generator: source of randomness for the row indices.

    Returns:
        A :class:`BootstrapResult` ``(estimate, low, high)`` where ``estimate`` is the measure
        on the full data.

    Raises:
        TypeError: if ``measure`` is not callable, or an input has the wrong type.
        ValueError: if ``X``/``Y`` are invalid as for the measures, ``level`` is outside
            ``(0, 1)`` or ``num_samples < 2``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.randn(80, 4, generator=g)
        >>> Y = X + 0.5 * torch.randn(80, 4, generator=g)
        >>> est, low, high = bootstrap_ci(linear_cka, X, Y, num_samples=50, generator=g)
        >>> low <= est <= high
        True
    """
    if not callable(measure):
        raise TypeError(f"measure must be callable, got {type(measure).__name__}")
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    check_positive_int(num_samples, "num_samples", minimum=2)
    level = check_positive_float(level, "level")
    if not level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    n = Xd.shape[0]
    estimate = float(measure(Xd, Yd))
    values = torch.empty(num_samples, dtype=torch.float64)
    for i in range(num_samples):
        idx = torch.randint(0, n, (n,), generator=generator).to(Xd.device)
        values[i] = float(measure(Xd[idx], Yd[idx]))
    tail = (1.0 - level) / 2.0
    q = torch.quantile(values, torch.tensor([tail, 1.0 - tail], dtype=torch.float64))
    return BootstrapResult(estimate, float(q[0]), float(q[1]))
