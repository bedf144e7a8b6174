r"""TRGP: trust-region selection of old tasks and their scaled weight projection.

Lin, Yang, Fan & Zhang, "TRGP: Trust Region Gradient Projection for Continual Learning" (ICLR
2022). Before training task ``t``, a gradient ``G`` of the new task's loss (one batch, at the
current weights) is projected onto each old task's input subspace ``S_j`` of each layer
(:attr:`GPMMemory.task_bases_`). Old task ``j`` is in the *trust region* of the layer when the
projection is large, ``||G S_j S_j^T||_F > eps ||G||_F`` (the paper's ``eps = 0.5``; its PMNIST
code uses 0.2), and the ``top_k`` such tasks with the largest projections are kept (``k = 2``).

For the kept tasks the layer computes with the *scaled weight projection*

``W_eff = W + sum_j (W S_j Q_j S_j^T - W S_j S_j^T)``,

``Q_j`` (``k_j x k_j``) learnable and initialized to the identity, while ``W`` itself is still
trained with its gradient projected off the whole memory (GPM). The learned ``Q_j`` are stored
with task ``t`` and used whenever task ``t`` is evaluated, so the old tasks see the unchanged
``W``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .memory import GPMMemory, _check_layer

__all__ = ["ScaledProjection", "projection_ratio", "projection_ratios", "trust_region"]


def projection_ratio(grad: Tensor, basis: Tensor) -> float:
    """``||G S S^T||_F / ||G||_F``: the share of a weight gradient inside an input subspace.

    Args:
        grad: a Linear ``(out, d)`` or Conv2d ``(out, C, kh, kw)`` weight gradient.
        basis: ``S`` (``d x k``) with orthonormal columns (``k`` may be 0).

    Returns:
        The ratio in ``[0, 1]`` (0 for a zero gradient or an empty basis).

    Raises:
        ValueError: for mismatched dimensions or a non-finite gradient.

    Example:
        >>> projection_ratio(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0], [1.0]]))
        0.8
    """
    G = grad.detach().reshape(grad.shape[0], -1).double()
    if G.shape[1] != basis.shape[0]:
        raise ValueError(
            f"gradient of shape {tuple(grad.shape)} acts on dimension {G.shape[1]}, but the "
            f"basis has dimension {basis.shape[0]}"
        )
    norm = float(torch.linalg.matrix_norm(G))
    if not torch.isfinite(torch.tensor(norm)):
        raise ValueError("gradient contains NaN or Inf")
    if norm == 0.0 or basis.shape[1] == 0:
        return 0.0
    return float(torch.linalg.matrix_norm(G @ basis.double())) / norm


def projection_ratios(grads: Mapping[str, Tensor], memory: GPMMemory) -> dict[str, list[float]]:
    """For each layer, :func:`projection_ratio` of its gradient onto every old task's subspace.

    Args:
        grads: ``{layer: weight gradient}`` of the new task, for the memory's layers.
        memory: the GPM memory with the old tasks' bases.

    Returns:
        ``{layer: [ratio for task 0, 1, ...]}``.

    Raises:
        ValueError: for a memory layer without a gradient.

    Example:
        >>> R = torch.eye(4, dtype=torch.float64)[:, :2] @ torch.ones(2, 10, dtype=torch.float64)
        >>> memory = GPMMemory(threshold=0.99).update({"fc": R})
        >>> G = torch.tensor([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 3.0, 0.0]], dtype=torch.float64)
        >>> {k: [round(r, 6) for r in v] for k, v in projection_ratios({"fc": G}, memory).items()}
        {'fc': [0.426401]}
    """
    out: dict[str, list[float]] = {}
    for layer in memory.layers:
        if layer not in grads:
            raise ValueError(f"no gradient for memory layer {layer!r}; got {sorted(grads)}")
        out[layer] = [projection_ratio(grads[layer], t[layer]) for t in memory.task_bases_]
    return out


def trust_region(
    grads: Mapping[str, Tensor],
    memory: GPMMemory,
    *,
    epsilon: float = 0.5,
    top_k: int = 2,
) -> dict[str, list[int]]:
    """TRGP's trust region: per layer, the old tasks with a large projection, largest first.

    Args:
        grads: ``{layer: weight gradient}`` of the new task at the current weights.
        memory: the GPM memory holding the old tasks.
        epsilon: the projection-ratio threshold in ``[0, 1)``.
        top_k: at most this many tasks per layer.

    Returns:
        ``{layer: [task indices]}`` sorted by decreasing ratio (possibly empty lists).

    Raises:
        ValueError: for ``epsilon`` outside ``[0, 1)`` or ``top_k < 1``.

    Example:
        >>> memory = GPMMemory(0.99).update({"fc": torch.tensor([[1.0], [0.0]])})
        >>> memory = memory.update({"fc": torch.tensor([[0.0], [1.0]])})
        >>> trust_region({"fc": torch.tensor([[0.1, 1.0]])}, memory)
        {'fc': [1]}
    """
    if not 0.0 <= float(epsilon) < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise ValueError(f"top_k must be an int >= 1, got {top_k!r}")
    out: dict[str, list[int]] = {}
    for layer, ratios in projection_ratios(grads, memory).items():
        inside = [j for j, r in enumerate(ratios) if r > epsilon]
        inside.sort(key=lambda j: -ratios[j])
        out[layer] = inside[:top_k]
    return out


class ScaledProjection(nn.Module):
    """The learnable scales ``Q_j`` of TRGP's scaled weight projection for some layers.

    ``W_eff = W + sum_j (W S_j)(Q_j - I) S_j^T`` for each selected old task ``j`` of a layer;
    with every ``Q_j = I`` it is ``W``. Call the model through :meth:`forward` (it uses
    :func:`torch.func.functional_call`, so the model's own weights are never replaced, and
    gradients reach both ``W`` and the ``Q_j``).

    Args:
        bases: ``{layer: [S_j, ...]}`` the selected old tasks' bases (``d x k_j`` each).

    Raises:
        ValueError: for an empty basis list or bases of different input dimensions in a layer.

    Example:
        >>> net = nn.Sequential(nn.Linear(2, 1, bias=False))
        >>> scaled = ScaledProjection({"0": [torch.tensor([[1.0], [0.0]])]})
        >>> x = torch.tensor([[1.0, 1.0]])
        >>> torch.equal(scaled(net, x), net(x))  # Q = I
        True
        >>> with torch.no_grad():
        ...     _ = scaled.scale("0", 0).fill_(3.0)
        >>> w = net[0].weight.detach()
        >>> float(scaled(net, x).detach()) == float(3 * w[0, 0] + w[0, 1])
        True
    """

    def __init__(self, bases: Mapping[str, Sequence[Tensor]]) -> None:
        super().__init__()
        self.layers = [str(k) for k in bases]
        self._names: dict[str, list[str]] = {}
        self.scales = nn.ParameterDict()
        for layer, given in bases.items():
            blist = list(given)
            if not blist:
                raise ValueError(f"layer {layer!r}: empty list of bases")
            d = blist[0].shape[0]
            names = []
            for i, S in enumerate(blist):
                if S.ndim != 2 or S.shape[0] != d:
                    raise ValueError(
                        f"layer {layer!r}: basis {i} has shape {tuple(S.shape)}, expected ({d}, k)"
                    )
                key = f"{layer.replace('.', '_')}__{i}"
                self.register_buffer(f"basis_{key}", S.detach().clone())
                self.scales[key] = nn.Parameter(
                    torch.eye(S.shape[1], dtype=S.dtype, device=S.device)
                )
                names.append(key)
            self._names[str(layer)] = names

    def scale(self, layer: str, index: int) -> nn.Parameter:
        """The scale ``Q`` of the ``index``-th basis of ``layer``.

        Args:
            layer: a layer name.
            index: position in that layer's basis list.

        Returns:
            The parameter.
        """
        return self.scales[self._names[layer][index]]

    def effective_weights(self, model: nn.Module) -> dict[str, Tensor]:
        """``{"<layer>.weight": W_eff}`` for the layers this object scales.

        Args:
            model: the network.

        Returns:
            The effective weights (differentiable in ``W`` and the scales).
        """
        modules = dict(model.named_modules())
        out = {}
        for layer, names in self._names.items():
            module = modules[layer]
            _check_layer(module, layer)
            W = module.weight
            Wf = W.reshape(W.shape[0], -1)
            delta = torch.zeros_like(Wf)
            for key in names:
                S = getattr(self, f"basis_{key}").to(Wf.dtype)
                Q = self.scales[key].to(Wf.dtype)
                eye = torch.eye(Q.shape[0], dtype=Q.dtype, device=Q.device)
                delta = delta + (Wf @ S) @ (Q - eye) @ S.T
            out[f"{layer}.weight" if layer else "weight"] = (Wf + delta).reshape(W.shape)
        return out

    def forward(self, model: nn.Module, *args: Any, **kwargs: Any) -> Any:
        """``model(*args, **kwargs)`` computed with the scaled weights.

        Args:
            model: the network.
            *args: its positional inputs.
            **kwargs: its keyword inputs.

        Returns:
            The model's output.
        """
        return functional_call(model, self.effective_weights(model), args, kwargs, strict=False)
