r"""Function-space losses: relative (or absolute) ``L^p`` and ``H^1`` norms on a grid.

As ``neuraloperator`` defines them (``neuralop.losses.LpLoss`` / ``H1Loss``), used by the FNO
papers (Li et al., arXiv:2010.08895): a sample's norm is the quadrature of the function over the
domain, so the loss of a function does not change with the grid that samples it
(Berner et al., arXiv:2506.10973).

- ``LpLoss``: ``||u - v||_p / ||v||_p`` per sample (relative), or the absolute
  ``(h_1 ... h_d sum |u - v|^p)^{1/p}`` with ``h_i = L_i / n_i``.
- ``H1Loss``: ``sqrt(||u - v||^2 + ||grad(u - v)||^2) / sqrt(||v||^2 + ||grad v||^2)`` (relative)
  with the gradient by **second-order central finite differences** ``(w_{i+1} - w_{i-1}) / (2 h)``
  on the periodic grid (``torch.roll``), as ``neuraloperator``'s periodic default; with
  ``periodic=False`` the two boundary points use one-sided first-order differences.

Both reduce over the batch by ``"mean"`` (default) or ``"sum"`` of the per-sample values.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int

__all__ = ["H1Loss", "LpLoss", "central_gradient"]

Reduction = Literal["mean", "sum"]


def _lengths(lengths: float | Sequence[float], d: int) -> tuple[float, ...]:
    out = (lengths,) * d if isinstance(lengths, (int, float)) else tuple(lengths)
    if len(out) != d:
        raise ValueError(f"lengths must give one domain length per dimension ({d}), got {out}")
    return tuple(check_positive_float(v, "lengths") for v in out)


def _check_pair(pred: Tensor, target: Tensor, d: int) -> None:
    check_float_tensor(pred, "pred")
    check_float_tensor(target, "target")
    if pred.shape != target.shape:
        raise ValueError(
            f"pred and target must have one shape, got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if pred.ndim < d + 1:
        raise ValueError(
            f"expected (batch, ..., {d} grid dims), got shape {tuple(pred.shape)} for d={d}"
        )
    check_finite(pred, "pred")
    check_finite(target, "target")


def _reduce(values: Tensor, reduction: str) -> Tensor:
    return values.mean() if reduction == "mean" else values.sum()


def central_gradient(
    u: Tensor, d: int, lengths: float | Sequence[float] = 1.0, *, periodic: bool = True
) -> list[Tensor]:
    """Central-difference partial derivatives along the last ``d`` dimensions.

    Args:
        u: ``(..., n_1, ..., n_d)`` samples at spacing ``h_i = L_i / n_i``.
        d: number of grid dimensions.
        lengths: domain lengths ``L_i``.
        periodic: wrap around (else one-sided differences at the two ends).

    Returns:
        ``d`` tensors shaped like ``u``.

    Example:
        >>> x = torch.arange(8, dtype=torch.float64) / 8
        >>> g = central_gradient(torch.sin(2 * torch.pi * x), 1)[0]
        >>> err = (g - 2 * torch.pi * torch.cos(2 * torch.pi * x)).abs().max()
        >>> bool(err < 2 * torch.pi * (2 * torch.pi / 8) ** 2 / 6 * 1.01)  # h^2 f'''/6 bound
        True
    """
    out = []
    for i, length in enumerate(_lengths(lengths, d)):
        dim = u.ndim - d + i
        n = u.shape[dim]
        h = length / n
        g = (torch.roll(u, -1, dim) - torch.roll(u, 1, dim)) / (2 * h)
        if not periodic:
            first = (u.narrow(dim, 1, 1) - u.narrow(dim, 0, 1)) / h
            last = (u.narrow(dim, n - 1, 1) - u.narrow(dim, n - 2, 1)) / h
            g = torch.cat([first, g.narrow(dim, 1, n - 2), last], dim)
        out.append(g)
    return out


class LpLoss:
    """Relative (default) or absolute ``L^p`` distance of functions sampled on a grid.

    Args:
        d: number of grid dimensions (the last ``d`` dims; the rest after the batch are channels).
        p: the exponent (``>= 1``).
        lengths: domain lengths (absolute loss only: quadrature weight ``prod L_i / n_i``).
        relative: divide by ``||target||_p``.
        reduction: ``"mean"`` or ``"sum"`` over the batch.

    Example:
        >>> loss = LpLoss(d=1)
        >>> v = torch.tensor([[3.0, 4.0]])
        >>> float(loss(2 * v, v))  # ||2v - v|| / ||v||
        1.0
        >>> float(LpLoss(d=1, relative=False)(torch.zeros(1, 4), torch.full((1, 4), 2.0)))
        2.0
    """

    def __init__(
        self,
        d: int = 2,
        p: float = 2.0,
        *,
        lengths: float | Sequence[float] = 1.0,
        relative: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        self.d = check_positive_int(d, "d")
        self.p = check_positive_float(p, "p")
        if self.p < 1:
            raise ValueError(f"p must be >= 1 for a norm, got {p}")
        self.lengths = _lengths(lengths, self.d)
        self.relative = bool(relative)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction

    def norm(self, u: Tensor) -> Tensor:
        """Per-sample ``L^p`` norm (quadrature on the grid).

        Args:
            u: ``(batch, ..., *grid)``.

        Returns:
            ``(batch,)``.
        """
        grid = u.shape[u.ndim - self.d :]
        h = 1.0
        for length, n in zip(self.lengths, grid, strict=True):
            h *= length / n
        flat = u.reshape(u.shape[0], -1)
        return (h * flat.abs().pow(self.p).sum(1)).pow(1.0 / self.p)

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target``.

        Args:
            pred: ``(batch, ..., *grid)`` prediction.
            target: the reference, same shape.

        Returns:
            The reduced loss (a scalar tensor).

        Raises:
            TypeError: for non-float tensors.
            ValueError: for mismatched shapes, too few dims, NaN/Inf, or a zero target (relative).
        """
        _check_pair(pred, target, self.d)
        diff = self.norm(pred - target)
        if self.relative:
            ref = self.norm(target)
            if bool((ref == 0).any()):
                raise ValueError(
                    "target has a sample with zero norm: the relative loss is undefined"
                )
            diff = diff / ref
        return _reduce(diff, self.reduction)


class H1Loss:
    """Relative (default) or absolute ``H^1`` distance with central-difference gradients.

    Args:
        d: number of grid dimensions.
        lengths: domain lengths (the grid spacing is ``L_i / n_i``).
        periodic: periodic differences (``neuraloperator``'s default) or one-sided at the ends.
        relative: divide by ``||target||_{H^1}``.
        reduction: ``"mean"`` or ``"sum"`` over the batch.

    Example:
        >>> x = torch.arange(16, dtype=torch.float64) / 16
        >>> v = torch.sin(2 * torch.pi * x)[None]
        >>> round(float(H1Loss(d=1)(torch.zeros_like(v), v)), 12)  # ||0 - v|| / ||v|| = 1
        1.0
    """

    def __init__(
        self,
        d: int = 2,
        *,
        lengths: float | Sequence[float] = 1.0,
        periodic: bool = True,
        relative: bool = True,
        reduction: Reduction = "mean",
    ) -> None:
        self.d = check_positive_int(d, "d")
        self.lengths = _lengths(lengths, self.d)
        self.periodic = bool(periodic)
        self.relative = bool(relative)
        if reduction not in ("mean", "sum"):
            raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")
        self.reduction = reduction
        self._l2 = LpLoss(d, 2.0, lengths=self.lengths, relative=False)

    def norm(self, u: Tensor) -> Tensor:
        """Per-sample ``H^1`` norm ``sqrt(||u||^2 + sum_i ||d_i u||^2)``.

        Args:
            u: ``(batch, ..., *grid)``.

        Returns:
            ``(batch,)``.
        """
        total = self._l2.norm(u) ** 2
        for g in central_gradient(u, self.d, self.lengths, periodic=self.periodic):
            total = total + self._l2.norm(g) ** 2
        return total.sqrt()

    def __call__(self, pred: Tensor, target: Tensor) -> Tensor:
        """The loss of ``pred`` against ``target``.

        Args:
            pred: ``(batch, ..., *grid)`` prediction.
            target: the reference, same shape.

        Returns:
            The reduced loss (a scalar tensor).

        Raises:
            TypeError: for non-float tensors.
            ValueError: for mismatched shapes, NaN/Inf, or a zero target (relative).
        """
        _check_pair(pred, target, self.d)
        diff = self.norm(pred - target)
        if self.relative:
            ref = self.norm(target)
            if bool((ref == 0).any()):
                raise ValueError(
                    "target has a sample with zero norm: the relative loss is undefined"
                )
            diff = diff / ref
        return _reduce(diff, self.reduction)
