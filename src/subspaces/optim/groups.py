"""Parameter groups for projected optimizers: which weights get a low-rank subspace.

GaLore's recipe projects the 2-D weights of the attention and MLP linear maps and leaves
embeddings, norms, biases and the output head to plain AdamW. :func:`projected_param_groups`
builds those two groups from module-name globs, so a user writes one line instead of walking
``named_modules()``; the groups carry GaLore's keys, so they work with
:class:`~subspaces.optim.SubspaceAdamW` and with ``GaLoreAdamW`` alike.
"""

from __future__ import annotations

import fnmatch
import sys
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

    The projected group holds the weight matrices of the model's linear maps, in modules whose
    name matches a glob in ``include`` and none in ``exclude`` (embeddings and output heads by
    default):

    * ``nn.Linear`` (subclasses included, e.g. the ``out_proj`` of ``nn.MultiheadAttention``)
      and :class:`~subspaces.optim.quantization.Int8Linear` weights;
    * the ``Conv1D`` weights of GPT-2-style Hugging Face models
      (``transformers.pytorch_utils.Conv1D``, stored ``(in_features, out_features)``; the
      projection compresses the smaller side either way);
    * ``nn.MultiheadAttention``'s packed ``in_proj_weight``, or its separate ``q_proj_weight``,
      ``k_proj_weight`` and ``v_proj_weight`` when key and value sizes differ (these are
      parameters of the attention module itself, not ``nn.Linear`` layers).

    Everything else (biases, norms, embeddings, heads) goes to the plain group. Parameters
    shared between modules (tied weights) are placed once.

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
        >>> mha = torch.nn.MultiheadAttention(8, 2)
        >>> [p.shape for p in projected_param_groups(mha, rank=2)[1]["params"]]
        [torch.Size([24, 8]), torch.Size([8, 8])]
    """
    check_positive_int(rank, "rank")
    projected: list[Tensor] = []
    seen: set[int] = set()
    for name, module in model.named_modules():
        if not any(fnmatch.fnmatchcase(name, pat) for pat in include):
            continue
        if any(fnmatch.fnmatchcase(name, pat) for pat in exclude):
            continue
        for weight in _linear_weights(module):
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


def _linear_weights(module: nn.Module) -> list[Tensor]:
    """The weight matrices of the linear maps a module owns directly (not its children's)."""
    from .quantization import Int8Linear

    if isinstance(module, (nn.Linear, Int8Linear)) or _is_hf_conv1d(module):
        weight = module.weight
        return [weight] if isinstance(weight, Tensor) else []
    if isinstance(module, nn.MultiheadAttention):
        names = ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
        found = [getattr(module, n, None) for n in names]
        return [w for w in found if isinstance(w, Tensor)]
    return []


def _is_hf_conv1d(module: nn.Module) -> bool:
    """``transformers.pytorch_utils.Conv1D``, without importing transformers."""
    hf = sys.modules.get("transformers.pytorch_utils")
    conv1d = getattr(hf, "Conv1D", None)
    return conv1d is not None and isinstance(module, conv1d)
