"""Spectral clustering on an affinity, k-means in torch, and scikit-learn's k-means / spectral.

:func:`spectral_clustering` is the last step of every self-expressive subspace clustering method
(EnSC, SSC, LRR): the ``k`` leading eigenvectors of the normalized affinity
``D^{-1/2} W D^{-1/2}`` (dense ``eigh`` for small problems, ``scipy.sparse.linalg.eigsh`` for a
sparse affinity; regularized by a small uniform affinity so that isolated points do not
compete with the clusters), rows normalized to unit length (Ng, Jordan & Weiss 2001), then k-means.
:func:`kmeans` is a small k-means++ / Lloyd implementation in torch. :class:`KMeans` and
:class:`SpectralClustering` wrap scikit-learn's estimators (an optional dependency, imported
when they are fitted) with the same API as the other estimators of the package.

Example:
    >>> import torch
    >>> W = torch.block_diag(torch.ones(3, 3), torch.ones(4, 4)).double()
    >>> spectral_clustering(W, 2, random_state=0).tolist()
    [0, 0, 0, 1, 1, 1, 1]
"""

from __future__ import annotations

from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import Tensor

from .._checks import check_positive_float, check_positive_int
from ._checks import as_generator, check_data, check_n_clusters, seed_of
from .base import ClusterEstimator

__all__ = ["KMeans", "SpectralClustering", "kmeans", "spectral_clustering", "spectral_embedding"]


def _canonical(labels: Tensor) -> Tensor:
    """Renumber labels in order of first appearance (a deterministic naming of the clusters)."""
    _, first = np.unique(labels.numpy(), return_index=True)
    order = np.argsort(first)
    mapping = torch.empty(len(order), dtype=torch.long)
    uniq = torch.from_numpy(np.unique(labels.numpy()))
    mapping[torch.from_numpy(order)] = torch.arange(len(order))
    lookup = dict(zip(uniq.tolist(), mapping.tolist(), strict=True))
    return torch.tensor([lookup[v] for v in labels.tolist()], dtype=torch.long)


def kmeans(
    X: Any,
    n_clusters: int,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    random_state: int | torch.Generator | None = None,
) -> tuple[Tensor, Tensor, float]:
    """k-means (k-means++ seeding, Lloyd iterations), the best of ``n_init`` restarts.

    Args:
        X: data ``(n, p)``.
        n_clusters: ``k >= 1``, at most ``n``.
        n_init: restarts; the one with the least inertia is returned.
        max_iter: the most Lloyd iterations per restart.
        random_state: seed or generator.

    Returns:
        ``(labels (n,), centers (k, p), inertia)``; labels numbered by first appearance.

    Raises:
        ValueError: for invalid data or counts.

    Example:
        >>> import torch
        >>> X = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
        >>> kmeans(X, 2, random_state=0)[0].tolist()
        [0, 0, 1, 1]
    """
    k = check_n_clusters(n_clusters)
    A = check_data(X, n_clusters=k)
    n_init = check_positive_int(n_init, "n_init")
    max_iter = check_positive_int(max_iter, "max_iter")
    g = as_generator(random_state)
    A64 = A.double()
    sq = A64.pow(2).sum(1)
    best: tuple[Tensor, Tensor, float] | None = None
    n = A64.shape[0]
    for _ in range(n_init):
        idx = [int(torch.randint(n, (1,), generator=g))]
        d2 = (sq - 2 * A64 @ A64[idx[0]] + sq[idx[0]]).clamp_min(0)
        for _ in range(1, k):
            total = float(d2.sum())
            if total <= 0:
                nxt = int(torch.randint(n, (1,), generator=g))
            else:
                nxt = int(torch.multinomial(d2 / total, 1, generator=g))
            idx.append(nxt)
            d2 = torch.minimum(d2, (sq - 2 * A64 @ A64[nxt] + sq[nxt]).clamp_min(0))
        centers = A64[idx].clone()
        labels = torch.full((n,), -1, dtype=torch.long)
        for _ in range(max_iter):
            dist = sq[:, None] - 2 * A64 @ centers.T + centers.pow(2).sum(1)[None, :]
            new = dist.argmin(1)
            if torch.equal(new, labels):
                break
            labels = new
            for j in range(k):
                members = labels == j
                if bool(members.any()):
                    centers[j] = A64[members].mean(0)
                else:  # an empty cluster takes the point farthest from its center
                    far = int(dist.min(1).values.argmax())
                    centers[j] = A64[far]
        dist = sq[:, None] - 2 * A64 @ centers.T + centers.pow(2).sum(1)[None, :]
        labels = dist.argmin(1)
        inertia = float(dist.gather(1, labels[:, None]).clamp_min(0).sum())
        if best is None or inertia < best[2]:
            best = (labels, centers, inertia)
    assert best is not None
    labels, centers, inertia = best
    canon = _canonical(labels)
    order = torch.empty(k, dtype=torch.long)
    present = torch.unique(labels)
    for old in present.tolist():
        order[int(canon[labels == old][0])] = old
    if present.numel() == k:
        centers = centers[order]
    return canon, centers.to(A.dtype), inertia


def _check_affinity(affinity: Any) -> sp.csr_matrix | Tensor:
    if sp.issparse(affinity):
        W = sp.csr_matrix(affinity, dtype=np.float64)
        if W.shape[0] != W.shape[1]:
            raise ValueError(f"affinity must be square, got shape {W.shape}")
        if W.nnz and (not np.isfinite(W.data).all() or (W.data < 0).any()):
            raise ValueError("affinity must have finite, non-negative entries")
        return W
    T = check_data(affinity, "affinity", dtype=torch.float64)
    if T.shape[0] != T.shape[1]:
        raise ValueError(f"affinity must be square, got shape {tuple(T.shape)}")
    if bool((T < 0).any()):
        raise ValueError(f"affinity must be non-negative, got a minimum of {float(T.min()):.3g}")
    return T


def spectral_embedding(
    affinity: Any,
    n_components: int,
    *,
    regularization: float = 0.1,
    random_state: int | torch.Generator | None = None,
) -> Tensor:
    """Leading eigenvectors of the regularized normalized affinity ``D^{-1/2} W_tau D^{-1/2}``.

    ``W_tau = (W + W^T)/2 + (tau / n) 1 1^T`` with ``tau = regularization * mean degree``
    (regularized spectral clustering, Amini et al. 2013; Qin & Rohe 2013): without it every
    isolated point or tiny connected component of a sparse affinity (EnSC's, say) adds an
    eigenvalue 1 that competes with the clusters' own for the leading eigenvectors. The rank-one
    term is applied implicitly; a sparse affinity stays sparse.

    Args:
        affinity: ``(n, n)`` non-negative affinity, dense (tensor/array) or ``scipy.sparse``;
            it is symmetrized.
        n_components: number of eigenvectors.
        regularization: ``tau`` as a fraction of the mean degree (``0`` for none).
        random_state: seeds the start vector of the sparse eigensolver.

    Returns:
        ``(n, n_components)`` float64 embedding (rows not yet normalized).

    Raises:
        ValueError: for a non-square, negative or non-finite affinity, too many components, or
            a negative ``regularization``.

    Example:
        >>> import torch
        >>> spectral_embedding(torch.eye(3, dtype=torch.float64), 2).shape
        torch.Size([3, 2])
    """
    W = _check_affinity(affinity)
    n = W.shape[0]
    k = check_positive_int(n_components, "n_components")
    if k > n:
        raise ValueError(f"n_components={k} is above the number of samples {n}")
    reg = check_positive_float(regularization, "regularization", allow_zero=True)
    if not isinstance(W, Tensor) and n <= max(200, 5 * k):
        W = torch.from_numpy(W.toarray())
    if isinstance(W, Tensor):
        W = 0.5 * (W + W.T)
        tau = reg * float(W.sum()) / n
        W = W + tau / n
        deg = W.sum(1)
        inv = torch.where(deg > 0, deg.rsqrt(), torch.zeros_like(deg))
        M = inv[:, None] * W * inv[None, :]
        _, vecs = torch.linalg.eigh(M)
        return vecs[:, -k:].flip(1)
    from scipy.sparse.linalg import LinearOperator, eigsh

    Ws = ((W + W.T) * 0.5).tocsr()
    tau = reg * float(Ws.sum()) / n
    degs = np.asarray(Ws.sum(axis=1)).ravel() + tau
    invs = np.where(degs > 0, 1.0 / np.sqrt(np.where(degs > 0, degs, 1.0)), 0.0)

    def matvec(x: np.ndarray) -> np.ndarray:
        x = np.asarray(x).reshape(n, -1)
        y = invs[:, None] * x
        out = Ws @ y + (tau / n) * y.sum(axis=0, keepdims=True)
        # shifted by I: the spectrum of I + M lies in [0, 2], the wanted end is the largest
        return invs[:, None] * out + x

    op = LinearOperator((n, n), matvec=matvec, matmat=matvec, dtype=np.float64)
    g = as_generator(random_state)
    v0 = torch.rand(n, generator=g, dtype=torch.float64).numpy() + 0.5
    vals, vecs = eigsh(op, k=k, which="LA", v0=v0, tol=1e-8, maxiter=max(1000, 20 * n))
    order = np.argsort(vals)[::-1]
    return torch.from_numpy(np.ascontiguousarray(vecs[:, order]))


def spectral_clustering(
    affinity: Any,
    n_clusters: int,
    *,
    n_init: int = 10,
    regularization: float = 0.1,
    random_state: int | torch.Generator | None = None,
) -> Tensor:
    """Normalized spectral clustering (Ng, Jordan & Weiss 2001) of an affinity matrix.

    Args:
        affinity: ``(n, n)`` non-negative affinity (dense or ``scipy.sparse``), symmetrized.
        n_clusters: ``k``.
        n_init: k-means restarts on the embedding.
        regularization: the embedding's ``tau`` as a fraction of the mean degree (see
            :func:`spectral_embedding`).
        random_state: seed or generator.

    Returns:
        ``(n,)`` labels in ``0 .. k-1``, numbered by first appearance.

    Raises:
        ValueError: for an invalid affinity or ``n_clusters`` above the number of samples.

    Example:
        >>> import torch
        >>> W = torch.block_diag(torch.ones(2, 2), torch.ones(2, 2)).double()
        >>> spectral_clustering(W, 2, random_state=0).tolist()
        [0, 0, 1, 1]
    """
    k = check_n_clusters(n_clusters)
    g = as_generator(random_state)
    V = spectral_embedding(affinity, k, regularization=regularization, random_state=g)
    V = V / V.norm(dim=1, keepdim=True).clamp_min(1e-300)
    labels, _, _ = kmeans(V, k, n_init=n_init, random_state=g)
    return labels


class KMeans(ClusterEstimator):
    """scikit-learn's ``KMeans`` with the package's API (labels as ``torch.long`` tensors).

    Args:
        n_clusters: number of clusters ``>= 1``.
        n_init: restarts.
        max_iter: the most iterations per restart.
        random_state: ``None``, an int or a ``torch.Generator``.

    Attributes:
        labels_: ``(n,)`` labels of the training data.
        cluster_centers_: ``(k, p)`` centers (the data's dtype).
        inertia_: sum of squared distances to the closest center.

    Example:
        >>> import torch
        >>> X = torch.tensor([[0.0, 0.0], [0.0, 0.2], [4.0, 4.0], [4.0, 4.2]])
        >>> km = KMeans(2, random_state=0).fit(X)
        >>> km.predict(torch.tensor([[4.1, 4.1]])).item() == km.labels_[2].item()
        True
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        n_init: int = 10,
        max_iter: int = 300,
        random_state: int | torch.Generator | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.n_init = n_init
        self.max_iter = max_iter
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> KMeans:
        """Cluster ``X``.

        Args:
            X: data ``(n, p)``.
            y: ignored.

        Returns:
            ``self``.
        """
        from sklearn.cluster import KMeans as _SkKMeans

        k = check_n_clusters(self.n_clusters)
        A = check_data(X, n_clusters=k)
        seed = seed_of(as_generator(self.random_state))
        est = _SkKMeans(
            n_clusters=k,
            n_init=check_positive_int(self.n_init, "n_init"),
            max_iter=check_positive_int(self.max_iter, "max_iter"),
            random_state=seed,
        ).fit(A.double().numpy())
        self._sk = est
        self.labels_ = torch.from_numpy(est.labels_.astype(np.int64))
        self.cluster_centers_ = torch.from_numpy(est.cluster_centers_).to(A.dtype)
        self.inertia_ = float(est.inertia_)
        return self

    def predict(self, X: Any) -> Tensor:
        """The closest center's label for each row of ``X``.

        Args:
            X: data ``(m, p)``.

        Returns:
            ``(m,)`` labels.

        Raises:
            ValueError: if ``X`` has a different number of features than the training data.
        """
        self._check_fitted()
        A = check_data(X, dtype=torch.float64)
        if A.shape[1] != self.cluster_centers_.shape[1]:
            raise ValueError(
                f"X has {A.shape[1]} features, the model was fitted with "
                f"{self.cluster_centers_.shape[1]}"
            )
        return torch.cdist(A, self.cluster_centers_.double()).argmin(1)

    def transform(self, X: Any) -> Tensor:
        """Distances of each row of ``X`` to every center.

        Args:
            X: data ``(m, p)``.

        Returns:
            ``(m, k)`` distances.
        """
        self._check_fitted()
        A = check_data(X, dtype=torch.float64)
        return torch.cdist(A, self.cluster_centers_.double())


class SpectralClustering(ClusterEstimator):
    """scikit-learn's ``SpectralClustering`` with the package's API.

    Args:
        n_clusters: number of clusters ``>= 1``.
        affinity: ``"rbf"``, ``"nearest_neighbors"`` or ``"precomputed"`` (``X`` is then the
            ``(n, n)`` affinity).
        gamma: RBF kernel width.
        n_neighbors: neighbours of the k-NN graph.
        assign_labels: ``"kmeans"``, ``"discretize"`` or ``"cluster_qr"``.
        random_state: ``None``, an int or a ``torch.Generator``.

    Attributes:
        labels_: ``(n,)`` labels.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> X = torch.cat([torch.randn(20, 2, generator=g), torch.randn(20, 2, generator=g) + 8])
        >>> labels = SpectralClustering(2, gamma=0.1, random_state=0).fit_predict(X)
        >>> len(set(labels[:20].tolist())), len(set(labels[20:].tolist()))
        (1, 1)
    """

    def __init__(
        self,
        n_clusters: int = 8,
        *,
        affinity: str = "rbf",
        gamma: float = 1.0,
        n_neighbors: int = 10,
        assign_labels: str = "kmeans",
        random_state: int | torch.Generator | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.affinity = affinity
        self.gamma = gamma
        self.n_neighbors = n_neighbors
        self.assign_labels = assign_labels
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> SpectralClustering:
        """Cluster ``X`` (or the precomputed affinity ``X``).

        Args:
            X: data ``(n, p)`` or an ``(n, n)`` affinity.
            y: ignored.

        Returns:
            ``self``.

        Raises:
            ValueError: for an unknown ``affinity`` or invalid data.
        """
        from sklearn.cluster import SpectralClustering as _SkSpectral

        from .._checks import check_choice

        k = check_n_clusters(self.n_clusters)
        check_choice(self.affinity, "affinity", ("rbf", "nearest_neighbors", "precomputed"))
        data: Any
        if self.affinity == "precomputed" and sp.issparse(X):
            data = _check_affinity(X)
            if data.shape[0] < k:
                raise ValueError(f"affinity has {data.shape[0]} samples, fewer than n_clusters={k}")
        else:
            A = check_data(X, n_clusters=k, dtype=torch.float64)
            if self.affinity == "precomputed":
                _check_affinity(A)
            data = A.numpy()
        est = _SkSpectral(
            n_clusters=k,
            affinity=self.affinity,
            gamma=self.gamma,
            n_neighbors=self.n_neighbors,
            assign_labels=self.assign_labels,
            random_state=seed_of(as_generator(self.random_state)),
        ).fit(data)
        self.labels_ = torch.from_numpy(est.labels_.astype(np.int64))
        self.affinity_matrix_ = est.affinity_matrix_
        return self
