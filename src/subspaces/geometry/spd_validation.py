r"""Symmetric and SPD matrices: the symmetric part, the SPD test, and input validation.

Every function takes tensors of shape ``(..., n, n)`` (batched over leading dimensions).
The validators accept a matrix as symmetric (or SPD) up to a dtype-aware relative tolerance.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float
from ..linalg._precision import to_working_dtype, working_dtype

__all__ = ["is_spd", "sym"]


def _sym_tol(dtype: torch.dtype) -> float:
    """Default symmetry tolerance relative to the largest entry: ``min(1e3 eps, 1/16)``.

    Returns:
        ``1e3 eps`` for float32/float64 (rounding of products that should be symmetric) and
        ``1/16`` for float16/bfloat16, where ``1e3 eps`` would exceed 1.
    """
    return min(1e3 * torch.finfo(dtype).eps, 2.0**-4)


def _rel_asymmetry(X: Tensor) -> Tensor:
    """``max |X - X^T| / max |X|`` of each matrix of a batch, in at least float32.

    Returns:
        A tensor of shape ``X.shape[:-2]``.
    """
    Xw = to_working_dtype(X)
    scale = Xw.abs().amax((-2, -1)).clamp_min(torch.finfo(Xw.dtype).tiny)
    return (Xw - Xw.mT).abs().amax((-2, -1)) / scale


def _check_square(X: Any, name: str) -> Tensor:
    X = check_float_tensor(X, name)
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(
            f"{name} must have shape (..., n, n) (square matrices), got {tuple(X.shape)}"
        )
    if X.shape[-1] == 0:
        raise ValueError(f"{name} must hold matrices of size n >= 1, got shape {tuple(X.shape)}")
    return check_finite(X, name)


def _check_symmetric(X: Any, name: str) -> Tensor:
    """Square, finite and symmetric up to :func:`_sym_tol` (rounding is symmetrized later).

    Returns:
        ``X``.

    Raises:
        ValueError: naming the largest relative asymmetry when it exceeds the tolerance.
    """
    X = _check_square(X, name)
    if X.numel():
        asym, tol = _rel_asymmetry(X), _sym_tol(X.dtype)
        if bool((asym > tol).any()):
            raise ValueError(
                f"{name} must be symmetric: max |X - X^T| / max |X| = {float(asym.max()):.3e} > "
                f"{tol:.1e} (the tolerance for {X.dtype}); pass sym({name}) if the asymmetry is "
                "meant to be dropped"
            )
    return X


def _check_spd(X: Any, name: str) -> Tensor:
    X = _check_square(X, name)
    if X.numel() and not bool(is_spd(X).all()):
        asym = float(_rel_asymmetry(X).max())
        smallest = float(torch.linalg.eigvalsh(sym(to_working_dtype(X))).min())
        raise ValueError(
            f"{name} must be symmetric positive definite; got a matrix with relative asymmetry "
            f"{asym:.3g} (tolerance {_sym_tol(X.dtype):.1e}) or an eigenvalue <= 0 (smallest "
            f"eigenvalue {smallest:.3g})"
        )
    return X


def _common(*tensors: Tensor) -> tuple[torch.dtype, list[Tensor]]:
    """The promoted dtype of ``tensors`` and the tensors in its working dtype.

    Returns:
        ``(dtype, [tensors in float32 if dtype is half, else in dtype])``.
    """
    dtype = tensors[0].dtype
    for t in tensors[1:]:
        dtype = torch.promote_types(dtype, t.dtype)
    work = working_dtype(dtype)
    return dtype, [t.to(work) for t in tensors]


def sym(X: Tensor) -> Tensor:
    """Symmetric part ``(X + X^T) / 2`` of a batch of square matrices.

    Args:
        X: ``(..., n, n)``.

    Returns:
        The symmetric part.

    Raises:
        ValueError: if ``X`` is not a batch of square matrices.

    Example:
        >>> sym(torch.tensor([[1.0, 2.0], [0.0, 1.0]]))
        tensor([[1., 1.],
                [1., 1.]])
    """
    if X.ndim < 2 or X.shape[-1] != X.shape[-2]:
        raise ValueError(f"X must have shape (..., n, n), got {tuple(X.shape)}")
    return (X + X.mT) / 2


def is_spd(X: Tensor, rtol: float | None = None) -> Tensor:
    """Whether each matrix of a batch is symmetric positive definite.

    Args:
        X: ``(..., n, n)`` real floating tensor, ``n >= 1`` (float16/bfloat16 are checked in
            float32).
        rtol: tolerance of the symmetry check, relative to the largest entry; default
            ``min(1e3 eps, 1/16)`` (``1e3`` machine epsilons of ``X``'s dtype, capped at 1/16
            for half precision, where ``1e3 eps`` exceeds 1).

    Returns:
        Boolean tensor of shape ``X.shape[:-2]``: symmetric (relative to the largest entry) with
        smallest eigenvalue ``> 0``; ``False`` for matrices with NaN or Inf.

    Raises:
        ValueError: if ``X`` is not a batch of square matrices of size ``n >= 1``, lives on the
            meta device, or ``rtol`` is negative.
        TypeError: if ``X`` is not a floating tensor.

    Example:
        >>> is_spd(torch.eye(3)).item(), is_spd(-torch.eye(3)).item()
        (True, False)
        >>> is_spd(torch.tensor([[2.0, 1.0], [1.2, 2.0]], dtype=torch.bfloat16)).item()
        False
    """
    X = check_float_tensor(X, "X")
    if X.ndim < 2 or X.shape[-1] != X.shape[-2] or X.shape[-1] == 0:
        raise ValueError(f"X must have shape (..., n, n) with n >= 1, got {tuple(X.shape)}")
    tol = _sym_tol(X.dtype) if rtol is None else check_positive_float(rtol, "rtol", allow_zero=True)
    finite = torch.isfinite(X).all(-1).all(-1)
    Xf = torch.where(
        finite[..., None, None], X, torch.eye(X.shape[-1], dtype=X.dtype, device=X.device)
    )
    Xf = to_working_dtype(Xf)
    scale = Xf.abs().amax((-2, -1)).clamp_min(torch.finfo(Xf.dtype).tiny)
    symmetric = (Xf - Xf.mT).abs().amax((-2, -1)) <= tol * scale
    positive = torch.linalg.eigvalsh(sym(Xf))[..., 0] > 0
    return finite & symmetric & positive
