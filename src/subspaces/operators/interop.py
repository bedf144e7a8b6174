"""Load ``neuraloperator`` FNO weights into :class:`~subspaces.operators.fno.FNO`.

``neuraloperator`` (Kossaifi et al.; the FNO of Li et al., arXiv:2010.08895) and this package use
the same block structure and mode convention, so a dense ``neuralop.models.FNO`` with the default
options (grid embedding, channel MLP with soft-gating skip, linear FNO skip, no norm, no padding)
and our ``FNO`` of the same sizes compute the same function once the weights are renamed and
reshaped; this converts a state dict. It needs no ``neuraloperator`` import.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from .fno import FNO

__all__ = ["load_neuralop_state_dict"]


def _source_key(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "convs":
        leaf = "bias" if parts[2] == "bias" else "weight.tensor"
        return f"fno_blocks.convs.{parts[1]}.{leaf}"
    if parts[0] == "fno_skips":
        return f"fno_blocks.fno_skips.{parts[1]}.conv.weight"
    if parts[0] == "channel_mlps":
        return f"fno_blocks.channel_mlp.{parts[1]}.fcs.{int(parts[2][2]) - 1}.{parts[3]}"
    if parts[0] == "mlp_skips":
        return f"fno_blocks.channel_mlp_skips.{parts[1]}.weight"
    return f"{parts[0]}.fcs.{int(parts[1][2]) - 1}.{parts[2]}"  # lifting / projection


def load_neuralop_state_dict(model: FNO, state_dict: Mapping[str, Tensor]) -> FNO:
    """Copy a dense ``neuralop.models.FNO`` state dict into ``model`` (same sizes) in place.

    Args:
        model: our FNO with ``factorization="dense"`` and the sizes of the source model.
        state_dict: ``neuralop_model.state_dict()``.

    Returns:
        ``model``.

    Raises:
        TypeError: if ``model`` is not an :class:`FNO`.
        ValueError: if a weight is missing from ``state_dict`` or has another number of entries.

    Example:
        >>> ours = FNO((4, 4), 1, 1, 4, n_layers=1)
        >>> theirs = {_source_key(k): v for k, v in ours.state_dict().items()}  # renamed
        >>> x = torch.randn(1, 1, 8, 8)
        >>> twin = load_neuralop_state_dict(FNO((4, 4), 1, 1, 4, n_layers=1), theirs)
        >>> bool((twin(x) == ours(x)).all())
        True
    """
    if not isinstance(model, FNO):
        raise TypeError(f"model must be a subspaces FNO, got {type(model).__name__}")
    new = {}
    for key, value in model.state_dict().items():
        source = _source_key(key)
        if source not in state_dict:
            raise ValueError(f"state_dict has no {source!r} (needed for {key!r})")
        src = state_dict[source]
        if src.is_complex():
            src = torch.view_as_real(src)
        if src.numel() != value.numel():
            raise ValueError(
                f"{source!r} has {src.numel()} entries (shape {tuple(src.shape)}), {key!r} "
                f"needs {value.numel()} (shape {tuple(value.shape)})"
            )
        new[key] = src.reshape(value.shape)
    model.load_state_dict(new)
    return model
