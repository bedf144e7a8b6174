"""K-subspaces: alternate between assigning points to their closest subspace and refitting.

The linear-subspace analogue of k-means (Bradley & Mangasarian 2000; Tseng 2000; Agarwal &
Mustafa 2004): each cluster is a ``d``-dimensional subspace through the origin, a point belongs
to the subspace with the least residual ``||x - U U^T x||``, and each subspace is refitted as the
top-``d`` left singular vectors of its points. Each restart seeds the ``k`` subspaces from
``k`` sample points chosen k-means++-style on the residual and their ``d - 1`` nearest
neighbours in angle, and the restart with the least total squared residual is kept.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> U = [torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0]
    ...      for _ in range(2)]
    >>> X = torch.cat([(u @ torch.randn(2, 30, generator=g, dtype=torch.float64)).T for u in U])
    >>> labels = KSubspaces(2, subspace_dim=2, random_state=0).fit_predict(X)
    >>> from subspaces.clustering import clustering_accuracy
    >>> clustering_accuracy(torch.arange(60) // 30, labels)
    1.0
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_positive_int
from ..linalg.subspace import Subspace
from ._checks import as_generator, check_data, check_n_clusters, check_subspace_dim
from .base import ClusterEstimator, pairwise_principal_angles
from .spectral import _canonical

__all__ = ["KSubspaces"]


def _fit_basis(P: Tensor, d: int) -> Tensor:
    U, _, _ = torch.linalg.svd(P.T, full_matrices=False)
    if U.shape[1] < d:  # fewer points than d: pad with an orthonormal complement
        Q, _ = torch.linalg.qr(
            torch.cat([U, torch.eye(P.shape[1], dtype=P.dtype)[:, : d - U.shape[1]]], 1)
        )
        return Q[:, :d]
    return U[:, :d]


def _residuals(X: Tensor, bases: Tensor) -> Tensor:
    """Squared residuals ``||x - U_j U_j^T x||^2``, ``(n, k)``, formed from the difference itself.

    (``||x||^2 - ||U^T x||^2`` would lose everything below ``sqrt(eps) ||x||`` to cancellation.)

    Returns:
        The residuals.
    """
    coords = torch.einsum("np,kpd->nkd", X, bases)
    recon = torch.einsum("nkd,kpd->nkp", coords, bases)
    return (X.unsqueeze(1) - recon).pow(2).sum(-1)


class KSubspaces(ClusterEstimator):
    """K-subspaces clustering with the scikit-learn API.

    Args:
        n_clusters: number of subspaces ``k >= 1``.
        subspace_dim: dimension ``d`` of every subspace, ``1 <= d <= n_features``.
        n_init: restarts (the lowest total squared residual wins).
        max_iter: the most assignment/refit rounds per restart.
        random_state: ``None``, an int or a ``torch.Generator``.

    Attributes:
        labels_: ``(n,)`` labels of the training data.
        bases_: ``(k, p, d)`` orthonormal bases.
        subspaces_: the ``k`` learned :class:`~subspaces.linalg.subspace.Subspace` objects.
        residual_: total squared residual of the training data.
        n_iter_: rounds of the winning restart.

    Raises:
        ValueError: at ``fit`` for invalid data (NaN rows, fewer samples than clusters),
            ``n_clusters <= 0`` or ``subspace_dim`` above the number of features.

    Example:
        >>> import torch
        >>> from subspaces.clustering import clustering_accuracy
        >>> g = torch.Generator().manual_seed(0)
        >>> B = [torch.linalg.qr(torch.randn(6, 2, generator=g).double())[0] for _ in range(2)]
        >>> X = torch.cat([torch.randn(30, 2, generator=g).double() @ b.T for b in B])
        >>> km = KSubspaces(2, subspace_dim=2, random_state=0).fit(X)
        >>> clustering_accuracy([0] * 30 + [1] * 30, km.labels_)
        1.0
    """

    def __init__(
        self,
        n_clusters: int = 2,
        *,
        subspace_dim: int = 1,
        n_init: int = 10,
        max_iter: int = 100,
        random_state: int | torch.Generator | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.subspace_dim = subspace_dim
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def _seed(self, X: Tensor, k: int, d: int, g: torch.Generator) -> Tensor:
        n = X.shape[0]
        Xn = X / X.norm(dim=1, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
        bases = []
        score = torch.ones(n, dtype=X.dtype)
        for _ in range(k):
            total = float(score.sum())
            if total > 0:
                i = int(torch.multinomial(score / total, 1, generator=g))
            else:
                i = int(torch.randint(n, (1,), generator=g))
            cos = (Xn @ Xn[i]).abs()
            nbrs = cos.topk(min(d, n)).indices
            B = _fit_basis(X[nbrs], d)
            bases.append(B)
            res = _residuals(Xn, torch.stack(bases)).min(1).values
            score = torch.minimum(score, res)
        return torch.stack(bases)

    def fit(self, X: Any, y: Any = None) -> KSubspaces:
        """Cluster the rows of ``X`` into ``n_clusters`` linear subspaces.

        Args:
            X: data ``(n, p)``.
            y: ignored.

        Returns:
            ``self``.
        """
        k = check_n_clusters(self.n_clusters)
        A = check_data(X, n_clusters=k)
        d = check_subspace_dim(self.subspace_dim, A.shape[1])
        n_init = check_positive_int(self.n_init, "n_init")
        max_iter = check_positive_int(self.max_iter, "max_iter")
        g = as_generator(self.random_state)
        W = A.double()
        best: tuple[float, Tensor, Tensor, int] | None = None
        for _ in range(n_init):
            bases = self._seed(W, k, d, g)
            labels = torch.full((W.shape[0],), -1, dtype=torch.long)
            it = 0
            while it < max_iter:
                it += 1
                R = _residuals(W, bases)
                new = R.argmin(1)
                if torch.equal(new, labels):
                    break
                labels = new
                worst = R.min(1).values.argsort(descending=True)
                taken = 0
                for j in range(k):
                    members = labels == j
                    if int(members.sum()) == 0:  # reseed an empty cluster at the worst points
                        pick = worst[taken : taken + d]
                        taken += d
                        bases[j] = _fit_basis(W[pick], d)
                    else:
                        bases[j] = _fit_basis(W[members], d)
            R = _residuals(W, bases)
            labels = R.argmin(1)
            total = float(R.gather(1, labels[:, None]).sum())
            if best is None or total < best[0]:
                best = (total, labels, bases.clone(), it)
        assert best is not None
        total, labels, bases, it = best
        canon = _canonical(labels)
        order = [int(labels[canon == c][0]) for c in range(int(canon.max()) + 1)]
        rest = [j for j in range(k) if j not in order]
        bases = bases[order + rest]
        self.labels_ = canon
        self.bases_ = bases.to(A.dtype)
        self.subspaces_ = [Subspace(b) for b in bases]
        self.residual_ = total
        self.n_iter_ = it
        return self

    def predict(self, X: Any) -> Tensor:
        """Label of the closest learned subspace for each row of ``X``.

        Args:
            X: data ``(m, p)``.

        Returns:
            ``(m,)`` labels.
        """
        return self.transform(X).argmin(1)

    def transform(self, X: Any) -> Tensor:
        """Distances ``||x - U_j U_j^T x||`` of each row of ``X`` to every learned subspace.

        Args:
            X: data ``(m, p)``.

        Returns:
            ``(m, k)`` distances.

        Raises:
            ValueError: if ``X`` has a different number of features than the training data.
        """
        self._check_fitted("bases_")
        A = check_data(X, dtype=torch.float64)
        if A.shape[1] != self.bases_.shape[1]:
            raise ValueError(
                f"X has {A.shape[1]} features, the model was fitted with {self.bases_.shape[1]}"
            )
        return _residuals(A, self.bases_.double()).sqrt()

    def principal_angles(self) -> dict[tuple[int, int], Tensor]:
        """Principal angles between every pair of learned subspaces.

        Returns:
            ``{(i, j): angles}`` for ``i < j``.
        """
        self._check_fitted("subspaces_")
        return pairwise_principal_angles(self.subspaces_)
