"""Data-parallel reductions: one packed all-reduce per product, and errors seen by every rank.

Each rank holds a shard of the data and computes its part of a sum (a curvature product, a
gradient, a diagonal). :func:`allreduce_packed` sums those parts over the process group with a
single ``all_reduce`` of one flat tensor that also carries the scalars (weights, sample counts),
one error flag per rank and one checksum per rank of the block being multiplied. The flags and
checksums sit in per-rank slots (zero on every other rank), and adding zeros is exact, so after
the sum every rank reads every other rank's flag and checksum bit for bit. Hence:

- a rank whose local computation raised still joins the all-reduce (with zeros), so no rank
  hangs; then every rank raises: the failed rank its own error, the others a
  :class:`RankFailedError` naming the failed ranks;
- ranks that multiplied different blocks (random start vectors drawn from unseeded global RNGs)
  raise a clear error instead of returning a mixture of products.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "RankFailedError",
    "allreduce_packed",
    "block_checksum",
    "import_before_process_group",
    "is_dtensor",
    "resolve_group",
]

GROUP_PINNING_MODULES = ("torch.distributed.fsdp",)
"""Modules that, first imported while a process group exists, keep that group alive (torch 2.13).

Importing ``torch.distributed.fsdp`` (also done by ``torch._dynamo``, which every
``torch.optim`` optimizer's constructor imports, and by ``DistributedDataParallel``) while a
gloo group exists keeps the group, and its worker threads, alive after
``destroy_process_group`` until the process ends. A worker still releasing the last
collective's tensors when the interpreter finalizes needs the GIL, cannot take it, and the
process aborts (``terminate called without an active exception``, SIGABRT) though its work
finished. Imported before the group exists, these modules pin nothing.
"""


class RankFailedError(RuntimeError):
    """Another rank of the process group failed during a collective product."""


def import_before_process_group() -> None:
    """Import :data:`GROUP_PINNING_MODULES` now; call it before ``init_process_group``.

    After it, the process group a run creates ends with ``destroy_process_group`` (once nothing
    else refers to it) and gloo's worker threads with it, so the process exits cleanly. It costs
    the import (about half a second, paid anyway by the first optimizer).

    Example:
        >>> import sys
        >>> import_before_process_group()
        >>> "torch.distributed.fsdp" in sys.modules or not torch.distributed.is_available()
        True
    """
    import importlib

    if not torch.distributed.is_available():
        return
    for name in GROUP_PINNING_MODULES:
        importlib.import_module(name)


def resolve_group(distributed: Any) -> Any:
    """The process group for ``distributed`` (``False``: none, ``True``: the default group).

    Args:
        distributed: ``False``/``None`` (single process), ``True`` (the default process group)
            or a ``torch.distributed`` process group.

    Returns:
        ``None`` for a single process, else the group (``torch.distributed.group.WORLD`` for
        ``True``).

    Raises:
        ValueError: if a group is asked for but ``torch.distributed`` is not initialized.

    Example:
        >>> resolve_group(False) is None
        True
    """
    if distributed is None or distributed is False:
        return None
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"distributed={distributed!r} needs an initialized torch.distributed process group "
            "(torchrun, or torch.distributed.init_process_group); got none"
        )
    return dist.group.WORLD if distributed is True else distributed


def block_checksum(X: Tensor) -> float:
    """A number that differs, almost surely, between two different blocks ``X``.

    Args:
        X: any tensor.

    Returns:
        ``sum(X) + pi * sum(X^2)`` in float64 (the same on every rank for the same ``X``).

    Example:
        >>> block_checksum(torch.ones(2, 2)) == 4 + 4 * 3.141592653589793
        True
    """
    x = X.detach().to(torch.float64)
    return float(x.sum() + torch.pi * (x * x).sum())


def allreduce_packed(
    local: Tensor | None,
    scalars: Sequence[float],
    *,
    shape: tuple[int, ...],
    dtype: torch.dtype,
    device: torch.device,
    group: Any,
    error: BaseException | None = None,
    checksum: float | None = None,
) -> tuple[Tensor, list[float]]:
    """Sum ``local`` and ``scalars`` over ``group`` in one ``all_reduce``; raise on every rank.

    Args:
        local: this rank's part (``shape``), or ``None`` for a zero part (nothing to add, or
            ``error`` is set).
        scalars: this rank's scalars to sum (weights, counts).
        shape: the shape of the summed tensor (the same on every rank).
        dtype: its dtype.
        device: its device (CPU for gloo, the rank's GPU for NCCL).
        group: the process group.
        error: the exception this rank's local computation raised, if any.
        checksum: :func:`block_checksum` of the block this rank multiplied (``None``: no
            check).

    Returns:
        ``(sum over ranks of local, sums of the scalars)``.

    Raises:
        BaseException: ``error`` itself on the rank where it happened.
        RankFailedError: on the other ranks when some rank failed.
        ValueError: if the ranks' checksums differ (they multiplied different blocks).
    """
    import torch.distributed as dist

    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    numel = 1
    for s in shape:
        numel *= int(s)
    m = len(scalars)
    packed = torch.zeros(numel + m + 2 * world, dtype=dtype, device=device)
    if error is None:
        if local is not None:
            packed[:numel] = local.reshape(-1).to(dtype)
        if m:
            packed[numel : numel + m] = torch.tensor(
                [float(s) for s in scalars], dtype=dtype, device=device
            )
        if checksum is not None:
            packed[numel + m + world + rank] = checksum
    else:
        packed[numel + m + rank] = 1.0
    dist.all_reduce(packed, group=group)
    flags = packed[numel + m : numel + m + world].tolist()
    failed = [r for r, f in enumerate(flags) if f != 0.0]
    if error is not None:
        raise error
    if failed:
        raise RankFailedError(
            f"rank(s) {failed} of {world} failed during a data-parallel product; their error is "
            f"raised there (this is rank {rank})"
        )
    if checksum is not None:
        sums = packed[numel + m + world :].tolist()
        if any(s != sums[0] for s in sums):
            raise ValueError(
                "the ranks multiplied different blocks (checksums "
                f"{[f'{s:.6g}' for s in sums]}): draw random start blocks and probes from a "
                "generator seeded the same on every rank, e.g. "
                "generator=torch.Generator().manual_seed(0)"
            )
    return packed[:numel].reshape(shape), packed[numel : numel + m].tolist()


def is_dtensor(t: object) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 or tensor-parallel shard).

    Args:
        t: anything.

    Returns:
        ``False`` also where torch is built without ``torch.distributed``.

    Example:
        >>> is_dtensor(torch.zeros(2))
        False
    """
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
