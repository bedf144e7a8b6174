r"""Similarity measures between two representations of the same ``N`` inputs.

Every measure is a pure function of an ``(N, p)`` and an ``(N, q)`` tensor (same rows, any
widths), computed in float64 internally: linear and RBF CKA (biased or unbiased), an exact
streaming unbiased linear CKA that never forms an ``N x N`` Gram, SVCCA, PWCCA, orthogonal
Procrustes distance, principal angles between principal subspaces, and a row bootstrap for
confidence intervals of any of them.
"""

from __future__ import annotations

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
from ..linalg.subspace import Subspace

__all__ = [
    "BootstrapResult",
    "CCAResult",
    "StreamingLinearCKA",
    "SubspaceSimilarityResult",
    "bootstrap_ci",
    "linear_cka",
    "procrustes_distance",
    "pwcca",
    "rbf_cka",
    "subspace_similarity",
    "svcca",
]


# ----- validation ------------------------------------------------------------------------------
def _as_matrix(x: Any, name: str) -> Tensor:
    x = check_finite(check_float_tensor(x, name, ndim=2), name)
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(x.shape)}")
    return x.to(torch.float64)


def _check_pair(X: Any, Y: Any, *, min_rows: int, why: str = "") -> tuple[Tensor, Tensor]:
    """Validate two representations of the same inputs and return them in float64."""
    Xd, Yd = _as_matrix(X, "X"), _as_matrix(Y, "Y")
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
    return _cka_grams(_rbf_gram(Xd, s), _rbf_gram(Yd, s), unbiased)


# ----- streaming exact unbiased linear CKA -----------------------------------------------------
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
    first batch's mean before accumulating (both estimators are shift invariant), which keeps
    the float64 sums well conditioned for uncentered activations.

    Unlike minibatch CKA (Nguyen et al., ICLR 2021; torch-cka), which averages HSIC over
    batches and so depends on the batch size, this is the full-data estimator.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X, Y = torch.randn(100, 6, generator=g), torch.randn(100, 4, generator=g)
        >>> cka = StreamingLinearCKA()
        >>> for i in range(0, 100, 32):
        ...     _ = cka.update(X[i : i + 32], Y[i : i + 32])
        >>> abs(cka.value() - linear_cka(X, Y, unbiased=True)) < 1e-12
        True
    """

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> StreamingLinearCKA:
        """Forget every batch seen so far.

        Returns:
            ``self``.
        """
        self.n_samples_ = 0
        self._acc: dict[str, Tensor] = {}
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
        X, Y = _check_pair(X_batch, Y_batch, min_rows=1)
        acc = self._acc
        if not acc:
            p, q = X.shape[1], Y.shape[1]
            acc["shift_x"], acc["shift_y"] = X.mean(dim=0), Y.mean(dim=0)
            z = X.new_zeros
            acc.update(
                xty=z(p, q), xtx=z(p, p), yty=z(q, q), sx=z(p), sy=z(q),
                ax=z(p), ay=z(q), bx=z(p), by=z(q),
                sa=z(()), sb=z(()), saa=z(()), sbb=z(()), sab=z(()),
            )  # fmt: skip
        else:
            for B, name, key in ((X, "X_batch", "sx"), (Y, "Y_batch", "sy")):
                width = acc[key].shape[0]
                if B.shape[1] != width:
                    raise ValueError(
                        f"{name} has {B.shape[1]} columns, earlier batches had {width}"
                    )
            X, Y = X.to(acc["sx"].device), Y.to(acc["sx"].device)
        X = X - acc["shift_x"]
        Y = Y - acc["shift_y"]
        a, b = X.pow(2).sum(dim=1), Y.pow(2).sum(dim=1)
        acc["xty"].addmm_(X.T, Y)
        acc["xtx"].addmm_(X.T, X)
        acc["yty"].addmm_(Y.T, Y)
        acc["sx"] += X.sum(dim=0)
        acc["sy"] += Y.sum(dim=0)
        acc["ax"] += a @ X
        acc["ay"] += a @ Y
        acc["bx"] += b @ X
        acc["by"] += b @ Y
        acc["sa"] += a.sum()
        acc["sb"] += b.sum()
        acc["saa"] += a @ a
        acc["sbb"] += b @ b
        acc["sab"] += a @ b
        self.n_samples_ += X.shape[0]
        return self

    def _hsic_terms(self, unbiased: bool) -> tuple[Tensor, Tensor, Tensor]:
        acc, n = self._acc, self.n_samples_
        sx, sy = acc["sx"], acc["sy"]
        if not unbiased:
            # Centered cross-products: X_c^T Y_c = X^T Y - s_x s_y^T / N.
            cxy = acc["xty"] - torch.outer(sx, sy) / n
            cxx = acc["xtx"] - torch.outer(sx, sx) / n
            cyy = acc["yty"] - torch.outer(sy, sy) / n
            return cxy.pow(2).sum(), cxx.pow(2).sum(), cyy.pow(2).sum()

        def hsic1(
            cross: Tensor, s1: Tensor, s2: Tensor, sa: Tensor, sb: Tensor, sab: Tensor,
            a_on_2: Tensor, b_on_1: Tensor,
        ) -> Tensor:  # fmt: skip
            trace = cross.pow(2).sum() - sab
            k1 = s1 @ s1 - sa
            l1 = s2 @ s2 - sb
            kl1 = s1 @ (cross @ s2) - s2 @ a_on_2 - s1 @ b_on_1 + sab
            return (trace + k1 * l1 / ((n - 1) * (n - 2)) - 2.0 * kl1 / (n - 2)) / (n * (n - 3))

        hxy = hsic1(acc["xty"], sx, sy, acc["sa"], acc["sb"], acc["sab"], acc["ay"], acc["bx"])
        hxx = hsic1(acc["xtx"], sx, sx, acc["sa"], acc["sa"], acc["saa"], acc["ax"], acc["ax"])
        hyy = hsic1(acc["yty"], sy, sy, acc["sb"], acc["sb"], acc["sbb"], acc["by"], acc["by"])
        return hxy, hxx, hyy

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
        return _cka_from_hsic(*self._hsic_terms(unbiased))

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
    Xc, Yc = _center(Xd), _center(Yd)
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
        angles: the ``k`` principal angles in radians, ascending.
        similarity: mean squared cosine of the angles (the overlap ``||Q_x^T Q_y||_F^2 / k``),
            in ``[0, 1]``.
        subspace_x: the top-``k`` principal subspace of ``X``, in ``R^N``.
        subspace_y: the top-``k`` principal subspace of ``Y``, in ``R^N``.
    """

    angles: Tensor
    similarity: float
    subspace_x: Subspace
    subspace_y: Subspace

    def __float__(self) -> float:
        return self.similarity


def subspace_similarity(X: Tensor, Y: Tensor, k: int) -> SubspaceSimilarityResult:
    r"""Principal angles between the top-``k`` principal subspaces of two representations.

    Each centered representation's top-``k`` left singular vectors (its first ``k`` principal
    component score directions) span a ``k``-dimensional subspace of ``R^N``; as in SVCCA
    (Raghu et al., NeurIPS 2017) the two are comparable whatever ``p`` and ``q``. The angles come
    from :meth:`subspaces.Subspace.principal_angles` (Björck & Golub 1973; Knyazev & Argentati,
    SISC 2002).

    Args:
        X: ``(N, p)`` representation.
        Y: ``(N, q)`` representation of the same ``N`` inputs.
        k: dimension of each principal subspace, at most ``min(N, p, q)``.

    Returns:
        A :class:`SubspaceSimilarityResult` (``float()`` of it is the mean squared cosine).

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor or ``k`` is not an int.
        ValueError: if they are not 2-D, hold NaN/Inf, have different numbers of rows or fewer
            than 2, or ``k`` is out of range.

    Example:
        >>> import torch
        >>> X = torch.randn(60, 6, generator=torch.Generator().manual_seed(0))
        >>> A = torch.randn(6, 6, generator=torch.Generator().manual_seed(1))
        >>> res = subspace_similarity(X, X @ A, 6)
        >>> float(res.angles.max()) < 1e-6, round(res.similarity, 6)
        (True, 1.0)
    """
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    check_positive_int(k, "k")
    kmax = min(Xd.shape[0], Xd.shape[1], Yd.shape[1])
    if k > kmax:
        raise ValueError(f"k must be <= min(N, p, q) = {kmax}, got {k}")
    Sx = Subspace.from_svd(_center(Xd), k)
    Sy = Subspace.from_svd(_center(Yd), k)
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
