"""Model merging on state_dicts: TA, TIES, DARE, breadcrumbs, SLERP, AdaMerging, Concrete.

Everything works by tensor name on any state_dict-like source (an ``nn.Module``, a mapping of
tensors, a ``.safetensors`` or ``.pt`` file); the closed-form methods stream one tensor at a time
(:func:`iter_merge`), so memory stays at about three models whatever their number. See
``docs/merging.md``.

Example:
    >>> import torch
    >>> base = {"w": torch.zeros(3)}
    >>> models = [{"w": torch.tensor([1.0, -1.0, 2.0])}, {"w": torch.tensor([3.0, 1.0, -2.0])}]
    >>> merge(models, method="task_arithmetic", base=base, lambda_=0.5)["w"].tolist()
    [2.0, 0.0, 0.0]
"""

from ._state_dict import StateDictSource, load_state_dict, save_safetensors
from .adamerging import AdaMergingResult, adamerging, entropy_loss, merged_parameters
from .concrete import ConcreteMask, ConcreteResult, concrete_merging, rescale_by_mean
from .diagnostics import LayerRank, cosine_matrix, layer_ranks, mask_sparsity, sign_conflict_rate
from .methods import (
    METHODS,
    breadcrumbs_sparsify,
    dare_sparsify,
    disjoint_merge,
    iter_merge,
    magnitude_sparsify,
    merge,
    sign_agreement_mask,
    slerp,
)
from .recipe import Recipe, load_recipe, parse_recipe, run_recipe
from .schedule import Gradient, Rules, layer_index, parse_schedule, resolve, resolve_all
from .task_vectors import add_task_vectors, task_vector, task_vectors

__all__ = [
    "METHODS",
    "AdaMergingResult",
    "ConcreteMask",
    "ConcreteResult",
    "Gradient",
    "LayerRank",
    "Recipe",
    "Rules",
    "StateDictSource",
    "adamerging",
    "add_task_vectors",
    "breadcrumbs_sparsify",
    "concrete_merging",
    "cosine_matrix",
    "dare_sparsify",
    "disjoint_merge",
    "entropy_loss",
    "iter_merge",
    "layer_index",
    "layer_ranks",
    "load_recipe",
    "load_state_dict",
    "magnitude_sparsify",
    "mask_sparsity",
    "merge",
    "merged_parameters",
    "parse_recipe",
    "parse_schedule",
    "rescale_by_mean",
    "resolve",
    "resolve_all",
    "run_recipe",
    "save_safetensors",
    "sign_agreement_mask",
    "sign_conflict_rate",
    "slerp",
    "task_vector",
    "task_vectors",
]
