r"""CUBER: which old tasks' subspaces a new task may update (backward knowledge transfer).

Lin, Yang, Fan & Zhang, "Beyond Not-Forgetting: Continual Learning with Backward Knowledge
Transfer" (NeurIPS 2022, arXiv:2211.00789). GPM freezes the old tasks' input subspaces; CUBER
lets a new task ``t`` change the weights inside old task ``j``'s subspace ``S_j`` of a layer when
doing so should also lower task ``j``'s loss. Per layer and old task, with ``G_t`` the new task's
weight gradient at the start of task ``t`` and ``G_j`` task ``j``'s gradient stored at the end of
task ``j`` (no replay: old data are not available later), both projected on ``S_j``
(``P_j G = G S_j S_j^T``):

- *sufficient projection*: ``||P_j G_t|| > eps ||G_t||`` (TRGP's trust-region test);
- *positive correlation*: ``<P_j G_t, P_j G_j> > rho ||P_j G_t|| ||P_j G_j||`` (a cosine above
  ``rho``, default 0): a step along ``-P_j G_t`` lowers task ``j``'s loss to first order.

Regimes (:class:`Regime`): 1 ``INSUFFICIENT`` - project off ``S_j`` as GPM; 2 ``SCALED`` -
sufficient but not positive: keep ``S_j`` frozen and use TRGP's scaled weight projection
(:class:`~subspaces.continual.ScaledProjection`); 3 ``TRANSFER`` - sufficient and positive:
release ``S_j`` so the new task's gradient may move the weights inside it (backward transfer).
:func:`transfer_basis` gives the basis a layer's gradient is then projected off: the memory
without the directions that only regime-3 tasks own.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from .memory import GPMMemory
from .trgp import projection_ratio

__all__ = ["Regime", "layer_regimes", "regime", "transfer_basis"]


class Regime(enum.IntEnum):
    """CUBER's three regimes of an old task for one layer.

    Example:
        Tasks in ``TRANSFER`` are released: their directions are removed from the basis the new
        gradient is projected off.

        >>> m = GPMMemory(0.99).update({"fc": torch.tensor([[1.0], [0.0], [0.0]])})  # task 0: e_1
        >>> m = m.update({"fc": torch.tensor([[0.0], [1.0], [0.0]])})  # task 1: e_2
        >>> old = [{"fc": torch.tensor([[2.0, -5.0, 0.0]])},  # last gradients of tasks 0, 1
        ...        {"fc": torch.tensor([[0.0, 1.0, 0.0]])}]
        >>> regimes = layer_regimes({"fc": torch.tensor([[1.0, 0.1, 0.0]])}, m, old)
        >>> regimes
        {'fc': [<Regime.TRANSFER: 3>, <Regime.INSUFFICIENT: 1>]}
        >>> transfer = [j for j, r in enumerate(regimes["fc"]) if r == Regime.TRANSFER]
        >>> transfer, transfer_basis(m, "fc", transfer).abs().flatten().tolist()  # only e_2 left
        ([0], [0.0, 1.0, 0.0])
    """

    INSUFFICIENT = 1
    """Small projection: the old subspace stays frozen (GPM)."""
    SCALED = 2
    """Sufficient projection, no positive correlation: frozen, TRGP scaled projection."""
    TRANSFER = 3
    """Sufficient projection and positive correlation: updates inside the subspace allowed."""


def _cosine_in(G_new: Tensor, G_old: Tensor, S: Tensor) -> float:
    a = G_new.reshape(G_new.shape[0], -1).double() @ S.double()
    b = G_old.reshape(G_old.shape[0], -1).double() @ S.double()
    na, nb = float(torch.linalg.matrix_norm(a)), float(torch.linalg.matrix_norm(b))
    if na == 0.0 or nb == 0.0:
        return 0.0
    # <G_new S S^T, G_old S S^T> = <G_new S, G_old S> since S^T S = I
    return float((a * b).sum()) / (na * nb)


def regime(
    grad: Tensor,
    basis: Tensor,
    old_grad: Tensor,
    *,
    epsilon: float = 0.5,
    correlation: float = 0.0,
) -> Regime:
    """CUBER's regime of one old task for one layer.

    Args:
        grad: the new task's weight gradient (Linear ``(out, d)`` or Conv2d weight shape).
        basis: the old task's input subspace ``S_j`` (``d x k``, orthonormal columns).
        old_grad: the old task's weight gradient stored at the end of its training.
        epsilon: sufficient-projection threshold in ``[0, 1)``.
        correlation: cosine threshold in ``[-1, 1)`` of the positive-correlation test.

    Returns:
        The regime.

    Raises:
        ValueError: for mismatched shapes or thresholds outside their ranges.

    Example:
        >>> S = torch.tensor([[1.0], [0.0]])
        >>> regime(torch.tensor([[1.0, 0.1]]), S, torch.tensor([[2.0, -5.0]]))
        <Regime.TRANSFER: 3>
        >>> regime(torch.tensor([[1.0, 0.1]]), S, torch.tensor([[-2.0, 5.0]]))
        <Regime.SCALED: 2>
        >>> regime(torch.tensor([[0.1, 1.0]]), S, torch.tensor([[2.0, 5.0]]))
        <Regime.INSUFFICIENT: 1>
    """
    if not 0.0 <= float(epsilon) < 1.0:
        raise ValueError(f"epsilon must be in [0, 1), got {epsilon}")
    if not -1.0 <= float(correlation) < 1.0:
        raise ValueError(f"correlation must be in [-1, 1), got {correlation}")
    if grad.shape != old_grad.shape:
        raise ValueError(
            f"grad {tuple(grad.shape)} and old_grad {tuple(old_grad.shape)} must have one shape"
        )
    if projection_ratio(grad, basis) <= epsilon:
        return Regime.INSUFFICIENT
    if _cosine_in(grad, old_grad, basis) > correlation:
        return Regime.TRANSFER
    return Regime.SCALED


def layer_regimes(
    grads: Mapping[str, Tensor],
    memory: GPMMemory,
    old_grads: Sequence[Mapping[str, Tensor]],
    *,
    epsilon: float = 0.5,
    correlation: float = 0.0,
) -> dict[str, list[Regime]]:
    """:func:`regime` of every old task for every layer of the memory.

    Args:
        grads: ``{layer: new task's weight gradient}``.
        memory: the GPM memory with ``memory.num_tasks`` old tasks.
        old_grads: one ``{layer: gradient}`` per old task, stored at the end of that task.
        epsilon: sufficient-projection threshold.
        correlation: cosine threshold of the positive-correlation test.

    Returns:
        ``{layer: [regime of task 0, 1, ...]}``.

    Raises:
        ValueError: if ``old_grads`` does not have one entry per stored task or lacks a layer.

    Example:
        >>> from subspaces.continual import GPMMemory
        >>> inputs = torch.tensor([[1.0, 2.0], [0.0, 0.0]])  # (d, n): task 0 spans e_1
        >>> memory = GPMMemory(threshold=0.99).update({"fc": inputs})
        >>> old = [{"fc": torch.tensor([[2.0, -5.0]])}]  # task 0's last gradient
        >>> layer_regimes({"fc": torch.tensor([[1.0, 0.1]])}, memory, old)
        {'fc': [<Regime.TRANSFER: 3>]}
        >>> layer_regimes({"fc": torch.tensor([[0.1, 1.0]])}, memory, old)
        {'fc': [<Regime.INSUFFICIENT: 1>]}
    """
    if len(old_grads) != memory.num_tasks:
        raise ValueError(
            f"old_grads has {len(old_grads)} entries, the memory holds {memory.num_tasks} tasks"
        )
    out: dict[str, list[Regime]] = {}
    for layer in memory.layers:
        if layer not in grads:
            raise ValueError(f"no gradient for memory layer {layer!r}; got {sorted(grads)}")
        row = []
        for j, task in enumerate(memory.task_bases_):
            if layer not in old_grads[j]:
                raise ValueError(f"old_grads[{j}] has no gradient for layer {layer!r}")
            row.append(
                regime(
                    grads[layer],
                    task[layer],
                    old_grads[j][layer],
                    epsilon=epsilon,
                    correlation=correlation,
                )
            )
        out[layer] = row
    return out


def transfer_basis(
    memory: GPMMemory, layer: str, transfer_tasks: Sequence[int], *, rtol: float = 1e-6
) -> Tensor | None:
    """The basis to project a layer's gradient off when ``transfer_tasks`` are released.

    The released directions are the part of the released tasks' subspaces orthogonal to every
    other task's subspace, ``K = orth((I - P_others) [S_j for j released])``; the returned basis
    spans the memory with ``K`` removed, ``orth((I - P_K) M)``. With no released task it is the
    memory basis itself (the gradient is projected exactly as GPM does).

    Args:
        memory: the GPM memory.
        layer: one of its layers.
        transfer_tasks: indices of the old tasks in regime 3 for this layer.
        rtol: singular values below ``rtol`` (the columns are unit vectors) count as zero.

    Returns:
        The basis (``d x k'``) or ``None`` if nothing is left to project off.

    Raises:
        ValueError: for an unknown layer or task index.

    Example:
        >>> m = GPMMemory(0.99).update({"fc": torch.tensor([[1.0], [0.0], [0.0]])})
        >>> m = m.update({"fc": torch.tensor([[0.0], [1.0], [0.0]])})
        >>> transfer_basis(m, "fc", [1]).abs().flatten().tolist()
        [1.0, 0.0, 0.0]
    """
    M = memory.basis(layer)
    if layer not in memory.bases_:
        raise ValueError(f"unknown layer {layer!r}; the memory holds {memory.layers}")
    released = sorted(set(int(j) for j in transfer_tasks))
    for j in released:
        if not 0 <= j < memory.num_tasks:
            raise ValueError(f"task index {j} out of range for {memory.num_tasks} stored tasks")
    if M is None or not released:
        return M
    work = M.double()
    others = [memory.task_bases_[j][layer].double() for j in range(memory.num_tasks)]
    kept = [others[j] for j in range(memory.num_tasks) if j not in released and others[j].numel()]
    freed = torch.cat([others[j] for j in released], dim=1)
    if freed.shape[1] == 0:
        return M
    if kept:
        Ko, so, _ = torch.linalg.svd(torch.cat(kept, dim=1), full_matrices=False)
        Ko = Ko[:, so > rtol * max(float(so[0]), 1.0)]
        freed = freed - Ko @ (Ko.T @ freed)
    U, s, _ = torch.linalg.svd(freed, full_matrices=False)
    K = U[:, s > rtol]
    if K.shape[1] == 0:
        return M
    rest = work - K @ (K.T @ work)
    U2, s2, _ = torch.linalg.svd(rest, full_matrices=False)
    B = U2[:, s2 > rtol]
    if B.shape[1] == 0:
        return None
    return B.to(M.dtype)
