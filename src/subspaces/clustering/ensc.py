r"""Elastic-net subspace clustering (EnSC; You, Li, Robinson & Vidal, CVPR 2016).

Every sample is written as a combination of the others, with an elastic-net penalty that keeps
the combination sparse (so it uses points of its own subspace) yet connected:

.. math:: \min_{c_j}\ \lambda \|c_j\|_1 + \frac{1-\lambda}{2}\|c_j\|_2^2
          + \frac{\gamma_j}{2}\|x_j - X c_j\|_2^2 \quad \text{s.t. } c_{jj} = 0,

with ``gamma_j = alpha / max_{i != j} |x_i^T x_j|`` (the paper's scaling: ``alpha > 1`` makes
``c_j`` nonzero). All columns are solved at once by accelerated proximal gradient (FISTA with a
per-column step ``1 / L_j``, ``L_j = 1 - lambda + gamma_j ||X||_2^2``, and gradient-based adaptive
restart): the proximal map of the l1 term plus the constraint is a soft threshold followed by
zeroing the diagonal. The affinity ``|C| + |C|^T`` (columns scaled to unit maximum) is clustered
by normalized spectral clustering.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> U = [torch.linalg.qr(torch.randn(8, 2, generator=g, dtype=torch.float64))[0]
    ...      for _ in range(3)]
    >>> X = torch.cat([(u @ torch.randn(2, 20, generator=g, dtype=torch.float64)).T for u in U])
    >>> from subspaces.clustering import clustering_accuracy
    >>> clustering_accuracy(torch.arange(60) // 20, EnSC(3, random_state=0).fit_predict(X))
    1.0
"""

from __future__ import annotations

from typing import Any

import scipy.sparse as sp
import torch
from torch import Tensor

from .._checks import check_positive_float, check_positive_int
from ._checks import as_generator, check_data, check_n_clusters
from .base import ClusterEstimator
from .spectral import spectral_clustering

__all__ = ["EnSC", "elastic_net_self_expression", "ensc_affinity"]


def elastic_net_self_expression(
    X: Any,
    *,
    l1_ratio: float = 0.9,
    alpha: float = 50.0,
    max_iter: int = 300,
    tol: float = 1e-6,
) -> tuple[Tensor, dict[str, Any]]:
    """Self-expressive coefficients ``C (n, n)`` with ``x_j ~ sum_i C_ij x_i``, ``C_jj = 0``.

    Solves the EnSC problem for all columns by FISTA with adaptive restart.

    Args:
        X: data ``(n, p)``, one sample per row (normalize rows first for the paper's setting).
        l1_ratio: ``lambda`` in ``(0, 1]`` (1 = sparse subspace clustering's pure l1).
        alpha: ``> 1``; ``gamma_j = alpha / max_{i != j} |x_i^T x_j|``.
        max_iter: the most proximal gradient iterations.
        tol: stop when ``max |C_k - C_{k-1}| <= tol * max |C_k|`` (checked every 10 iterations).

    Returns:
        ``(C, info)`` with ``C`` in the data's dtype and ``info`` = ``{"n_iter", "converged",
        "change"}``.

    Raises:
        ValueError: for invalid data or parameters outside their ranges.

    Example:
        >>> import torch
        >>> X = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0], [0.0, 3.0]], dtype=torch.float64)
        >>> C, info = elastic_net_self_expression(X)
        >>> bool(C[2, 0] == 0 and C[0, 2] == 0 and C[1, 0] != 0)  # no cross-subspace weights
        True
    """
    A = check_data(X, n_clusters=2)
    lam = check_positive_float(l1_ratio, "l1_ratio")
    if lam > 1:
        raise ValueError(f"l1_ratio must be in (0, 1], got {lam}")
    alpha = check_positive_float(alpha, "alpha")
    max_iter = check_positive_int(max_iter, "max_iter")
    tol = check_positive_float(tol, "tol", allow_zero=True)
    n = A.shape[0]
    dt = A.dtype
    G = A @ A.T  # (n, n) Gram: the gradient of the fit term is gamma * (G C - G)
    off = G.abs().clone()
    off.fill_diagonal_(0.0)
    mu = off.max(0).values
    if bool((mu <= 0).any()):
        zero = int(torch.nonzero(mu <= 0)[0])
        raise ValueError(
            f"sample {zero} is orthogonal to all others (or zero): it cannot be self-expressed"
        )
    gamma = alpha / mu  # (n,) per column
    smax2 = float(torch.linalg.matrix_norm(A.double(), ord=2)) ** 2
    L = (1.0 - lam) + gamma * smax2  # (n,)
    step = 1.0 / L
    thresh = (lam * step)[None, :]
    eye = torch.eye(n, dtype=torch.bool)
    C = torch.zeros(n, n, dtype=dt)
    Y = C
    t = 1.0
    change = float("inf")
    converged = False
    it = 0
    for it in range(1, max_iter + 1):
        grad = (1.0 - lam) * Y + gamma[None, :] * (A @ (A.T @ Y) - G)  # 2 n^2 p, not n^3
        V = Y - step[None, :] * grad
        C_new = torch.sign(V) * (V.abs() - thresh).clamp_min(0)
        C_new.masked_fill_(eye, 0.0)
        # adaptive restart (O'Donoghue & Candes 2015): momentum only while it helps
        restart = float(((Y - C_new) * (C_new - C)).sum()) > 0
        t_new = 1.0 if restart else 0.5 * (1 + (1 + 4 * t * t) ** 0.5)
        Y = C_new if restart else C_new + ((t - 1) / t_new) * (C_new - C)
        if it % 10 == 0 or it == max_iter:
            scale = float(C_new.abs().max())
            change = float((C_new - C).abs().max()) / max(scale, torch.finfo(dt).tiny)
            if change <= tol:
                C, converged = C_new, True
                break
        C, t = C_new, t_new
    return C, {"n_iter": it, "converged": converged, "change": change}


def ensc_affinity(C: Tensor) -> sp.csr_matrix:
    """Sparse affinity ``|C| + |C|^T`` of self-expressive coefficients, columns scaled to max 1.

    Args:
        C: ``(n, n)`` coefficients.

    Returns:
        The symmetric ``scipy.sparse`` affinity (float64).

    Example:
        >>> import torch
        >>> W = ensc_affinity(torch.tensor([[0.0, 2.0], [1.0, 0.0]]))
        >>> W.toarray().tolist()
        [[0.0, 2.0], [2.0, 0.0]]
    """
    M = C.abs().double()
    M = M / M.max(0, keepdim=True).values.clamp_min(torch.finfo(torch.float64).tiny)
    S = sp.csr_matrix(M.numpy())
    S.eliminate_zeros()
    return (S + S.T).tocsr()


class EnSC(ClusterEstimator):
    """Elastic-net subspace clustering with the scikit-learn API.

    Args:
        n_clusters: number of clusters ``>= 1``.
        l1_ratio: ``lambda`` in ``(0, 1]`` (the paper's 0.9 by default).
        alpha: ``> 1``; the fit weight relative to the smallest value that gives a nonzero code.
        normalize: scale every sample to unit length first (the paper's preprocessing).
        max_iter: the most proximal gradient iterations.
        tol: relative change that stops the solver.
        n_init: k-means restarts in the spectral step.
        random_state: ``None``, an int or a ``torch.Generator``.

    Attributes:
        labels_: ``(n,)`` labels.
        coef_: ``(n, n)`` self-expressive coefficients ``C``.
        affinity_matrix_: the sparse affinity given to spectral clustering.
        n_iter_: solver iterations; ``converged_``: whether ``tol`` was met.

    Note:
        EnSC is transductive: there is no ``predict`` for new samples (refit instead).

    Example:
        >>> import torch
        >>> from subspaces.clustering import clustering_accuracy
        >>> g = torch.Generator().manual_seed(0)
        >>> B = [torch.linalg.qr(torch.randn(6, 2, generator=g).double())[0] for _ in range(2)]
        >>> X = torch.cat([torch.randn(30, 2, generator=g).double() @ b.T for b in B])
        >>> en = EnSC(2, random_state=0).fit(X)
        >>> clustering_accuracy([0] * 30 + [1] * 30, en.labels_)
        1.0
    """

    def __init__(
        self,
        n_clusters: int = 2,
        *,
        l1_ratio: float = 0.9,
        alpha: float = 50.0,
        normalize: bool = True,
        max_iter: int = 300,
        tol: float = 1e-6,
        n_init: int = 10,
        random_state: int | torch.Generator | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.l1_ratio = l1_ratio
        self.alpha = alpha
        self.normalize = normalize
        self.max_iter = max_iter
        self.tol = tol
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> EnSC:
        """Self-express the rows of ``X`` and cluster the resulting affinity.

        Args:
            X: data ``(n, p)``.
            y: ignored.

        Returns:
            ``self``.

        Raises:
            ValueError: for invalid data or parameters, or an all-zero row with ``normalize``.
        """
        k = check_n_clusters(self.n_clusters)
        A = check_data(X, n_clusters=max(k, 2))
        if self.normalize:
            norms = A.norm(dim=1, keepdim=True)
            if bool((norms == 0).any()):
                raise ValueError(
                    f"X has {int((norms == 0).sum())} all-zero row(s): they cannot be normalized"
                )
            A = A / norms
        C, info = elastic_net_self_expression(
            A, l1_ratio=self.l1_ratio, alpha=self.alpha, max_iter=self.max_iter, tol=self.tol
        )
        W = ensc_affinity(C)
        self.coef_ = C
        self.affinity_matrix_ = W
        self.n_iter_ = info["n_iter"]
        self.converged_ = info["converged"]
        self.labels_ = spectral_clustering(
            W, k, n_init=self.n_init, random_state=as_generator(self.random_state)
        )
        return self
