r"""Centered kernel alignment of one pair of representations: linear, RBF and streaming.

Linear and RBF CKA (Kornblith et al., "Similarity of Neural Network Representations Revisited",
ICML 2019), biased or unbiased (HSIC_1 of Song et al., JMLR 2012), and the exact streaming
unbiased linear CKA of one pair (:class:`StreamingLinearCKA`, the ``1 x 1`` case of
:class:`~subspaces.representations.StreamingCKAMatrix`).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_positive_float
from ..linalg._precision import pow2_exponent
from ._reps import _center, _check_pair, _unit_scale
from .cka_pairs import StreamingCKAMatrix

__all__ = ["StreamingLinearCKA", "linear_cka", "rbf_cka"]


def _ratio(scaled: Tensor, original: Tensor) -> float:
    """The power of two ``scaled / original`` (1.0 when :func:`_unit_scale` left it alone).

    Returns:
        The factor, a float.
    """
    if scaled is original:
        return 1.0
    e = pow2_exponent(float(torch.linalg.vector_norm(original, ord=math.inf)))
    return math.ldexp(1.0, -e)


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
