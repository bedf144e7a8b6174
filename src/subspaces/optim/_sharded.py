"""``SubspaceAdamW`` on FSDP2 parameters: ``DTensor`` weights sharded by rows (``Shard(0)``).

With ``torch.distributed.fsdp.fully_shard`` every rank holds rows ``[start, stop)`` of each
weight ``W`` (``m x n``) and of its gradient (already averaged over ranks by FSDP's
reduce-scatter). This module runs the projected step on those local rows so that every rank
holds the SAME basis and the weights follow the single-process run (same global batch) up to
float rounding. Which side is compressed is chosen exactly as in the single-process optimizer
(``proj_type``), so the two runs project onto the same subspace:

* **columns compressed** (``m >= n`` under ``proj_type="std"``: ``R = G Q``, ``Q`` is ``n x r``
  on the unsharded side). Each rank projects its own rows, ``R_i = G_i Q``, and updates them,
  ``W_i <- W_i - lr N_i Q^T``: **no matrix is communicated per step** (only the small
  all-reduce of flags that every step makes, see below); the moments are row shards
  (``DTensor`` with ``Shard(0)``, so ``torch.distributed.checkpoint`` saves each rank's rows).
  A refresh communicates, with ``f`` the gradient's float size (4 bytes for float32):

  - ``random``: nothing (the basis comes from a seed drawn from a generator seeded by
    ``(seed, parameter index, step)``, the same on every rank);
  - ``dct`` and ``coordinate``: one all-reduce of the ``n`` column scores (``f n`` bytes);
  - ``svd``: one all-reduce of the ``n x n`` Gram matrix ``G^T G`` in float64 (``8 n^2``
    bytes); its top-``r`` eigenvectors are the right singular vectors. An exact SVD basis cannot
    be had from an ``n x r`` block, use ``rsvd`` for that;
  - ``rsvd``: the single-process algorithm (Halko et al. 2011) with the same random matrix
    ``Omega`` (drawn whole on every rank, each rank using its rows): ``1 + q`` all-reduces of
    ``n x l`` blocks ``G^T Omega`` and ``G^T (G Q_0)`` (``f n l`` bytes each; ``l = r +
    oversample``, ``q = power_iters``) and one of the ``l x l`` Gram matrix of ``G Q_0``
    in float64 (``8 l^2`` bytes), whose eigenvectors replace the small SVD;
  - ``nystrom``: ONE all-reduce of the ``n x l`` sketch ``G^T (G Omega)`` (``f n l`` bytes),
    with ``Omega`` on the unsharded side (the same on every rank); the basis comes from the
    Nystrom factorization with canonical signs in one process too, so this is the one-block
    refresh under every ``moment_transfer``, including ``"none"``
    (:class:`~subspaces.optim.projectors.NystromProjector`);
  - ``svd`` and ``rsvd`` under ``moment_transfer="none"``, or when the blocks above would take
    at least as many bytes as the gradient (for ``svd``: ``8 n^2 >= f m n``, i.e. ``m <= 2 n``
    in float32), and any other projector: the whole gradient is gathered (``f m n`` bytes,
    summed from zero-padded row blocks) and the projector selects as in one process.

  These ``svd`` and ``rsvd`` bases come from a symmetric eigendecomposition instead of
  LAPACK's SVD, so each column's sign is fixed by a convention (its entry of largest magnitude
  is positive) and may differ from the single-process sign. The update ``N Q^T`` does not depend
  on the signs, and neither do ``moment_transfer="rotate"`` and ``"reset"``, which take this
  path. With GaLore's ``moment_transfer="none"`` (the default) the first moments carried over a
  refresh are read in the new basis, so a sign flip changes the trajectory (by about 5e-2 after
  20 steps in the test's small model): ``svd`` and ``rsvd`` then gather the gradient (``f m n``
  bytes per refresh) and select with the single-process code, whose signs are a function of
  the gradient.

* **rows compressed** (``m < n`` under ``proj_type="std"``: ``R = G^T Q``, ``Q`` is ``m x r``
  on the *sharded* side). A refresh **gathers the whole gradient** (``f m n`` bytes) and selects
  with the single-process code, so the basis equals the single-process basis bit for bit given
  the same gradient; each step then all-reduces the partial products ``G_i^T Q_i`` (``f n r``
  bytes per weight, all weights of the step packed in one all-reduce), and the ``n x r``
  moments are replicated on every rank.

Every step begins with one small packed all-reduce (via
:func:`subspaces._distributed.allreduce_packed`: one float per parameter with the count of its
non-finite gradient entries, and two floats per rank: an error flag and a checksum slot), so a
NaN on one rank skips or raises on all ranks and a rank whose preparation raised makes the other
ranks raise :class:`~subspaces._distributed.RankFailedError` instead of hanging. A step with a
refresh, or with rows-compressed weights, ends with a second one (the partial products above, or
nothing but the flags), so a failure inside a selection reaches every rank before any rank
changes its state. The optimizer's :attr:`~subspaces.optim.SubspaceAdamW.comm_bytes` counts the
bytes handed to ``all_reduce``. Supported: float32/float64 weights on a 1-D mesh; a
rows-compressed weight additionally needs a projector that multiplies by a dense basis
(``svd``, ``rsvd``, ``nystrom``, ``dct``, ``random``), moments in the weight's dtype, no
``error_feedback`` and no ``proj_dtype``; anything else raises a clear error on every rank.

References:
    Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection",
    arXiv:2403.03507. Halko, Martinsson, Tropp, "Finding structure with randomness",
    arXiv:0909.4061. Modoranu et al., "SVD-Free Low-Rank Adaptive Gradient Optimization for
    Large Language Models", arXiv:2505.17967.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import Tensor

from .._distributed import is_dtensor
from ._sharded_select import _Layer, _select_columns, _select_rows, _Sync

if TYPE_CHECKING:
    from .subspace_adamw import SubspaceAdamW

__all__ = ["has_dtensor", "row_range", "sharded_step"]

#: state entries that are row shards of a columns-compressed weight (stored as ``DTensor``)
_ROW_KEYS = ("exp_avg", "exp_avg_sq", "error")


def _dtensor_types() -> tuple[type, Any]:
    from torch.distributed.tensor import DTensor, Shard

    return DTensor, Shard


def has_dtensor(params: list[Tensor]) -> bool:
    """Whether any of ``params`` is a ``torch.distributed.tensor.DTensor``.

    Args:
        params: tensors.

    Returns:
        ``True`` if one of them is a ``DTensor``.

    Example:
        >>> has_dtensor([torch.zeros(2)])
        False
    """
    return any(is_dtensor(p) for p in params)


def row_range(m: int, world: int, rank: int) -> tuple[int, int]:
    """Rows ``[start, stop)`` of an ``m``-row tensor held by ``rank`` under ``Shard(0)``.

    ``DTensor`` splits like ``torch.chunk``: chunks of ``ceil(m / world)`` rows, the last ones
    shorter or empty.

    Args:
        m: number of rows.
        world: number of ranks.
        rank: this rank.

    Returns:
        ``(start, stop)``.

    Example:
        >>> [row_range(3, 2, r) for r in range(2)]
        [(0, 2), (2, 3)]
    """
    chunk = -(-m // world)
    start = min(rank * chunk, m)
    return start, min(start + chunk, m)


def _check_layer(opt: SubspaceAdamW, p: Tensor, group: dict[str, Any], transpose: bool) -> None:
    """Clear errors for sharded weights this module does not handle."""
    _, Shard = _dtensor_types()
    placements = tuple(p.placements)  # type: ignore[attr-defined]
    if len(placements) != 1 or placements[0] != Shard(0):
        raise ValueError(
            f"{opt._name(p)} is a DTensor with placements {placements}; SubspaceAdamW projects "
            "DTensor weights sharded by rows on a 1-D mesh only (Shard(0), as fully_shard "
            "makes them); use a group without rank for this parameter"
        )
    if p.dtype not in (torch.float32, torch.float64):
        raise TypeError(
            f"{opt._name(p)} has dtype {p.dtype}; sharded projection supports float32/float64 "
            "weights (use FSDP's MixedPrecisionPolicy to keep float32 master weights)"
        )
    if transpose:
        proj = opt._projector(group)
        from .subspace_adamw import _uses_basis_products

        state_dtype = opt._state_dtype(p, group)
        if (
            not _uses_basis_products(proj)
            or group.get("error_feedback")
            or state_dtype != p.dtype
            or group.get("proj_dtype") is not None
        ):
            raise ValueError(
                f"{opt._name(p)} compresses its sharded rows (shape {tuple(p.shape)}, "
                f"proj_type={group['proj_type']!r}); that orientation supports projectors that "
                "multiply by a dense basis (svd, rsvd, dct, random) with state_dtype equal to "
                "the weight's dtype, no error_feedback and no proj_dtype; got projector="
                f"{proj.name!r}, state_dtype={state_dtype}, error_feedback="
                f"{bool(group.get('error_feedback'))}, proj_dtype={group.get('proj_dtype')}"
            )


def sharded_step(opt: SubspaceAdamW) -> None:
    """One step of ``opt`` when some parameters are ``DTensor`` shards (see the module doc).

    Args:
        opt: the optimizer (its gradients are set; the closure has run).

    Raises:
        NonFiniteGradientError: on every rank when some rank's gradient holds NaN/Inf and
            ``nonfinite="error"``.
        RankFailedError: on the other ranks when one rank's step raised.
    """
    from torch.distributed.tensor import DTensor

    from .subspace_adamw import NonFiniteGradientError

    todo = [(p, g) for g in opt.param_groups for p in g["params"] if p.grad is not None]
    sharded = [p for p, _ in todo if isinstance(p, DTensor)]
    mesh = sharded[0].device_mesh
    pg = mesh.get_group()
    world = torch.distributed.get_world_size(pg)
    me = torch.distributed.get_rank(pg)
    sync = _Sync(opt, pg, sharded[0].to_local().device)

    def local_of(t: Tensor) -> Tensor:
        return t.to_local() if isinstance(t, DTensor) else t

    layers: list[_Layer] = []
    plain: dict[int, list[Tensor]] = {}
    ordinary: dict[int, list[tuple[Tensor, int]]] = {}  # regular tensors: one-process step

    def prepare() -> None:
        for p, _ in todo:
            opt._check_steppable(p)
        for gi, group in enumerate(opt.param_groups):
            for p in group["params"]:
                if p.grad is None:
                    continue
                projected, rank = opt._plan(p, group)
                if not isinstance(p, DTensor):  # a regular tensor: the one-process step
                    ordinary.setdefault(gi, []).append((p, rank))
                    continue
                if not projected:
                    plain.setdefault(gi, []).append(p)
                    continue
                m = p.shape[0]
                n = p.numel() // m
                transpose = opt._transpose((m, n), group["proj_type"])
                _check_layer(opt, p, group, transpose)
                if p.device_mesh != mesh:
                    raise ValueError(
                        f"{opt._name(p)} lives on device mesh {p.device_mesh}, another projected "
                        f"shard on {mesh}; a sharded SubspaceAdamW step needs one mesh (one "
                        "optimizer per mesh)"
                    )
                start, stop = row_range(m, world, me)
                local = local_of(p)
                if local.shape[0] != stop - start:
                    raise ValueError(
                        f"{opt._name(p)}: local shard has {local.shape[0]} rows, expected "
                        f"{stop - start} (rows {start}:{stop} of {m} over {world} ranks)"
                    )
                G = local_of(cast(Tensor, p.grad)).reshape(stop - start, n)
                if group["maximize"]:
                    G = -G
                state = opt.state.get(p)
                refresh = not state or int(state["step"]) >= int(state["next_refresh"])
                index = cast(tuple[int, int], opt._locate(p))[0]
                layers.append(
                    _Layer(p, group, rank, index, local, G, m, n, start, stop, transpose, refresh)
                )

    partials: list[_Layer] = []

    def project_local() -> list[Tensor]:
        from .subspace_adamw import _unpacked

        parts = []
        for L in layers:
            if L.refresh:
                continue
            proj = opt._projector(L.group)
            ps = _unpacked(opt._proj_state(opt.state[L.p]))
            work = L.G
            if L.transpose:
                Q = proj.basis(ps, L.m, work.dtype)[L.start : L.stop]
                parts.append((work.T @ Q).reshape(-1))
                partials.append(L)
                continue
            if L.group.get("error_feedback") and "error" in opt.state[L.p]:
                work = work + local_of(opt.state[L.p]["error"]).to(work.dtype)
            L.R = proj.project(work, ps)
            if L.group.get("error_feedback"):
                L.error = work - proj.project_back(L.R, ps, L.n)
        return parts

    sync.run(prepare)
    parts = cast(list[Tensor], sync.run(project_local)) or []

    def counts() -> list[float]:
        grads = [local_of(cast(Tensor, p.grad)).detach().reshape(-1) for p, _ in todo]
        # one host sync: the extremes propagate NaN/Inf and cost less than isfinite on CPU
        ends = [x.float() for g in grads if g.numel() for x in torch.aminmax(g)]
        if not ends or bool(torch.isfinite(torch.stack(ends)).all()):
            return [0.0] * len(grads)
        return [float((~torch.isfinite(g)).sum()) for g in grads]

    # collective 1 (every step): non-finite counts and error flags; after it, every rank has
    # prepared the same layers
    _, totals = sync.allreduce(None, (0,), torch.float32, counts, n_scalars=len(todo))
    for (p, group), c in zip(todo, totals, strict=True):
        if c:
            if group["nonfinite"] == "skip":
                opt.skipped_steps += 1
                return
            raise NonFiniteGradientError(
                f"gradient of {opt._name(p)} has {int(c)} non-finite value(s) (NaN or Inf), "
                "counted over all ranks; the optimizer state and parameters are unchanged. Use "
                "nonfinite='skip' to skip such steps."
            )
    refreshing = [L for L in layers if L.refresh]
    for L in refreshing:
        if L.transpose:
            _select_rows(opt, L, sync)
        else:
            _select_columns(opt, L, sync)
    if refreshing or partials:
        # collective 2: partial products G_i^T Q_i of rows-compressed weights, and the error
        # flags of the selections (no rank commits while another failed)
        dtype = torch.float32
        for t in parts:
            dtype = torch.promote_types(dtype, t.dtype)
        size = sum(L.n * L.rank for L in partials)
        summed, _ = sync.allreduce(lambda: torch.cat(parts) if parts else None, (size,), dtype)
        offset = 0
        for L in partials:
            k = L.n * L.rank
            L.R = summed[offset : offset + k].reshape(L.n, L.rank).to(L.G.dtype)
            offset += k
    for gi, params in plain.items():
        opt._plain_adamw(params, opt.param_groups[gi])
    for gi, items in ordinary.items():
        _step_ordinary(opt, opt.param_groups[gi], items)
    for L in layers:
        _commit(opt, L, mesh)


def _step_ordinary(opt: SubspaceAdamW, group: dict[str, Any], items: list) -> None:
    """Step regular (non-``DTensor``) parameters of a group exactly as ``step()`` does."""
    from .quantization import int8_module_of

    floats = [p for p, rank in items if not rank and int8_module_of(p) is None]
    if floats:
        opt._plain_adamw(floats, group)
    for p, rank in items:
        if not rank and int8_module_of(p) is not None:
            opt._int8_dense_step(p, group, cast(tuple[int, int], opt._locate(p))[0])
    projected = [(p, rank) for p, rank in items if rank]
    if projected:
        opt._projected_group_step(group, projected)


def _commit(opt: SubspaceAdamW, L: _Layer, mesh: Any) -> None:
    """Moments and weight update of one layer on local tensors; row shards wrapped back."""
    from torch.distributed.tensor import DTensor, Shard

    from .subspace_adamw import _basis_of, _Item

    stored = opt.state[L.p]
    local_state: dict[str, Any] = {
        k: (v.to_local() if isinstance(v, DTensor) else v) for k, v in stored.items()
    }
    a = L.n if L.transpose else L.stop - L.start
    b = L.m if L.transpose else L.n
    if not local_state:
        opt._init_projected_state(L.p, L.group, (a, b), L.rank)
        local_state = dict(opt.state[L.p])
    if L.new is not None:
        opt._install(local_state, L.group, L.rank, L.new, int(local_state["step"]), b)
    if L.error is not None:
        local_state["error"] = L.error.to(local_state["exp_avg"].dtype)
    proj = opt._projector(L.group)
    Q = _basis_of(proj, opt._proj_state(local_state), b, L.local.dtype)
    if L.transpose:
        Q = Q[L.start : L.stop]
    item = _Item(
        L.local,
        local_state,
        cast(Tensor, L.R),
        L.transpose,
        L.stop - L.start if L.transpose else b,
        L.index,
        Q,
    )
    item.refreshed = L.new is not None
    opt._adam_projected(L.group, [item])
    stored.clear()
    for k, value in local_state.items():
        v = value
        if not L.transpose and k in _ROW_KEYS:
            v = DTensor.from_local(
                value,
                mesh,
                [Shard(0)],
                run_check=False,
                shape=torch.Size((L.m, v.shape[1])),
                stride=(v.shape[1], 1),
            )
        stored[k] = v
