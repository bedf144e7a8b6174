"""The result of a bilevel solver: the final iterates and a history of what a user monitors."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = ["BilevelResult", "History"]


@dataclass
class History:
    """Per-record values of a bilevel run (one entry every ``record_every`` iterations).

    Attributes:
        iteration: iteration index of each record.
        time: seconds spent in the solver up to the record, the recording itself excluded.
        upper: upper-level objective ``F(x, y)`` at the record (or the user's ``evaluate``).
        violation: largest lower-level constraint violation ``max(g(x, y))^+`` (0 when there are
            no constraints).
        grad_norm: LV-HBA: the norm of the upper-level direction ``||d_x||``; AID: the norm of
            its hypergradient; BSVRB: the second value of ``evaluate`` (e.g. the exact
            hypergradient norm), or the norm of its hypergradient estimate without ``evaluate``.

    Example:
        >>> from subspaces.bilevel import aid_solve
        >>> F = lambda x, y: 0.5 * ((y - 1.0) ** 2).sum()  # y*(x) = x, so x* = 1
        >>> g = lambda x, y: 0.5 * ((y - x) ** 2).sum()
        >>> z = torch.zeros(2, dtype=torch.float64)
        >>> h = aid_solve(F, g, z, z, outer_iters=40, lr=0.5, inner_lr=0.5, record_every=10).history
        >>> h.iteration, len(h), h.upper[0]
        ([0, 10, 20, 30, 40], 5, 1.0)
        >>> h.upper[-1] < 1e-12, h.grad_norm[-1] < 1e-6, max(h.violation)
        (True, True, 0.0)
    """

    iteration: list[int] = field(default_factory=list)
    time: list[float] = field(default_factory=list)
    upper: list[float] = field(default_factory=list)
    violation: list[float] = field(default_factory=list)
    grad_norm: list[float] = field(default_factory=list)

    def append(
        self, iteration: int, time: float, upper: float, violation: float, grad_norm: float
    ) -> None:
        """Add one record."""
        self.iteration.append(int(iteration))
        self.time.append(float(time))
        self.upper.append(float(upper))
        self.violation.append(float(violation))
        self.grad_norm.append(float(grad_norm))

    def __len__(self) -> int:
        return len(self.iteration)


@dataclass
class BilevelResult:
    """Output of the bilevel solvers (``lv_hba``, ``aid_solve``, ``bsvrb``).

    Attributes:
        x: final upper-level variable.
        y: final lower-level variable (for multi-block problems, ``(m, d_y)``).
        history: the :class:`History` of the run.
        state: solver-specific final auxiliaries (LV-HBA: ``theta``, ``lam``, ``z``; BSVRB: the
            estimators), tensors only.
        iterations: iterations run.

    Example:
        >>> from subspaces.bilevel import aid_solve
        >>> F = lambda x, y: 0.5 * ((y - 1.0) ** 2).sum()  # y*(x) = x, so x* = 1
        >>> g = lambda x, y: 0.5 * ((y - x) ** 2).sum()
        >>> z = torch.zeros(2, dtype=torch.float64)
        >>> r = aid_solve(F, g, z, z, outer_iters=40, lr=0.5, inner_lr=0.5)
        >>> r.iterations, len(r.history), tuple(r.x.shape), tuple(r.y.shape)
        (40, 41, (2,), (2,))
        >>> bool(torch.allclose(r.x, torch.ones(2, dtype=torch.float64), atol=1e-6))
        True
    """

    x: Tensor
    y: Tensor
    history: History
    state: dict[str, Tensor] = field(default_factory=dict)
    iterations: int = 0

    def __repr__(self) -> str:
        last = self.history.upper[-1] if len(self.history) else float("nan")
        return (
            f"BilevelResult(iterations={self.iterations}, upper={last:.6g}, "
            f"x.shape={tuple(self.x.shape)}, y.shape={tuple(self.y.shape)})"
        )


def check_finite_step(value: Tensor, name: str, iteration: int) -> None:
    """Raise ``ValueError`` if a solver quantity became NaN/Inf (instead of spreading it)."""
    if not bool(torch.isfinite(value).all()):
        raise ValueError(
            f"{name} became non-finite at iteration {iteration}: check the objectives for "
            "NaN/Inf values or reduce the step sizes"
        )
