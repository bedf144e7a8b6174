r"""Concrete subspace learning for model merging (P07).

Tang, Shen, Luo, Ding, Hu, Du & Tao, "Concrete Subspace Learning based Interference Elimination
for Multi-task Model Fusion" (arXiv:2312.06173). A mask shared by all tasks selects the
parameters in which the task vectors are merged:

- one mask logit ``x`` per parameter entry (initialised to 0, keep probability 0.5);
- a differentiable sample of the binary-Concrete (relaxed Bernoulli) distribution,
  ``m = sigmoid((x + log u - log(1 - u)) / T)`` with ``u ~ U(0, 1)`` and temperature ``T``;
- masked task vectors rescaled by the mask mean, per tensor: ``tau_k' = m * tau_k / mean(m)``;
- a bi-level problem: the inner level merges the masked task vectors (task arithmetic with a
  fixed ``lambda``, or AdaMerging's coefficients), the outer level updates the mask logits with
  Adam on the same unlabeled entropy loss through the inner solution.

For the AdaMerging inner level each outer step resets the coefficients to their initial value,
takes one Adam step on them with the (detached) sampled mask, then evaluates the entropy with the
updated coefficients and the (differentiable) mask and steps the mask logits; after the mask is
learned, AdaMerging runs on the masked task vectors with the final mask. This is the first-order
meta-learning loop of the paper's reference code. The final mask is the deterministic
``sigmoid(x)`` (``eval_mask="continuous"``) or ``x >= 0`` (``"binary"``), rescaled by its mean.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_float, check_positive_int
from .._progress import Progress
from .adamerging import (
    AdaMergingResult,
    Forward,
    Granularity,
    _Cycler,
    _default_forward,
    adamerging,
    check_inputs,
    finite_loss_values,
    merged_parameters,
    sum_entropy,
)

__all__ = ["ConcreteMask", "ConcreteResult", "EvalMask", "Inner", "concrete_merging"]

Inner = Literal["task_arithmetic", "adamerging"]
EvalMask = Literal["continuous", "binary"]


class ConcreteMask:
    """One trainable logit per parameter entry, shared by all task vectors.

    Args:
        shapes: ``name -> shape`` (or ``name -> Tensor``, whose shapes are taken).
        init: initial logit of every entry (0: keep probability 0.5).
        dtype: dtype of the logits.

    Example:
        >>> mask = ConcreteMask({"w": (2, 3)})
        >>> m = mask.sample(0.5, generator=torch.Generator().manual_seed(0))
        >>> m["w"].shape, bool(((m["w"] >= 0) & (m["w"] <= 1)).all()), mask.sparsity()
        (torch.Size([2, 3]), True, 0.0)
    """

    def __init__(
        self,
        shapes: Mapping[str, Any],
        init: float = 0.0,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        if not shapes:
            raise ValueError("shapes must name at least one tensor, got none")
        self.logits: dict[str, Tensor] = {}
        for name, s in shapes.items():
            shape = tuple(s.shape) if isinstance(s, Tensor) else tuple(s)
            self.logits[name] = torch.full(shape, float(init), dtype=dtype, requires_grad=True)

    def parameters(self) -> list[Tensor]:
        """The logit tensors (for an optimizer)."""
        return list(self.logits.values())

    def sample(
        self, temperature: float = 0.5, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """A relaxed-Bernoulli sample per tensor, differentiable in the logits.

        Args:
            temperature: ``T > 0``; small values give samples near 0 or 1.
            generator: the random generator for the uniform noise.

        Returns:
            ``name -> mask`` with entries in ``[0, 1]`` (in ``(0, 1)`` but for rounding).
        """
        check_positive_float(temperature, "temperature")
        out = {}
        for name, x in self.logits.items():
            u = torch.rand(x.shape, generator=generator, dtype=x.dtype).clamp(1e-6, 1 - 1e-6)
            out[name] = torch.sigmoid((x + torch.log(u) - torch.log1p(-u)) / temperature)
        return out

    def probabilities(self) -> dict[str, Tensor]:
        """``sigmoid(x)`` per tensor (detached): the continuous evaluation mask."""
        return {n: torch.sigmoid(x.detach()) for n, x in self.logits.items()}

    def binary(self) -> dict[str, Tensor]:
        """``x >= 0`` (keep probability at least 1/2) per tensor, as the logits' dtype."""
        return {n: (x.detach() >= 0).to(x.dtype) for n, x in self.logits.items()}

    def evaluation_mask(self, kind: EvalMask = "continuous") -> dict[str, Tensor]:
        """The continuous or binary mask, rescaled by its mean per tensor."""
        check_choice(kind, "eval_mask", ("continuous", "binary"))
        return rescale_by_mean(self.probabilities() if kind == "continuous" else self.binary())

    def sparsity(self) -> float:
        """Share of entries whose keep probability is below 1/2 (dropped by the binary mask)."""
        dropped = sum(int((x.detach() < 0).sum()) for x in self.logits.values())
        total = sum(x.numel() for x in self.logits.values())
        return dropped / total


def rescale_by_mean(mask: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``m / mean(m)`` per tensor (an all-zero mask stays zero).

    Args:
        mask: ``name -> mask``.

    Returns:
        The rescaled masks.

    Example:
        >>> rescale_by_mean({"w": torch.tensor([1.0, 0.0, 1.0, 0.0])})["w"].tolist()
        [2.0, 0.0, 2.0, 0.0]
    """
    out = {}
    for name, m in mask.items():
        mean = m.mean()
        out[name] = m / torch.where(mean > 0, mean, torch.ones_like(mean))
    return out


@dataclass
class ConcreteResult:
    """What :func:`concrete_merging` learned.

    Attributes:
        mask: the learned :class:`ConcreteMask`.
        state_dict: the merged tensors with the evaluation mask (every name of the base).
        coefficients: the merge coefficients used with the final mask (``(K,)`` or ``(L, K)``).
        names: the merged tensor names.
        losses: the outer (mask) entropy loss at each step.
        sparsity: :meth:`ConcreteMask.sparsity` of the learned mask.
        adamerging: the final AdaMerging run (inner ``"adamerging"`` only).

    Example:
        With the default task-arithmetic inner merge the result is the base plus ``scale``
        times the masked (and mean-rescaled) sum of the task vectors:

        >>> import torch
        >>> from subspaces.merging import concrete_merging
        >>> g = torch.Generator().manual_seed(0)
        >>> net = torch.nn.Linear(4, 3)
        >>> base = {k: v.detach().clone() for k, v in net.state_dict().items()}
        >>> tvs = [{"weight": torch.randn(3, 4, generator=g)} for _ in range(2)]
        >>> data = [[torch.randn(8, 4, generator=g)] for _ in range(2)]
        >>> res = concrete_merging(net, base, tvs, data, steps=10, lr=0.1, scale=0.3,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> m = res.mask.evaluation_mask("continuous")["weight"]
        >>> merged = base["weight"] + 0.3 * m * (tvs[0]["weight"] + tvs[1]["weight"])
        >>> torch.allclose(res.state_dict["weight"], merged)
        True
        >>> res.names, len(res.losses), res.sparsity == res.mask.sparsity(), res.adamerging
        (['weight'], 10, True, None)
    """

    mask: ConcreteMask
    state_dict: dict[str, Tensor]
    coefficients: Tensor
    names: list[str]
    losses: list[float] = field(default_factory=list)
    sparsity: float = 0.0
    adamerging: AdaMergingResult | None = None


def concrete_merging(
    model: nn.Module,
    base: Mapping[str, Tensor],
    vectors: Sequence[Mapping[str, Tensor]],
    batches: Sequence[Iterable[Any]],
    *,
    inner: Inner = "task_arithmetic",
    granularity: Granularity = "layer",
    scale: float = 0.3,
    steps: int = 200,
    lr: float = 1e-3,
    temperature: float = 0.5,
    init_logit: float = 0.0,
    inner_lr: float = 1e-3,
    adamerging_steps: int = 200,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    eval_mask: EvalMask = "continuous",
    forward: Forward | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> ConcreteResult:
    """Learn a shared Concrete mask over the task vectors, then merge in the masked subspace.

    Args:
        model: the architecture (evaluated with :func:`torch.func.functional_call`).
        base: the pretrained tensors (every tensor the model needs).
        vectors: one task vector per task; the mask covers the tensors they hold.
        batches: one iterable of unlabeled input batches per task.
        inner: ``"task_arithmetic"`` (``theta_0 + scale * sum_k tau_k'``) or ``"adamerging"``.
        granularity: AdaMerging's ``"task"`` or ``"layer"`` coefficients (inner
            ``"adamerging"``).
        scale: task arithmetic's ``lambda``, or AdaMerging's initial coefficient.
        steps: outer (mask) Adam steps.
        lr: outer Adam learning rate.
        temperature: the Concrete temperature ``T``.
        init_logit: initial mask logit.
        inner_lr: AdaMerging's Adam learning rate (inner steps and the final run).
        adamerging_steps: steps of the final AdaMerging run with the learned mask.
        clamp: AdaMerging's coefficient bounds.
        eval_mask: ``"continuous"`` (``sigmoid(x)``) or ``"binary"`` (``x >= 0``).
        forward: ``forward(params, batch, task) -> logits`` (see
            :func:`~subspaces.merging.adamerging`).
        generator: random generator of the mask samples.
        progress: print progress lines to ``stderr``.

    Returns:
        :class:`ConcreteResult`.

    Raises:
        ValueError: for inconsistent inputs, a bad option, or a non-finite loss.

    Example:
        >>> torch.manual_seed(0)  # doctest: +ELLIPSIS
        <torch._C.Generator object at ...>
        >>> net = torch.nn.Linear(4, 3)
        >>> base = {k: v.detach().clone() for k, v in net.state_dict().items()}
        >>> tvs = [{"weight": torch.randn(3, 4)}, {"weight": torch.randn(3, 4)}]
        >>> data = [[torch.randn(8, 4)], [torch.randn(8, 4)]]
        >>> res = concrete_merging(net, base, tvs, data, steps=30, lr=0.1,
        ...                        generator=torch.Generator().manual_seed(0))
        >>> res.state_dict["weight"].shape, len(res.losses), 0.0 <= res.sparsity <= 1.0
        (torch.Size([3, 4]), 30, True)
    """
    check_choice(inner, "inner", ("task_arithmetic", "adamerging"))
    check_choice(granularity, "granularity", ("task", "layer"))
    check_choice(eval_mask, "eval_mask", ("continuous", "binary"))
    check_positive_int(steps, "steps", minimum=0)
    check_positive_int(adamerging_steps, "adamerging_steps", minimum=0)
    check_positive_float(lr, "lr")
    check_positive_float(inner_lr, "inner_lr")
    check_positive_float(temperature, "temperature")
    names = check_inputs(base, vectors, batches)
    dtype = base[names[0]].dtype
    mask = ConcreteMask({n: base[n].shape for n in names}, init=init_logit, dtype=dtype)
    fwd = forward if forward is not None else _default_forward(model)
    feeds = [_Cycler(b, f"batches[{t}]") for t, b in enumerate(batches)]
    outer = torch.optim.Adam(mask.parameters(), lr=lr)
    k = len(vectors)
    shape = (k,) if granularity == "task" else (len(names), k)
    if inner == "task_arithmetic":
        coeff = torch.full((k,), float(scale), dtype=dtype)
    else:
        coeff = torch.full(shape, float(scale), dtype=dtype, requires_grad=True)
        inner_opt = torch.optim.Adam([coeff], lr=inner_lr)
    ta_clamp = clamp if inner == "adamerging" else None
    losses: list[Tensor] = []
    desc = f"Concrete mask ({inner})"
    with Progress(steps, desc, quiet=not progress) as bar:
        for _ in range(steps):
            m = rescale_by_mean(mask.sample(temperature, generator))
            if inner == "adamerging":
                with torch.no_grad():
                    coeff.fill_(float(scale))
                fixed = {n: v.detach() for n, v in m.items()}
                params = merged_parameters(base, vectors, coeff, names, mask=fixed, clamp=clamp)
                inner_loss = sum_entropy(fwd, params, feeds)
                inner_opt.zero_grad(set_to_none=True)
                inner_loss.backward()
                inner_opt.step()
                lam = coeff.detach()
            else:
                lam = coeff
            params = merged_parameters(base, vectors, lam, names, mask=m, clamp=ta_clamp)
            loss = sum_entropy(fwd, params, feeds)
            outer.zero_grad(set_to_none=True)
            loss.backward()
            outer.step()
            losses.append(loss.detach())
            bar.update()
    values = finite_loss_values(losses, "Concrete merging")
    final_mask = mask.evaluation_mask(eval_mask)
    am: AdaMergingResult | None = None
    if inner == "adamerging":
        am = adamerging(
            model,
            base,
            vectors,
            batches,
            granularity=granularity,
            init=scale,
            steps=adamerging_steps,
            lr=inner_lr,
            clamp=clamp,
            mask=final_mask,
            forward=forward,
            progress=progress,
        )
        merged, final_coeff = am.state_dict, am.coefficients
    else:
        final_coeff = coeff.detach()
        with torch.no_grad():
            merged = merged_parameters(base, vectors, final_coeff, names, mask=final_mask)
        merged = {n: v.detach() for n, v in merged.items()}
    return ConcreteResult(
        mask=mask,
        state_dict=merged,
        coefficients=final_coeff,
        names=names,
        losses=values,
        sparsity=mask.sparsity(),
        adamerging=am,
    )
