"""Curvature data: a seeded subset of the training samples in mini-batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import Tensor


def subset_indices(n: int, samples: int | None, seed: int) -> Tensor:
    """The sorted indices of a seeded random subset of ``samples`` out of ``n`` (all if ``None``).

    Args:
        n: the number of samples.
        samples: the subset size (``None`` or ``>= n``: every index).
        seed: the seed of the draw (``torch.randperm`` on a CPU generator).

    Returns:
        A sorted int64 tensor of distinct indices in ``[0, n)``.

    Raises:
        ValueError: for a ``samples`` that is not a positive integer.

    Example:
        >>> idx = subset_indices(10, 4, seed=0)
        >>> len(idx), bool((idx[1:] > idx[:-1]).all()), subset_indices(3, None, 0).tolist()
        (4, True, [0, 1, 2])
    """
    if samples is None or samples >= n:
        return torch.arange(n)
    if not isinstance(samples, int) or isinstance(samples, bool) or samples < 1:
        raise ValueError(f"curvature_samples must be a positive integer, got {samples!r}")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:samples].sort().values


def _batch_len(batch: Any) -> int:
    from ..curvature._model import _first_tensor

    if isinstance(batch, (tuple, list)) and len(batch) == 2:
        first = _first_tensor(batch[0])
    else:
        first = _first_tensor(batch)
    if first is None or first.ndim == 0:
        raise TypeError(
            "cannot tell the number of samples of a batch: expected (inputs, targets), a dict of "
            f"tensors or a tensor, got {type(batch).__name__}"
        )
    return int(first.shape[0])


def _take(obj: Any, idx: Tensor, n: int) -> Any:
    """Rows ``idx`` of every tensor with ``n`` rows in ``obj`` (others as they are)."""
    if isinstance(obj, Tensor):
        return obj[idx.to(obj.device)] if obj.ndim > 0 and obj.shape[0] == n else obj
    if isinstance(obj, Mapping):
        return {k: _take(v, idx, n) for k, v in obj.items()}
    if isinstance(obj, (tuple, list)):
        return type(obj)(_take(v, idx, n) for v in obj)
    return obj


def _cat(parts: list[Any]) -> Any:
    """Concatenate batches of one structure along their samples."""
    first = parts[0]
    if isinstance(first, Tensor):
        return torch.cat(parts) if first.ndim > 0 else first
    if isinstance(first, Mapping):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_cat([p[i] for p in parts]) for i in range(len(first)))
    return first


class MappedBatches:
    """A re-iterable view of ``loader`` with ``fn`` applied to every batch (``batch_to_inputs``).

    Args:
        loader: any re-iterable of batches.
        fn: turns one of its batches into what the model and loss take: ``(inputs, targets)``
            (``model(inputs)``, or ``model(**inputs)`` for a dict) or a dict of model inputs
            (``model(**batch)``; the loss gets the whole dict as its targets).

    Example:
        >>> import torch
        >>> rows = [{"image": torch.zeros(2, 3), "label": torch.tensor([0, 1])}]
        >>> view = MappedBatches(rows, lambda b: (b["image"], b["label"]))
        >>> [y.tolist() for _, y in view], len(view)
        ([[0, 1]], 1)
    """

    def __init__(self, loader: Iterable[Any], fn: Callable[[Any], Any]) -> None:
        if not callable(fn):
            raise TypeError(f"batch_to_inputs must be callable, got {type(fn).__name__}")
        self.loader, self.fn = loader, fn

    def __iter__(self) -> Any:
        return (self.fn(batch) for batch in self.loader)

    def __len__(self) -> int:
        return len(self.loader)  # type: ignore[arg-type]


def curvature_batches(
    data: Iterable[Any],
    samples: int | None = None,
    *,
    seed: int = 0,
    batch_size: int | None = None,
) -> list[Any]:
    """A seeded subset of ``data``'s samples as a list of mini-batches, for curvature products.

    One pass over ``data`` counts the samples ``n``; :func:`subset_indices` draws ``samples`` of
    them with ``seed`` (positions in ``data``'s order; with a shuffled loader the subset also
    depends on its order, so prefer an unshuffled one); a second pass keeps those rows of every
    batch (tensors with the batch's number of rows; tuples, lists and dicts of them), regrouped
    into batches of ``batch_size`` samples (default: the first batch's size). A curvature
    operator on the result sums its products over the batches, so every product is exact over
    the subset and memory holds one batch at a time.

    Args:
        data: a re-iterable of batches (a DataLoader, a list): ``(inputs, targets)``, dicts of
            tensors (Hugging Face style) or tensors.
        samples: the subset size (``None``: every sample).
        seed: the seed of the subset.
        batch_size: samples per returned batch.

    Returns:
        The list of batches (copies of the chosen rows).

    Raises:
        ValueError: for bad ``samples``/``batch_size`` or empty data.
        TypeError: for batches whose number of samples cannot be told.

    Example:
        >>> import torch
        >>> X, y = torch.arange(10.0)[:, None], torch.arange(10)
        >>> loader = [(X[:6], y[:6]), (X[6:], y[6:])]
        >>> parts = curvature_batches(loader, 5, seed=0, batch_size=2)
        >>> [len(b[1]) for b in parts], torch.cat([b[1] for b in parts]).tolist() == (
        ...     subset_indices(10, 5, seed=0).tolist())
        ([2, 2, 1], True)
    """
    if batch_size is not None and (
        not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1
    ):
        raise ValueError(f"curvature_batch_size must be a positive integer, got {batch_size!r}")
    sizes = [_batch_len(b) for b in data]
    n = sum(sizes)
    if n == 0:
        raise ValueError("the training data is empty: no batches")
    idx = subset_indices(n, samples, seed)
    size = batch_size or sizes[0]
    out: list[Any] = []
    pending: list[Any] = []
    pending_n, start = 0, 0
    for batch in data:
        m = _batch_len(batch)
        local = idx[(idx >= start) & (idx < start + m)] - start
        start += m
        if len(local) == 0:
            continue
        pending.append(batch if len(local) == m else _take(batch, local, m))
        pending_n += len(local)
        while pending_n >= size:
            whole = _cat(pending) if len(pending) > 1 else pending[0]
            out.append(_take(whole, torch.arange(size), pending_n))
            rest = torch.arange(size, pending_n)
            pending = [_take(whole, rest, pending_n)] if len(rest) else []
            pending_n -= size
    if start != n:
        raise ValueError(f"the data changed between two passes over it ({n} samples, then {start})")
    if pending_n:
        out.append(_cat(pending) if len(pending) > 1 else pending[0])
    return out
