r"""Random projections ``P: R^d -> R^D`` for training in a random subspace ``theta0 + P z``.

Li, Farkhoor, Liu and Yosinski (ICLR 2018, "Measuring the intrinsic dimension of objective
landscapes", arXiv:1804.08838) train a network only in ``theta = theta0 + P z`` with a fixed random
``P`` whose columns have unit norm. They use three kinds of ``P``, all here:

* :class:`DenseProjection`: i.i.d. Gaussian columns normalized to unit norm, ``O(dD)`` memory.
* :class:`SparseProjection`: very sparse random projections (Li, Hastie and Church, KDD 2006):
  entries ``+-1`` with probability ``1/(2s)`` each, ``s = sqrt(D)``, as a torch sparse tensor,
  columns normalized exactly.
* :class:`FastfoodProjection`: the Fastfood transform (Le, Sarlós and Smola, ICML 2013)
  ``V = S H G Pi H B`` in stacked ``n x n`` blocks (``n`` the power of two ``>= d``), ``O(D)``
  memory and ``O(D log d)`` time through a fast Walsh-Hadamard transform.

Every projection is determined by ``(d, D, seed)``: the state to export is the seed. A projection
maps ``z`` of shape ``(d,)`` to ``(D,)``, or a batch ``(d, b)`` to ``(D, b)``, and is
differentiable in ``z``.

Example:
    >>> P = DenseProjection(3, 10, seed=0)
    >>> P(torch.ones(3)).shape, P(torch.ones(3, 2)).shape
    (torch.Size([10]), torch.Size([10, 2]))
    >>> torch.allclose(P.to_dense().norm(dim=0), torch.ones(3))
    True
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_float_tensor, check_positive_int, check_tensor

__all__ = [
    "DenseProjection",
    "FastfoodProjection",
    "IdentityProjection",
    "Projection",
    "SparseProjection",
    "fwht",
    "make_projection",
]

PROJECTION_KINDS = ("dense", "sparse", "fastfood")


def fwht(x: Tensor) -> Tensor:
    """Unnormalized fast Walsh-Hadamard transform along the last dimension.

    Computes ``x @ H`` with the Sylvester-ordered Hadamard matrix ``H`` (entries ``+-1``,
    symmetric, ``H H = n I``) in ``O(n log n)`` operations; differentiable.

    Args:
        x: tensor whose last dimension ``n`` is a power of two.

    Returns:
        The transform, same shape as ``x``.

    Raises:
        ValueError: if ``x`` is 0-d or its last dimension is not a power of two.
        TypeError: if ``x`` is not a tensor.

    Example:
        >>> fwht(torch.tensor([1.0, 0.0, 0.0, 0.0]))
        tensor([1., 1., 1., 1.])
        >>> fwht(fwht(torch.tensor([1.0, 2.0]))) / 2
        tensor([1., 2.])
    """
    x = check_tensor(x, "x")
    if x.ndim == 0:
        raise ValueError(
            "x must have at least one dimension (the one transformed), got a 0-d tensor"
        )
    n = x.shape[-1]
    if n < 1 or n & (n - 1):
        raise ValueError(f"the last dimension of x must be a power of two, got {n}")
    batch = x.shape[:-1]
    h = 1
    y = x
    while h < n:
        y = y.reshape(*batch, n // (2 * h), 2, h)
        a, b = y[..., 0, :], y[..., 1, :]
        y = torch.stack((a + b, a - b), dim=-2)
        h *= 2
    return y.reshape(*batch, n)


class Projection:
    """Base class: a fixed linear map ``R^d -> R^D`` set by ``(d, D, seed)``.

    Args:
        d: subspace dimension (``1 <= d <= D``).
        D: dimension of the parameter space.
        seed: seeds the random matrix (the only state needed to rebuild it).
        dtype: floating dtype of the matrix (inputs ``z`` must have it too).
        device: device of the matrix.

    Raises:
        TypeError: for non-integer sizes or seed, or a dtype that is not floating.
        ValueError: if ``d < 1``, ``D < 1`` or ``d > D``.

    Example:
        A subclass implements ``_matmat`` on ``(d, b)`` blocks; the base class checks inputs
        and provides ``__call__``, :meth:`to_dense` and ``repr``:

        >>> class FirstCoordinates(Projection):
        ...     kind = "first"
        ...     def _matmat(self, z):
        ...         return torch.cat([z, z.new_zeros(self.D - self.d, z.shape[1])])
        >>> P = FirstCoordinates(2, 4)
        >>> P(torch.tensor([1.0, 2.0])), P(torch.ones(2, 3)).shape
        (tensor([1., 2., 0., 0.]), torch.Size([4, 3]))
        >>> P.to_dense().T.tolist(), P
        ([[1.0, 0.0, 0.0, 0.0], [0.0, 1.0, 0.0, 0.0]], FirstCoordinates(d=2, D=4, seed=0))
    """

    kind = "base"

    def __init__(
        self,
        d: int,
        D: int,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        self.d = check_positive_int(d, "d")
        self.D = check_positive_int(D, "D")
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__}")
        if d > D:
            raise ValueError(f"the subspace dimension d={d} exceeds the parameter count D={D}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a real floating torch.dtype, got {dtype!r}")
        self.seed = seed
        self.dtype = dtype
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def _generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed)

    def _check_input(self, z: Tensor) -> tuple[Tensor, bool]:
        check_float_tensor(z, "z", ndim=(1, 2))
        if z.shape[0] != self.d:
            raise ValueError(f"z must have leading dimension d={self.d}, got {tuple(z.shape)}")
        if z.dtype != self.dtype:
            raise TypeError(
                f"z has dtype {z.dtype} but the projection has dtype {self.dtype}; cast z or "
                "build the projection with dtype=z.dtype"
            )
        return (z if z.ndim == 2 else z[:, None]), z.ndim == 1

    def __call__(self, z: Tensor) -> Tensor:
        """Apply ``P``: ``(d,) -> (D,)`` or ``(d, b) -> (D, b)``.

        Returns:
            ``P z``, in the projection's dtype.

        Raises:
            ValueError: if ``z`` is not 1-D or 2-D with leading dimension ``d``.
            TypeError: if ``z`` is not a floating tensor of the projection's dtype.
        """
        zz, vector = self._check_input(z)
        out = self._matmat(zz)
        return out[:, 0] if vector else out

    def _matmat(self, z: Tensor) -> Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def memory_bytes(self) -> int:
        """Bytes of the tensors stored to apply ``P``."""
        return 0

    def to_dense(self) -> Tensor:
        """The ``(D, d)`` matrix (for tests and small sizes: ``d`` applications)."""
        return self(torch.eye(self.d, dtype=self.dtype, device=self.device))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(d={self.d}, D={self.D}, seed={self.seed})"


class IdentityProjection(Projection):
    """``P = I`` (``d = D``): training in the subspace is ordinary training of every parameter.

    Example:
        >>> IdentityProjection(4)(torch.arange(4.0))
        tensor([0., 1., 2., 3.])
    """

    kind = "identity"

    def __init__(
        self,
        D: int,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(D, D, seed, dtype=dtype, device=device)

    def _matmat(self, z: Tensor) -> Tensor:
        return z


class DenseProjection(Projection):
    """Gaussian ``D x d`` matrix with each column normalized to exactly unit norm.

    Memory ``D d`` entries.

    Example:
        >>> P = DenseProjection(2, 1000, seed=1)
        >>> P.memory_bytes
        8000
    """

    kind = "dense"

    def __init__(
        self,
        d: int,
        D: int,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(d, D, seed, dtype=dtype, device=device)
        M = torch.randn(D, d, generator=self._generator(), dtype=torch.float64)
        M = M / M.norm(dim=0, keepdim=True)
        self.matrix = M.to(dtype=dtype, device=self.device)

    def _matmat(self, z: Tensor) -> Tensor:
        return self.matrix @ z

    @property
    def memory_bytes(self) -> int:
        """Bytes of the dense matrix."""
        return self.matrix.numel() * self.matrix.element_size()

    def to_dense(self) -> Tensor:
        """The stored ``(D, d)`` matrix."""
        return self.matrix


class SparseProjection(Projection):
    """Very sparse random projection (Li, Hastie and Church 2006), columns of exactly unit norm.

    Each entry is nonzero with probability ``1/s``, ``s = sqrt(D)`` (so about ``sqrt(D)``
    nonzeros a column), with a random sign; every column gets at least one nonzero, and a column
    with ``k`` nonzeros has them equal to ``+-1/sqrt(k)``, so its norm is exactly 1. Stored as a
    coalesced COO sparse tensor; memory is ``nnz`` times (two int64 indices + one value).

    Args:
        d: subspace dimension.
        D: parameter count.
        seed: seeds the pattern and signs.
        density: probability of a nonzero (default ``1/sqrt(D)``).
        dtype: value dtype.
        device: device.

    Example:
        >>> P = SparseProjection(5, 10_000, seed=0)
        >>> 300 < P.nnz < 700
        True
        >>> torch.allclose(P.to_dense().norm(dim=0), torch.ones(5))
        True
    """

    kind = "sparse"

    def __init__(
        self,
        d: int,
        D: int,
        seed: int = 0,
        *,
        density: float | None = None,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(d, D, seed, dtype=dtype, device=device)
        if density is not None and (
            isinstance(density, bool) or not isinstance(density, (int, float))
        ):
            raise TypeError(f"density must be a number, got {type(density).__name__} ({density!r})")
        p = 1.0 / math.sqrt(D) if density is None else float(density)
        if not 0.0 < p <= 1.0:
            raise ValueError(f"density must be in (0, 1], got {density}")
        gen = self._generator()
        counts = torch.binomial(
            torch.full((d,), float(D), dtype=torch.float64),
            torch.full((d,), p, dtype=torch.float64),
            generator=gen,
        ).long()
        counts = counts.clamp(min=1)
        cols = torch.repeat_interleave(torch.arange(d), counts)
        rows = torch.randint(0, D, (int(counts.sum()),), generator=gen)
        keys = torch.unique(cols * D + rows)  # drops the rare repeated positions
        cols, rows = keys // D, keys % D
        per_col = torch.bincount(cols, minlength=d).to(torch.float64)
        signs = torch.randint(0, 2, (keys.numel(),), generator=gen).to(torch.float64) * 2 - 1
        values = signs / per_col[cols].sqrt()
        self.matrix = (
            torch.sparse_coo_tensor(
                torch.stack((rows, cols)), values, (D, d), check_invariants=True
            )
            .coalesce()
            .to(dtype=dtype, device=self.device)
        )

    @property
    def nnz(self) -> int:
        """Number of stored nonzeros."""
        return int(self.matrix._nnz())

    def _matmat(self, z: Tensor) -> Tensor:
        return torch.sparse.mm(self.matrix, z)

    @property
    def memory_bytes(self) -> int:
        """Bytes of the indices and values."""
        m = self.matrix
        return m._indices().numel() * 8 + m._values().numel() * m._values().element_size()


class FastfoodProjection(Projection):
    r"""Fastfood projection (Le, Sarlós, Smola 2013): stacked blocks ``V_i = s_i H G_i Pi_i H B_i``.

    With ``n`` the smallest power of two ``>= d``, ``z`` is zero-padded to ``n`` and
    ``ceil(D / n)`` blocks of size ``n x n`` are stacked and truncated to ``D`` rows. ``B_i`` is a
    diagonal of random signs, ``H`` the (unnormalized) Walsh-Hadamard matrix, ``Pi_i`` a random
    permutation and ``G_i`` a Gaussian diagonal. Every column of ``H G_i Pi_i H B_i`` has norm
    exactly ``sqrt(n) ||g_i||``, so the scalar ``S_i = s_i = 1 / (||g_i|| sqrt(D))`` (used in place
    of Le et al.'s chi-distributed row scaling, which only matters for kernel approximation)
    makes each full block contribute exactly ``n / D`` to every column's squared norm.

    **Normalization:** when ``n`` divides ``D`` every column has norm exactly 1; otherwise the
    truncated last block makes the squared column norms 1 in expectation (their spread is at most
    the share ``(D mod n) / D`` of the partial block). Memory is ``O(D)`` (three length
    ``ceil(D/n) n < 2D`` vectors) and a product costs ``O(D log n)``.

    Example:
        >>> P = FastfoodProjection(3, 16, seed=0)   # n = 4 divides D = 16: exact unit norms
        >>> torch.allclose(P.to_dense().norm(dim=0), torch.ones(3))
        True
    """

    kind = "fastfood"

    def __init__(
        self,
        d: int,
        D: int,
        seed: int = 0,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(d, D, seed, dtype=dtype, device=device)
        n = 1 << max(0, (d - 1).bit_length())
        blocks = -(-D // n)
        gen = self._generator()
        self.n, self.num_blocks = n, blocks
        B = torch.randint(0, 2, (blocks, n), generator=gen).to(torch.float64) * 2 - 1
        perm = torch.stack([torch.randperm(n, generator=gen) for _ in range(blocks)])
        G = torch.randn(blocks, n, generator=gen, dtype=torch.float64)
        scale = 1.0 / (G.norm(dim=1) * math.sqrt(D))
        self.B = B.to(dtype=dtype, device=self.device)
        self.perm = perm.to(self.device)
        self.G = G.to(dtype=dtype, device=self.device)
        self.scale = scale.to(dtype=dtype, device=self.device)

    def _matmat(self, z: Tensor) -> Tensor:
        b = z.shape[1]
        x = z.T  # (b, d)
        if self.n > self.d:
            x = torch.nn.functional.pad(x, (0, self.n - self.d))
        x = x[:, None, :] * self.B  # (b, blocks, n)
        x = fwht(x)
        x = torch.gather(x, -1, self.perm.expand(b, -1, -1))
        x = fwht(x * self.G) * self.scale[:, None]
        return x.reshape(b, self.num_blocks * self.n)[:, : self.D].T

    def dense_factors(self) -> Tensor:
        """The ``(D, d)`` matrix built from explicit ``S H G Pi H B`` factors (for tests)."""
        n = self.n
        H = fwht(torch.eye(n, dtype=torch.float64))
        rows = []
        for i in range(self.num_blocks):
            Pi = torch.eye(n, dtype=torch.float64)[self.perm[i].cpu()]
            V = (
                self.scale[i].double().cpu()
                * H
                @ torch.diag(self.G[i].double().cpu())
                @ Pi
                @ H
                @ torch.diag(self.B[i].double().cpu())
            )
            rows.append(V)
        return torch.cat(rows)[: self.D, : self.d]

    @property
    def memory_bytes(self) -> int:
        """Bytes of the sign, permutation, Gaussian and scale vectors (``O(D)``)."""
        return sum(t.numel() * t.element_size() for t in (self.B, self.perm, self.G, self.scale))


def make_projection(
    kind: str,
    d: int,
    D: int,
    seed: int = 0,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Projection:
    """Build a projection by name.

    Args:
        kind: ``"dense"``, ``"sparse"`` or ``"fastfood"``.
        d: subspace dimension.
        D: parameter count.
        seed: seed of the random matrix.
        dtype: floating dtype.
        device: device.

    Returns:
        The projection.

    Raises:
        ValueError: for an unknown kind or bad sizes.

    Example:
        >>> make_projection("fastfood", 3, 20, seed=1)
        FastfoodProjection(d=3, D=20, seed=1)
    """
    cls = {"dense": DenseProjection, "sparse": SparseProjection, "fastfood": FastfoodProjection}
    if kind not in cls:
        raise ValueError(f"projection must be one of {PROJECTION_KINDS}, got {kind!r}")
    return cls[kind](d, D, seed, dtype=dtype, device=device)
