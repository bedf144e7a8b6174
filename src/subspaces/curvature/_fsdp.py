"""Curvature products of models sharded with FSDP2 (``torch.distributed.fsdp.fully_shard``).

Under ``fully_shard`` every rank holds a ``Shard(0)`` ``DTensor`` slice of each parameter and
FSDP's forward hooks all-gather the full parameters into the module just before each forward
and attach reduce-scatter hooks to the backward. A curvature product is a second derivative
(``jvp`` of ``grad``, or a double backward) with respect to the parameters, which FSDP's own
unsharded parameters do not support, and collectives inside ``vmap`` would run once per
traced call. So the operators do this instead:

1. **Gather once per operator.** When the operator is built, every sharded parameter (and
   every sharded parameter left out of ``params``) is gathered with ``DTensor.full_tensor()``,
   in ``named_parameters()`` order, identically on every rank.
2. **Evaluate functionally without FSDP's hooks.** Each forward of a product calls the model
   with ``torch.func.functional_call`` on the gathered tensors while FSDP's forward pre- and
   post-hooks are taken off the FSDP modules (and put back, in their order, right after), so
   no collective runs inside a product and FSDP's training state is never touched. The
   model's own parameters stay the same sharded ``DTensor`` objects, bit for bit.
3. **Sum over the data shards** with the data-parallel path of
   :class:`~subspaces.curvature.CurvatureOperator`: each rank multiplies on its own data, then
   one ``all_reduce`` per product.

Vectors live **replicated**: every rank passes and receives full ``(P,)`` or ``(P, b)`` blocks
in ``named_parameters()`` order, as :func:`~subspaces.curvature.top_eigen` needs.

Cost, with ``P`` parameters, ``W`` ranks, ``b`` columns and ``s`` bytes per entry of the
operator dtype:

* communication: once per operator, one all-gather per sharded parameter (each rank receives
  about ``(W - 1) / W * P * s_param`` bytes); per product, one ``all_reduce`` of
  ``(P * b + 3 + 2 * W) * s`` bytes (the product, the weights and counts, and the per-rank
  error flags and block checksums of :func:`~subspaces._distributed.allreduce_packed`);
* memory: the full parameters on **every** rank for as long as the operator lives (``P * s``
  bytes, the unsharded model FSDP would otherwise hold only inside a forward), plus the
  replicated blocks and the activations of one batch of this rank's shard.

Not supported (refused with a ``ValueError`` naming it): a ``MixedPrecisionPolicy`` that sets a
dtype (the forward would then be another function than the one the operator differentiates),
``CPUOffloadPolicy``, ``fully_shard`` of a group of modules, ``DTensor`` parameters that no
``fully_shard`` manages (tensor parallelism), and a sharded model without ``distributed``.

References:
    Zhao et al., "PyTorch FSDP: Experiences on Scaling Fully Sharded Data Parallel",
    arXiv:2304.11277 (2023); Pearlmutter, "Fast exact multiplication by the Hessian",
    Neural Computation 1994.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from .._distributed import is_dtensor
from ._model import Batch, FunctionalModel

__all__ = ["FSDPFunctionalModel", "fsdp_functional_model", "fsdp_hooks_bypassed"]

_HOOK_DICTS = (
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
)


def _fsdp_modules(model: nn.Module) -> list[nn.Module]:
    """The ``fully_shard`` modules of ``model`` (none unless FSDP was imported).

    A model can only hold ``FSDPModule`` instances if ``torch.distributed.fsdp`` has been
    imported (``fully_shard`` lives there), so this never imports it: in torch 2.13 importing it
    while a process group exists keeps that group (and gloo's worker threads) alive after
    ``destroy_process_group``, and a worker still releasing a collective's tensors when the
    interpreter exits aborts the process (SIGABRT).

    Returns:
        The modules that are ``FSDPModule`` instances, in ``model.modules()`` order.
    """
    fsdp = sys.modules.get("torch.distributed.fsdp")
    if fsdp is None:
        return []
    return [m for m in model.modules() if isinstance(m, fsdp.FSDPModule)]


def _check_supported(model: nn.Module, modules: list[nn.Module]) -> None:
    """Refuse FSDP2 settings whose forward is not the function the operator differentiates.

    Raises:
        ValueError: naming the setting and the module.
    """
    from torch.distributed.fsdp import CPUOffloadPolicy

    names = {id(m): n or "<root>" for n, m in model.named_modules()}
    managed: set[int] = set()
    for module in modules:
        state = module._get_fsdp_state()  # type: ignore[operator]
        where = f"fully_shard module {names[id(module)]!r} ({type(module).__name__})"
        if len(state._modules) != 1:
            raise ValueError(
                f"{where} was sharded as a group of {len(state._modules)} modules "
                "(fully_shard([a, b, ...])); curvature operators support one module per "
                "fully_shard call"
            )
        groups = getattr(state, "_fsdp_param_groups", None)
        if groups is None:  # older torch: at most one parameter group per module
            groups = [] if state._fsdp_param_group is None else [state._fsdp_param_group]
        for mp in [state._mp_policy, *(g.mp_policy for g in groups)]:
            dtypes = (mp.param_dtype, mp.reduce_dtype, mp.output_dtype)
            if any(d is not None for d in dtypes):
                raise ValueError(
                    f"{where} has a mixed precision policy {mp}: the operator evaluates the "
                    "model in one dtype (the parameters', or dtype=...) and would not reproduce "
                    "the policy's casts; shard the model without mp_policy to measure its "
                    "curvature"
                )
        for group in groups:
            if isinstance(group.offload_policy, CPUOffloadPolicy):
                raise ValueError(
                    f"{where} uses CPUOffloadPolicy; curvature operators gather the full "
                    "parameters on the compute device and do not support CPU offload"
                )
            managed.update(id(fp.sharded_param) for fp in group.fsdp_params)
    stray = [n for n, p in model.named_parameters() if is_dtensor(p) and id(p) not in managed]
    if stray:
        raise ValueError(
            f"parameters {stray[:5]} are DTensors that no fully_shard manages (tensor "
            "parallelism?); curvature operators support FSDP2-sharded models only"
        )


def _full(t: Tensor) -> Tensor:
    """The whole tensor on every rank, in memory of its own.

    ``full_tensor()`` of a ``DTensor`` (a collective); a copy of a plain tensor (a parameter
    FSDP holds unsharded now lives in FSDP's all-gather buffer, which its next reshard frees).

    Returns:
        A plain tensor of the parameter's full shape, detached.
    """
    with torch.no_grad():
        return t.detach().full_tensor() if is_dtensor(t) else t.detach().clone()  # type: ignore[attr-defined]


def _hook_ids(modules: list[nn.Module]) -> list[tuple[nn.Module, set[int]]]:
    out = []
    for module in modules:
        state = module._get_fsdp_state()  # type: ignore[operator]
        handles = (state._pre_forward_hook_handle, state._post_forward_hook_handle)
        out.append((module, {h.id for h in handles if h is not None}))
    return out


@contextmanager
def fsdp_hooks_bypassed(model: nn.Module) -> Iterator[None]:
    """Take FSDP2's forward hooks off every ``fully_shard`` module of ``model`` for a while.

    Other hooks stay; on exit every hook dictionary is restored as it was (same hooks, same
    order), also after an exception. Without FSDP modules this does nothing.

    Args:
        model: the model.

    Yields:
        Nothing; inside the block a forward of ``model`` runs no FSDP hook and no collective.

    Example:
        >>> import torch
        >>> model = torch.nn.Linear(2, 1)
        >>> handle = model.register_forward_pre_hook(lambda m, a: None)
        >>> with fsdp_hooks_bypassed(model):
        ...     inside = len(model._forward_pre_hooks)
        >>> inside, len(model._forward_pre_hooks)
        (1, 1)
    """
    saved: list[tuple[dict[int, Any], dict[int, Any]]] = []
    try:
        for module, ids in _hook_ids(_fsdp_modules(model)):
            for attr in _HOOK_DICTS:
                hooks = getattr(module, attr)
                copy = dict(hooks)
                saved.append((hooks, copy))
                for key in ids:
                    hooks.pop(key, None)
        yield
    finally:
        for hooks, copy in saved:
            hooks.clear()
            hooks.update(copy)


class FSDPFunctionalModel(FunctionalModel):
    """A :class:`FunctionalModel` of an FSDP2 model: gathered parameters, FSDP hooks bypassed.

    Building it gathers every sharded parameter (a collective: every rank must build it at the
    same point). Calls evaluate the model on the gathered tensors inside
    :func:`fsdp_hooks_bypassed`, so they run no collective.

    Args:
        model: the ``fully_shard`` model.
        params: the selected parameters (the model's own, possibly ``DTensor``).
        dtype: compute dtype (``None``: the parameters' own).

    Raises:
        ValueError: for an unsupported FSDP2 setting (see the module docstring).
    """

    def __init__(
        self, model: nn.Module, params: Mapping[str, Tensor], dtype: torch.dtype | None
    ) -> None:
        _check_supported(model, _fsdp_modules(model))
        full = {n: _full(p) for n, p in params.items()}
        super().__init__(model, full, dtype)
        for name, p in model.named_parameters():
            if name in self.fixed:  # the parameters left out of ``params``
                whole = _full(p)
                self.fixed[name] = whole.to(dtype) if dtype is not None else whole

    def __call__(self, p: Mapping[str, Tensor], batch: Batch) -> Tensor:
        with fsdp_hooks_bypassed(self.model):
            return super().__call__(p, batch)


def fsdp_functional_model(
    model: nn.Module, params: Mapping[str, Tensor], dtype: torch.dtype | None, group: Any
) -> FSDPFunctionalModel | None:
    """The functional view of an FSDP2 model, or ``None`` for a model without sharded parameters.

    Args:
        model: the model.
        params: the selected parameters.
        dtype: compute dtype (``None``: the parameters' own).
        group: the operator's data-parallel process group (``None``: single process).

    Returns:
        An :class:`FSDPFunctionalModel` if ``model`` has ``DTensor`` parameters or
        ``fully_shard`` modules, else ``None``.

    Raises:
        ValueError: for a sharded model without ``distributed``, or an unsupported FSDP2
            setting.

    Example:
        >>> import torch
        >>> fsdp_functional_model(torch.nn.Linear(2, 1), {}, None, None) is None
        True
    """
    sharded = any(is_dtensor(p) for p in model.parameters()) or bool(_fsdp_modules(model))
    if not sharded:
        return None
    if group is None:
        raise ValueError(
            "model is sharded with fully_shard (DTensor parameters) but distributed=False: pass "
            "distributed=True (or the data-parallel process group); each rank then passes its "
            "own shard of the data and every rank gets the product over all of them"
        )
    return FSDPFunctionalModel(model, params, dtype)
