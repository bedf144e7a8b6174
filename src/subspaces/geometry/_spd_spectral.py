r"""Spectral functions of symmetric matrices with a Daleckii-Krein backward pass.

All functions take tensors of shape ``(..., n, n)`` (batched over leading dimensions) and compute
matrix functions through a symmetric eigendecomposition, with a backward pass by the
Daleckii-Krein formula (divided differences, with ``f'`` on (near-)equal eigenvalues), so that
gradients stay finite when eigenvalues repeat (after :class:`~subspaces.geometry.ReEig`, say).
Use float64 for the accuracies the tests certify.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from .spd_validation import sym

_Fn = Callable[[Tensor, float], Tensor]


def _f_pow(w: Tensor, p: float) -> Tensor:
    return w.clamp_min(torch.finfo(w.dtype).tiny) ** p


def _df_pow(w: Tensor, p: float) -> Tensor:
    return p * w.clamp_min(torch.finfo(w.dtype).tiny) ** (p - 1)


def _f_log(w: Tensor, p: float) -> Tensor:
    return torch.log(w.clamp_min(torch.finfo(w.dtype).tiny))


def _df_log(w: Tensor, p: float) -> Tensor:
    return 1.0 / w.clamp_min(torch.finfo(w.dtype).tiny)


def _f_exp(w: Tensor, p: float) -> Tensor:
    return torch.exp(w)


def _f_clamp(w: Tensor, p: float) -> Tensor:
    return w.clamp_min(p)


def _df_clamp(w: Tensor, p: float) -> Tensor:
    return (w > p).to(w.dtype)


_FUNCTIONS: dict[str, tuple[_Fn, _Fn]] = {
    "pow": (_f_pow, _df_pow),
    "log": (_f_log, _df_log),
    "exp": (_f_exp, _f_exp),
    "clamp": (_f_clamp, _df_clamp),
}


class _Spectral(torch.autograd.Function):
    """``U f(Λ) U^T`` with the Daleckii-Krein backward (finite for repeated eigenvalues).

    With ``check = (name, eps)`` the eigenvalues are validated in the forward pass (no second
    decomposition): positive for ``log`` and powers ``p <= 0``, and at least ``-n eps |λ|_max``
    (rounding of a positive semidefinite matrix, then clamped) for powers ``p > 0``.
    """

    @staticmethod
    def forward(
        ctx: Any, X: Tensor, name: str, p: float, check: tuple[str, float] | None
    ) -> Tensor:
        f, _ = _FUNCTIONS[name]
        w, U = torch.linalg.eigh(X)
        if check is not None and w.numel():
            _check_eigenvalues(w, name, p, *check)
        fw = f(w, p)
        ctx.save_for_backward(w, U, fw)
        ctx.name, ctx.p = name, p
        return (U * fw.unsqueeze(-2)) @ U.mT

    @staticmethod
    def backward(ctx: Any, G: Tensor) -> tuple[Tensor, None, None, None]:
        w, U, fw = ctx.saved_tensors
        _, df = _FUNCTIONS[ctx.name]
        diff = w.unsqueeze(-1) - w.unsqueeze(-2)
        fdiff = fw.unsqueeze(-1) - fw.unsqueeze(-2)
        scale = w.abs().amax(-1, keepdim=True).unsqueeze(-1).clamp_min(1e-300)
        close = diff.abs() <= 1e3 * torch.finfo(w.dtype).eps * scale
        mid = df((w.unsqueeze(-1) + w.unsqueeze(-2)) / 2, ctx.p)
        K = torch.where(close, mid, fdiff / torch.where(close, torch.ones_like(diff), diff))
        Gs = U.mT @ sym(G) @ U
        return U @ (K * Gs) @ U.mT, None, None, None


def _check_eigenvalues(w: Tensor, fn: str, p: float, name: str, eps: float) -> None:
    """Raise unless the eigenvalues ``w`` (ascending, batched) suit the matrix function."""
    lo, hi = w[..., 0], w.abs().amax(-1)
    if fn == "log" or (fn == "pow" and p <= 0):
        bad = lo <= 0
        need = "positive definite"
    elif fn == "pow":
        bad = lo < -w.shape[-1] * eps * hi
        need = f"positive semidefinite (eigenvalues >= -n eps |lambda|_max = -{w.shape[-1]} eps)"
    else:
        return
    if bool(bad.any()):
        i = int(torch.argmax((-lo / hi.clamp_min(torch.finfo(w.dtype).tiny)).flatten()))
        what = "log" if fn == "log" else f"power {p:g}"
        raise ValueError(
            f"{name} must be symmetric {need} for the matrix {what}; got smallest eigenvalue "
            f"{float(lo.flatten()[i]):.3g} (largest magnitude {float(hi.flatten()[i]):.3g})"
        )


def _spectral(
    X: Tensor, name: str, p: float = 0.0, check: tuple[str, float] | None = None
) -> Tensor:
    out = _Spectral.apply(X, name, p, check)
    assert isinstance(out, Tensor)
    return out
