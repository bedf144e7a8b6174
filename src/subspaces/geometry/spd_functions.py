r"""Matrix functions of SPD matrices (power, square root, log, exp) and the Lyapunov solve.

All functions take tensors of shape ``(..., n, n)`` (batched over leading dimensions) and compute
matrix functions through a symmetric eigendecomposition, with a backward pass by the
Daleckii-Krein formula (divided differences, with ``f'`` on (near-)equal eigenvalues), so that
gradients stay finite when eigenvalues repeat (after :class:`~subspaces.geometry.ReEig`, say).
Use float64 for the accuracies the tests certify.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ..linalg._precision import to_working_dtype
from ._spd_spectral import _spectral
from .spd_validation import _check_spd, _check_symmetric, _common, sym

__all__ = ["lyapunov", "spd_exp", "spd_log", "spd_power", "spd_sqrt"]


def _pow(X: Tensor, p: float) -> Tensor:
    """``X^p`` of (near-)symmetric ``X`` without validation (eigenvalues clamped at ``tiny``)."""
    return _spectral(sym(X), "pow", float(p))


def _sqrt(X: Tensor) -> Tensor:
    return _pow(X, 0.5)


def _log(X: Tensor) -> Tensor:
    return _spectral(sym(X), "log")


def _exp(X: Tensor) -> Tensor:
    return _spectral(sym(X), "exp")


def _checked_function(X: Any, fn: str, p: float, name: str = "X") -> Tensor:
    """A validated matrix function, computed in at least float32, returned in ``X``'s dtype."""
    X = _check_symmetric(X, name)
    out = _spectral(sym(to_working_dtype(X)), fn, p, (name, torch.finfo(X.dtype).eps))
    return out.to(X.dtype)


def spd_power(X: Tensor, p: float) -> Tensor:
    """Matrix power ``X^p`` of SPD matrices (eigenvalues raised to ``p``).

    ``X`` must be symmetric up to rounding (``max |X - X^T| <= min(1e3 eps, 1/16) max |X|``;
    the rounding is symmetrized) and positive definite for ``p <= 0``; for ``p > 0`` a
    positive semidefinite ``X`` is accepted, eigenvalues down to ``-n eps |lambda|_max``
    (rounding) being treated as 0. float16/bfloat16 are computed in float32 and returned in
    their dtype.

    Args:
        X: ``(..., n, n)`` SPD.
        p: the exponent.

    Returns:
        ``X^p``.

    Raises:
        ValueError: if ``X`` is not square, not finite, not symmetric, or not positive
            (semi)definite as above (naming the smallest eigenvalue).

    Example:
        >>> spd_power(torch.diag(torch.tensor([4.0, 9.0])), 0.5)
        tensor([[2., 0.],
                [0., 3.]])
    """
    return _checked_function(X, "pow", float(p))


def spd_sqrt(X: Tensor) -> Tensor:
    """Principal square root ``X^{1/2}`` of SPD (or positive semidefinite) matrices.

    Validated as :func:`spd_power` with ``p = 1/2``.

    Args:
        X: ``(..., n, n)`` SPD.

    Returns:
        ``X^{1/2}``.

    Raises:
        ValueError: for the inputs :func:`spd_power` rejects.

    Example:
        >>> spd_sqrt(4 * torch.eye(2))
        tensor([[2., 0.],
                [0., 2.]])
    """
    return _checked_function(X, "pow", 0.5)


def spd_log(X: Tensor) -> Tensor:
    """Principal matrix logarithm of SPD matrices.

    Validated as :func:`spd_power` with ``p <= 0``: symmetric up to rounding and positive
    definite.

    Args:
        X: ``(..., n, n)`` SPD.

    Returns:
        ``log X`` (symmetric).

    Raises:
        ValueError: if ``X`` is not square, not finite, not symmetric or not positive definite.

    Example:
        >>> spd_log(torch.eye(2))
        tensor([[0., 0.],
                [0., 0.]])
    """
    return _checked_function(X, "log", 0.0)


def spd_exp(X: Tensor) -> Tensor:
    """Matrix exponential of symmetric matrices.

    Args:
        X: ``(..., n, n)`` symmetric up to rounding (as in :func:`spd_power`).

    Returns:
        ``exp X`` (SPD).

    Raises:
        ValueError: if ``X`` is not square, not finite or not symmetric.

    Example:
        >>> spd_exp(torch.zeros(2, 2))
        tensor([[1., 0.],
                [0., 1.]])
    """
    return _checked_function(X, "exp", 0.0)


def _clamp_eig(X: Tensor, eps: float) -> Tensor:
    return _spectral(sym(X), "clamp", float(eps))


def _lyapunov(S: Tensor, V: Tensor) -> Tensor:
    w, U = torch.linalg.eigh(sym(S))
    Vt = U.mT @ sym(V) @ U
    return U @ (Vt / (w.unsqueeze(-1) + w.unsqueeze(-2))) @ U.mT


def lyapunov(S: Tensor, V: Tensor) -> Tensor:
    """Solve the Lyapunov equation ``S L + L S = V`` for SPD ``S`` and symmetric ``V``.

    Args:
        S: ``(..., n, n)`` SPD.
        V: ``(..., n, n)`` symmetric (up to rounding, as in :func:`spd_power`).

    Returns:
        ``L`` (symmetric), computed in the eigenbasis of ``S``: ``L_ij = V_ij / (s_i + s_j)``.

    Raises:
        ValueError: if ``S`` is not SPD or ``V`` not square, finite and symmetric.

    Example:
        >>> S = torch.diag(torch.tensor([1.0, 3.0]))
        >>> lyapunov(S, torch.ones(2, 2))
        tensor([[0.5000, 0.2500],
                [0.2500, 0.1667]])
    """
    S = _check_spd(S, "S")
    V = _check_symmetric(V, "V")
    dtype, (Sw, Vw) = _common(S, V)
    return _lyapunov(Sw, Vw).to(dtype)
