"""A wrapper around any torch optimizer that projects gradients off a GPM memory before ``step``.

For every layer the memory holds (an ``nn.Linear`` or ``nn.Conv2d`` of the model), the gradient
of its weight, viewed as the matrix ``G`` (``out x d``) acting on the layer's inputs, becomes
``G - (G M) M^T`` with ``M`` the memory basis (Saha et al. 2021, Eq. 7). When the memory holds
more than half of a layer's input space the wrapper computes the same matrix as ``G C C^T`` with
``C`` an orthonormal basis of the orthogonal complement (``min(k, d - k)`` columns of work).

What the wrapped optimizer then does decides whether the old outputs stay fixed: SGD, with or
without momentum or Nesterov, moves the weights by a linear combination of projected gradients,
so the outputs on the stored inputs do not change (GPM's setting). Adam, AdamW, RMSprop and
Adagrad divide each coordinate by its own scale, which takes the update out of the projected
subspace; weight decay shrinks the weights in every direction. They still work, with less
protection. Layers without a stored direction and every other parameter (biases,
normalization) are left to the optimizer untouched, so with an empty memory the wrapper is the
bare optimizer, bit for bit.

Biases: a bias is an update of the output on every input, so GPM trains networks without biases
or freezes them after the first task (``requires_grad_(False)``); the wrapper does neither for
you.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .memory import GPMMemory, _check_layer

__all__ = ["ProjectedOptimizer", "project_gradient"]


def project_gradient(grad: Tensor, basis: Tensor) -> Tensor:
    """``G - (G M) M^T`` for a weight gradient viewed as ``(out, d)`` (a new tensor).

    Args:
        grad: the gradient of a Linear ``(out, d)`` or Conv2d ``(out, C, kh, kw)`` weight.
        basis: ``M`` (``d x k``) with orthonormal columns.

    Returns:
        The projected gradient, with the shape of ``grad``.

    Raises:
        ValueError: if the flattened input dimension of ``grad`` is not ``basis.shape[0]``.

    Example:
        >>> M = torch.tensor([[1.0], [0.0]])
        >>> project_gradient(torch.tensor([[3.0, 4.0]]), M).tolist()
        [[0.0, 4.0]]
    """
    G = grad.reshape(grad.shape[0], -1)
    if G.shape[1] != basis.shape[0]:
        raise ValueError(
            f"gradient of shape {tuple(grad.shape)} acts on inputs of dimension {G.shape[1]}, "
            f"but the basis has dimension {basis.shape[0]}"
        )
    B = basis.to(G.dtype)
    return (G - (G @ B) @ B.T).reshape(grad.shape)


class ProjectedOptimizer:
    """Wrap ``optimizer`` so that ``step()`` first projects each memory layer's weight gradient.

    The wrapper delegates ``zero_grad``, ``param_groups``, ``state``, ``state_dict`` and
    ``load_state_dict`` to the wrapped optimizer (attach learning-rate schedulers to the wrapped
    optimizer). It reads the memory lazily: after :meth:`GPMMemory.update` the next ``step``
    uses the new bases. :meth:`set_basis` overrides the basis of one layer (CUBER releases the
    subspaces of positively correlated old tasks this way, :func:`~subspaces.continual.cuber`).

    Args:
        optimizer: any ``torch.optim.Optimizer`` over (some of) ``model``'s parameters.
        model: the network whose layers the memory names.
        memory: the GPM memory (may be empty).

    Raises:
        TypeError: if ``optimizer`` is not a torch optimizer (or is LBFGS, which evaluates its
            closure several times inside ``step``), or a memory layer is not Linear/Conv2d.
        ValueError: if a memory layer is not a module of ``model``.

    Example:
        >>> net = nn.Sequential(nn.Linear(3, 2, bias=False))
        >>> memory = GPMMemory(0.99).update({"0": torch.tensor([[1.0], [0.0], [0.0]])})
        >>> opt = ProjectedOptimizer(torch.optim.SGD(net.parameters(), lr=0.1), net, memory)
        >>> before = net(torch.tensor([[1.0, 0.0, 0.0]])).detach()
        >>> net(torch.randn(5, 3)).pow(2).sum().backward()
        >>> opt.step()
        >>> torch.equal(net(torch.tensor([[1.0, 0.0, 0.0]])).detach(), before)
        True
    """

    def __init__(self, optimizer: torch.optim.Optimizer, model: nn.Module, memory: GPMMemory):
        if not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(
                f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}"
            )
        if isinstance(optimizer, torch.optim.LBFGS):
            raise TypeError(
                "optimizer must take one gradient per step; LBFGS re-evaluates its closure "
                "inside step(), where the projection cannot reach"
            )
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
        if not isinstance(memory, GPMMemory):
            raise TypeError(f"memory must be a GPMMemory, got {type(memory).__name__}")
        self.optimizer = optimizer
        self.model = model
        self.memory = memory
        self._modules = dict(model.named_modules())
        self._overrides: dict[str, Tensor | None] = {}
        # layer -> (weight, basis, is_complement)
        self._cache: dict[str, tuple[Tensor, Tensor, bool]] = {}
        self._cached_version = -1
        self._check_layers(memory.layers)

    def _check_layers(self, layers: list[str]) -> None:
        for layer in layers:
            if layer not in self._modules:
                raise ValueError(f"memory layer {layer!r} is not a module of the model")
            _check_layer(self._modules[layer], layer)

    def set_basis(self, layer: str, basis: Tensor | None) -> None:
        """Project ``layer``'s gradient off ``basis`` instead of the memory's, until cleared.

        Args:
            layer: a Linear/Conv2d module name of the model.
            basis: ``d x k`` orthonormal columns, or ``None`` for no projection of this layer.

        Raises:
            ValueError: for an unknown layer or a basis of the wrong input dimension.
        """
        self._check_layers([layer])
        if basis is not None:
            d = self._modules[layer].weight[0].numel()
            if basis.ndim != 2 or basis.shape[0] != d:
                raise ValueError(
                    f"basis for layer {layer!r} must be ({d}, k), got {tuple(basis.shape)}"
                )
        self._overrides[layer] = basis
        self._cached_version = -1

    def clear_bases(self) -> None:
        """Drop every :meth:`set_basis` override: project off the memory again."""
        self._overrides.clear()
        self._cached_version = -1

    def _refresh(self) -> None:
        self._check_layers(self.memory.layers)
        cache: dict[str, tuple[Tensor, Tensor, bool]] = {}
        for layer in dict.fromkeys([*self.memory.layers, *self._overrides]):
            basis = self._overrides[layer] if layer in self._overrides else self.memory.basis(layer)
            if basis is None or basis.shape[1] == 0:
                continue
            weight = self._modules[layer].weight
            M = basis.to(weight.device, weight.dtype)
            d, k = M.shape
            if 2 * k > d:  # G - G M M^T = G C C^T with C the complement: fewer flops
                C = torch.linalg.qr(M, mode="complete").Q[:, k:]
                cache[layer] = (weight, C.contiguous(), True)
            else:
                cache[layer] = (weight, M.contiguous(), False)
        self._cache = cache
        self._cached_version = self.memory.version

    @torch.no_grad()
    def project_(self) -> None:
        """Project the current weight gradients in place (what :meth:`step` does first)."""
        if self._cached_version != self.memory.version:
            self._refresh()
        for weight, B, complement in self._cache.values():
            grad = weight.grad
            if grad is None:
                continue
            if grad.is_sparse:
                raise ValueError("sparse gradients cannot be projected")
            G = grad.reshape(grad.shape[0], -1)
            if complement:
                grad.copy_(((G @ B) @ B.T).view(grad.shape))
            elif grad.is_contiguous():
                G.sub_((G @ B) @ B.T)  # G is a view of grad
            else:  # e.g. channels_last: project a copy, write it back
                grad.copy_((G - (G @ B) @ B.T).view(grad.shape))

    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        """Project the gradients, then take the wrapped optimizer's step.

        Args:
            closure: passed to the wrapped optimizer; it is evaluated (with gradients enabled)
                before the projection, and the wrapped ``step`` then gets no closure.

        Returns:
            The closure's loss, or what the wrapped ``step`` returns.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self.project_()
        out = self.optimizer.step()
        return loss if closure is not None else out

    # ----- delegation ----------------------------------------------------------------------
    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear the gradients (the wrapped optimizer's ``zero_grad``).

        Args:
            set_to_none: set gradients to ``None`` instead of zero.
        """
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @property
    def param_groups(self) -> list[dict[str, Any]]:
        """The wrapped optimizer's parameter groups."""
        return self.optimizer.param_groups

    @property
    def state(self) -> Any:
        """The wrapped optimizer's state."""
        return self.optimizer.state

    def state_dict(self) -> dict[str, Any]:
        """The wrapped optimizer's state dict (the memory saves itself separately).

        Returns:
            ``optimizer.state_dict()``.
        """
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Load the wrapped optimizer's state dict.

        Args:
            state_dict: from :meth:`state_dict`.
        """
        self.optimizer.load_state_dict(dict(state_dict))

    def __repr__(self) -> str:
        return f"ProjectedOptimizer({type(self.optimizer).__name__}, {self.memory!r})"
