"""Clustering metrics: accuracy under the best label matching, NMI and ARI.

All three compare two labelings of the same samples and are invariant to renaming the clusters.
They take tensors or array-likes of integer labels (any values; ``-1`` is just another label)
and return Python floats. NMI and ARI agree with scikit-learn's ``normalized_mutual_info_score``
(arithmetic normalization) and ``adjusted_rand_score``; the tests check it.

Example:
    >>> clustering_accuracy([0, 0, 1, 1, 2], [1, 1, 0, 0, 0])
    0.8
    >>> normalized_mutual_info([0, 0, 1, 1], [5, 5, 7, 7])
    1.0
    >>> adjusted_rand_index([0, 0, 1, 1], [1, 1, 0, 0])
    1.0
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.special import gammaln
from torch import Tensor

from ._checks import check_labels

__all__ = [
    "adjusted_rand_index",
    "clustering_accuracy",
    "contingency_matrix",
    "match_labels",
    "normalized_mutual_info",
]


def _pair(labels_true: Any, labels_pred: Any) -> tuple[np.ndarray, np.ndarray]:
    n = len(labels_true) if not isinstance(labels_true, Tensor) else labels_true.numel()
    t = check_labels(labels_true, int(n), "labels_true").numpy()
    p = check_labels(labels_pred, int(n), "labels_pred").numpy()
    if t.size == 0:
        raise ValueError("labels_true is empty: need at least one sample")
    return t, p


def contingency_matrix(labels_true: Any, labels_pred: Any) -> np.ndarray:
    """Counts ``N[i, j]`` of samples with the ``i``-th true and ``j``-th predicted label.

    Rows and columns follow the sorted unique labels.

    Args:
        labels_true: ``(n,)`` reference labels.
        labels_pred: ``(n,)`` cluster labels.

    Returns:
        The ``(n_true_labels, n_pred_labels)`` int64 matrix.

    Raises:
        ValueError: if the labelings differ in length or are empty.
        TypeError: if they are not integer labels.

    Example:
        >>> contingency_matrix([0, 0, 1], [2, 3, 3]).tolist()
        [[1, 1], [0, 1]]
    """
    t, p = _pair(labels_true, labels_pred)
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    N = np.zeros((int(ti.max()) + 1, int(pi.max()) + 1), dtype=np.int64)
    np.add.at(N, (ti.ravel(), pi.ravel()), 1)
    return N


def match_labels(labels_true: Any, labels_pred: Any) -> dict[int, int]:
    """The one-to-one map from predicted to true labels that maximizes the agreement (Hungarian).

    Predicted labels left without a partner (more clusters than classes) are absent.

    Args:
        labels_true: ``(n,)`` reference labels.
        labels_pred: ``(n,)`` cluster labels.

    Returns:
        ``{predicted label: true label}``.

    Example:
        >>> match_labels([0, 0, 1, 1], [7, 7, 3, 3])
        {3: 1, 7: 0}
    """
    t, p = _pair(labels_true, labels_pred)
    tu, pu = np.unique(t), np.unique(p)
    N = contingency_matrix(t, p)
    rows, cols = linear_sum_assignment(N, maximize=True)
    pairs = sorted(zip(rows.tolist(), cols.tolist(), strict=True), key=lambda rc: rc[1])
    return {int(pu[c]): int(tu[r]) for r, c in pairs}


def clustering_accuracy(labels_true: Any, labels_pred: Any) -> float:
    """Share of samples whose cluster maps to their class under the best one-to-one matching.

    The matching of clusters to classes maximizes the number of agreements (Hungarian algorithm,
    ``scipy.optimize.linear_sum_assignment``); it is the usual "ACC" of the clustering papers.

    Args:
        labels_true: ``(n,)`` reference labels.
        labels_pred: ``(n,)`` cluster labels.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: if the labelings differ in length or are empty.
        TypeError: if they are not integer labels.

    Example:
        >>> clustering_accuracy([0, 0, 1, 1], [1, 1, 0, 0])
        1.0
    """
    t, p = _pair(labels_true, labels_pred)
    N = contingency_matrix(t, p)
    rows, cols = linear_sum_assignment(N, maximize=True)
    return float(N[rows, cols].sum()) / t.size


def _entropy(counts: np.ndarray) -> float:
    n = counts.sum()
    q = counts[counts > 0] / n
    return float(-(q * np.log(q)).sum())


def normalized_mutual_info(labels_true: Any, labels_pred: Any) -> float:
    r"""Normalized mutual information ``I(T; P) / ((H(T) + H(P)) / 2)``.

    1 when the labelings agree up to renaming; 0 when they are independent. When both labelings
    have a single cluster the value is 1 (scikit-learn's convention).

    Args:
        labels_true: ``(n,)`` reference labels.
        labels_pred: ``(n,)`` cluster labels.

    Returns:
        NMI in ``[0, 1]``.

    Raises:
        ValueError: if the labelings differ in length or are empty.
        TypeError: if they are not integer labels.

    Example:
        >>> normalized_mutual_info([0, 0, 1, 1], [0, 1, 0, 1])
        0.0
    """
    N = contingency_matrix(labels_true, labels_pred)
    if N.shape[0] == N.shape[1] == 1:
        return 1.0
    n = N.sum()
    a, b = N.sum(1), N.sum(0)
    nz = N > 0
    Nn = N[nz].astype(np.float64)
    outer = np.outer(a, b)[nz].astype(np.float64)
    mi = float((Nn / n * (np.log(Nn * n) - np.log(outer))).sum())
    ha, hb = _entropy(a), _entropy(b)
    denom = 0.5 * (ha + hb)
    if denom <= 0.0:
        return 1.0
    return float(min(max(mi / denom, 0.0), 1.0))


def _comb2(x: np.ndarray) -> float:
    x = x.astype(np.float64)
    return float((x * (x - 1.0) / 2.0).sum())


def adjusted_rand_index(labels_true: Any, labels_pred: Any) -> float:
    """Adjusted Rand index (Hubert & Arabie 1985): pair agreement corrected for chance.

    1 for identical partitions, about 0 for random ones (it can be negative).

    Args:
        labels_true: ``(n,)`` reference labels.
        labels_pred: ``(n,)`` cluster labels.

    Returns:
        ARI in ``[-1, 1]``.

    Raises:
        ValueError: if the labelings differ in length or are empty.
        TypeError: if they are not integer labels.

    Example:
        >>> adjusted_rand_index([0, 0, 1, 1], [0, 0, 1, 1])
        1.0
    """
    N = contingency_matrix(labels_true, labels_pred)
    n = int(N.sum())
    if n < 2 or N.shape[0] == N.shape[1] == 1 or (N.shape[0] == N.shape[1] == n):
        return 1.0  # sklearn's special cases: identical trivial partitions
    index = _comb2(N.ravel())
    sa, sb = _comb2(N.sum(1)), _comb2(N.sum(0))
    total = float(np.exp(gammaln(n + 1) - gammaln(n - 1) - gammaln(3)))
    expected = sa * sb / total
    maximum = 0.5 * (sa + sb)
    if maximum == expected:
        return 1.0 if index == expected else 0.0
    return float((index - expected) / (maximum - expected))
