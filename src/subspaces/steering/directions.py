"""Steering directions and subspaces fitted from positive/negative activations.

Every estimator follows scikit-learn habits: the constructor stores configuration only,
``fit(pos, neg)`` returns ``self``, learned state ends in ``_``. A fitted direction has

- ``direction_``: a unit vector ``(d,)`` oriented so that ``pos`` projects higher than ``neg``
  (the sign is fixed on fit; PCA signs are otherwise arbitrary, llama.cpp #8069);
- ``scale_``: the typical projection gap ``mean(pos @ u) - mean(neg @ u)``, so
  ``vector(alpha=1)`` is "one typical difference" and strengths transfer across layers whose
  activation norms differ by orders of magnitude;
- ``sign_check_``: the accuracy of the midpoint threshold ``pos @ u > t > neg @ u`` (1.0 for a
  perfectly separating direction; a warning is issued when it is not above chance).

Methods: :class:`MeanDifference` (CAA, Rimsky et al. 2023; activation addition, Turner et al.
2023), :class:`PCADifference` and :class:`PCACentered` (representation engineering, Zou et al.
2023; repeng's ``pca_diff`` / ``pca_center``), :class:`LogisticDirection`,
:class:`LDADirection`, and :class:`ClusteredDirections` (k-means of per-pair differences, the
steering vectors of ACT and G-ACT, Sharma & Raman 2025, P01) whose centroids span a
:class:`~subspaces.linalg.Subspace`. Computation is in float64; results are cast back to the
input dtype.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int
from ..linalg import Subspace

__all__ = [
    "ClusteredDirections",
    "LDADirection",
    "LogisticDirection",
    "MeanDifference",
    "PCACentered",
    "PCADifference",
]


def _check_pair(pos: Any, neg: Any, *, paired: bool) -> tuple[Tensor, Tensor]:
    pos = check_finite(check_float_tensor(pos, "pos", ndim=2), "pos")
    neg = check_finite(check_float_tensor(neg, "neg", ndim=2), "neg")
    if pos.shape[0] == 0 or neg.shape[0] == 0:
        raise ValueError(
            f"need at least one positive and one negative example, got {pos.shape[0]} and "
            f"{neg.shape[0]}"
        )
    if pos.shape[1] != neg.shape[1]:
        raise ValueError(
            f"pos and neg must have the same dimension, got {pos.shape[1]} and {neg.shape[1]}"
        )
    if paired and pos.shape[0] != neg.shape[0]:
        raise ValueError(
            f"this method needs paired examples (pos[i] with neg[i]): got {pos.shape[0]} "
            f"positives and {neg.shape[0]} negatives"
        )
    return pos, neg


class _Direction:
    """Shared fitted state and the sign/scale check."""

    direction_: Tensor
    scale_: float
    sign_check_: float
    flipped_: bool

    def _finish(self, u: Tensor, pos: Tensor, neg: Tensor) -> _Direction:
        """Normalize ``u`` (float64), fix its sign, record scale and separation accuracy."""
        norm = torch.linalg.vector_norm(u)
        if not bool(norm > 0):
            raise ValueError(f"{type(self).__name__}: the fitted direction is zero")
        u = u / norm
        p, n = pos.double() @ u, neg.double() @ u
        gap = float(p.mean() - n.mean())
        self.flipped_ = gap < 0
        if self.flipped_:
            u, p, n, gap = -u, -p, -n, -gap
        if gap == 0.0:
            raise ValueError(
                f"{type(self).__name__}: pos and neg have the same mean projection; the "
                "direction does not separate them"
            )
        threshold = 0.5 * (float(p.mean()) + float(n.mean()))
        correct = int((p > threshold).sum()) + int((n < threshold).sum())
        self.sign_check_ = correct / (p.numel() + n.numel())
        if self.sign_check_ <= 0.5:
            warnings.warn(
                f"{type(self).__name__}: the direction separates pos from neg no better than "
                f"chance (midpoint accuracy {self.sign_check_:.2f})",
                stacklevel=3,
            )
        self.direction_ = u.to(pos.dtype)
        self.scale_ = gap
        return self

    def vector(self, alpha: float = 1.0) -> Tensor:
        """The steering vector ``alpha * scale_ * direction_``.

        Args:
            alpha: strength in units of the typical projection gap.

        Returns:
            The ``(d,)`` vector.

        Raises:
            ValueError: if the estimator is not fitted.
        """
        if not hasattr(self, "direction_"):
            raise ValueError(f"{type(self).__name__} is not fitted; call fit(pos, neg) first")
        return self.direction_ * (alpha * self.scale_)

    def transform(self, x: Tensor) -> Tensor:
        """Projections ``x @ direction_`` of activations ``x (n, d)``.

        Returns:
            The ``(n,)`` projections.

        Raises:
            ValueError: if the estimator is not fitted.
        """
        if not hasattr(self, "direction_"):
            raise ValueError(f"{type(self).__name__} is not fitted; call fit(pos, neg) first")
        return x @ self.direction_.to(x.dtype)


class MeanDifference(_Direction):
    """Difference of class means, ``mean(pos) - mean(neg)`` (CAA; activation addition).

    The natural scale is kept: ``vector(1.0)`` equals the mean difference exactly (Turner et
    al. 2023; Rimsky et al. 2023, "Steering Llama 2 via Contrastive Activation Addition").
    ``pos`` and ``neg`` need not be paired.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> neg = torch.randn(50, 4, generator=g, dtype=torch.float64)
        >>> pos = neg + torch.tensor([0.0, 3.0, 0.0, 4.0], dtype=torch.float64)
        >>> md = MeanDifference().fit(pos, neg)
        >>> md.direction_.tolist(), round(md.scale_, 6), md.sign_check_
        ([0.0, 0.6, 0.0, 0.8], 5.0, 1.0)
    """

    def fit(self, pos: Tensor, neg: Tensor) -> MeanDifference:
        """Fit on positive ``(n_pos, d)`` and negative ``(n_neg, d)`` activations.

        Returns:
            ``self``.
        """
        pos, neg = _check_pair(pos, neg, paired=False)
        self.mean_difference_ = (pos.double().mean(0) - neg.double().mean(0)).to(pos.dtype)
        self._finish(pos.double().mean(0) - neg.double().mean(0), pos, neg)
        return self


def _top_right_singular(X: Tensor) -> Tensor:
    _, _, Vh = torch.linalg.svd(X, full_matrices=False)
    return Vh[0]


class PCADifference(_Direction):
    """First principal component of the paired differences ``pos[i] - neg[i]`` (RepE).

    Representation engineering (Zou et al. 2023) and repeng's ``pca_diff``. With
    ``center=False`` (default) the component is the top right-singular vector of the difference
    matrix (uncentred PCA, steering-vectors' ``pca_aggregator``), which follows the mean
    difference; ``center=True`` subtracts the mean difference first (scikit-learn's ``PCA``, as
    repeng does), which finds the main axis of variation of the differences instead. The sign is
    fixed so that ``pos`` projects higher.

    Args:
        center: centre the differences before the PCA.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> neg = torch.randn(40, 3, generator=g, dtype=torch.float64)
        >>> pos = neg - torch.tensor([2.0, 0.0, 0.0], dtype=torch.float64)
        >>> d = PCADifference().fit(pos, neg)
        >>> d.direction_.tolist(), d.flipped_, round(d.scale_, 6)
        ([-1.0, 0.0, 0.0], True, 2.0)
    """

    def __init__(self, center: bool = False) -> None:
        self.center = center

    def fit(self, pos: Tensor, neg: Tensor) -> PCADifference:
        """Fit on paired ``pos (n, d)`` and ``neg (n, d)``.

        Returns:
            ``self``.
        """
        pos, neg = _check_pair(pos, neg, paired=True)
        diffs = pos.double() - neg.double()
        if self.center:
            diffs = diffs - diffs.mean(0)
        self._finish(_top_right_singular(diffs), pos, neg)
        return self


class PCACentered(_Direction):
    """First principal component of pair-centred activations (repeng's ``pca_center``).

    Each pair is centred at its own mean, ``pos[i] - m_i`` and ``neg[i] - m_i`` with
    ``m_i = (pos[i] + neg[i]) / 2``, and PCA is run on the stacked rows (representation
    engineering, Zou et al. 2023). These rows are ``+-(pos[i] - neg[i]) / 2``, so the component
    equals the uncentred :class:`PCADifference` (as noted in IBM/activation-steering #6); it is
    kept as a separate method for parity with repeng.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(1)
        >>> neg = torch.randn(30, 5, generator=g, dtype=torch.float64)
        >>> pos = neg + torch.randn(5, generator=g, dtype=torch.float64)
        >>> a = PCACentered().fit(pos, neg).direction_
        >>> b = PCADifference().fit(pos, neg).direction_
        >>> bool(torch.allclose(a, b))
        True
    """

    def fit(self, pos: Tensor, neg: Tensor) -> PCACentered:
        """Fit on paired ``pos (n, d)`` and ``neg (n, d)``.

        Returns:
            ``self``.
        """
        pos, neg = _check_pair(pos, neg, paired=True)
        center = 0.5 * (pos.double() + neg.double())
        rows = torch.cat([pos.double() - center, neg.double() - center])
        rows = rows - rows.mean(0)  # zero up to rounding; kept for parity with sklearn's PCA
        self._finish(_top_right_singular(rows), pos, neg)
        return self


class LogisticDirection(_Direction):
    """Normal of an L2-regularized logistic-regression boundary between ``pos`` and ``neg``.

    Fitted with scikit-learn's ``LogisticRegression`` (lbfgs, with intercept) on the stacked
    activations in float64; the direction is the normalized coefficient vector, i.e. a linear
    probe's reading direction.

    Args:
        C: inverse regularization strength.
        max_iter: solver iterations.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> neg = torch.randn(60, 3, generator=g, dtype=torch.float64)
        >>> pos = torch.randn(60, 3, generator=g, dtype=torch.float64) + torch.tensor(
        ...     [0.0, 0.0, 4.0], dtype=torch.float64)
        >>> d = LogisticDirection().fit(pos, neg)
        >>> bool(d.direction_[2] > 0.9), d.sign_check_ > 0.95
        (True, True)
    """

    def __init__(self, C: float = 1.0, max_iter: int = 1000) -> None:
        self.C = C
        self.max_iter = max_iter

    def fit(self, pos: Tensor, neg: Tensor) -> LogisticDirection:
        """Fit on ``pos (n_pos, d)`` and ``neg (n_neg, d)``.

        Returns:
            ``self``.
        """
        from sklearn.linear_model import LogisticRegression

        C = check_positive_float(self.C, "C")
        max_iter = check_positive_int(self.max_iter, "max_iter")
        pos, neg = _check_pair(pos, neg, paired=False)
        X = torch.cat([pos, neg]).double().cpu().numpy()
        y = [1] * pos.shape[0] + [0] * neg.shape[0]
        clf = LogisticRegression(C=C, max_iter=max_iter).fit(X, y)
        self.coef_ = torch.as_tensor(clf.coef_[0], dtype=pos.dtype)
        self.intercept_ = float(clf.intercept_[0])
        self._finish(torch.as_tensor(clf.coef_[0], dtype=torch.float64), pos, neg)
        return self


class LDADirection(_Direction):
    """Fisher's linear discriminant ``(S_w + shrinkage) ^ -1 (mean(pos) - mean(neg))``.

    ``S_w`` is the prior-weighted average of the two empirical class covariances, shrunk towards
    ``tr(S_w)/d I`` by ``shrinkage`` (scikit-learn's ``LinearDiscriminantAnalysis(solver="lsqr",
    shrinkage=...)`` computes the same direction).

    Args:
        shrinkage: in ``[0, 1]``; ``0`` is plain LDA (needs a non-singular ``S_w``).

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> scale = torch.tensor([10.0, 0.1], dtype=torch.float64)
        >>> neg = torch.randn(200, 2, generator=g, dtype=torch.float64) * scale
        >>> pos = torch.randn(200, 2, generator=g, dtype=torch.float64) * scale + 1.0
        >>> d = LDADirection(shrinkage=0.0).fit(pos, neg)
        >>> bool(d.direction_[1] > 0.99)  # the low-variance axis separates the classes
        True
    """

    def __init__(self, shrinkage: float = 0.0) -> None:
        self.shrinkage = shrinkage

    def fit(self, pos: Tensor, neg: Tensor) -> LDADirection:
        """Fit on ``pos (n_pos, d)`` and ``neg (n_neg, d)``.

        Returns:
            ``self``.

        Raises:
            ValueError: if ``shrinkage`` is outside ``[0, 1]`` or the covariance is singular.
        """
        s = check_positive_float(self.shrinkage, "shrinkage", allow_zero=True)
        if s > 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {s}")
        pos, neg = _check_pair(pos, neg, paired=False)
        P, N = pos.double(), neg.double()
        n_p, n_n = P.shape[0], N.shape[0]
        mp, mn = P.mean(0), N.mean(0)
        cp = (P - mp).T @ (P - mp) / n_p
        cn = (N - mn).T @ (N - mn) / n_n
        Sw = (n_p * cp + n_n * cn) / (n_p + n_n)
        d = Sw.shape[0]
        Sw = (1 - s) * Sw + s * (torch.trace(Sw) / d) * torch.eye(d, dtype=torch.float64)
        w, _, rank, _ = torch.linalg.lstsq(Sw, (mp - mn).unsqueeze(-1), driver="gelsd")
        if int(rank) < d and s == 0:
            raise ValueError(
                f"the within-class covariance is singular (rank {int(rank)} < {d}); "
                "use shrinkage > 0"
            )
        self._finish(w[:, 0], pos, neg)
        return self


def _kmeans(
    X: Tensor, k: int, *, n_init: int, max_iter: int, generator: torch.Generator | None
) -> tuple[Tensor, Tensor, float]:
    """Lloyd's k-means with k-means++ seeding; best of ``n_init`` runs (float64)."""
    n = X.shape[0]
    best: tuple[Tensor, Tensor, float] | None = None
    for _ in range(n_init):
        first = int(torch.randint(n, (1,), generator=generator))
        centers = [X[first]]
        d2 = ((X - X[first]) ** 2).sum(1)
        for _ in range(1, k):
            total = float(d2.sum())
            if total == 0:
                idx = int(torch.randint(n, (1,), generator=generator))
            else:
                idx = int(torch.multinomial(d2 / total, 1, generator=generator))
            centers.append(X[idx])
            d2 = torch.minimum(d2, ((X - X[idx]) ** 2).sum(1))
        C = torch.stack(centers)
        labels = torch.full((n,), -1, dtype=torch.long)
        for _ in range(max_iter):
            new_labels = torch.cdist(X, C).argmin(1)
            if torch.equal(new_labels, labels):
                break
            labels = new_labels
            for j in range(k):
                members = X[labels == j]
                if members.shape[0] > 0:
                    C[j] = members.mean(0)
        inertia = float(((X - C[labels]) ** 2).sum())
        if best is None or inertia < best[2]:
            best = (C.clone(), labels.clone(), inertia)
    assert best is not None
    return best


class ClusteredDirections:
    """k-means clusters of per-pair differences: several steering vectors spanning a subspace.

    ACT (Wang et al. 2025, "Adaptive Activation Steering") and G-ACT (Sharma & Raman 2025, P01)
    cluster the per-example differences ``pos[i] - neg[i]`` so that one concept gets several
    steering vectors; a probe then picks the vector per input. Fitted state:

    - ``centroids_`` ``(k, d)``: mean difference of each cluster (the steering vectors, natural
      scale); ``directions_`` ``(k, d)`` their unit rows, ``scales_`` ``(k,)`` their norms;
    - ``labels_`` ``(n,)``: the cluster of each pair; ``inertia_``;
    - ``subspace_``: the :class:`~subspaces.linalg.Subspace` spanned by the centroids.

    Args:
        n_clusters: number of clusters ``k``.
        normalize: cluster unit-normalized differences (direction only, spherical k-means).
        n_init: k-means++ restarts (the lowest inertia wins).
        max_iter: Lloyd iterations per restart.
        generator: random source for the seeding.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> a = torch.tensor([5.0, 0.0, 0.0], dtype=torch.float64)
        >>> b = torch.tensor([0.0, 5.0, 0.0], dtype=torch.float64)
        >>> neg = torch.randn(40, 3, generator=g, dtype=torch.float64)
        >>> shift = torch.stack([a if i % 2 else b for i in range(40)])
        >>> noise = 0.1 * torch.randn(40, 3, generator=g, dtype=torch.float64)
        >>> cd = ClusteredDirections(2, generator=g).fit(neg + shift + noise, neg)
        >>> cd.subspace_.dim, bool(cd.subspace_.captured_fraction(a) > 0.999)
        (2, True)
        >>> bool((cd.labels_[::2] == cd.labels_[0]).all() and cd.labels_[0] != cd.labels_[1])
        True
    """

    def __init__(
        self,
        n_clusters: int = 4,
        *,
        normalize: bool = False,
        n_init: int = 4,
        max_iter: int = 100,
        generator: torch.Generator | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.normalize = normalize
        self.n_init = n_init
        self.max_iter = max_iter
        self.generator = generator

    def fit(self, pos: Tensor, neg: Tensor) -> ClusteredDirections:
        """Cluster the differences of paired ``pos (n, d)`` and ``neg (n, d)``.

        Returns:
            ``self``.

        Raises:
            ValueError: if there are fewer pairs than clusters or a centroid is zero.
        """
        k = check_positive_int(self.n_clusters, "n_clusters")
        n_init = check_positive_int(self.n_init, "n_init")
        max_iter = check_positive_int(self.max_iter, "max_iter")
        pos, neg = _check_pair(pos, neg, paired=True)
        if pos.shape[0] < k:
            raise ValueError(f"need at least n_clusters={k} pairs, got {pos.shape[0]}")
        diffs = pos.double().cpu() - neg.double().cpu()
        X = diffs
        if self.normalize:
            norms = torch.linalg.vector_norm(diffs, dim=1, keepdim=True)
            if bool((norms == 0).any()):
                raise ValueError("a pair has identical pos and neg; cannot normalize it")
            X = diffs / norms
        _, labels, inertia = _kmeans(
            X, k, n_init=n_init, max_iter=max_iter, generator=self.generator
        )
        centroids = torch.stack(
            [
                diffs[labels == j].mean(0)
                if bool((labels == j).any())
                else torch.zeros_like(diffs[0])
                for j in range(k)
            ]
        )
        scales = torch.linalg.vector_norm(centroids, dim=1)
        if bool((scales == 0).any()):
            raise ValueError("a cluster centroid is zero (empty cluster or cancelling pairs)")
        self.labels_ = labels
        self.inertia_ = inertia
        self.centroids_ = centroids.to(pos.dtype)
        self.scales_ = scales.to(pos.dtype)
        self.directions_ = (centroids / scales.unsqueeze(1)).to(pos.dtype)
        self.subspace_ = Subspace.from_vectors(centroids.T, allow_rank_deficient=True)
        return self

    def predict(self, diffs: Tensor) -> Tensor:
        """Nearest centroid (cosine for ``normalize=True``) of differences ``diffs (m, d)``.

        Returns:
            ``(m,)`` cluster indices.

        Raises:
            ValueError: if not fitted.
        """
        if not hasattr(self, "centroids_"):
            raise ValueError("ClusteredDirections is not fitted; call fit(pos, neg) first")
        X = check_float_tensor(diffs, "diffs", ndim=2).double()
        if self.normalize:
            return (X @ self.directions_.double().T).argmax(1)
        return torch.cdist(X, self.centroids_.double()).argmin(1)
