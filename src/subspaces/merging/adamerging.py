r"""AdaMerging: merge coefficients learned by entropy minimisation on unlabeled data.

Yang et al., "AdaMerging: Adaptive Model Merging for Multi-Task Learning" (ICLR 2024). The
merged model is

- task-wise: ``theta = theta_0 + sum_k lambda_k tau_k`` (one coefficient per task);
- layer-wise: ``theta^l = theta_0^l + sum_k lambda_k^l tau_k^l`` (one coefficient per task and
  per parameter tensor ``l``, as in the reference implementations),

and the coefficients minimise the mean Shannon entropy of the merged model's predictions on
unlabeled batches of every task (Adam, learning rate 1e-3, initial value 0.3, coefficients
clamped to ``[0, 1]`` in the merge as in the paper's code). The model is evaluated through
:func:`torch.func.functional_call` on the merged tensors, so no model is copied per step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torch.func import functional_call

from .._checks import check_choice, check_positive_float, check_positive_int
from .._progress import Progress

__all__ = [
    "AdaMergingResult",
    "Forward",
    "Granularity",
    "adamerging",
    "entropy_loss",
    "merged_parameters",
]

Granularity = Literal["task", "layer"]
Forward = Callable[[dict[str, Tensor], Any, int], Tensor]
"""``forward(params, batch, task) -> logits``: the model on ``batch`` of task ``task``."""


def entropy_loss(logits: Tensor) -> Tensor:
    """Mean Shannon entropy (nats) of the softmax of ``logits`` over the last dimension.

    Args:
        logits: ``(N, C)`` (or ``(..., C)``) unnormalised log-probabilities.

    Returns:
        A scalar tensor.

    Example:
        >>> round(entropy_loss(torch.zeros(3, 4)).item(), 6) == round(float(torch.log(torch.tensor(4.0))), 6)
        True
    """  # noqa: E501
    logp = torch.log_softmax(logits, dim=-1)
    return -(logp.exp() * logp).sum(-1).mean()


def merged_parameters(
    base: Mapping[str, Tensor],
    vectors: Sequence[Mapping[str, Tensor]],
    coefficients: Tensor,
    names: Sequence[str],
    *,
    mask: Mapping[str, Tensor] | None = None,
    clamp: tuple[float, float] | None = None,
) -> dict[str, Tensor]:
    """``theta_0 + sum_k lambda_k (m * tau_k)`` for each tensor of ``names`` (differentiable).

    Args:
        base: the pretrained tensors (every name the model needs).
        vectors: the task vectors (each holding ``names``).
        coefficients: ``(K,)`` task-wise or ``(len(names), K)`` layer-wise.
        names: the merged tensors; the others are taken from ``base`` as they are.
        mask: optional multiplier per tensor, applied to every task vector (the Concrete mask).
        clamp: optional ``(low, high)`` applied to the coefficients first.

    Returns:
        A full ``name -> tensor`` mapping for :func:`torch.func.functional_call`.

    Example:
        >>> base = {"w": torch.zeros(2), "b": torch.ones(1)}
        >>> tvs = [{"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([0.0, 2.0])}]
        >>> p = merged_parameters(base, tvs, torch.tensor([0.5, 0.25]), ["w"])
        >>> p["w"].tolist(), p["b"].tolist()
        ([0.5, 0.5], [1.0])
    """
    lam = coefficients if clamp is None else coefficients.clamp(*clamp)
    out = dict(base)
    for i, name in enumerate(names):
        row = lam if lam.ndim == 1 else lam[i]
        x = base[name]
        m = None if mask is None else mask[name]
        for k, tv in enumerate(vectors):
            delta = tv[name] if m is None else m * tv[name]
            x = x + row[k].to(x.dtype) * delta
        out[name] = x
    return out


@dataclass
class AdaMergingResult:
    """What :func:`adamerging` learned.

    Attributes:
        coefficients: ``(K,)`` task-wise or ``(L, K)`` layer-wise, clamped as used.
        names: the merged tensor names (the rows of layer-wise coefficients).
        state_dict: the merged tensors (every name of the base), detached.
        losses: the summed entropy at each step (before its update).

    Example:
        Layer-wise coefficients: one row per merged tensor; the result's tensors are the base
        plus the coefficient-weighted task vectors, and tensors without a task vector stay the
        base's.

        >>> import torch
        >>> from subspaces.merging import adamerging
        >>> g = torch.Generator().manual_seed(0)
        >>> net = torch.nn.Linear(4, 3)
        >>> base = {k: v.detach().clone() for k, v in net.state_dict().items()}
        >>> tvs = [{"weight": torch.randn(3, 4, generator=g)} for _ in range(2)]
        >>> data = [[torch.randn(8, 4, generator=g)] for _ in range(2)]
        >>> res = adamerging(net, base, tvs, data, granularity="layer", steps=10, lr=0.05)
        >>> res.names, res.coefficients.shape, len(res.losses)
        (['weight'], torch.Size([1, 2]), 10)
        >>> c = res.coefficients[0]
        >>> merged = base["weight"] + c[0] * tvs[0]["weight"] + c[1] * tvs[1]["weight"]
        >>> torch.allclose(res.state_dict["weight"], merged)
        True
        >>> torch.equal(res.state_dict["bias"], base["bias"])
        True
    """

    coefficients: Tensor
    names: list[str]
    state_dict: dict[str, Tensor]
    losses: list[float] = field(default_factory=list)


def _default_forward(model: nn.Module) -> Forward:
    def forward(params: dict[str, Tensor], batch: Any, task: int) -> Tensor:
        args = batch if isinstance(batch, tuple) else (batch,)
        return functional_call(model, params, args)

    return forward


class _Cycler:
    """Endless batches from an iterable (re-iterated when exhausted; nothing cached)."""

    def __init__(self, source: Iterable[Any], what: str) -> None:
        self.source = source
        self.what = what
        self.it: Iterator[Any] = iter(source)

    def next(self) -> Any:
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.source)
            try:
                return next(self.it)
            except StopIteration:
                raise ValueError(f"{self.what} yields no batch") from None


def check_inputs(
    base: Mapping[str, Tensor], vectors: Sequence[Mapping[str, Tensor]], batches: Sequence[Any]
) -> list[str]:
    """Validate base, task vectors and per-task batches; return the merged names."""
    if not isinstance(vectors, Sequence) or isinstance(vectors, Mapping) or len(vectors) == 0:
        raise ValueError("vectors must be a non-empty list of task vectors (dicts of tensors)")
    names = list(vectors[0])
    if not names:
        raise ValueError("task vector 0 holds no tensors")
    for k, tv in enumerate(vectors):
        if set(tv) != set(names):
            diff = sorted(set(tv) ^ set(names))
            raise ValueError(f"task vector {k} and task vector 0 differ in tensor {diff[0]!r}")
        for n in names:
            if n not in base:
                raise ValueError(f"tensor {n!r} of task vector {k} is not in the base")
            if tv[n].shape != base[n].shape:
                raise ValueError(
                    f"tensor {n!r} has shape {tuple(tv[n].shape)} in task vector {k} but "
                    f"{tuple(base[n].shape)} in the base"
                )
    if isinstance(batches, Mapping) or not isinstance(batches, Sequence) or not batches:
        raise ValueError("batches must be a non-empty list with one iterable of batches per task")
    return names


def finite_loss_values(losses: list[Tensor], what: str) -> list[float]:
    """The per-step losses as floats, or a ValueError naming the first step that is not finite.

    One synchronisation at the end of a loop instead of one per step.

    Args:
        losses: the per-step loss tensors (scalars).
        what: the method's name, for the error.

    Returns:
        The losses as floats.

    Raises:
        ValueError: if a loss is NaN or infinite, naming its step.

    Example:
        >>> finite_loss_values([torch.tensor(0.5), torch.tensor(0.25)], "AdaMerging")
        [0.5, 0.25]
    """
    values = [float(v) for v in torch.stack(losses)] if losses else []
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(f"{what}: the entropy loss is not finite at step {i}: {v}")
    return values


def adamerging(
    model: nn.Module,
    base: Mapping[str, Tensor],
    vectors: Sequence[Mapping[str, Tensor]],
    batches: Sequence[Iterable[Any]],
    *,
    granularity: Granularity = "layer",
    init: float = 0.3,
    steps: int = 500,
    lr: float = 1e-3,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    mask: Mapping[str, Tensor] | None = None,
    forward: Forward | None = None,
    progress: bool = False,
) -> AdaMergingResult:
    """Learn task-wise or layer-wise merge coefficients by entropy minimisation (AdaMerging).

    Each step reads one batch of every task, sums the mean prediction entropies of the merged
    model (:func:`entropy_loss`) and takes an Adam step on the coefficients.

    Args:
        model: the architecture; evaluated with :func:`torch.func.functional_call`, its own
            tensors are never changed.
        base: the pretrained tensors (``name -> Tensor``; every tensor the model needs, e.g.
            ``pretrained.state_dict()``).
        vectors: one task vector per task (:func:`~subspaces.merging.task_vectors`); the tensors
            they hold are the merged ones.
        batches: one iterable of unlabeled input batches per task (re-iterated when exhausted).
            A list of tensors, a ``DataLoader`` yielding inputs, ... The number of tasks here may
            differ from the number of task vectors.
        granularity: ``"task"`` (one coefficient per task vector) or ``"layer"`` (one per task
            vector and tensor).
        init: initial coefficient.
        steps: Adam steps.
        lr: Adam learning rate.
        clamp: ``(low, high)`` bounds applied to the coefficients in the merge, or ``None``.
        mask: a fixed multiplier per tensor applied to every task vector (e.g. a Concrete mask).
        forward: ``forward(params, batch, task) -> logits`` (default: ``functional_call(model,
            params, (batch,))``; give one for per-task heads or dict batches).
        progress: print a progress line to ``stderr``.

    Returns:
        :class:`AdaMergingResult`.

    Raises:
        ValueError: for empty or inconsistent task vectors, no batches, bad ``granularity``,
            ``steps`` or ``lr``, or a non-finite loss (naming the step).

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Linear(4, 3)
        >>> base = {k: v.detach().clone() for k, v in net.state_dict().items()}
        >>> tvs = [{"weight": torch.randn(3, 4)}, {"weight": torch.randn(3, 4)}]
        >>> data = [[torch.randn(8, 4)], [torch.randn(8, 4)]]
        >>> res = adamerging(net, base, tvs, data, granularity="task", steps=20, lr=0.05)
        >>> res.coefficients.shape, res.losses[-1] < res.losses[0]
        (torch.Size([2]), True)
    """
    check_choice(granularity, "granularity", ("task", "layer"))
    check_positive_int(steps, "steps", minimum=0)
    check_positive_float(lr, "lr")
    names = check_inputs(base, vectors, batches)
    dtype = base[names[0]].dtype
    shape = (len(vectors),) if granularity == "task" else (len(names), len(vectors))
    coeff = torch.full(shape, float(init), dtype=dtype, requires_grad=True)
    fwd = forward if forward is not None else _default_forward(model)
    feeds = [_Cycler(b, f"batches[{t}]") for t, b in enumerate(batches)]
    opt = torch.optim.Adam([coeff], lr=lr)
    fixed_mask = None if mask is None else {n: mask[n].detach() for n in names}
    losses: list[Tensor] = []
    with Progress(steps, f"AdaMerging ({granularity}-wise)", quiet=not progress) as bar:
        for _ in range(steps):
            params = merged_parameters(base, vectors, coeff, names, mask=fixed_mask, clamp=clamp)
            loss = sum_entropy(fwd, params, feeds)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            bar.update()
    values = finite_loss_values(losses, "AdaMerging")
    with torch.no_grad():
        final = coeff.detach() if clamp is None else coeff.detach().clamp(*clamp)
        merged = merged_parameters(base, vectors, final, names, mask=fixed_mask)
    return AdaMergingResult(
        coefficients=final,
        names=names,
        state_dict={k: v.detach() for k, v in merged.items()},
        losses=values,
    )


def sum_entropy(fwd: Forward, params: dict[str, Tensor], feeds: Sequence[_Cycler]) -> Tensor:
    """The summed mean entropy over one batch of every task."""
    total: Tensor | None = None
    for t, feed in enumerate(feeds):
        loss = entropy_loss(fwd(params, feed.next(), t))
        total = loss if total is None else total + loss
    assert total is not None
    return total
