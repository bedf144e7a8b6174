"""Projectors: the low-rank subspace a projected optimizer runs Adam in.

A projector turns a gradient matrix ``G`` of shape ``(a, b)`` into an orthonormal basis ``Q`` of
shape ``(b, r)`` of its compressed side, so the optimizer works on ``R = G Q`` (``a x r``) and maps
updates back with ``R Q^T``. :class:`~subspaces.optim.SubspaceAdamW` hands every projector the
gradient oriented so that the compressed side is the smaller one (GaLore's ``proj_type="std"``).

Each projector describes its basis by a few tensors (its *state*), which live in the optimizer
state so that ``state_dict()`` loads with ``torch.load(weights_only=True)``:

=============  ======================================  =====================================
name           how the basis is chosen                  what the state stores
=============  ======================================  =====================================
``svd``        top-``r`` right singular vectors of G    the basis (float, or 4-bit packed)
               (exact thin SVD; GaLore's choice)
``rsvd``       randomized range finder with power       the basis (float, or 4-bit packed)
               iterations and a small exact SVD
``nystrom``    one Nystrom sketch of G^T G (one pass;   the basis (float, or 4-bit packed)
               one all-reduce under FSDP2), canonical
               signs
``dct``        the ``r`` DCT-II frequencies that carry  ``r`` int64 indices
               most of G's energy, scored with one
               FFT-based DCT of G's rows (P11)
``random``     a seeded random orthonormal basis        one int64 seed
               (GoLore / Flora style)
``coordinate`` the ``r`` coordinates with the largest   ``r`` int64 indices
               gradient norm; at full rank this is the
               identity, so the optimizer equals AdamW
=============  ======================================  =====================================

References:
    Zhao et al., "GaLore: Memory-Efficient LLM Training by Gradient Low-Rank Projection", ICML 2024.
    Modoranu et al., "SVD-Free Low-Rank Adaptive Gradient Optimization for Large Language Models"
    (P11), 2025. Halko, Martinsson, Tropp, "Finding structure with randomness", SIAM Review 2011.
    Tropp, Yurtsever, Udell, Cevher, "Fixed-rank approximation of a positive-semidefinite matrix
    from streaming data", NeurIPS 2017.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.utils.weak import WeakIdKeyDictionary

from .._checks import check_positive_int

__all__ = [
    "PROJECTORS",
    "CoordinateProjector",
    "DCTProjector",
    "NystromProjector",
    "Projector",
    "RandomProjector",
    "RandomizedSVDProjector",
    "SVDProjector",
    "canonical_signs",
    "dct_basis",
    "dct_rows",
    "get_projector",
]


def dct_rows(G: Tensor) -> Tensor:
    """Orthonormal DCT-II of every row of ``G``, computed with one FFT (Makhoul's algorithm).

    Equals ``G @ dct_basis(n)`` for ``G`` of shape ``(m, n)`` at ``O(m n log n)`` cost instead of
    the ``O(m n^2)`` matrix product.

    Args:
        G: a real ``(m, n)`` floating tensor.

    Returns:
        The ``(m, n)`` tensor of DCT coefficients, column ``j`` being frequency ``j``.

    Example:
        >>> import torch
        >>> G = torch.randn(3, 8, dtype=torch.float64)
        >>> torch.allclose(dct_rows(G), G @ dct_basis(8, dtype=torch.float64), atol=1e-12)
        True
    """
    n = G.shape[-1]
    # Reorder: even-indexed samples, then odd-indexed samples reversed.
    v = torch.cat([G[..., ::2], G[..., 1::2].flip(-1)], dim=-1)
    V = torch.fft.fft(v, dim=-1)
    k = torch.arange(n, device=G.device, dtype=G.dtype)
    angle = -math.pi * k / (2 * n)
    out = V.real * torch.cos(angle) - V.imag * torch.sin(angle)
    scale = torch.full((n,), math.sqrt(2.0 / n), device=G.device, dtype=G.dtype)
    scale[0] = math.sqrt(1.0 / n)
    return out * scale


def dct_basis(
    n: int,
    indices: Tensor | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Columns of the orthonormal ``n x n`` DCT-II matrix, built in ``O(n r)`` from a closed form.

    ``C[i, j] = s_j cos(pi (2 i + 1) j / (2 n))`` with ``s_0 = sqrt(1/n)`` and ``s_j = sqrt(2/n)``.

    Args:
        n: the signal length.
        indices: the frequencies (columns) to build; all ``n`` when ``None``.
        dtype: floating dtype of the result (the cosines are evaluated in float64).
        device: device of the result.

    Returns:
        The ``(n, r)`` matrix with orthonormal columns.

    Raises:
        ValueError: if an index is outside ``[0, n)``.

    Example:
        >>> import torch
        >>> C = dct_basis(16, dtype=torch.float64)
        >>> torch.allclose(C.T @ C, torch.eye(16, dtype=torch.float64), atol=1e-12)
        True
    """
    check_positive_int(n, "n")
    if indices is None:
        idx = torch.arange(n, dtype=torch.float64, device=device)
    else:
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= n):
            raise ValueError(f"DCT indices must lie in [0, {n}), got {indices.tolist()}")
        idx = indices.to(device=device, dtype=torch.float64)
    i = torch.arange(n, dtype=torch.float64, device=device)
    C = torch.cos(math.pi * (2 * i[:, None] + 1) * idx[None, :] / (2 * n))
    scale = torch.full_like(idx, math.sqrt(2.0 / n))
    scale[idx == 0] = math.sqrt(1.0 / n)
    return (C * scale).to(dtype)


class Projector(ABC):
    """Chooses an orthonormal basis of the compressed side of a gradient matrix.

    Subclasses implement :meth:`select` (a refresh: new state from a gradient) and
    ``_build_basis(state, b, dtype)`` (the ``(b, r)`` basis described by a state, which
    :meth:`basis` caches). :meth:`project` and :meth:`project_back` multiply by the basis;
    subclasses may override them with something cheaper. A projector object holds
    configuration only; everything that must survive a checkpoint is in the state dictionary
    it returns.

    Example:
        A minimal projector that keeps the first ``r`` columns:

        >>> import torch
        >>> class FirstColumns(Projector):
        ...     name = "first"
        ...     def select(self, G, rank, *, generator=None):
        ...         return {"rank": torch.tensor(rank)}, None
        ...     def _build_basis(self, state, b, dtype):
        ...         return torch.eye(b, dtype=dtype)[:, : int(state["rank"])]
        >>> p = FirstColumns()
        >>> G = torch.arange(12.0).reshape(3, 4)
        >>> state, _ = p.select(G, 2)
        >>> R = p.project(G, state)  # coordinates (3, 2)
        >>> R.tolist()
        [[0.0, 1.0], [4.0, 5.0], [8.0, 9.0]]
        >>> p.project_back(R, state, 4).tolist()
        [[0.0, 1.0, 0.0, 0.0], [4.0, 5.0, 0.0, 0.0], [8.0, 9.0, 0.0, 0.0]]
    """

    name: ClassVar[str]
    #: whether the state stores the basis itself (so 4-bit storage applies)
    STORES_BASIS: ClassVar[bool] = False
    #: whether a rebuilt basis is cached at all (``False`` when the state *is* the basis, so
    #: rebuilding is free and a cache would only pin old bases in memory)
    CACHE_BASIS: ClassVar[bool] = True
    #: whether every layer's rebuilt basis stays cached between steps (``False``: only the last
    #: one is kept, so resident memory stays at what the optimizer state stores)
    CACHE_ALL: ClassVar[bool] = True

    def __init__(self) -> None:
        self._cache = WeakIdKeyDictionary()

    def __getstate__(self) -> dict[str, Any]:
        # the cache (weak references) is rebuilt on demand; copies and pickles start empty
        return {k: v for k, v in self.__dict__.items() if k != "_cache"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._cache = WeakIdKeyDictionary()

    @abstractmethod
    def select(
        self, G: Tensor, rank: int, *, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Choose the basis for gradient ``G`` (``(a, b)``, compressing ``b``).

        Args:
            G: the gradient matrix.
            rank: the number of basis vectors ``r`` (``1 <= r <= b``).
            generator: randomness for randomized projectors.

        Returns:
            The state tensors describing the basis, and ``G Q`` when it came for free during the
            selection (else ``None``).
        """

    @abstractmethod
    def _build_basis(self, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
        """The ``(b, r)`` orthonormal basis described by ``state``."""

    def _key(self, state: dict[str, Tensor]) -> Tensor:
        return next(iter(state.values()))

    def basis(self, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
        """The ``(b, r)`` orthonormal basis described by ``state``.

        Projectors whose state is the basis (``svd``, ``rsvd``) return it directly; the others
        cache the rebuilt basis per state tensor (``CACHE_ALL``) or only the last one.

        Args:
            state: the projector state (as returned by :meth:`select`).
            b: the size of the compressed side.
            dtype: the dtype of the basis.

        Returns:
            The basis.
        """
        if not self.CACHE_BASIS:
            return self._build_basis(state, b, dtype)
        key = self._key(state)
        Q = self._cache.get(key)
        if Q is None or Q.dtype != dtype or Q.shape[0] != b:
            Q = self._build_basis(state, b, dtype)
            if not self.CACHE_ALL:
                self._cache.clear()
            if Q is not key:  # a value holding its own key would never leave the weak cache
                self._cache[key] = Q
        return Q

    def project(self, G: Tensor, state: dict[str, Tensor]) -> Tensor:
        """``G Q``: coordinates of ``G``'s rows in the subspace, shape ``(a, r)``.

        Args:
            G: the ``(a, b)`` gradient.
            state: the projector state.

        Returns:
            The projected gradient.
        """
        return G @ self.basis(state, G.shape[1], G.dtype)

    def project_back(self, R: Tensor, state: dict[str, Tensor], b: int) -> Tensor:
        """``R Q^T``: the ``(a, b)`` matrix whose rows have coordinates ``R``.

        Args:
            R: the ``(a, r)`` coordinates.
            state: the projector state.
            b: the size of the compressed side.

        Returns:
            The full-size update.
        """
        return R @ self.basis(state, b, R.dtype).T


class SVDProjector(Projector):
    """Top-``r`` right singular vectors from an exact thin SVD (GaLore's projector).

    Example:
        >>> import torch
        >>> G = torch.randn(40, 20, dtype=torch.float64)
        >>> p = SVDProjector()
        >>> state, _ = p.select(G, 5)
        >>> Q = p.basis(state, 20, torch.float64)
        >>> torch.allclose(Q.T @ Q, torch.eye(5, dtype=torch.float64))
        True
    """

    name = "svd"
    STORES_BASIS = True
    CACHE_BASIS = False

    def select(
        self, G: Tensor, rank: int, *, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Exact thin SVD of ``G`` (in at least float32); see :meth:`Projector.select`."""
        work = G if G.dtype in (torch.float32, torch.float64) else G.float()
        _, _, Vh = torch.linalg.svd(work, full_matrices=False)
        return {"basis": Vh[:rank].T.contiguous().to(G.dtype)}, None

    def _build_basis(self, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
        return state["basis"].to(dtype)


class RandomizedSVDProjector(Projector):
    """Top-``r`` right singular subspace from a randomized range finder (GaLore 2 style).

    ``Q0 = orth((G^T G)^q G^T Omega)`` with ``r + oversample`` columns, then the exact SVD of the
    small ``G Q0`` picks the best ``r`` directions inside it (Halko et al. 2011, Alg. 4.4 + 5.1).
    Cost: ``2 (1 + q)`` products with ``G`` against ``r + p`` columns instead of a full SVD.

    Args:
        oversample: extra columns ``p``.
        power_iters: power iterations ``q``.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> U, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64, generator=g))
        >>> V, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=g))
        >>> s = torch.cat([torch.full((4,), 10.0), torch.full((26,), 0.01)]).double()
        >>> G = U[:, :30] @ torch.diag(s) @ V.T
        >>> p = RandomizedSVDProjector()
        >>> state, _ = p.select(G, 4, generator=g)
        >>> Q = p.basis(state, 30, torch.float64)
        >>> bool(torch.linalg.matrix_norm(Q.T @ V[:, :4]) ** 2 > 4 - 1e-6)
        True
    """

    name = "rsvd"
    STORES_BASIS = True
    CACHE_BASIS = False

    def __init__(self, oversample: int = 8, power_iters: int = 1) -> None:
        super().__init__()
        self.oversample = check_positive_int(oversample, "oversample", minimum=0)
        self.power_iters = check_positive_int(power_iters, "power_iters", minimum=0)

    def select(
        self, G: Tensor, rank: int, *, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Randomized range finder on ``G^T`` then a small SVD; see :meth:`Projector.select`."""
        work = G if G.dtype in (torch.float32, torch.float64) else G.float()
        a, b = work.shape
        width = min(rank + self.oversample, b)
        # The optimizer has already checked G for NaN/Inf, so no checks in this loop (they
        # would cost as much as a matrix product on CPU).
        omega = torch.randn(a, width, generator=generator, dtype=work.dtype, device=work.device)
        Q0 = torch.linalg.qr(work.T @ omega).Q  # (b, l)
        for _ in range(self.power_iters):
            Q0 = torch.linalg.qr(work.T @ (work @ Q0)).Q
        B = work @ Q0  # (a, l)
        _, _, Vh = torch.linalg.svd(B, full_matrices=False)
        Q = (Q0 @ Vh[:rank].T).contiguous()
        return {"basis": Q.to(G.dtype)}, None

    def _build_basis(self, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
        return state["basis"].to(dtype)


def canonical_signs(Q: Tensor) -> Tensor:
    """Flip each column of ``Q`` so that its entry of largest magnitude is positive.

    A basis computed from sums that differ only in rounding (one process, or row shards summed
    over ranks) then has the same signs everywhere, which matters when moments are carried over
    a refresh unrotated (``moment_transfer="none"``).

    Args:
        Q: a ``(b, r)`` matrix.

    Returns:
        ``Q`` with some columns negated.

    Example:
        >>> canonical_signs(torch.tensor([[1.0, -3.0], [-2.0, 1.0]])).tolist()
        [[-1.0, 3.0], [2.0, -1.0]]
    """
    idx = Q.abs().argmax(0)
    signs = torch.sign(Q[idx, torch.arange(Q.shape[1], device=Q.device)])
    signs[signs == 0] = 1
    return Q * signs


class NystromProjector(Projector):
    """Top-``r`` right singular subspace from one Nystrom sketch of ``G^T G`` (single pass).

    With an orthonormal test matrix ``Omega`` (``b x l``, ``l = r + oversample``, seeded) on the
    compressed side, one pass over ``G`` gives ``Y = G^T (G Omega)``; the Nystrom approximation
    ``G^T G ~ Y (Omega^T Y)^+ Y^T`` is factored stably (a shift ``nu`` of the order of the
    rounding of ``Y``, a Cholesky factor ``C`` of ``Omega^T (Y + nu Omega)``, then the SVD of
    ``(Y + nu Omega) C^{-T}``), and its top ``r`` eigenvectors, with canonical signs
    (:func:`canonical_signs`), are the basis. Its range is that of ``G^T G Omega``, so it is as
    accurate as a randomized range finder with one power iteration.

    What it is for: ``Y`` is a sum over the rows of ``G``, so when the rows are sharded over
    ranks (FSDP2) a refresh costs ONE all-reduce of the ``b x l`` block, and the canonical signs
    make the sharded basis the one-process basis up to rounding. In one process it costs two
    products with ``G`` against ``l`` columns plus small ``l x l`` and ``b x l`` work.

    Args:
        oversample: extra columns ``p`` (``SubspaceAdamW`` passes its ``rsvd_oversample``).

    Reference:
        Tropp, Yurtsever, Udell, Cevher, "Fixed-rank approximation of a positive-semidefinite
        matrix from streaming data", NeurIPS 2017, arXiv:1706.05736 (Algorithm 3).

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> U, _ = torch.linalg.qr(torch.randn(60, 60, dtype=torch.float64, generator=g))
        >>> V, _ = torch.linalg.qr(torch.randn(30, 30, dtype=torch.float64, generator=g))
        >>> s = torch.cat([torch.full((4,), 10.0), torch.full((26,), 0.01)]).double()
        >>> G = U[:, :30] @ torch.diag(s) @ V.T
        >>> p = NystromProjector()
        >>> state, _ = p.select(G, 4, generator=g)
        >>> Q = p.basis(state, 30, torch.float64)
        >>> bool(torch.linalg.matrix_norm(Q.T @ V[:, :4]) ** 2 > 4 - 1e-6)
        True
    """

    name = "nystrom"
    STORES_BASIS = True
    CACHE_BASIS = False

    def __init__(self, oversample: int = 8) -> None:
        super().__init__()
        self.oversample = check_positive_int(oversample, "oversample", minimum=0)

    def test_matrix(
        self, b: int, rank: int, dtype: torch.dtype, generator: torch.Generator | None
    ) -> Tensor:
        """The orthonormal ``(b, min(rank + oversample, b))`` test matrix, drawn on the CPU.

        Args:
            b: the size of the compressed side.
            rank: the basis size ``r``.
            dtype: the dtype of the returned matrix.
            generator: the seeded generator (the same on every rank).

        Returns:
            ``Omega``.
        """
        width = min(rank + self.oversample, b)
        gaussian = torch.randn(b, width, generator=generator, dtype=torch.float64)
        return torch.linalg.qr(gaussian).Q.to(dtype)

    @staticmethod
    def basis_from_sketch(Y: Tensor, omega: Tensor, rank: int) -> Tensor:
        """The top-``rank`` eigenvectors of the Nystrom approximation from ``Y = A Omega``.

        Args:
            Y: ``A Omega`` for the PSD ``A = G^T G`` (``b x l``).
            omega: the orthonormal test matrix (``b x l``).
            rank: ``r <= l``.

        Returns:
            The ``(b, r)`` orthonormal basis in float64, with canonical signs.

        Raises:
            ValueError: if the sketch is not finite or the shifted core stays indefinite.
        """
        Y64, O64 = Y.to(torch.float64), omega.to(device=Y.device, dtype=torch.float64)
        if not bool(torch.isfinite(Y64).all()):
            raise ValueError("the Nystrom sketch Y = G^T G Omega is not finite")
        scale = float(torch.linalg.matrix_norm(Y64, 2)) if Y64.numel() else 0.0
        nu = max(torch.finfo(Y.dtype).eps * math.sqrt(Y64.shape[0]) * scale, 1e-300)
        for _ in range(8):
            Ynu = Y64 + nu * O64
            core = O64.T @ Ynu
            C, info = torch.linalg.cholesky_ex((core + core.T) / 2)
            if int(info) == 0:
                break
            nu *= 10.0  # rounding made the core indefinite: a larger shift
        else:
            raise ValueError(f"the Nystrom core stayed indefinite up to the shift {nu:.3g}")
        E = torch.linalg.solve_triangular(C, Ynu.T, upper=False).T  # Ynu C^{-T}
        U, _, _ = torch.linalg.svd(E, full_matrices=False)
        return canonical_signs(U[:, :rank])

    def select(
        self, G: Tensor, rank: int, *, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        """One sketch ``G^T (G Omega)``, then the Nystrom basis; see :meth:`Projector.select`."""
        work = G if G.dtype in (torch.float32, torch.float64) else G.float()
        omega = self.test_matrix(work.shape[1], rank, work.dtype, generator).to(work.device)
        Q = self.basis_from_sketch(work.T @ (work @ omega), omega, rank)
        return {"basis": Q.to(G.dtype).contiguous()}, None

    def _build_basis(self, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
        return state["basis"].to(dtype)


class DCTProjector(Projector):
    """The ``r`` DCT-II frequencies that carry most of the gradient's energy (P11).

    A refresh computes ``S = G C`` with one FFT per row (:func:`dct_rows`), scores each frequency
    by the norm of its column of ``S`` and keeps the top ``r``. Only the indices are stored; the
    basis is rebuilt from a closed form. With ``norm=2`` (default) the choice maximizes the
    captured energy ``||G Q||_F^2`` among all ``r``-subsets of DCT columns; ``norm=1`` is the
    paper's l1 score.

    The basis is rebuilt from the indices in ``O(b r)`` when needed and only the last one is
    kept, so the resident memory of this projector is its ``r`` indices per layer.

    Args:
        norm: 1 or 2, the column norm used to score frequencies.

    Example:
        >>> import torch
        >>> G = torch.randn(50, 32, dtype=torch.float64)
        >>> p = DCTProjector()
        >>> state, GQ = p.select(G, 8)
        >>> Q = p.basis(state, 32, torch.float64)
        >>> torch.allclose(GQ, G @ Q, atol=1e-12), state["indices"].dtype
        (True, torch.int64)
    """

    name = "dct"
    CACHE_ALL = False

    def __init__(self, norm: int = 2) -> None:
        super().__init__()
        if norm not in (1, 2):
            raise ValueError(f"norm must be 1 or 2, got {norm!r}")
        self.norm = norm

    def select(
        self, G: Tensor, rank: int, *, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Score DCT frequencies of ``G``'s rows and keep the top ``rank``."""
        work = G if G.dtype in (torch.float32, torch.float64) else G.float()
        S = dct_rows(work)
        score = S.abs().sum(0) if self.norm == 1 else S.square().sum(0)
        idx = torch.topk(score, rank, sorted=False).indices.sort().values
        return {"indices": idx.to(torch.int64)}, S[:, idx].to(G.dtype)

    def _build_basis(self, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
        return dct_basis(b, state["indices"], dtype=dtype, device=state["indices"].device)


class RandomProjector(Projector):
    """A seeded random orthonormal basis (GoLore / Flora style); the state is one seed.

    Example:
        >>> import torch
        >>> p = RandomProjector()
        >>> state, _ = p.select(torch.randn(10, 6), 3, generator=torch.Generator().manual_seed(1))
        >>> Q = p.basis(state, 6, torch.float64)
        >>> torch.allclose(Q.T @ Q, torch.eye(3, dtype=torch.float64)), state["seed"].dtype
        (True, torch.int64)
    """

    name = "random"

    def select(
        self, G: Tensor, rank: int, *, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Draw a seed; the basis is the Q factor of a Gaussian matrix from that seed."""
        seed = torch.randint(0, 2**62, (), generator=generator, dtype=torch.int64)
        return {"seed": seed, "rank": torch.tensor(rank, dtype=torch.int64)}, None

    def _build_basis(self, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
        g = torch.Generator(device="cpu").manual_seed(int(state["seed"]))
        rank = int(state["rank"])
        X = torch.randn(b, rank, generator=g, dtype=torch.float64)
        Q, Rf = torch.linalg.qr(X)
        Q = Q * torch.sign(torch.diagonal(Rf))
        return Q.to(device=state["seed"].device, dtype=dtype)


class CoordinateProjector(Projector):
    """The ``r`` coordinates with the largest gradient column norms (a sparse, exact basis).

    At full rank the basis is the identity, so :class:`~subspaces.optim.SubspaceAdamW` with this
    projector equals ``torch.optim.AdamW``; the conformance suite uses that as a reference.

    Example:
        >>> import torch
        >>> G = torch.tensor([[0.0, 3.0, 1.0], [0.0, 4.0, 1.0]])
        >>> state, GQ = CoordinateProjector().select(G, 1)
        >>> state["indices"].tolist(), GQ.tolist()
        ([1], [[3.0], [4.0]])
    """

    name = "coordinate"

    def select(
        self, G: Tensor, rank: int, *, generator: torch.Generator | None = None
    ) -> tuple[dict[str, Tensor], Tensor | None]:
        """Keep the ``rank`` columns of largest norm."""
        score = G.float().square().sum(0)
        idx = torch.topk(score, rank, sorted=False).indices.sort().values.to(torch.int64)
        return {"indices": idx}, G[:, idx]

    def _build_basis(self, state: dict[str, Tensor], b: int, dtype: torch.dtype) -> Tensor:
        idx = state["indices"]
        Q = torch.zeros(b, idx.numel(), dtype=dtype, device=idx.device)
        Q[idx, torch.arange(idx.numel(), device=idx.device)] = 1.0
        return Q

    def project(self, G: Tensor, state: dict[str, Tensor]) -> Tensor:
        """Gather the selected columns (no matrix product)."""
        return G[:, state["indices"]]

    def project_back(self, R: Tensor, state: dict[str, Tensor], b: int) -> Tensor:
        """Scatter the coordinates back into a zero matrix."""
        out = R.new_zeros(R.shape[0], b)
        out[:, state["indices"]] = R
        return out


PROJECTORS: dict[str, type[Projector]] = {
    cls.name: cls
    for cls in (
        SVDProjector,
        RandomizedSVDProjector,
        NystromProjector,
        DCTProjector,
        RandomProjector,
        CoordinateProjector,
    )
}


def get_projector(spec: str | Projector) -> Projector:
    """Return a projector instance for a name in :data:`PROJECTORS` or pass one through.

    Args:
        spec: a projector name (``"svd"``, ``"rsvd"``, ``"dct"``, ``"random"``,
            ``"coordinate"``) or a :class:`Projector` instance.

    Returns:
        The projector.

    Raises:
        ValueError: for an unknown name.
        TypeError: for anything else.

    Example:
        >>> get_projector("dct").name
        'dct'
    """
    if isinstance(spec, Projector):
        return spec
    if isinstance(spec, str):
        if spec not in PROJECTORS:
            raise ValueError(f"unknown projector {spec!r}; expected one of {sorted(PROJECTORS)}")
        return PROJECTORS[spec]()
    raise TypeError(f"projector must be a name or a Projector, got {type(spec).__name__}")
