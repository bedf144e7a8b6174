r"""Orthogonal Procrustes distance between two representations."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_choice
from ._reps import _center, _check_pair, _unit_scale

__all__ = ["procrustes_distance"]


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
