r"""Spectral convolution: the Fourier layer of a Fourier neural operator, in any dimension.

A spectral convolution is the kernel integral operator ``(K v)(x) = \int k(x - y) v(y) dy`` on the
periodic unit cube with a kernel whose Fourier series is truncated to a few low frequencies:
``K v = F^{-1}[R(k) \cdot (F v)(k)]`` with one learned complex ``c_in x c_out`` matrix ``R(k)`` per
retained frequency ``k`` and zero elsewhere (Li, Kovachki, Azizzadenesheli, Liu, Bhattacharya,
Stuart & Anandkumar, "Fourier Neural Operator for Parametric Partial Differential Equations",
arXiv:2010.08895). Because the weights live on frequencies, not on grid points, the same layer
acts on a signal sampled on any grid fine enough to hold those frequencies: it is a
discretisation of one operator (Berner, Liu-Schiaffini, Kossaifi, Duruisseaux, Bonev,
Azizzadenesheli & Anandkumar, "Principled approaches for extending neural architectures to
function spaces for operator learning", arXiv:2506.10973).

Conventions (those of ``neuraloperator``'s ``SpectralConv``, so configurations carry over):

- The transform is ``torch.fft.rfftn`` with ``norm="forward"``: the coefficients are the Fourier
  series coefficients (grid means), independent of the resolution, and ``irfftn(norm="forward")``
  evaluates the truncated series at the grid points.
- ``n_modes[d]`` counts the retained frequencies along spatial dimension ``d``. Along every
  dimension but the last these are ``k = -(m // 2), ..., (m - 1) // 2`` (both signs: a real
  signal's spectrum is not one-sided there); along the last (half-spectrum) dimension they are
  ``k = 0, ..., m // 2``.
- A grid of ``n`` points along a dimension represents the frequencies ``|k| < n / 2`` without
  ambiguity, so the layer needs ``n > 2 * (m // 2)`` points there (``n >= m + 1`` for even ``m``)
  and raises ``ValueError`` otherwise, instead of silently dropping modes.

The weight is dense, or stored as a Tucker or CP factorisation of the complex tensor of shape
``(c_in, c_out, *kept)`` (the TFNO of Kossaifi et al.); the factorised weight is reconstructed
before the contraction.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from .._checks import check_finite, check_float_tensor, check_positive_int

__all__ = ["SpectralConv", "kept_frequencies"]


Factorization = Literal["dense", "tucker", "cp"]
_COMPLEX = {torch.float32: torch.complex64, torch.float64: torch.complex128}


def kept_frequencies(n_modes: int, *, last: bool) -> list[int]:
    """The integer frequencies a :class:`SpectralConv` keeps along one dimension, in weight order.

    Args:
        n_modes: the number of retained frequencies (``>= 1``).
        last: whether this is the last (half-spectrum, ``rfft``) dimension.

    Returns:
        Ascending frequencies: ``-(m // 2), ..., (m - 1) // 2``, or ``0, ..., m // 2`` if ``last``.

    Example:
        >>> kept_frequencies(4, last=False), kept_frequencies(4, last=True)
        ([-2, -1, 0, 1], [0, 1, 2])
    """
    m = check_positive_int(n_modes, "n_modes")
    if last:
        return list(range(m // 2 + 1))
    return list(range(-(m // 2), (m - 1) // 2 + 1))


def _tucker_ranks(shape: Sequence[int], fraction: float) -> list[int]:
    """Tucker ranks ``ceil(alpha * dim)`` whose parameter count is closest below ``fraction``."""
    total = math.prod(shape)

    def count(alpha: float) -> tuple[int, list[int]]:
        ranks = [max(1, min(s, math.ceil(alpha * s))) for s in shape]
        return math.prod(ranks) + sum(s * r for s, r in zip(shape, ranks, strict=True)), ranks

    lo, hi = 0.0, 1.0
    for _ in range(60):
        mid = (lo + hi) / 2
        if count(mid)[0] <= fraction * total:
            lo = mid
        else:
            hi = mid
    return count(lo)[1]


class SpectralConv(nn.Module):
    r"""Fourier-space linear layer on ``n``-dimensional periodic grids (FNO / TFNO layer).

    ``forward`` maps ``(batch, in_channels, *grid)`` to ``(batch, out_channels, *grid)`` for any
    grid that holds the retained frequencies (see the module docstring for the exact set).

    Args:
        in_channels: input channels.
        out_channels: output channels.
        n_modes: retained frequencies per spatial dimension (an int for 1-D, or a sequence whose
            length is the number of spatial dimensions).
        factorization: ``"dense"`` (one complex tensor), ``"tucker"`` (core and one factor per
            mode of the weight tensor) or ``"cp"`` (rank-``R`` sum of outer products).
        rank: for a factorised weight, the share of the dense parameter count to keep, in
            ``(0, 1]`` (as ``neuraloperator``'s ``rank=0.05``), or an explicit rank: an int for
            CP, a sequence of ``2 + ndim`` ints for Tucker.
        bias: add a learned per-channel bias.
        dtype: ``torch.float32`` (default) or ``torch.float64``. Complex weights are stored as
            real ``(..., 2)`` pairs (``torch.view_as_real``), so ``module.to(dtype)``, optimizers
            and ``state_dict`` see real tensors.
        generator: random generator for the initialisation (``N(0, 2 / (c_in + c_out))`` entries
            for the dense weight; factorised weights are scaled to the same overall energy).

    Raises:
        TypeError: if a channel count or ``n_modes`` is not an int, or ``dtype`` is not float32/64.
        ValueError: for non-positive sizes, an unknown factorisation, or a rank out of range.

    Example:
        >>> conv = SpectralConv(2, 3, (4, 4), generator=torch.Generator().manual_seed(0))
        >>> x = torch.randn(5, 2, 16, 16)
        >>> tuple(conv(x).shape), tuple(conv(torch.randn(5, 2, 32, 32)).shape)
        ((5, 3, 16, 16), (5, 3, 32, 32))
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        n_modes: int | Sequence[int],
        *,
        factorization: Factorization = "dense",
        rank: float | int | Sequence[int] = 1.0,
        bias: bool = True,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.in_channels = check_positive_int(in_channels, "in_channels")
        self.out_channels = check_positive_int(out_channels, "out_channels")
        modes = (n_modes,) if isinstance(n_modes, int) else tuple(n_modes)
        if not modes:
            raise ValueError("n_modes must name at least one spatial dimension, got ()")
        self.n_modes = tuple(check_positive_int(m, f"n_modes[{i}]") for i, m in enumerate(modes))
        if factorization not in ("dense", "tucker", "cp"):
            raise ValueError(
                f"factorization must be 'dense', 'tucker' or 'cp', got {factorization!r}"
            )
        self.factorization: Factorization = factorization
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _COMPLEX:
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        d = len(self.n_modes)
        self.frequencies = [
            kept_frequencies(m, last=(i == d - 1)) for i, m in enumerate(self.n_modes)
        ]
        self.weight_shape = (
            self.in_channels,
            self.out_channels,
            *(len(f) for f in self.frequencies),
        )
        std = math.sqrt(2.0 / (self.in_channels + self.out_channels))

        def randc(*shape: int, scale: float) -> nn.Parameter:
            # complex normal stored as (..., 2) real pairs, so that ``module.to(dtype)`` and
            # every optimizer treat it as real; each part carries half the variance
            z = torch.randn(*shape, 2, dtype=dtype, generator=generator) * (scale / math.sqrt(2))
            return nn.Parameter(z)

        shape = self.weight_shape
        self.ranks: tuple[int, ...] = ()
        if factorization == "dense":
            self.weight = randc(*shape, scale=std)
        elif factorization == "tucker":
            ranks = self._check_tucker_rank(rank, shape)
            self.ranks = tuple(ranks)
            self.core = randc(*ranks, scale=std * math.sqrt(math.prod(shape) / math.prod(ranks)))
            self.factors = nn.ParameterList()
            for s, r in zip(shape, ranks, strict=True):
                q, _ = torch.linalg.qr(torch.view_as_complex(randc(s, r, scale=1.0).detach()))
                self.factors.append(nn.Parameter(torch.view_as_real(q).contiguous()))
        else:
            r = self._check_cp_rank(rank, shape)
            self.ranks = (r,)
            self.cp_weights = nn.Parameter(
                torch.stack([torch.ones(r), torch.zeros(r)], -1).to(dtype)
            )
            scale = (std**2 / r) ** (1.0 / (2 * len(shape)))
            self.factors = nn.ParameterList([randc(s, r, scale=scale) for s in shape])
        self.bias = (
            nn.Parameter(torch.zeros(self.out_channels, *([1] * d), dtype=dtype)) if bias else None
        )

    @staticmethod
    def _check_tucker_rank(rank: float | int | Sequence[int], shape: Sequence[int]) -> list[int]:
        if isinstance(rank, float):
            if not 0.0 < rank <= 1.0:
                raise ValueError(f"rank as a share of parameters must be in (0, 1], got {rank}")
            return _tucker_ranks(shape, rank)
        if isinstance(rank, int) or len(rank) != len(shape):
            raise ValueError(
                f"a Tucker rank must be a share in (0, 1] or {len(shape)} ints (one per mode of "
                f"the weight of shape {tuple(shape)}), got {rank!r}"
            )
        ranks = [check_positive_int(r, f"rank[{i}]") for i, r in enumerate(rank)]
        for i, (r, s) in enumerate(zip(ranks, shape, strict=True)):
            if r > s:
                raise ValueError(f"rank[{i}] = {r} exceeds the weight's size {s} in that mode")
        return ranks

    @staticmethod
    def _check_cp_rank(rank: float | int | Sequence[int], shape: Sequence[int]) -> int:
        if isinstance(rank, float):
            if not 0.0 < rank <= 1.0:
                raise ValueError(f"rank as a share of parameters must be in (0, 1], got {rank}")
            return max(1, int(rank * math.prod(shape) / (sum(shape) + 1)))
        if isinstance(rank, int) and not isinstance(rank, bool):
            return check_positive_int(rank, "rank")
        raise ValueError(f"a CP rank must be a share in (0, 1] or one int, got {rank!r}")

    @property
    def ndim(self) -> int:
        """The number of spatial dimensions."""
        return len(self.n_modes)

    def dense_weight(self) -> Tensor:
        """The complex weight tensor ``(in_channels, out_channels, *kept)``.

        Reconstructed from the factors if factorised; entry ``[:, :, j_1, ..., j_d]`` belongs
        to frequency ``(frequencies[0][j_1], ..., frequencies[d-1][j_d])``.

        Returns:
            The weight (differentiable with respect to the parameters).
        """
        c = torch.view_as_complex
        if self.factorization == "dense":
            return c(self.weight)
        n = len(self.weight_shape)
        letters = "abcdefghijklmnopqrstuvwxyz"
        if self.factorization == "tucker":
            core = "".join(letters[n + i] for i in range(n))
            terms = [f"{letters[i]}{letters[n + i]}" for i in range(n)]
            spec = f"{core}," + ",".join(terms) + "->" + letters[:n]
            return torch.einsum(spec, c(self.core), *(c(f) for f in self.factors))
        terms = [f"{letters[i]}z" for i in range(n)]
        spec = "z," + ",".join(terms) + "->" + letters[:n]
        return torch.einsum(spec, c(self.cp_weights), *(c(f) for f in self.factors))

    def _check_grid(self, sizes: Sequence[int]) -> None:
        """Raise if a grid dimension cannot hold the kept frequencies below its Nyquist limit."""
        for i, (freqs, n) in enumerate(zip(self.frequencies, sizes, strict=True)):
            highest = max(abs(f) for f in freqs)
            if 2 * highest >= n:
                raise ValueError(
                    f"grid size {n} along spatial dimension {i} cannot hold n_modes="
                    f"{self.n_modes[i]} (frequencies up to |k| = {highest} need at least "
                    f"{2 * highest + 1} points); use a finer grid or fewer modes"
                )

    def _keep(self, xf: Tensor, i: int) -> Tensor:
        """The kept coefficients along spatial dimension ``i`` of a spectrum, in weight order."""
        dim = 2 + i
        m = len(self.frequencies[i])
        if i == self.ndim - 1:
            return xf.narrow(dim, 0, m)
        neg = self._negatives[i]
        n = xf.shape[dim]
        return torch.cat([xf.narrow(dim, n - neg, neg), xf.narrow(dim, 0, m - neg)], dim)

    def _place(self, coef: Tensor, i: int, size: int) -> Tensor:
        """Kept coefficients along leading spatial dimension ``i`` placed into ``size`` bins."""
        dim = 2 + i
        m = len(self.frequencies[i])
        neg = self._negatives[i]
        shape = list(coef.shape)
        shape[dim] = size - m
        zeros = coef.new_zeros(shape)
        return torch.cat([coef.narrow(dim, neg, m - neg), zeros, coef.narrow(dim, 0, neg)], dim)

    @property
    def _negatives(self) -> list[int]:
        return [sum(f < 0 for f in freqs) for freqs in self.frequencies]

    def _spectral(self, x: Tensor, weight: Tensor) -> Tensor:
        """The layer without input checks: pruned transforms, one contraction, bias.

        ``rfftn`` followed by truncation equals a 1-D ``rfft`` along the last dimension, then
        the kept columns only, then a 1-D ``fft`` along each leading dimension keeping its
        frequencies before the next: the later transforms run on the kept coefficients only
        (``m / (n / 2 + 1)`` of the data). The inverse mirrors it: ``ifft`` along each leading
        dimension of the zero-filled kept block, then one ``irfft`` of ``n`` points that
        zero-pads the last dimension itself. Every 1-D transform uses ``norm="forward"``, whose
        scales multiply to that of ``rfftn(norm="forward")``.

        Returns:
            ``(batch, out_channels, *grid)`` in the dtype of ``weight.real``.
        """
        d = self.ndim
        grid = x.shape[2:]
        xf = self._keep(torch.fft.rfft(x, dim=-1, norm="forward"), d - 1)
        for i in range(d - 2, -1, -1):
            xf = self._keep(torch.fft.fft(xf, dim=2 + i, norm="forward"), i)
        letters = "defghijklm"[:d]
        y = torch.einsum(f"bi{letters},io{letters}->bo{letters}", xf, weight)
        for i in range(d - 1):
            y = torch.fft.ifft(self._place(y, i, grid[i]), dim=2 + i, norm="forward")
        out = torch.fft.irfft(y, n=grid[-1], dim=-1, norm="forward")
        if self.bias is not None:
            out = out.add_(self.bias)
        return out

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Args:
            x: ``(batch, in_channels, *grid)`` real tensor with ``ndim`` grid dimensions.

        Returns:
            ``(batch, out_channels, *grid)``, in the dtype of ``x``.

        Raises:
            TypeError: if ``x`` is not a real floating tensor.
            ValueError: for a wrong number of dimensions or channels, a grid too coarse for the
                modes, or NaN/Inf in ``x``.
        """
        check_float_tensor(x, "x", ndim=self.ndim + 2)
        if x.shape[1] != self.in_channels:
            raise ValueError(
                f"x has {x.shape[1]} channels (shape {tuple(x.shape)}), expected "
                f"in_channels={self.in_channels}"
            )
        check_finite(x, "x")
        self._check_grid(tuple(x.shape[2:]))
        weight = self.dense_weight()
        return self._spectral(x.to(weight.real.dtype), weight).to(x.dtype)

    def extra_repr(self) -> str:
        """Sizes, modes and factorisation for ``repr``."""
        rank = f", ranks={self.ranks}" if self.ranks else ""
        return (
            f"{self.in_channels}, {self.out_channels}, n_modes={self.n_modes}, "
            f"factorization={self.factorization!r}{rank}"
        )
