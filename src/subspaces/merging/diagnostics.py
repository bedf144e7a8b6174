"""Diagnostics of task vectors and masks: what merging users ask before choosing a method.

- :func:`sign_conflict_rate`: among entries that two or more task vectors change, the share where
  they pull in opposite directions (the interference TIES' sign election resolves);
- :func:`cosine_matrix`: pairwise cosine similarity of whole task vectors;
- :func:`layer_ranks`: per tensor, the singular values of the stacked task vectors
  ``[tau_1 ... tau_K]`` (``numel x K``), their energy rank and effective rank, and the span as a
  :class:`~subspaces.linalg.subspace.Subspace`: a low rank means the tasks move that layer in a
  shared subspace;
- :func:`mask_sparsity`: share of the entries a mask drops.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_positive_float
from ..linalg.subspace import Subspace

__all__ = ["LayerRank", "cosine_matrix", "layer_ranks", "mask_sparsity", "sign_conflict_rate"]


def _names(vectors: Sequence[Mapping[str, Tensor]], what: str = "vectors") -> list[str]:
    if isinstance(vectors, Mapping) or not isinstance(vectors, Sequence) or len(vectors) == 0:
        raise ValueError(f"{what} must be a non-empty list of task vectors (dicts of tensors)")
    names = list(vectors[0])
    for k, tv in enumerate(vectors):
        if set(tv) != set(names):
            diff = sorted(set(tv) ^ set(names))
            raise ValueError(f"task vector {k} and task vector 0 differ in tensor {diff[0]!r}")
        for n in names:
            if tv[n].shape != vectors[0][n].shape:
                raise ValueError(
                    f"tensor {n!r} has shape {tuple(tv[n].shape)} in task vector {k} but "
                    f"{tuple(vectors[0][n].shape)} in task vector 0"
                )
    return names


def sign_conflict_rate(
    vectors: Sequence[Mapping[str, Tensor]], *, per_tensor: bool = False
) -> float | dict[str, float]:
    """Share of entries changed by >= 2 task vectors whose changes have opposite signs.

    Args:
        vectors: task vectors with the same names and shapes.
        per_tensor: return the rate of every tensor instead of the overall rate.

    Returns:
        The rate in ``[0, 1]`` (0 when no entry is changed by two vectors), or ``name -> rate``.

    Example:
        >>> a = {"w": torch.tensor([1.0, 2.0, 0.0, -1.0])}
        >>> b = {"w": torch.tensor([-1.0, 3.0, 5.0, -2.0])}
        >>> sign_conflict_rate([a, b])  # entries 0, 1, 3 are shared; entry 0 conflicts
        0.3333333333333333
    """
    names = _names(vectors)
    counts: dict[str, tuple[int, int]] = {}
    for n in names:
        s = torch.stack([tv[n].detach().sign() for tv in vectors])
        shared = (s != 0).sum(0) >= 2
        conflict = (s > 0).any(0) & (s < 0).any(0)
        counts[n] = (int(conflict.sum()), int(shared.sum()))
    if per_tensor:
        return {n: (c / s if s else 0.0) for n, (c, s) in counts.items()}
    conflicts = sum(c for c, _ in counts.values())
    shared_total = sum(s for _, s in counts.values())
    return conflicts / shared_total if shared_total else 0.0


def cosine_matrix(vectors: Sequence[Mapping[str, Tensor]]) -> Tensor:
    """Pairwise cosine similarity of the task vectors, flattened over all tensors (float64).

    Args:
        vectors: task vectors with the same names and shapes.

    Returns:
        ``(K, K)`` float64 matrix with ones on the diagonal (0 rows for zero vectors).

    Example:
        >>> a, b = {"w": torch.tensor([1.0, 0.0])}, {"w": torch.tensor([1.0, 1.0])}
        >>> [round(v, 6) for v in cosine_matrix([a, b])[0].tolist()]
        [1.0, 0.707107]
    """
    names = _names(vectors)
    k = len(vectors)
    gram = torch.zeros(k, k, dtype=torch.float64)
    for n in names:
        flat = torch.stack([tv[n].detach().reshape(-1).double() for tv in vectors])
        gram += flat @ flat.T
    norms = gram.diagonal().sqrt()
    safe = torch.where(norms > 0, norms, torch.ones_like(norms))
    cos = gram / safe[:, None] / safe[None, :]
    return cos


@dataclass(frozen=True)
class LayerRank:
    """The stacked task vectors of one tensor.

    Attributes:
        singular_values: of the ``numel x K`` matrix of flattened task vectors, descending.
        rank: the fewest singular directions holding ``energy`` of the squared norm.
        effective_rank: ``exp`` of the entropy of the normalised singular values (Roy & Vetterli
            2007): between 1 (one direction) and ``K`` (all equal).
        subspace: the span of the top ``rank`` left singular vectors (``None`` for a zero tensor).

    Example:
        Three task vectors along one direction ``d`` stack to a rank-1 matrix whose singular
        value is ``||(1, 2, -1)|| ||d||``:

        >>> import torch
        >>> from subspaces.merging import layer_ranks
        >>> d = torch.randn(50, generator=torch.Generator().manual_seed(0))
        >>> r = layer_ranks([{"w": d}, {"w": 2 * d}, {"w": -d}])["w"]
        >>> r.rank, round(r.effective_rank, 6), r.subspace.dim
        (1, 1.0, 1)
        >>> round(float(r.singular_values[0] / d.norm()) ** 2, 5)
        6.0
    """

    singular_values: Tensor
    rank: int
    effective_rank: float
    subspace: Subspace | None


def layer_ranks(
    vectors: Sequence[Mapping[str, Tensor]], *, energy: float = 0.99
) -> dict[str, LayerRank]:
    """Per tensor: singular values, energy rank and effective rank of the stacked task vectors.

    Args:
        vectors: task vectors with the same names and shapes.
        energy: the share of the squared Frobenius norm the ``rank`` directions must hold, in
            ``(0, 1]``.

    Returns:
        ``name -> LayerRank``.

    Raises:
        ValueError: for ``energy`` outside (0, 1] or inconsistent task vectors.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> d = torch.randn(50, generator=g)
        >>> tvs = [{"w": d}, {"w": 2 * d}, {"w": torch.randn(50, generator=g)}]
        >>> r = layer_ranks(tvs)["w"]
        >>> r.rank, r.subspace.dim, 1.0 <= r.effective_rank <= 3.0
        (2, 2, True)
    """
    check_positive_float(energy, "energy")
    if energy > 1:
        raise ValueError(f"energy must be in (0, 1], got {energy}")
    names = _names(vectors)
    out: dict[str, LayerRank] = {}
    for n in names:
        M = torch.stack([tv[n].detach().reshape(-1) for tv in vectors], dim=1)
        work = M.double() if M.dtype == torch.float64 or M.numel() <= 4_000_000 else M.float()
        U, s, _ = torch.linalg.svd(work, full_matrices=False)
        total = float((s**2).sum())
        if total == 0.0:
            out[n] = LayerRank(s, 0, 0.0, None)
            continue
        cum = torch.cumsum(s**2, 0) / total
        rank = min(int((cum < energy - 1e-12).sum()) + 1, s.numel())
        p = s / s.sum()
        p = p[p > 0]
        eff = math.exp(float(-(p * p.log()).sum()))
        out[n] = LayerRank(s, rank, eff, Subspace(U[:, :rank].contiguous()))
    return out


def mask_sparsity(mask: Mapping[str, Tensor], threshold: float = 0.5) -> float:
    """Share of mask entries at or below ``threshold`` (the entries a binary mask drops).

    Args:
        mask: ``name -> mask`` of keep probabilities or 0/1 values.
        threshold: entries ``<= threshold`` count as dropped.

    Returns:
        The share in ``[0, 1]``.

    Raises:
        ValueError: for an empty mask.

    Example:
        >>> mask_sparsity({"w": torch.tensor([0.9, 0.2, 0.0, 0.7])})
        0.5
    """
    if not mask:
        raise ValueError("mask must hold at least one tensor")
    dropped = sum(int((m.detach() <= threshold).sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    return dropped / total if total else 0.0
