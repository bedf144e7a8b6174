"""Parameter groups for projected optimizers: which weights get a low-rank subspace.

GaLore's recipe projects the 2-D weights of the attention and MLP linear layers and leaves
embeddings, norms, biases and the output head to plain AdamW. :func:`projected_param_groups`
builds those two groups from module-name globs, so a user writes one line instead of walking
``named_modules()``; the groups carry GaLore's keys, so they work with
:class:`~subspaces.optim.SubspaceAdamW` and with ``GaLoreAdamW`` alike.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from typing import Any

from torch import Tensor, nn

from .._checks import check_positive_int

__all__ = ["projected_param_groups"]

_EXCLUDE = ("*embed*", "*wte*", "*wpe*", "*lm_head*", "*embed_out*")


def projected_param_groups(
    model: nn.Module,
    rank: int,
    *,
    include: Sequence[str] = ("*",),
    exclude: Sequence[str] = _EXCLUDE,
    **group_options: Any,
) -> list[dict[str, Any]]:
    """Split a model's parameters into a projected group and a plain group.

    The projected group holds the weights (``ndim >= 2``) of ``nn.Linear`` layers and of
    :class:`~subspaces.optim.quantization.Int8Linear` layers whose module name matches a glob in
    ``include`` and none in ``exclude`` (embeddings and output heads by default). Everything
    else (biases, norms, embeddings, heads) goes to the plain group. Parameters shared between
    modules (tied weights) are placed once.

    Args:
        model: the model.
        rank: the subspace rank of the projected group.
        include: module-name globs to project (``fnmatch``), e.g. ``("*attn*", "*mlp*")``.
        exclude: module-name globs never projected.
        **group_options: more keys for the projected group (``update_proj_gap``, ``scale``,
            ``projector``, ...).

    Returns:
        ``[{"params": plain}, {"params": projected, "rank": rank, **group_options}]``; the
        plain group is dropped when empty.

    Raises:
        ValueError: if no weight matches (a wrong glob should not silently train nothing in a
            subspace).

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.Linear(8, 8))
        >>> groups = projected_param_groups(model, rank=2, update_proj_gap=50)
        >>> [len(g["params"]) for g in groups], groups[1]["rank"]
        ([2, 1], 2)
    """
    from .quantization import Int8Linear

    check_positive_int(rank, "rank")
    projected: list[Tensor] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not isinstance(module, (nn.Linear, Int8Linear)):
            continue
        if not any(fnmatch.fnmatchcase(name, pat) for pat in include):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        weight = module.weight
        if weight.ndim >= 2 and id(weight) not in seen:
            projected.append(weight)
            seen.add(id(weight))
    if not projected:
        raise ValueError(
            f"no linear weight matches include={list(include)} and exclude={list(exclude)}; "
            "check the module names with model.named_modules()"
        )
    # tied weights: a projected tensor may appear again under another module
    plain = []
    for p in model.parameters():
        if id(p) not in seen:
            plain.append(p)
            seen.add(id(p))
    groups: list[dict[str, Any]] = []
    if plain:
        groups.append({"params": plain})
    groups.append({"params": projected, "rank": rank, **group_options})
    return groups
