"""The common shell of the clustering estimators (scikit-learn habits without depending on it).

A :class:`ClusterEstimator` stores its constructor arguments as attributes of the same names and
nothing else (so ``get_params``/``set_params``/``repr`` and ``sklearn.base.clone`` work), learns
in ``fit(X)`` (returning ``self``) and sets learned attributes ending in ``_`` (always
``labels_``). ``fit_predict(X)`` is ``fit(X).labels_``.

Example:
    >>> import torch
    >>> class FirstColumnSign(ClusterEstimator):
    ...     def __init__(self, n_clusters: int = 2, shift: float = 0.0) -> None:
    ...         self.n_clusters, self.shift = n_clusters, shift
    ...     def fit(self, X, y=None):
    ...         self.labels_ = (torch.as_tensor(X)[:, 0] > self.shift).long()
    ...         return self
    >>> est = FirstColumnSign(shift=0.5)
    >>> est.get_params()
    {'n_clusters': 2, 'shift': 0.5}
    >>> est.set_params(shift=0.0).fit_predict(torch.tensor([[1.0], [-1.0]])).tolist()
    [1, 0]
    >>> est
    FirstColumnSign(n_clusters=2, shift=0.0)
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from ..linalg.subspace import Subspace
from ._checks import check_fitted

__all__ = ["ClusterEstimator", "mean_principal_cosines", "pairwise_principal_angles"]


class ClusterEstimator:
    """Base class: parameter handling, ``fit_predict`` and a readable ``repr``.

    Subclasses implement ``fit(X) -> self`` setting ``labels_`` (a ``torch.long`` tensor).

    Example:
        The built-in estimators share this shell, so scikit-learn's ``clone`` works on them:

        >>> from sklearn.base import clone
        >>> from subspaces.clustering import KSubspaces, clustering_accuracy
        >>> g = torch.Generator().manual_seed(0)
        >>> B = [torch.linalg.qr(torch.randn(6, 2, generator=g, dtype=torch.float64))[0]
        ...      for _ in range(2)]
        >>> X = torch.cat([torch.randn(30, 2, generator=g, dtype=torch.float64) @ b.T for b in B])
        >>> est = KSubspaces(2, subspace_dim=2, random_state=0)
        >>> est
        KSubspaces(n_clusters=2, subspace_dim=2, n_init=10, max_iter=100, random_state=0)
        >>> other = clone(est).set_params(random_state=1)
        >>> other.get_params()["random_state"], est.get_params()["random_state"]
        (1, 0)
        >>> clustering_accuracy(torch.arange(60) // 30, other.fit_predict(X))
        1.0
    """

    labels_: Tensor

    @classmethod
    def _param_names(cls) -> list[str]:
        sig = inspect.signature(cls.__init__)
        return [
            p.name
            for p in sig.parameters.values()
            if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]

    def get_params(self, deep: bool = True) -> dict[str, Any]:
        """The constructor arguments, by name.

        Args:
            deep: accepted for scikit-learn compatibility (no nested estimators here).

        Returns:
            ``{name: value}``.
        """
        del deep
        return {name: getattr(self, name) for name in self._param_names()}

    def set_params(self, **params: Any) -> ClusterEstimator:
        """Set constructor arguments (validated again at the next ``fit``).

        Args:
            **params: new values by name.

        Returns:
            ``self``.

        Raises:
            ValueError: for a name that is not a constructor argument.
        """
        valid = self._param_names()
        for name, value in params.items():
            if name not in valid:
                raise ValueError(
                    f"invalid parameter {name!r} for {type(self).__name__}; valid: {valid}"
                )
            setattr(self, name, value)
        return self

    def fit(self, X: Any, y: Any = None) -> ClusterEstimator:  # pragma: no cover - abstract
        """Learn the clusters of ``X``; subclasses implement it.

        Args:
            X: data ``(n_samples, n_features)``.
            y: ignored.

        Returns:
            ``self``.

        Raises:
            NotImplementedError: always, in the base class.
        """
        raise NotImplementedError

    def fit_predict(self, X: Any, y: Any = None) -> Tensor:
        """Fit on ``X`` and return its cluster labels.

        Args:
            X: data ``(n_samples, n_features)``.
            y: ignored (scikit-learn signature).

        Returns:
            ``labels_``: ``(n_samples,)`` ``torch.long`` labels in ``0 .. n_clusters - 1``.
        """
        del y
        self.fit(X)
        return self.labels_

    def _check_fitted(self, attribute: str = "labels_") -> None:
        check_fitted(self, attribute)

    def __repr__(self) -> str:
        parts = []
        for name in self._param_names():
            value = getattr(self, name, None)
            if isinstance(value, (Tensor, np.ndarray)):
                value = f"<{type(value).__name__} {tuple(value.shape)}>"
                parts.append(f"{name}={value}")
            else:
                parts.append(f"{name}={value!r}")
        return f"{type(self).__name__}({', '.join(parts)})"


def pairwise_principal_angles(subspaces: Sequence[Subspace]) -> dict[tuple[int, int], Tensor]:
    """Principal angles (radians, ascending) between every pair ``i < j`` of subspaces.

    Args:
        subspaces: subspaces of one ambient space.

    Returns:
        ``{(i, j): angles}`` with ``min(dim_i, dim_j)`` angles each.

    Raises:
        TypeError: if an element is not a :class:`~subspaces.linalg.subspace.Subspace`.

    Example:
        >>> import torch
        >>> e = torch.eye(3, dtype=torch.float64)
        >>> angles = pairwise_principal_angles([Subspace(e[:, :1]), Subspace(e[:, 1:])])
        >>> [round(a, 4) for a in angles[(0, 1)].tolist()]
        [1.5708]
    """
    out: dict[tuple[int, int], Tensor] = {}
    for i, a in enumerate(subspaces):
        if not isinstance(a, Subspace):
            raise TypeError(f"subspaces[{i}] must be a Subspace, got {type(a).__name__}")
        for j in range(i + 1, len(subspaces)):
            out[(i, j)] = a.principal_angles(subspaces[j])
    return out


def mean_principal_cosines(subspaces: Sequence[Subspace]) -> Tensor:
    """``(k, k)`` matrix of the mean cosine of the principal angles between subspaces ``i, j``.

    0 for orthogonal subspaces, 1 on the diagonal (and for nested subspaces).

    Args:
        subspaces: subspaces of one ambient space.

    Returns:
        The float64 matrix.

    Example:
        >>> import torch
        >>> e = torch.eye(4, dtype=torch.float64)
        >>> mean_principal_cosines([Subspace(e[:, :2]), Subspace(e[:, 2:])]).tolist()
        [[1.0, 0.0], [0.0, 1.0]]
    """
    k = len(subspaces)
    M = torch.eye(k, dtype=torch.float64)
    for (i, j), ang in pairwise_principal_angles(subspaces).items():
        M[i, j] = M[j, i] = float(torch.cos(ang.double()).mean())
    return M
