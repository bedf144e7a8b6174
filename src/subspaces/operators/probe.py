r"""Probe the low-rank structure of spectral weights: per-mode spectra and multilinear ranks.

A spectral convolution holds one complex ``c_in x c_out`` matrix per retained frequency, i.e. a
tensor ``R`` of shape ``(c_in, c_out, *kept)``. TFNO (Kossaifi et al., in ``neuraloperator``)
stores it as a Tucker or CP factorisation, betting that ``R`` is compressible; this probe measures
how compressible a trained ``R`` is: the singular values of each per-frequency matrix, their
effective rank (``exp`` of the entropy of the normalised singular values; Roy & Vetterli, 2007), and
the multilinear (Tucker) ranks of ``R`` that keep a given share of its energy, from the singular
values of its unfoldings (HOSVD; De Lathauwer, De Moor & Vandewalle, 2000). Context: Li et al.,
arXiv:2010.08895; Berner et al., arXiv:2506.10973.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .spectral_conv import SpectralConv

__all__ = ["SpectralProbe", "effective_rank", "probe_model", "probe_spectral_conv"]


def effective_rank(singular_values: Tensor) -> Tensor:
    """``exp(-sum p_i log p_i)`` with ``p = s / sum(s)`` over the last dimension.

    Args:
        singular_values: ``(..., k)`` non-negative values.

    Returns:
        ``(...)``: between 1 (one non-zero value) and ``k`` (all equal); 0 for an all-zero row.

    Example:
        >>> effective_rank(torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])).tolist()
        [3.0, 1.0]
    """
    s = singular_values.clamp_min(0)
    total = s.sum(-1, keepdim=True)
    p = torch.where(total > 0, s / total.clamp_min(torch.finfo(s.dtype).tiny), 0.0)
    entropy = -(p * torch.where(p > 0, p.log(), 0.0)).sum(-1)
    return torch.where(total.squeeze(-1) > 0, entropy.exp(), 0.0)


@dataclass(frozen=True)
class SpectralProbe:
    """The structure of one spectral weight tensor ``R`` of shape ``(c_in, c_out, *kept)``.

    Attributes:
        frequencies: the kept frequencies along each spatial dimension.
        singular_values: ``(*kept, min(c_in, c_out))``, descending, per frequency.
        effective_rank: ``(*kept,)``, per frequency.
        mode_norms: ``(*kept,)``, Frobenius norm of each frequency's matrix.
        unfolding_spectra: the singular values of each mode-``i`` unfolding of ``R``.
        tucker_ranks: per mode, the fewest singular values of the unfolding holding
            ``energy`` of its squared sum.
        energy: the share used for ``tucker_ranks``.
        stored_ranks: the ranks of a factorised weight (empty for dense).

    Example:
        A Tucker-factorised weight of ranks ``(2, 2, 3, 2)``: the measured multilinear ranks
        are the stored ones, and each frequency's norm is that of its ``c_in x c_out`` slice.

        >>> import torch
        >>> from subspaces.operators import SpectralConv, probe_spectral_conv
        >>> torch.manual_seed(0) and None
        >>> conv = SpectralConv(4, 4, (4, 4), factorization="tucker", rank=(2, 2, 3, 2))
        >>> p = probe_spectral_conv(conv)
        >>> p.frequencies, p.stored_ranks, p.tucker_ranks
        ([[-2, -1, 0, 1], [0, 1, 2]], (2, 2, 3, 2), (2, 2, 3, 2))
        >>> w = conv.dense_weight()  # (c_in, c_out, 4, 3)
        >>> torch.allclose(p.mode_norms, w.abs().pow(2).sum((0, 1)).sqrt())
        True
    """

    frequencies: list[list[int]]
    singular_values: Tensor
    effective_rank: Tensor
    mode_norms: Tensor
    unfolding_spectra: list[Tensor]
    tucker_ranks: tuple[int, ...]
    energy: float
    stored_ranks: tuple[int, ...]


def probe_spectral_conv(conv: SpectralConv, *, energy: float = 0.99) -> SpectralProbe:
    """Measure the spectra and multilinear ranks of a :class:`SpectralConv`'s weight.

    Args:
        conv: the layer.
        energy: share of squared singular values the reported Tucker ranks keep, in ``(0, 1]``.

    Returns:
        The probe.

    Raises:
        TypeError: if ``conv`` is not a ``SpectralConv``.
        ValueError: if ``energy`` is outside ``(0, 1]``.

    Example:
        >>> conv = SpectralConv(4, 4, (4, 4), factorization="tucker", rank=(2, 2, 3, 2))
        >>> p = probe_spectral_conv(conv)
        >>> p.tucker_ranks[0] <= 2 and p.tucker_ranks[2] <= 3, tuple(p.effective_rank.shape)
        (True, (4, 3))
    """
    if not isinstance(conv, SpectralConv):
        raise TypeError(f"conv must be a SpectralConv, got {type(conv).__name__}")
    if not (isinstance(energy, (int, float)) and 0.0 < energy <= 1.0):
        raise ValueError(f"energy must be in (0, 1], got {energy!r}")
    with torch.no_grad():
        w = conv.dense_weight().to(torch.complex128)
        per_mode = w.movedim(0, -1).movedim(0, -1)  # (*kept, c_in, c_out)
        sv = torch.linalg.svdvals(per_mode)
        spectra, ranks = [], []
        for i in range(w.ndim):
            unfold = w.movedim(i, 0).reshape(w.shape[i], -1)
            s = torch.linalg.svdvals(unfold)
            spectra.append(s.float())
            cum = (s**2).cumsum(0) / (s**2).sum().clamp_min(1e-300)
            ranks.append(int((cum < energy - 1e-12).sum()) + 1)
    return SpectralProbe(
        frequencies=[list(f) for f in conv.frequencies],
        singular_values=sv.float(),
        effective_rank=effective_rank(sv).float(),
        mode_norms=sv.pow(2).sum(-1).sqrt().float(),
        unfolding_spectra=spectra,
        tucker_ranks=tuple(min(r, w.shape[i]) for i, r in enumerate(ranks)),
        energy=float(energy),
        stored_ranks=conv.ranks,
    )


def probe_model(model: nn.Module, *, energy: float = 0.99) -> dict[str, SpectralProbe]:
    """:func:`probe_spectral_conv` for every ``SpectralConv`` in ``model``, by module name.

    Args:
        model: any module (an :class:`~subspaces.operators.fno.FNO`, for instance).
        energy: as in :func:`probe_spectral_conv`.

    Returns:
        ``{name: probe}`` in ``named_modules()`` order.

    Example:
        >>> from subspaces.operators import FNO
        >>> list(probe_model(FNO((4, 4), 1, 1, 8, n_layers=2)))
        ['convs.0', 'convs.1']
    """
    return {
        name: probe_spectral_conv(m, energy=energy)
        for name, m in model.named_modules()
        if isinstance(m, SpectralConv)
    }
