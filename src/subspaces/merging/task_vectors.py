"""Task vectors: the difference between a fine-tuned model and its base, by tensor name.

``tau = theta_ft - theta_0`` (Ilharco et al. 2023, "Editing models with task arithmetic").
These helpers hold whole task vectors in memory (what AdaMerging, the Concrete mask and the
diagnostics need); :func:`~subspaces.merging.merge` streams instead.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

from ._state_dict import (
    StateDictLike,
    StateDictSource,
    as_source,
    check_compatible,
    check_finite_tensor,
)

__all__ = ["add_task_vectors", "task_vector", "task_vectors"]


def task_vector(
    finetuned: StateDictLike | StateDictSource,
    base: StateDictLike | StateDictSource,
    *,
    names: Sequence[str] | None = None,
) -> dict[str, Tensor]:
    """``finetuned - base`` for every floating tensor (or for ``names``).

    Args:
        finetuned: the fine-tuned model (module, mapping or file).
        base: the pretrained model.
        names: the tensors to take (default: every floating tensor of ``base``; integer buffers
            are skipped).

    Returns:
        ``name -> delta`` (new tensors, in the base's dtype).

    Raises:
        ValueError: for names or shapes that differ, or NaN/Inf in a model.
        TypeError: for a named tensor that is not floating.

    Example:
        >>> import torch
        >>> tv = task_vector({"w": torch.tensor([3.0, 1.0])}, {"w": torch.tensor([1.0, 1.0])})
        >>> tv["w"].tolist()
        [2.0, 0.0]
    """
    ft = as_source(finetuned, "finetuned")
    b = as_source(base, "base")
    all_names = check_compatible([b, ft], reference=b, non_float="base")
    chosen = list(names) if names is not None else all_names
    out: dict[str, Tensor] = {}
    for n in chosen:
        if n not in all_names:
            raise ValueError(f"tensor {n!r} is not in {b.label}")
        x0 = b.get(n)
        if not x0.is_floating_point():
            if names is not None:
                raise TypeError(f"tensor {n!r} of {b.label} has dtype {x0.dtype}, not floating")
            continue
        x1 = ft.get(n)
        check_finite_tensor(x0, n, b.label)
        check_finite_tensor(x1, n, ft.label)
        out[n] = x1.to(x0.dtype) - x0
    return out


def task_vectors(
    finetuned: Sequence[StateDictLike | StateDictSource],
    base: StateDictLike | StateDictSource,
    *,
    names: Sequence[str] | None = None,
) -> list[dict[str, Tensor]]:
    """:func:`task_vector` of each fine-tuned model against one base.

    Args:
        finetuned: the fine-tuned models (at least one).
        base: the pretrained model.
        names: the tensors to take (default: every floating tensor).

    Returns:
        One task vector per model.

    Raises:
        ValueError: for an empty list (and everything :func:`task_vector` raises).
        TypeError: if ``finetuned`` is not a list.

    Example:
        >>> import torch
        >>> base = {"w": torch.zeros(2)}
        >>> [tv["w"].tolist() for tv in task_vectors([{"w": torch.ones(2)}, {"w": -torch.ones(2)}], base)]
        [[1.0, 1.0], [-1.0, -1.0]]
    """  # noqa: E501
    if isinstance(finetuned, (Mapping, str)) or not isinstance(finetuned, Sequence):
        raise TypeError(f"finetuned must be a list of models, got {type(finetuned).__name__}")
    if len(finetuned) == 0:
        raise ValueError("finetuned must hold at least one model, got an empty list")
    b = as_source(base, "base")
    return [
        task_vector(as_source(m, f"finetuned[{i}]"), b, names=names)
        for i, m in enumerate(finetuned)
    ]


def add_task_vectors(
    base: StateDictLike | StateDictSource,
    vectors: Sequence[Mapping[str, Tensor]],
    scales: Sequence[float] | float = 1.0,
) -> dict[str, Tensor]:
    """``base + sum_k scale_k tau_k`` for the tensors the task vectors hold; others copied.

    Args:
        base: the pretrained model.
        vectors: task vectors (all with the same names).
        scales: one scale per task vector, or one for all.

    Returns:
        A full state_dict (new tensors).

    Raises:
        ValueError: for a scale count that does not match, or a task-vector name that is not in
            the base.

    Example:
        >>> import torch
        >>> out = add_task_vectors({"w": torch.ones(2)}, [{"w": torch.ones(2)}] * 2, 0.5)
        >>> out["w"].tolist()
        [2.0, 2.0]
    """
    b = as_source(base, "base")
    if isinstance(scales, (int, float)):
        scales = [float(scales)] * len(vectors)
    if len(scales) != len(vectors):
        raise ValueError(
            f"scales must hold one value per task vector ({len(vectors)}), got {len(scales)}"
        )
    names = b.names()
    known = set(names)
    for i, tv in enumerate(vectors):
        for n in tv:
            if n not in known:
                raise ValueError(f"tensor {n!r} of task vector {i} is not in {b.label}")
    out: dict[str, Tensor] = {}
    for n in names:
        x = b.get(n).clone()
        for s, tv in zip(scales, vectors, strict=True):
            if n in tv:
                x += float(s) * tv[n].to(x.dtype)
        out[n] = x
    return out
