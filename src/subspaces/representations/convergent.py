r"""Unit-level comparison of two networks: matching, sparse prediction and unit clusters.

Li, Yosinski, Clune, Lipson & Hopcroft, "Convergent Learning: Do different neural networks
learn the same representations?" (ICLR 2016) compare the units of two networks trained from
different initializations through their activations on the same inputs, at three
granularities:

- one-to-one: the unit correlation matrix (:func:`unit_correlation`), matched by a bipartite
  assignment maximizing the total correlation or by a semi-matching that pairs each unit with
  its best partner (:func:`match_units`);
- one-to-many: each unit of net B predicted from all units of net A by L1-regularized linear
  regression (lasso), counting how many units of A are needed (:func:`sparse_prediction`);
- many-to-many: spectral clustering of the units of both nets on their correlation graph
  (:func:`cluster_units`); clusters holding units of both nets are shared subspaces.

Representations are ``(N, p)`` and ``(N, q)`` tensors of activations of the same ``N``
inputs (see :mod:`subspaces.representations.capture` to collect them).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_float, check_positive_int
from ._reps import _check_pair

__all__ = [
    "SparsePredictionResult",
    "UnitClusters",
    "UnitMatching",
    "cluster_units",
    "match_units",
    "sparse_prediction",
    "unit_correlation",
]


def _standardize(X: Tensor) -> tuple[Tensor, Tensor]:
    """Columns centered and scaled to unit norm; also the mask of non-constant columns."""
    Xc = X - X.mean(dim=0, keepdim=True)
    norms = Xc.norm(dim=0)
    alive = norms > 1e-12 * max(float(norms.max()), 1e-300)
    return Xc / torch.where(alive, norms, torch.ones_like(norms)), alive


def unit_correlation(X: Tensor, Y: Tensor) -> Tensor:
    """Pearson correlation of every unit of ``X`` with every unit of ``Y``.

    A unit that is constant over the inputs (a dead ReLU) has correlation 0 with everything.

    Args:
        X: ``(N, p)`` activations of net A.
        Y: ``(N, q)`` activations of net B on the same inputs.

    Returns:
        ``(p, q)`` float64 tensor with entries in ``[-1, 1]``.

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: if they are not 2-D, hold NaN/Inf, or have different numbers of rows (or
            fewer than 2).

    Example:
        >>> import torch
        >>> X = torch.randn(100, 3, generator=torch.Generator().manual_seed(0))
        >>> C = unit_correlation(X, torch.cat([2 * X[:, [2]], -X[:, [0]]], dim=1))
        >>> [round(v, 6) for v in (C[2, 0].item(), C[0, 1].item())]
        [1.0, -1.0]
    """
    Xd, Yd = _check_pair(X, Y, min_rows=2)
    Xs, _ = _standardize(Xd)
    Ys, _ = _standardize(Yd)
    return (Xs.T @ Ys).clamp(-1.0, 1.0)


def _check_corr(corr: Any) -> Tensor:
    if not isinstance(corr, Tensor) or corr.ndim != 2 or corr.numel() == 0:
        raise ValueError(
            "corr must be a non-empty (p, q) tensor of correlations, got "
            + (f"shape {tuple(corr.shape)}" if isinstance(corr, Tensor) else type(corr).__name__)
        )
    if not corr.is_floating_point() or not bool(torch.isfinite(corr).all()):
        raise ValueError("corr must be a finite floating tensor")
    return corr.detach().to(torch.float64).cpu()


@dataclass(frozen=True)
class UnitMatching:
    """Result of :func:`match_units`.

    Attributes:
        rows: indices of the matched units of net A.
        cols: index of the unit of net B matched to each of ``rows``.
        correlations: ``corr[rows, cols]``.
        method: ``"bipartite"`` or ``"semi"``.

    Example:
        >>> import torch
        >>> from subspaces.representations import match_units
        >>> corr = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.7], [0.95, 0.1, 0.3]])
        >>> m = match_units(corr)  # one-to-one: unit 1 of A takes B's unit 2
        >>> m.rows.tolist(), m.cols.tolist(), m.method
        ([0, 1, 2], [1, 2, 0], 'bipartite')
        >>> round(m.mean, 4), round(m.fraction_above(0.8), 4)
        (0.85, 0.6667)
    """

    rows: Tensor
    cols: Tensor
    correlations: Tensor
    method: str

    @property
    def mean(self) -> float:
        """Mean correlation of the matched pairs."""
        return float(self.correlations.mean())

    def fraction_above(self, threshold: float) -> float:
        """Share of matched pairs whose correlation exceeds ``threshold``.

        Args:
            threshold: a correlation level, e.g. 0.9.

        Returns:
            The fraction, in ``[0, 1]``.
        """
        return float((self.correlations > threshold).double().mean())


def match_units(corr: Tensor, method: str = "bipartite") -> UnitMatching:
    """Match the units of net A (rows of ``corr``) to those of net B (columns).

    ``"bipartite"``: the one-to-one assignment maximizing the total correlation
    (:func:`scipy.optimize.linear_sum_assignment`, Kuhn 1955 / Crouse 2016), matching
    ``min(p, q)`` pairs. ``"semi"``: the greedy semi-matching of Li et al. (ICLR 2016), each
    unit of A paired with its most correlated unit of B, which may be reused. As in Li et al.
    the signed correlation is maximized (a unit and its negation are not a match).

    Args:
        corr: ``(p, q)`` correlation matrix, e.g. from :func:`unit_correlation`.
        method: ``"bipartite"`` or ``"semi"``.

    Returns:
        A :class:`UnitMatching`, its pairs sorted by row index.

    Raises:
        ValueError: for an unknown method, or ``corr`` not a finite non-empty 2-D float tensor.

    Example:
        >>> import torch
        >>> corr = torch.tensor([[0.1, 0.9, 0.0], [0.2, 0.8, 0.7], [0.95, 0.1, 0.3]])
        >>> match_units(corr).cols.tolist(), match_units(corr, "semi").cols.tolist()
        ([1, 2, 0], [1, 1, 0])
    """
    check_choice(method, "method", ("bipartite", "semi"))
    C = _check_corr(corr)
    if method == "semi":
        rows = torch.arange(C.shape[0])
        cols = C.argmax(dim=1)
    else:
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(C.numpy(), maximize=True)
        rows, cols = torch.as_tensor(r, dtype=torch.long), torch.as_tensor(c, dtype=torch.long)
    return UnitMatching(rows, cols, C[rows, cols], method)


@dataclass(frozen=True)
class SparsePredictionResult:
    """Result of :func:`sparse_prediction`.

    Attributes:
        num_units: ``(q,)`` number of non-zero lasso weights (units of A) needed to reach
            ``target_r2`` for each unit of B; ``-1`` where the path never reaches it.
        r2: ``(q,)`` R^2 at that point (the best R^2 on the path where not reached).
        supports: for each unit of B, the indices of the units of A used at that point.
        r2_by_units: ``(q, max_units + 1)``: column ``k`` is the best R^2 on the lasso path
            with at most ``k`` non-zero weights (column 0 is 0; with ``refit`` column 1 is the
            exact best single-unit R^2, the largest squared correlation).
        target_r2: the target.

    Example:
        B's first unit mixes two units of A, its second copies one:

        >>> import torch
        >>> from subspaces.representations import sparse_prediction
        >>> X = torch.randn(200, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> B = torch.cat([X[:, [1]] - 2 * X[:, [4]], X[:, [0]]], dim=1)
        >>> res = sparse_prediction(X, B, target_r2=0.99)
        >>> res.num_units.tolist(), [s.tolist() for s in res.supports], res.fraction_reached
        ([2, 1], [[1, 4], [0]], 1.0)
        >>> bool((res.r2 >= 0.99).all()), res.r2_by_units[:, 0].tolist()
        (True, [0.0, 0.0])
    """

    num_units: Tensor
    r2: Tensor
    supports: list[Tensor]
    r2_by_units: Tensor
    target_r2: float

    @property
    def fraction_reached(self) -> float:
        """Share of the units of B whose target R^2 is reached."""
        return float((self.num_units >= 0).double().mean())


def _refit(Xs: Tensor, y: Tensor, W: Tensor) -> Tensor:
    """Least-squares weights on the support of every column of ``W`` (relaxed lasso)."""
    out = torch.zeros_like(W)
    cache: dict[tuple[int, ...], Tensor] = {}
    for a in range(W.shape[1]):
        support = tuple(torch.nonzero(W[:, a]).flatten().tolist())
        if not support:
            continue
        if support not in cache:
            cols = list(support)
            cache[support] = torch.linalg.lstsq(Xs[:, cols], y[:, None]).solution.flatten()
        out[list(support), a] = cache[support]
    return out


def sparse_prediction(
    X: Tensor,
    Y: Tensor,
    *,
    target_r2: float = 0.9,
    max_units: int = 16,
    num_alphas: int = 60,
    eps: float = 1e-4,
    refit: bool = True,
) -> SparsePredictionResult:
    r"""Predict each unit of net B from all units of net A with the lasso; count units needed.

    Li et al. (ICLR 2016, Sec. 4) fit an L1-penalized linear map from the units of one net to
    each unit of the other and sweep the penalty to see how many units are needed. Here the
    columns of ``X`` are standardized and each column of ``Y`` centered, the lasso path
    (:func:`sklearn.linear_model.lasso_path`, ``num_alphas`` penalties from the largest useful
    one down to ``eps`` times it) is computed, and for every point of the path the in-sample
    :math:`R^2 = 1 - \|y - X_s w\|^2 / \|y\|^2` and its number of non-zero weights are recorded.
    A unit of B counts as predicted by ``k`` units of A at the first (sparsest) point of the path
    whose R^2 reaches ``target_r2``. Constant units of ``Y`` get R^2 0 and are never reached.
    With ``refit`` (the default) the weights on each support are refitted by least squares
    (the relaxed lasso, Meinshausen 2007): the lasso then only selects the units, and the
    shrinkage of its weights does not understate what ``k`` units can predict.

    Args:
        X: ``(N, p)`` activations of net A (the predictors).
        Y: ``(N, q)`` activations of net B (the targets).
        target_r2: the R^2 to reach, in ``(0, 1]``.
        max_units: the largest support size tabulated in ``r2_by_units``.
        num_alphas: number of penalties on the path.
        eps: ratio of the smallest to the largest penalty.
        refit: refit the weights on each support by least squares.

    Returns:
        A :class:`SparsePredictionResult`.

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: for mismatched or invalid ``X``/``Y``, or ``target_r2`` outside ``(0, 1]``.

    Example:
        >>> import torch
        >>> X = torch.randn(200, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
        >>> res = sparse_prediction(X, X[:, [1]] - 2 * X[:, [4]], target_r2=0.99)
        >>> res.num_units.tolist(), res.supports[0].tolist()
        ([2], [1, 4])
    """
    from sklearn.linear_model import lasso_path

    Xd, Yd = _check_pair(X, Y, min_rows=2)
    target_r2 = check_positive_float(target_r2, "target_r2")
    if target_r2 > 1.0:
        raise ValueError(f"target_r2 must be in (0, 1], got {target_r2}")
    check_positive_int(max_units, "max_units")
    check_positive_int(num_alphas, "num_alphas", minimum=2)
    eps = check_positive_float(eps, "eps")
    Xs, _ = _standardize(Xd.cpu())
    Xn = Xs.numpy()
    Yc = (Yd - Yd.mean(dim=0, keepdim=True)).cpu()
    q = Yd.shape[1]
    num_units = torch.full((q,), -1, dtype=torch.long)
    r2_at = torch.zeros(q, dtype=torch.float64)
    r2_by_units = torch.zeros(q, max_units + 1, dtype=torch.float64)
    supports: list[Tensor] = []
    for j in range(q):
        y = Yc[:, j]
        total = float(y @ y)
        if total <= 1e-24:
            supports.append(torch.zeros(0, dtype=torch.long))
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # convergence warnings at the tiny penalties
            _, coefs, _ = lasso_path(Xn, y.numpy(), n_alphas=num_alphas, eps=eps)
        W = torch.as_tensor(coefs, dtype=torch.float64)  # (p, num_alphas), penalties descending
        if refit:
            W = _refit(Xs, y, W)
        resid = y[:, None] - Xs @ W
        r2 = 1.0 - resid.pow(2).sum(dim=0) / total
        nnz = (W != 0).sum(dim=0)
        if refit:  # the best single unit, which a coarse path can step over
            r2_by_units[j, 1] = float((Xs.T @ y).pow(2).max()) / total
        for k in range(1, max_units + 1):
            ok = nnz <= k
            best = float(r2[ok].max()) if bool(ok.any()) else 0.0
            r2_by_units[j, k] = max(best, float(r2_by_units[j, k - 1]), 0.0)
        hit = torch.nonzero(r2 >= target_r2).flatten()
        at = int(hit[0]) if hit.numel() else int(torch.argmax(r2))
        if hit.numel():
            num_units[j] = int(nnz[at])
        r2_at[j] = float(r2[at])
        supports.append(torch.nonzero(W[:, at]).flatten())
    return SparsePredictionResult(num_units, r2_at, supports, r2_by_units, target_r2)


@dataclass(frozen=True)
class UnitClusters:
    """Result of :func:`cluster_units`.

    Attributes:
        labels_a: ``(p,)`` cluster of each unit of net A (``-1``: constant unit, not clustered).
        labels_b: ``(q,)`` cluster of each unit of net B (``-1`` likewise).
        composition: ``(num_clusters, 2)``: units of A and of B in each cluster.
        mean_cross_correlation: ``(num_clusters,)`` mean absolute correlation between the A
            units and the B units of each cluster (0 where a side is empty).

    Example:
        Two latent features, each carried by units of both nets:

        >>> import torch
        >>> from subspaces.representations import cluster_units
        >>> g = torch.Generator().manual_seed(0)
        >>> Z = torch.randn(300, 2, generator=g, dtype=torch.float64)
        >>> X = Z[:, [0, 0, 1]] + 0.1 * torch.randn(300, 3, generator=g, dtype=torch.float64)
        >>> Y = Z[:, [1, 0, 1]] + 0.1 * torch.randn(300, 3, generator=g, dtype=torch.float64)
        >>> res = cluster_units(X, Y, 2)
        >>> a, b = res.labels_a.tolist(), res.labels_b.tolist()
        >>> a[0] == a[1] == b[1], a[2] == b[0] == b[2], a[0] != a[2], res.fraction_mixed
        (True, True, True, 1.0)
        >>> bool((res.mean_cross_correlation > 0.9).all())
        True
    """

    labels_a: Tensor
    labels_b: Tensor
    composition: Tensor
    mean_cross_correlation: Tensor

    @property
    def fraction_mixed(self) -> float:
        """Share of the clustered units that lie in clusters holding units of both nets."""
        mixed = (self.composition > 0).all(dim=1)
        total = int(self.composition.sum())
        return float(self.composition[mixed].sum()) / total if total else 0.0


def cluster_units(X: Tensor, Y: Tensor, num_clusters: int, *, seed: int = 0) -> UnitClusters:
    """Spectral clustering of the units of both nets on their correlation graph (many-to-many).

    Li et al. (ICLR 2016, Sec. 5) cluster the units of two nets together using the joint
    correlation matrix as affinity; a cluster with units of both nets spans a subspace that
    both have learned, whatever their bases. Here the affinity of two (non-constant) units is
    the absolute value of their correlation, and :class:`sklearn.cluster.SpectralClustering`
    (Ng, Jordan & Weiss 2001; Shi & Malik 2000) partitions them.

    Args:
        X: ``(N, p)`` activations of net A.
        Y: ``(N, q)`` activations of net B on the same inputs.
        num_clusters: number of clusters, at most the number of non-constant units.
        seed: seeds the k-means step (taken modulo ``2**32``).

    Returns:
        A :class:`UnitClusters`.

    Raises:
        TypeError: if ``X`` or ``Y`` is not a floating tensor.
        ValueError: for mismatched or invalid ``X``/``Y``, or a bad ``num_clusters``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> Z = torch.randn(300, 2, generator=g, dtype=torch.float64)
        >>> noise = lambda: 0.1 * torch.randn(300, 3, generator=g, dtype=torch.float64)
        >>> X = Z[:, [0, 0, 1]] + noise()
        >>> Y = Z[:, [1, 0, 1]] + noise()
        >>> res = cluster_units(X, Y, 2)
        >>> sorted(res.composition.tolist())
        [[1, 2], [2, 1]]
    """
    from sklearn.cluster import SpectralClustering

    Xd, Yd = _check_pair(X, Y, min_rows=2)
    check_positive_int(num_clusters, "num_clusters")
    if not isinstance(seed, int):
        raise TypeError(f"seed must be an int, got {type(seed).__name__}")
    Zs, alive = _standardize(torch.cat([Xd, Yd], dim=1).cpu())
    idx = torch.nonzero(alive).flatten()
    if num_clusters > idx.numel():
        raise ValueError(
            f"num_clusters must be <= the number of non-constant units ({idx.numel()}), "
            f"got {num_clusters}"
        )
    affinity = (Zs[:, idx].T @ Zs[:, idx]).abs().clamp(max=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "graph is not fully connected" for isolated units
        labels_alive = SpectralClustering(
            num_clusters, affinity="precomputed", random_state=seed % 2**32, assign_labels="kmeans"
        ).fit_predict(affinity.numpy())
    p = Xd.shape[1]
    labels = torch.full((Zs.shape[1],), -1, dtype=torch.long)
    labels[idx] = torch.as_tensor(labels_alive, dtype=torch.long)
    la, lb = labels[:p], labels[p:]
    comp = torch.zeros(num_clusters, 2, dtype=torch.long)
    cross = torch.zeros(num_clusters, dtype=torch.float64)
    corr = (Zs[:, :p].T @ Zs[:, p:]).abs()
    for c in range(num_clusters):
        ia, ib = la == c, lb == c
        comp[c, 0], comp[c, 1] = int(ia.sum()), int(ib.sum())
        if bool(ia.any()) and bool(ib.any()):
            cross[c] = corr[ia][:, ib].mean()
    return UnitClusters(la, lb, comp, cross)
