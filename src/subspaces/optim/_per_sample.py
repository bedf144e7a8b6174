"""Per-sample gradient moments for the adaptive batch-size tests (P21).

Two ways to the moments ``(n, mean, M2)`` of the per-sample gradients and their inner products
``<g_i, v>`` with a vector ``v``, chosen in one place (:func:`per_sample_moments`):

* ``"linear"``: when every trainable parameter is the weight or bias of an ``nn.Linear`` called
  once on a 2-D input, a per-sample weight gradient is the outer product ``d_i a_i^T`` of the
  layer's output gradient and input. Then ``sum_i g_i^2 = (D * D)^T (A * A)`` and
  ``<g_i, V> = d_i^T V a_i`` are products of the size of one backward pass (the second-moment
  trick of BackPACK, Dangel, Kunstner & Hennig, ICLR 2020), and the ``n x d`` matrix of
  per-sample gradients is never formed. Computed in the model's dtype (float32 at least); the
  per-coordinate ``M2 = sum_i g_i^2 - n mean^2`` loses relative accuracy ``~ eps * sum_i g_i^2 /
  M2`` on coordinates whose variance is tiny next to their squared mean.
* ``"vmap"``: any other model: ``torch.func.vmap`` over ``torch.func.grad`` of a
  ``functional_call`` (:func:`per_sample_gradients`), then the moments of that matrix.

Both require per-sample losses that do not interact (no batch statistics) and, for the linear
path, a ``loss_fn`` that averages over the batch (torch's default ``reduction="mean"``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import Tensor, nn

__all__ = ["per_sample_gradients", "per_sample_moments"]

Inner = Callable[[Tensor], Tensor]
Moments = tuple[int, Tensor, Tensor, Inner]


def _check_batch(model: nn.Module, inputs: Tensor, targets: Tensor) -> None:
    if not any(p.requires_grad for p in model.parameters()):
        raise ValueError(f"model {type(model).__name__} has no trainable parameters")
    if inputs.ndim == 0 or targets.ndim == 0 or inputs.shape[0] != targets.shape[0]:
        raise ValueError(
            f"inputs and targets must hold the same number of samples along dim 0, got shapes "
            f"{tuple(inputs.shape)} and {tuple(targets.shape)}"
        )
    if inputs.shape[0] == 0:
        raise ValueError("inputs hold no samples")


def per_sample_gradients(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
) -> Tensor:
    """Per-sample gradients of ``loss_fn(model(x_i), y_i)``, flattened, one row per sample.

    Uses ``vmap(grad(...))`` over ``functional_call`` on detached views of the trainable
    parameters (buffers and frozen parameters are passed as constants); each sample is a batch of
    one, so ``loss_fn`` sees outputs of shape ``(1, ...)``. Rows follow
    ``model.named_parameters()`` order (trainable ones only).

    Args:
        model: the model (its mode decides dropout / normalization behaviour).
        loss_fn: ``loss_fn(outputs, targets) -> scalar``.
        inputs: ``(n, ...)`` inputs.
        targets: ``(n, ...)`` targets.

    Returns:
        ``(n, d)`` per-sample gradients, ``d`` the number of trainable parameters.

    Raises:
        ValueError: if the model has no trainable parameter, or ``inputs`` and ``targets`` hold
            different numbers of samples or none.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(3, 1, bias=False)
        >>> x, y = torch.randn(4, 3), torch.randn(4, 1)
        >>> G = per_sample_gradients(lin, torch.nn.functional.mse_loss, x, y)
        >>> r = (x @ lin.weight.detach().T - y)  # d/dw (w.x - y)^2 = 2 (w.x - y) x
        >>> G.shape, torch.allclose(G, 2 * r * x, atol=1e-6)
        (torch.Size([4, 3]), True)
    """
    _check_batch(model, inputs, targets)
    trainable = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}
    frozen.update({k: v.detach() for k, v in model.named_buffers()})

    def loss_one(params: dict[str, Tensor], x: Tensor, y: Tensor) -> Tensor:
        out = torch.func.functional_call(model, (params, frozen), (x.unsqueeze(0),))
        return loss_fn(out, y.unsqueeze(0))

    grads = torch.func.vmap(
        torch.func.grad(loss_one), in_dims=(None, 0, 0), randomness="different"
    )(trainable, inputs, targets)
    n = inputs.shape[0]
    return torch.cat([grads[k].reshape(n, -1) for k in trainable], dim=1)


def _moments_of(G: Tensor) -> Moments:
    mean = G.mean(0)
    return G.shape[0], mean, (G - mean).square_().sum(0), lambda v: G @ v


def _linear_layers(model: nn.Module) -> list[tuple[nn.Linear, list[str]]] | None:
    # each nn.Linear with trainable parameters and their names in parameter order; None if
    # some trainable parameter is not the weight or bias of an nn.Linear
    owner: dict[int, tuple[nn.Linear, str]] = {}
    for module in model.modules():
        if isinstance(module, nn.Linear):
            for name, p in module.named_parameters(recurse=False):
                owner[id(p)] = (module, name)
    layers: dict[int, tuple[nn.Linear, list[str]]] = {}
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) not in owner:
            return None
        module, name = owner[id(p)]
        layers.setdefault(id(module), (module, []))[1].append(name)
    return list(layers.values())


def _linear_moments(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    layers: list[tuple[nn.Linear, list[str]]],
) -> Moments | None:
    captured: dict[int, list[tuple[Tensor, Tensor]]] = {id(m): [] for m, _ in layers}

    def hook(module: nn.Module, args: tuple[Tensor, ...], out: Tensor) -> None:
        captured[id(module)].append((args[0], out))

    handles = [m.register_forward_hook(hook) for m, _ in layers]
    try:
        with torch.enable_grad():
            loss = loss_fn(model(inputs), targets)
    finally:
        for h in handles:
            h.remove()
    n = inputs.shape[0]
    if any(len(c) != 1 or c[0][0].ndim != 2 or c[0][0].shape[0] != n for c in captured.values()):
        return None  # a layer called twice or on a sequence: per-sample gradients do not factor
    outs = [captured[id(m)][0][1] for m, _ in layers]
    deltas = torch.autograd.grad(loss, outs, allow_unused=True)
    # float32 at least (half-precision models are promoted); D = n * dL/dz holds the per-sample
    # output gradients when loss_fn averages over the batch (the tests are scale-invariant)
    dtype = torch.promote_types(outs[0].dtype, torch.float32)
    pieces = []
    for (module, names), out, delta in zip(layers, outs, deltas, strict=True):
        a = captured[id(module)][0][0].detach().to(dtype)
        d = torch.zeros_like(out, dtype=dtype) if delta is None else delta.to(dtype) * n
        pieces.append((a, d, names))
    means, m2s = [], []
    for a, d, names in pieces:
        for name in names:
            if name == "weight":
                mean = d.T @ a / n
                sumsq = d.square().T @ a.square()
            else:
                mean, sumsq = d.mean(0), d.square().sum(0)
            means.append(mean.reshape(-1))
            m2s.append((sumsq - n * mean.square()).clamp_min_(0.0).reshape(-1))

    def inner(v: Tensor) -> Tensor:
        total = torch.zeros(n, dtype=dtype, device=v.device)
        offset = 0
        for a, d, names in pieces:
            for name in names:
                if name == "weight":
                    size = d.shape[1] * a.shape[1]
                    V = v[offset : offset + size].reshape(d.shape[1], a.shape[1]).to(dtype)
                    total += ((d @ V) * a).sum(1)
                else:
                    size = d.shape[1]
                    total += d @ v[offset : offset + size].to(dtype)
                offset += size
        return total

    return n, torch.cat(means), torch.cat(m2s), inner


def per_sample_moments(
    model: nn.Module,
    loss_fn: Callable[[Tensor, Tensor], Tensor],
    inputs: Tensor,
    targets: Tensor,
    *,
    method: Literal["auto", "linear", "vmap"] = "auto",
) -> Moments:
    """This process's per-sample gradient moments and an inner-product function.

    Args:
        model: the model.
        loss_fn: ``loss_fn(outputs, targets)``, averaged over the batch.
        inputs: ``(n, ...)`` inputs.
        targets: ``(n, ...)`` targets.
        method: ``"auto"`` (the linear path when the model allows it, else ``vmap``),
            ``"linear"`` (raises if the model does not allow it) or ``"vmap"``.

    Returns:
        ``(n, mean, M2, inner)``: the count, the mean and the per-coordinate sum of squared
        deviations of the flattened per-sample gradients (trainable parameters in
        ``named_parameters()`` order), and ``inner(v)`` returning ``<g_i, v>`` for every sample.

    Raises:
        ValueError: for a model without trainable parameters, mismatched or empty batches, an
            unknown ``method``, or ``method="linear"`` on a model it does not cover.

    Example:
        >>> import torch
        >>> net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
        >>> x, y = torch.randn(5, 3), torch.randint(0, 2, (5,))
        >>> loss = torch.nn.functional.cross_entropy
        >>> n, mean, m2, inner = per_sample_moments(net, loss, x, y, method="linear")
        >>> G = per_sample_gradients(net, loss, x, y)
        >>> n, torch.allclose(mean.float(), G.mean(0), atol=1e-6)
        (5, True)
        >>> torch.allclose(m2.float(), G.var(0) * 4, atol=1e-5)
        True
    """
    _check_batch(model, inputs, targets)
    if method not in ("auto", "linear", "vmap"):
        raise ValueError(f"method must be 'auto', 'linear' or 'vmap', got {method!r}")
    if method != "vmap":
        layers = _linear_layers(model)
        moments = (
            None if layers is None else _linear_moments(model, loss_fn, inputs, targets, layers)
        )
        if moments is not None:
            return moments
        if method == "linear":
            raise ValueError(
                f"method='linear' needs every trainable parameter of {type(model).__name__} in an "
                "nn.Linear called once on a 2-D input"
            )
    return _moments_of(per_sample_gradients(model, loss_fn, inputs, targets))
