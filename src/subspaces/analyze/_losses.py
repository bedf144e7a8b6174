"""Losses for batches the user brings (a Hugging Face causal LM's own ``labels`` loss)."""

from __future__ import annotations

from collections.abc import Mapping

from torch import Tensor


def causal_lm_loss(logits: Tensor, batch: Mapping[str, Tensor]) -> Tensor:
    """The loss a Hugging Face causal LM computes from its own ``labels``, as a loss function.

    ``model(**batch)`` with ``batch["labels"]`` returns ``.loss``: the mean cross-entropy of the
    logits at positions ``0..T-2`` against the labels at ``1..T-1``, positions with label
    ``-100`` ignored. Curvature operators and :func:`analyze` call ``loss_fn(logits, batch)``
    (for a dict batch the targets are the whole dict), so this is the loss to pass for
    batches that include ``labels``.

    Args:
        logits: ``(n, T, V)``.
        batch: the batch dict, with ``labels`` ``(n, T)``.

    Returns:
        The scalar mean loss.

    Raises:
        ValueError: if ``batch`` has no ``labels``.

    Example:
        >>> import torch
        >>> logits = torch.zeros(1, 3, 5)
        >>> round(float(causal_lm_loss(logits, {"labels": torch.tensor([[1, 2, 3]])})), 4)
        1.6094
    """
    labels = batch.get("labels") if isinstance(batch, Mapping) else None
    if labels is None:
        raise ValueError(
            "causal_lm_loss needs batches that are dicts with 'labels' (e.g. labels = input_ids)"
        )
    from ..curvature._model import ClassLoss

    shifted = logits[:, :-1, :]
    return ClassLoss(ignore_index=-100)(shifted, labels[:, 1:])
