"""``subspaces analyze`` under ``torchrun``: the process group, the data shards, agreed errors.

``torchrun`` (or any launcher that sets the same environment) starts one process per rank with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT``.
:func:`_dist_context` reads them, initialises the process group (``gloo`` on CPU, ``nccl`` on
CUDA, with a timeout so that a lost rank ends the run instead of hanging it) and
:meth:`_DistContext.close` destroys it when the run ends. Every rank loads the whole data set
(the same seeded draws) and keeps its shard:

* a training step's global batch is the same as in one process (the seeded permutation is drawn
  identically on every rank) and each rank takes a contiguous slice of it
  (:meth:`_DistContext.shard`); the local loss is scaled so that the sum of the ranks'
  gradients (one packed ``all_reduce``, :func:`_sum_gradients`) is the gradient of the mean
  loss over the global batch (:func:`_ddp_step`), so the learning rate means what it means for
  one process with that batch;
* the curvature samples are split the same way, and the curvature operators
  (``distributed=True``) sum their products over the ranks: every measurement is of the whole
  curvature set and identical on every rank.

Only rank 0 writes (checkpoints, ``summary.json``, the report). Steps that can fail on one rank
alone (the checks before training, a diverged loss, a failed write) go through
:meth:`_DistContext.agree`: one small ``all_reduce`` after which every rank raises.
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
from torch import Tensor

from .._distributed import RankFailedError, allreduce_packed, import_before_process_group

T = TypeVar("T")
T_ = TypeVar("T_", bound=Tensor)

TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
"""The environment variables that mark a process launched by ``torchrun``."""

DEFAULT_TIMEOUT_S = 600.0
"""Seconds a collective waits for a lost rank before the run ends with an error."""


def launched_by_torchrun(environ: Any = None) -> bool:
    """Whether this process was started by ``torchrun`` with more than one rank.

    Args:
        environ: the environment to read (default ``os.environ``).

    Returns:
        ``True`` if ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` are set and
        ``WORLD_SIZE > 1``.

    Raises:
        ValueError: if ``WORLD_SIZE`` or ``RANK`` is not an integer, or ``RANK`` is not in
            ``[0, WORLD_SIZE)``.

    Example:
        >>> env = {"RANK": "1", "WORLD_SIZE": "2", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
        >>> launched_by_torchrun(env), launched_by_torchrun({}), launched_by_torchrun(
        ...     {**env, "RANK": "0", "WORLD_SIZE": "1"})
        (True, False, False)
    """
    env = os.environ if environ is None else environ
    if not all(env.get(name) for name in TORCHRUN_VARS):
        return False
    try:
        world, rank = int(env["WORLD_SIZE"]), int(env["RANK"])
    except ValueError:
        raise ValueError(
            f"WORLD_SIZE={env['WORLD_SIZE']!r} and RANK={env['RANK']!r} must be integers "
            "(as torchrun sets them)"
        ) from None
    if not 0 <= rank < world:
        raise ValueError(f"RANK={rank} must be in [0, WORLD_SIZE={world})")
    return world > 1


@dataclass
class _DistContext:
    """This process's place in the run: rank, world size, group, device (one rank: no group)."""

    rank: int = 0
    world: int = 1
    group: Any = None
    owned: bool = False  # this run initialised the group and destroys it

    @property
    def active(self) -> bool:
        return self.group is not None

    @property
    def writes(self) -> bool:
        """Whether this rank writes files (rank 0 only)."""
        return self.rank == 0

    def shard(self, idx: Tensor) -> Tensor:
        """This rank's contiguous slice of ``idx`` (slices of all ranks partition ``idx``).

        Returns:
            The slice (``idx`` itself for one rank).

        Example:
            >>> ctx = _DistContext(rank=1, world=3)
            >>> ctx.shard(torch.arange(8)).tolist()
            [3, 4, 5]
        """
        if self.world == 1:
            return idx
        return idx.tensor_split(self.world)[self.rank]

    def agree(self, fn: Callable[[], T], device: torch.device, dtype: torch.dtype) -> T:
        """Run ``fn`` on every rank; if it raises on any rank, raise on every rank.

        One ``all_reduce`` of a few numbers (:func:`subspaces._distributed.allreduce_packed`):
        the failed rank raises its own error, the others a :class:`RankFailedError`.

        Returns:
            What ``fn`` returned.
        """
        if not self.active:
            return fn()
        error: BaseException | None = None
        result: Any = None
        try:
            result = fn()
        except Exception as err:  # every rank must join the all-reduce, then raise
            error = err
        allreduce_packed(
            None, [], shape=(0,), dtype=dtype, device=device, group=self.group, error=error
        )
        return result

    def global_loss(self, local_sum: Tensor, local: int, device: torch.device) -> float:
        """The mean of the per-sample losses over all ranks (``local_sum``: this rank's sum).

        One ``all_reduce`` of two numbers; a non-finite local loss becomes a non-finite global
        loss, so every rank sees a divergence at once.

        Returns:
            The sum of the ranks' ``local_sum`` over the sum of their ``local`` counts.
        """
        if not self.active:
            return float(local_sum) / max(local, 1)
        _, (total, count) = allreduce_packed(
            None,
            [float(local_sum), float(local)],
            shape=(0,),
            dtype=torch.float64,
            device=device,
            group=self.group,
        )
        return total / max(count, 1.0)

    def close(self) -> None:
        """Destroy the process group if this run created it."""
        if self.owned:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owned = False
            self.group = None


def _check_shards(ctx: _DistContext, n: int, batch_size: int, curvature: int) -> None:
    """Every rank gets at least one sample of every global batch and of the curvature set.

    Raises:
        ValueError: naming ``batch_size`` (or ``curvature_samples``) and the number of ranks.
    """
    steps = (n + batch_size - 1) // batch_size
    smallest = min(batch_size, n - (steps - 1) * batch_size)
    if smallest < ctx.world:
        raise ValueError(
            f"batch_size (--batch-size) {batch_size} on {n} training samples gives a batch of "
            f"{smallest} samples, fewer than the {ctx.world} ranks: every rank needs a sample "
            "of every batch; choose a batch size whose batches (the last one included) have at "
            f"least {ctx.world} samples"
        )
    if curvature < ctx.world:
        raise ValueError(
            f"curvature_samples (--curvature-samples) {curvature} is fewer than the {ctx.world} "
            "ranks: every rank needs a curvature sample"
        )


def _local_batch(ctx: _DistContext, idx: Tensor, X: Tensor, t: Tensor) -> tuple[Tensor, Tensor]:
    """This rank's slice of the global batch ``idx`` of ``(X, t)``."""
    local = ctx.shard(idx)
    return X[local], t[local]


def _flat_groups(tensors: Iterable[T_]) -> list[list[T_]]:
    """``tensors`` grouped by dtype (in order of first appearance): one packed message each."""
    groups: dict[torch.dtype, list[T_]] = {}
    for t in tensors:
        groups.setdefault(t.dtype, []).append(t)
    return list(groups.values())


def _broadcast_state(ctx: _DistContext, model: torch.nn.Module, buffers_only: bool = False) -> None:
    """Every rank takes rank 0's parameters and buffers (one ``broadcast`` per dtype).

    What ``DistributedDataParallel`` does when it wraps a model (parameters and buffers) and
    before every forward (buffers: batch-norm statistics). The ranks build the model from the
    same seeded factory, so this changes nothing unless a factory draws unseeded numbers.
    """
    import torch.distributed as dist

    if not ctx.active:
        return
    tensors = list(model.buffers()) if buffers_only else [*model.parameters(), *model.buffers()]
    for group in _flat_groups([t for t in tensors if t.numel()]):
        flat = torch.cat([t.detach().reshape(-1) for t in group])
        dist.broadcast(flat, src=0, group=ctx.group)
        with torch.no_grad():
            offset = 0
            for t in group:
                t.copy_(flat[offset : offset + t.numel()].view_as(t))
                offset += t.numel()


def _sum_gradients(ctx: _DistContext, model: torch.nn.Module, device: torch.device) -> None:
    """Replace every trainable parameter's gradient by its sum over the ranks.

    One packed ``all_reduce`` per dtype (:func:`subspaces._distributed.allreduce_packed`). A
    parameter without a gradient on this rank contributes zeros (and gets the sum: on every
    rank the same gradients, as the optimizer step must be the same everywhere).

    Why not ``DistributedDataParallel``: in torch 2.13 its C++ ``Reducer`` holds the process
    group and is freed with the GIL held. When it drops the group's last reference, the group's
    destructor joins gloo's worker threads while one of them waits for the GIL to release a
    finished collective: the process hangs (observed in our 2-rank tests). Without DDP the
    group's last references are Python ones, whose release lets go of the GIL.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for group in _flat_groups(params):
        local = torch.cat(
            [
                (p.grad if p.grad is not None else torch.zeros_like(p)).detach().reshape(-1)
                for p in group
            ]
        )
        total, _ = allreduce_packed(
            local, [], shape=tuple(local.shape), dtype=local.dtype, device=device, group=ctx.group
        )
        offset = 0
        for p in group:
            g = total[offset : offset + p.numel()].view_as(p)
            if p.grad is None:
                p.grad = g.clone()
            else:
                p.grad.copy_(g)
            offset += p.numel()


def _ddp_step(
    ctx: _DistContext,
    model: torch.nn.Module,
    loss_name: str,
    xb: Tensor,
    tb: Tensor,
    total: int,
    step: int,
    device: torch.device,
) -> None:
    """Forward and backward of this rank's slice of a global batch of ``total`` samples.

    Afterwards every rank holds the gradient of the mean loss over the global batch, as one
    process with that batch would: the local loss is the sum over the slice divided by
    ``total`` (times the number of entries per sample for ``mse``, whose mean runs over every
    entry), and the ranks' gradients are summed (:func:`_sum_gradients`). Buffers (batch-norm
    statistics) are taken from rank 0 before the forward, as DDP does.

    Raises:
        ValueError: on every rank, if the mean loss over the global batch is not finite.
    """
    _broadcast_state(ctx, model, buffers_only=True)
    out = model(xb)
    if loss_name == "cross_entropy":
        local_sum, per = torch.nn.functional.cross_entropy(out, tb, reduction="sum"), 1
    else:
        local_sum, per = ((out - tb.reshape(out.shape)) ** 2).sum(), int(out[0].numel())
    loss = ctx.global_loss(local_sum.detach(), len(xb) * per, device)
    if not math.isfinite(loss):
        raise ValueError(f"training diverged at step {step} (loss {loss}); lower --lr")
    (local_sum / (total * per)).backward()
    _sum_gradients(ctx, model, device)


def _dist_context(
    distributed: bool | None, device_spec: str, timeout_s: float = DEFAULT_TIMEOUT_S
) -> tuple[_DistContext, str]:
    """Set up the process group for ``distributed`` (``None``: if launched by ``torchrun``).

    An already initialised default group is used as it is (and not destroyed at the end).
    Otherwise the group is initialised from the ``torchrun`` environment with ``gloo`` for a
    CPU run and ``nccl`` for CUDA (each rank on ``cuda:LOCAL_RANK``) and a timeout of
    ``timeout_s`` seconds.

    Returns:
        ``(context, device_spec)``: the device spec with the rank's CUDA index under CUDA.

    Raises:
        TypeError: for a ``distributed`` that is not ``True``, ``False`` or ``None``.
        ValueError: for ``distributed=True`` without a group or a ``torchrun`` environment,
            a non-positive timeout, or a malformed environment.
    """
    import torch.distributed as dist

    if distributed is not None and not isinstance(distributed, bool):
        raise TypeError(f"distributed must be True, False or None, got {distributed!r}")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    if distributed is False:
        return _DistContext(), device_spec
    ready = dist.is_available() and dist.is_initialized()
    from_env = launched_by_torchrun()
    if distributed is None and not (ready or from_env):
        return _DistContext(), device_spec
    if not ready and not all(os.environ.get(v) for v in TORCHRUN_VARS):
        raise ValueError(
            "distributed=True needs an initialized torch.distributed process group or the "
            f"torchrun environment ({', '.join(TORCHRUN_VARS)}); launch with torchrun "
            "--nproc-per-node N -m subspaces analyze ..."
        )
    cuda = device_spec.strip().lower().startswith("cuda")  # a bad spec: _resolve_device says so
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device_spec = f"cuda:{local}"
        torch.cuda.set_device(local)
    owned = False
    if not ready:
        import_before_process_group()  # else the group outlives close(): see that function
        dist.init_process_group(
            backend="nccl" if cuda else "gloo", timeout=dt.timedelta(seconds=timeout_s)
        )
        owned = True
    world = dist.get_world_size()
    ctx = _DistContext(rank=dist.get_rank(), world=world, group=dist.group.WORLD, owned=owned)
    if world == 1:  # a group of one: nothing to share
        ctx.group = None
    return ctx, device_spec


__all__ = ["DEFAULT_TIMEOUT_S", "RankFailedError", "launched_by_torchrun"]
