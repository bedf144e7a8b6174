"""Target-based surrogates (SSO, P10): many cheap steps per expensive gradient in target space.

For a loss ``L(theta) = l(f(theta))`` whose gradient with respect to the targets ``z = f(theta)``
(logits, policy outputs) is expensive, SSO computes ``grad_z l(z_t)`` once at ``z_t =
f(theta_t)`` and then takes ``m`` cheap steps of any optimizer on the surrogate

``g_t(theta) = l(z_t) + <grad_z l(z_t), f(theta) - z_t> + ||f(theta) - z_t||^2 / (2 eta)``,

which needs only forward and backward passes through ``f``. Its minimizer over the targets is
the target-space gradient step ``z_t - eta grad_z l(z_t)``; with ``m = 1`` the surrogate's
gradient at ``theta_t`` equals ``grad L(theta_t)`` (``f(theta_t) = z_t`` cancels the proximal
term), so one inner SGD step is one SGD step on ``L``.

Reference:
    Jonathan Wilder Lavington, Sharan Vaswani, Reza Babanezhad, Mark Schmidt, Nicolas Le Roux,
    "Target-based Surrogates for Stochastic Optimization", ICML 2023, arXiv:2302.02607
    (Algorithm 1, SSO).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_positive_float, check_positive_int

__all__ = ["SurrogateStep", "TargetSurrogate"]


@dataclass(frozen=True)
class SurrogateStep:
    """What one :meth:`TargetSurrogate.step` did.

    Attributes:
        loss: ``l(z_t)``, the target loss at the start of the step.
        surrogate: the surrogate's value at the parameters the inner steps ended at (one
            extra forward pass, no backward).
        target_grad_norm: ``||grad_z l(z_t)||``.

    Example:
        The surrogate equals ``l(z_t)`` where the inner steps start, and they lower it:

        >>> import torch
        >>> from subspaces.optim import TargetSurrogate
        >>> _ = torch.manual_seed(0)
        >>> X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
        >>> model = torch.nn.Linear(5, 3)
        >>> z = model(X).detach().requires_grad_()
        >>> loss = torch.nn.functional.cross_entropy(z, y)
        >>> loss.backward()
        >>> sso = TargetSurrogate(model, torch.nn.functional.cross_entropy,
        ...                       torch.optim.SGD(model.parameters(), lr=0.5),
        ...                       inner_steps=5, eta=20.0)
        >>> s = sso.step(X, y)
        >>> s.loss == loss.item(), abs(s.target_grad_norm - z.grad.norm().item()) < 1e-6
        (True, True)
        >>> s.surrogate < s.loss
        True
    """

    loss: float
    surrogate: float
    target_grad_norm: float


class TargetSurrogate:
    """Stochastic surrogate optimization in target space (SSO, Algorithm 1 of the paper).

    Args:
        model: ``f``, mapping inputs to targets; it must have trainable parameters.
        target_loss: ``l(z, *loss_args) -> scalar``, the expensive loss of the targets.
        inner_optimizer: any ``torch.optim.Optimizer`` over (some of) the model's parameters;
            it takes the ``m`` cheap steps on the surrogate (SGD, Adam, L-BFGS with a closure).
        inner_steps: ``m``, cheap steps per expensive gradient.
        eta: the target-space step size of the proximal term ``||f - z_t||^2 / (2 eta)``
            (summed over every entry of the targets; with a loss that is a mean over ``N``
            samples, the target-space gradient step per sample is ``eta / N`` times its
            per-sample gradient).

    Attributes:
        num_expensive: gradients of ``l`` taken with respect to the targets.
        num_cheap: surrogate evaluations (forward and backward through ``f``).

    Raises:
        ValueError: a model without trainable parameters, an inner optimizer over parameters
            that are not the model's, ``inner_steps < 1`` or ``eta <= 0``.
        TypeError: a model that is not an ``nn.Module``, an inner optimizer that is not a
            ``torch.optim.Optimizer`` or a ``target_loss`` that is not callable.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> X, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
        >>> model = torch.nn.Linear(5, 3)
        >>> sso = TargetSurrogate(model, torch.nn.functional.cross_entropy,
        ...                       torch.optim.SGD(model.parameters(), lr=0.5),
        ...                       inner_steps=5, eta=20.0)
        >>> first = sso.step(X, y).loss
        >>> for _ in range(9):
        ...     last = sso.step(X, y).loss
        >>> last < first, sso.num_expensive, sso.num_cheap
        (True, 10, 50)

    References:
        Lavington, Vaswani, Babanezhad, Schmidt, Le Roux, "Target-based Surrogates for
        Stochastic Optimization", ICML 2023, arXiv:2302.02607.
    """

    def __init__(
        self,
        model: nn.Module,
        target_loss: Callable[..., Tensor],
        inner_optimizer: torch.optim.Optimizer,
        *,
        inner_steps: int = 10,
        eta: float = 1.0,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not callable(target_loss):
            raise TypeError(f"target_loss must be callable, got {type(target_loss).__name__}")
        if not isinstance(inner_optimizer, torch.optim.Optimizer):
            raise TypeError(
                "inner_optimizer must be a torch.optim.Optimizer, got "
                f"{type(inner_optimizer).__name__}"
            )
        own = {id(p) for p in model.parameters() if p.requires_grad}
        if not own:
            raise ValueError("model has no trainable parameters (nothing for SSO to optimize)")
        foreign = [
            i
            for g in inner_optimizer.param_groups
            for i, p in enumerate(g["params"])
            if id(p) not in own
        ]
        if foreign:
            raise ValueError(
                f"inner_optimizer holds {len(foreign)} tensor(s) that are not trainable "
                "parameters of the model"
            )
        self.model = model
        self.target_loss = target_loss
        self.inner_optimizer = inner_optimizer
        self.inner_steps = check_positive_int(inner_steps, "inner_steps")
        self.eta = check_positive_float(eta, "eta")
        self.num_expensive = 0
        self.num_cheap = 0

    @staticmethod
    def _forward(model: nn.Module, inputs: Any) -> Tensor:
        out = model(*inputs) if isinstance(inputs, tuple) else model(inputs)
        if not isinstance(out, Tensor):
            raise TypeError(f"the model must return a tensor of targets, got {type(out).__name__}")
        return out

    def target_gradient(self, inputs: Any, *loss_args: Any) -> tuple[Tensor, float, Tensor]:
        """The expensive part: ``z_t = f(theta_t)``, ``l(z_t)`` and ``grad_z l(z_t)``.

        Args:
            inputs: the model input (a tensor, or a tuple of positional inputs).
            *loss_args: passed to ``target_loss`` after the targets (labels, a teacher policy).

        Returns:
            ``(z_t, l(z_t), grad_z l(z_t))`` with ``z_t`` and the gradient detached.

        Raises:
            ValueError: if the loss is not a finite scalar or its target gradient not finite.
        """
        with torch.no_grad():
            # a copy: the output may alias a parameter the inner steps update in place
            z_t = self._forward(self.model, inputs).detach().clone()
        z = z_t.clone().requires_grad_(True)
        with torch.enable_grad():
            loss = self.target_loss(z, *loss_args)
            if not isinstance(loss, Tensor) or loss.ndim != 0:
                raise ValueError(f"target_loss must return a scalar tensor, got {loss!r}")
            if not bool(torch.isfinite(loss)):
                value = float(loss.detach())
                raise ValueError(f"target_loss returned a non-finite value ({value})")
            (grad,) = torch.autograd.grad(loss, z)
        if not bool(torch.isfinite(grad).all()):
            raise ValueError(
                "the gradient of target_loss with respect to the targets is not finite"
            )
        self.num_expensive += 1
        return z_t, float(loss.detach()), grad

    def step(self, inputs: Any, *loss_args: Any) -> SurrogateStep:
        """One outer SSO iteration: one expensive target gradient, ``m`` cheap inner steps.

        Args:
            inputs: the mini-batch's model input (a tensor or a tuple of positional inputs).
            *loss_args: extra arguments of ``target_loss`` (e.g. labels).

        Returns:
            A :class:`SurrogateStep`.

        Raises:
            ValueError: for non-finite target losses, target gradients or surrogate values.
        """
        z_t, loss, grad = self.target_gradient(inputs, *loss_args)
        inv = 1.0 / (2.0 * self.eta)

        def surrogate() -> Tensor:
            diff = self._forward(self.model, inputs) - z_t
            sur = loss + (grad * diff).sum() + inv * (diff * diff).sum()
            if not bool(torch.isfinite(sur)):
                raise ValueError(f"the surrogate is not finite ({float(sur.detach())})")
            return sur

        def closure() -> Any:  # a tensor (torch types closures as returning float)
            self.inner_optimizer.zero_grad()
            with torch.enable_grad():
                sur = surrogate()
                sur.backward()
            self.num_cheap += 1
            return sur.detach()

        for _ in range(self.inner_steps):
            self.inner_optimizer.step(closure)
        with torch.no_grad():  # one forward pass, not counted as a surrogate evaluation
            value = float(surrogate())
        return SurrogateStep(loss, value, float(grad.norm()))

    def state_dict(self) -> dict[str, Any]:
        """The inner optimizer's state and the counters (loads with ``weights_only=True``).

        Returns:
            ``{"inner_optimizer": ..., "num_expensive": int, "num_cheap": int}``.
        """
        return {
            "inner_optimizer": self.inner_optimizer.state_dict(),
            "num_expensive": self.num_expensive,
            "num_cheap": self.num_cheap,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned.

        Raises:
            ValueError: if keys are missing.
        """
        missing = {"inner_optimizer", "num_expensive", "num_cheap"} - set(state)
        if missing:
            raise ValueError(f"state is missing {sorted(missing)}")
        self.inner_optimizer.load_state_dict(state["inner_optimizer"])
        self.num_expensive = int(state["num_expensive"])
        self.num_cheap = int(state["num_cheap"])

    def __repr__(self) -> str:
        return (
            f"TargetSurrogate(inner_steps={self.inner_steps}, eta={self.eta}, "
            f"inner_optimizer={type(self.inner_optimizer).__name__}, "
            f"num_expensive={self.num_expensive}, num_cheap={self.num_cheap})"
        )
