"""Basis selection of a sharded ``SubspaceAdamW`` step: the collectives, one weight at a time.

Used by :mod:`subspaces.optim._sharded` (which describes what each projector communicates).
``_Sync`` wraps every collective of a step in :func:`subspaces._distributed.allreduce_packed`, so
an exception on one rank is carried to the next collective and raised on every rank there.

References:
    Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
    arXiv:2403.03507. Halko, Martinsson, Tropp, "Finding structure with randomness",
    arXiv:0909.4061.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from .._distributed import allreduce_packed
from .projectors import (
    CoordinateProjector,
    DCTProjector,
    NystromProjector,
    RandomizedSVDProjector,
    RandomProjector,
    SVDProjector,
    canonical_signs,
    dct_rows,
)

if TYPE_CHECKING:
    from .subspace_adamw import SubspaceAdamW

__all__: list[str] = []


class _Sync:
    """Collectives of one step: each carries this rank's error flag; bytes are counted."""

    def __init__(self, opt: SubspaceAdamW, group: Any, device: torch.device) -> None:
        self.opt, self.group, self.device = opt, group, device
        self.error: BaseException | None = None

    def run(self, fn: Any) -> Any:
        """``fn()``, or ``None`` after recording its exception (raised at the next collective)."""
        if self.error is not None:
            return None
        try:
            return fn()
        except Exception as exc:  # re-raised by the next collective
            self.error = exc
            return None

    def allreduce(
        self,
        local: Any,
        shape: tuple[int, ...],
        dtype: torch.dtype,
        scalars: Any = None,
        n_scalars: int = 0,
    ) -> tuple[Tensor, list[float]]:
        """Sum ``local`` and ``scalars`` (values or callables) over the ranks; raise on error.

        ``n_scalars`` is the number of scalars every rank sends (zeros after an error), so the
        collective has the same size on every rank whatever failed where.

        Returns:
            The summed block (``shape``) and the summed scalars.
        """
        part = self.run(local) if callable(local) else local
        values = self.run(scalars) if callable(scalars) else scalars
        values = [0.0] * n_scalars if self.error is not None or values is None else list(values)
        world = torch.distributed.get_world_size(self.group)
        self.opt.comm_bytes += (math.prod(shape) + n_scalars + 2 * world) * dtype.itemsize
        return allreduce_packed(
            part,
            values,
            shape=shape,
            dtype=dtype,
            device=self.device,
            group=self.group,
            error=self.error,
        )


@dataclass(eq=False)
class _Layer:
    """One projected, row-sharded weight of a sharded step."""

    p: Tensor
    group: dict[str, Any]
    rank: int
    index: int
    local: Tensor  # this rank's rows of the weight
    G: Tensor  # this rank's rows of the gradient, (m_i, n), maximize applied
    m: int
    n: int
    start: int
    stop: int
    transpose: bool
    refresh: bool
    R: Tensor | None = None
    new: dict[str, Tensor] | None = None
    error: Tensor | None = None


def _power(work: Tensor, Q0: Tensor) -> Tensor:
    """This rank's part of ``G^T (G Q_0)`` (a power iteration)."""
    return work.T @ (work @ Q0)


def _small_gram(work: Tensor, Q0: Tensor) -> Tensor:
    """This rank's part of ``(G Q_0)^T (G Q_0)`` in float64."""
    B = (work @ Q0).to(torch.float64)
    return B.T @ B


def _top_eigvecs(A: Tensor, k: int) -> Tensor:
    """Eigenvectors of the ``k`` largest eigenvalues of symmetric ``A``, largest first."""
    _, V = torch.linalg.eigh(A)
    return V[:, -k:].flip(1)


def _select_columns(opt: SubspaceAdamW, L: _Layer, sync: _Sync) -> None:
    """A refresh of a columns-compressed weight (basis on the unsharded side), see module doc."""
    from .subspace_adamw import _pack_basis, _seed_for, _unpacked

    group = L.group
    proj = opt._projector(group)
    work = L.G if L.G.dtype in (torch.float32, torch.float64) else L.G.float()
    if group.get("error_feedback") and "error" in opt.state.get(L.p, {}):
        err = cast(Tensor, opt.state[L.p]["error"])
        work = work + err.to_local().to(work.dtype)  # type: ignore[attr-defined]
    step = int(opt.state[L.p]["step"]) if opt.state.get(L.p) else 0
    generator = torch.Generator(device="cpu").manual_seed(_seed_for(group["seed"], L.index, step))
    n, r = L.n, L.rank
    kind = type(proj)
    f, gather = work.element_size(), work.element_size() * L.m * n
    signless = group["moment_transfer"] != "none"
    if kind is RandomizedSVDProjector:
        rs = cast(RandomizedSVDProjector, proj)
        width = min(r + rs.oversample, n)
        sketch = (1 + rs.power_iters) * f * n * width + 8 * width * width
    else:
        sketch = 8 * n * n
    new: dict[str, Tensor]
    if kind is RandomProjector:
        new = cast(
            dict[str, Tensor], sync.run(lambda: proj.select(work, r, generator=generator)[0])
        )
    elif kind in (DCTProjector, CoordinateProjector):
        if kind is DCTProjector:
            # a rank without rows scores nothing (MKL's FFT refuses an empty batch)
            S = cast(Tensor, sync.run(lambda: dct_rows(work) if len(work) else work))
            norm1 = cast(DCTProjector, proj).norm == 1
            score_fn = (lambda: S.abs().sum(0)) if norm1 else (lambda: S.square().sum(0))
        else:
            score_fn = lambda: work.float().square().sum(0)  # noqa: E731
        dtype = torch.float32 if kind is CoordinateProjector else work.dtype
        score, _ = sync.allreduce(score_fn, (n,), dtype)
        idx = torch.topk(score, r, sorted=False).indices.sort().values.to(torch.int64)
        new = {"indices": idx}
    elif kind is NystromProjector:  # one all-reduce of the b x l sketch, canonical signs
        ny = cast(NystromProjector, proj)
        omega = ny.test_matrix(n, r, work.dtype, generator).to(work.device)
        Y, _ = sync.allreduce(lambda: work.T @ (work @ omega), (n, omega.shape[1]), work.dtype)
        Q = cast(Tensor, sync.run(lambda: ny.basis_from_sketch(Y, omega, r)))
        new = {} if Q is None else {"basis": Q.to(L.G.dtype).contiguous()}
    elif kind is SVDProjector and signless and sketch < gather:
        gram, _ = sync.allreduce(
            lambda: work.to(torch.float64).T @ work.to(torch.float64), (n, n), torch.float64
        )
        Q = canonical_signs(_top_eigvecs(gram, r))
        new = {"basis": Q.to(L.G.dtype).contiguous()}
    elif kind is RandomizedSVDProjector and signless and sketch < gather:
        omega = torch.randn(L.m, width, generator=generator, dtype=work.dtype)
        omega_i = omega[L.start : L.stop].to(work.device)
        Y, _ = sync.allreduce(lambda: work.T @ omega_i, (n, width), work.dtype)
        Q0 = torch.linalg.qr(Y).Q
        for _ in range(rs.power_iters):
            Y, _ = sync.allreduce(partial(_power, work, Q0), (n, width), work.dtype)
            Q0 = torch.linalg.qr(Y).Q
        gram, _ = sync.allreduce(partial(_small_gram, work, Q0), (width, width), torch.float64)
        V = _top_eigvecs(gram, r).to(work.dtype)
        Q = canonical_signs((Q0 @ V).to(torch.float64)).to(L.G.dtype)
        new = {"basis": Q.contiguous()}
    else:  # gather the gradient and select as in one process (signs included)
        full = _gather_rows(L, work, sync)
        new = cast(
            dict[str, Tensor], sync.run(lambda: proj.select(full, r, generator=generator)[0])
        )
    if sync.error is not None:
        return
    if group["proj_bits"] == 4 and proj.STORES_BASIS:
        new = _pack_basis(new, group["proj_group_size"])
    L.new = new
    L.R = cast(Tensor, sync.run(lambda: proj.project(work, _unpacked(new))))
    if group.get("error_feedback") and L.R is not None:
        L.error = work - proj.project_back(L.R, _unpacked(new), n)


def _gather_rows(L: _Layer, work: Tensor, sync: _Sync) -> Tensor:
    """The whole ``m x n`` gradient on every rank (a sum of zero-padded row blocks: exact)."""

    def padded() -> Tensor:
        out = work.new_zeros(L.m, L.n)
        out[L.start : L.stop] = work
        return out

    full, _ = sync.allreduce(padded, (L.m, L.n), work.dtype)
    return full


def _select_rows(opt: SubspaceAdamW, L: _Layer, sync: _Sync) -> None:
    """A refresh of a rows-compressed weight: gather ``G`` and select as in one process."""
    work = L.G if L.G.dtype in (torch.float32, torch.float64) else L.G.float()
    full = _gather_rows(L, work, sync)
    if sync.error is not None:
        return
    step = int(opt.state[L.p]["step"]) if opt.state.get(L.p) else 0
    out = sync.run(lambda: opt._select(full.T, L.group, L.rank, L.index, step))
    if out is not None:
        L.new, L.R = out
