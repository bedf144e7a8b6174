"""Validation and exact rescaling shared by the similarity measures of this package."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor
from ..linalg._precision import pow2_exponent


def _as_matrix(x: Any, name: str, cast: bool = True) -> Tensor:
    x = check_finite(check_float_tensor(x, name, ndim=2), name)
    if x.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {tuple(x.shape)}")
    return x.to(torch.float64) if cast else x


def _check_pair(
    X: Any, Y: Any, *, min_rows: int, why: str = "", cast: bool = True
) -> tuple[Tensor, Tensor]:
    """Validate two representations of the same inputs and return them (in float64 if ``cast``)."""
    Xd, Yd = _as_matrix(X, "X", cast), _as_matrix(Y, "Y", cast)
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


def _unit_scale(X: Tensor) -> Tensor:
    """``X`` divided by a power of two so that its largest magnitude is in ``[0.5, 1)``.

    Exact (a power of two), and every measure it is used for is invariant to the scale of each
    representation, so results are unchanged except that squares and products of ``X`` can no
    longer overflow (``1e200``) or underflow (``1e-200``).

    Returns:
        The rescaled ``X`` (``X`` itself when no rescaling is needed).
    """
    e = pow2_exponent(float(torch.linalg.vector_norm(X, ord=math.inf))) if X.numel() else 0
    return X if e == 0 else X * math.ldexp(1.0, -e)
