"""Low-rank matrix completion: alternating minimization with batched (or approximate) solves.

:func:`altmin_complete` alternates between the factors of ``X = U V^T``: with ``V`` fixed, each
row ``u_i`` solves the rank-``r`` least-squares problem over the revealed entries of row ``i``,

    ``u_i = argmin_u sum_{j in Omega_i} (u^T v_j - M_ij)^2 = G_i^{-1} b_i``,
    ``G_i = sum_{j in Omega_i} v_j v_j^T``,  ``b_i = sum_{j in Omega_i} M_ij v_j``,

then the same for the columns (Jain, Netrapalli, Sanghavi 2013). All ``m`` (or ``n``) problems
are solved at once: ``b = P_Omega(M) V`` is one sparse (CSR) product, and the Gram matrices are one
sparse product ``G = 1_Omega (V * V)`` of the revealed-entry pattern with the row-wise Kronecker
squares ``vec(v_j v_j^T)`` of ``V`` (an ``(n, r^2)`` matrix), so ``O(|Omega| r^2)`` work with no
``(|Omega|, r, r)`` intermediate and no Python loop over rows; the ``(m, r, r)`` systems are then
solved by one batched Cholesky factorization.

``solver="sketched"`` solves each least-squares problem only approximately, as Gu, Song, Yin and
Zhang (2023) allow: a few steps of preconditioned conjugate gradients, warm-started at the current
factor, with products ``G_i x_i`` applied matrix-free (``O(|Omega| r)`` each) and the
preconditioner ``(|Omega_i| / n) V^T V`` (the Gram matrix a uniform row-sample of ``V`` has in
expectation, one ``r x r`` inverse per half-step shared by all rows), so no ``r x r`` Gram matrix
is ever formed per row: an iteration costs ``O(|Omega| r + (m + n) r^2)`` instead of
``O(|Omega| r^2 + (m + n) r^3)``. In float64 the residual at the warm start is computed in
float64 and the CG correction in float32 (mixed-precision iterative refinement: the correction's
rounding error shrinks with the residual, so the attainable accuracy stays float64's). Because
the solves are warm-started, the exact fixed point is also a fixed point of the approximate
iteration and the error still converges to zero. One thread, ``1000 x 1000`` with
``|Omega| = 500000`` (P19's full run, CPU time): an iteration of the approximate solver is 2.7x
cheaper than an exact one at ``r = 32``, 17x at ``r = 64`` and 60x at ``r = 128``; at ``r = 16``
they cost about the same, and below the exact solver is cheaper.

:func:`soft_impute` is the Soft-Impute baseline (Mazumder, Hastie, Tibshirani 2010).
"""

from __future__ import annotations

import functools
import math
import warnings
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_float, check_positive_int
from ..linalg._precision import pow2_exponent
from ..linalg.randomized import randomized_svd
from ..linops import MatmatOperator
from .problems import Observations

__all__ = ["CompletionResult", "altmin_complete", "soft_impute"]

Init = Literal["spectral", "random"]
Solver = Literal["exact", "sketched"]


@dataclass(frozen=True)
class CompletionResult:
    """A completed matrix ``X = U V^T`` and how the iteration went.

    Attributes:
        U: ``(m, k)`` left factor.
        V: ``(n, k)`` right factor.
        history: relative error ``||P_Omega(X - M)||_F / ||P_Omega(M)||_F`` on the revealed
            entries after each iteration.
        iterations: number of iterations run.
        converged: whether the method's stopping test passed within its iteration budget:
            the last entry of ``history`` reached ``tol`` (:func:`altmin_complete`), or the
            relative change of the iterate did (:func:`soft_impute`).

    Example:
        >>> import torch
        >>> from subspaces.recovery import altmin_complete, low_rank_matrix, sample_entries
        >>> g = torch.Generator().manual_seed(0)
        >>> M = low_rank_matrix(60, 50, 2, generator=g)
        >>> obs = sample_entries(M, 0.4, generator=g)
        >>> res = altmin_complete(obs, 2, tol=1e-10, generator=g)
        >>> res.converged, res.history[-1] <= 1e-10, len(res.history) == res.iterations
        (True, True, True)
        >>> torch.allclose(res.entries(obs.rows, obs.cols), obs.values, atol=1e-8)
        True
        >>> tuple(res.to_dense().shape), M.relative_error(res.U, res.V) < 1e-8
        ((60, 50), True)
    """

    U: Tensor
    V: Tensor
    history: list[float]
    iterations: int
    converged: bool

    def to_dense(self) -> Tensor:
        """The ``(m, n)`` completed matrix ``U V^T``."""
        return self.U @ self.V.T

    def entries(self, rows: Tensor, cols: Tensor) -> Tensor:
        """Entries ``X[rows[k], cols[k]]`` of the completion, without forming ``X``."""
        return (self.U[rows] * self.V[cols]).sum(1)


@dataclass(frozen=True)
class _Side:
    """The revealed entries grouped by one side's index (rows, or columns), in CSR order."""

    crow: Tensor  # (num + 1,) offsets
    own: Tensor  # (N,) this side's index of each entry, sorted
    other: Tensor  # (N,) the other side's index of each entry
    values: Tensor  # (N,) entry values in this order
    counts: Tensor  # (num,) entries per index
    num: int
    num_other: int

    def csr(self, values: Tensor) -> Tensor:
        """The ``(num, num_other)`` CSR matrix with this pattern and the given entry values."""
        with warnings.catch_warnings():  # "sparse CSR support is in beta"
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse_csr_tensor(
                self.crow,
                self.other,
                values,
                size=(self.num, self.num_other),
                check_invariants=False,  # built sorted and in range by _group
            )

    def sampled(self, X: Tensor, F: Tensor, minus_values: bool = False) -> Tensor:
        """Values ``x_{i_k}^T f_{j_k}`` (minus the entry values if asked) at every revealed entry.

        One ``torch.sparse.sampled_addmm`` (``O(N r)``).

        Returns:
            The ``(N,)`` values, in this side's (CSR) order.
        """
        base = self.csr(-self.values if minus_values else torch.zeros_like(self.values))
        out = torch.sparse.sampled_addmm(
            base, X, F.T.contiguous(), beta=1.0 if minus_values else 0.0
        )
        return out.values()


def _group(own: Tensor, other: Tensor, values: Tensor, num: int, num_other: int) -> _Side:
    order = torch.argsort(own * num_other + other)
    own_s = own[order]
    counts = torch.bincount(own_s, minlength=num)
    crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)])
    return _Side(crow, own_s, other[order], values[order], counts, num, num_other)


def _ridge(G_trace: Tensor, ridge: float, scale: float) -> Tensor:
    """Per-row ridge ``ridge * (trace(G_i) / r + scale)``: relative, and positive for empty rows."""
    return ridge * (G_trace + scale)


def _exact_solve(side: _Side, F: Tensor, X0: Tensor, ridge: float) -> Tensor:
    """Solve all ``num`` ridge-regularized least-squares problems exactly, batched.

    Row ``i`` solves ``(G_i + lam_i I) x_i = b_i + lam_i x0_i`` with
    ``G_i = F_{Omega_i}^T F_{Omega_i}`` and ``b_i = F_{Omega_i}^T y_{Omega_i}``: a proximal ridge
    around the previous iterate ``x0_i``, which keeps rows with fewer than ``r`` entries solvable
    but does not bias the fixed point (where ``x_i = x0_i``).

    Returns:
        The ``(num, r)`` solutions.
    """
    r = F.shape[1]
    # Only the upper triangle of each Gram matrix: r (r + 1) / 2 products per entry, not r^2.
    iu, ju = torch.triu_indices(r, r, device=F.device)
    packed = side.csr(torch.ones_like(side.values)) @ (F[:, iu] * F[:, ju])
    G = F.new_empty(side.num, r, r)
    G[:, iu, ju] = packed
    G[:, ju, iu] = packed
    b = side.csr(side.values) @ F
    trace = G.diagonal(dim1=-2, dim2=-1).sum(-1) / r
    scale = float(F.pow(2).sum()) / (side.num_other * r)
    lam = _ridge(trace, ridge, scale)
    G = G + lam[:, None, None] * torch.eye(r, dtype=F.dtype, device=F.device)
    b = b + lam[:, None] * X0
    L, info = torch.linalg.cholesky_ex(G)
    X = torch.cholesky_solve(b[:, :, None], L)[:, :, 0]
    bad = info != 0
    if bool(bad.any()):  # numerically indefinite systems: fall back to a pseudo-inverse
        X[bad] = (torch.linalg.pinv(G[bad]) @ b[bad][:, :, None])[:, :, 0]
    return X


def _sketched_solve(
    side: _Side,
    F: Tensor,
    X0: Tensor,
    ridge: float,
    steps: int,
    correction_dtype: torch.dtype | None = None,
) -> Tensor:
    """``steps`` preconditioned CG steps on every row's normal equations, warm-started at ``X0``.

    Products ``G_i x_i`` are matrix-free: ``t_k = x_{i_k}^T f_{j_k}`` per revealed entry (one
    sampled dense product, ``O(N r)``), then ``G x = T F`` with ``T`` the sparse matrix of the
    ``t_k`` (one CSR product, ``O(N r)``). The preconditioner is shared by all rows up to the
    scalar ``1 / |Omega_i|``: ``P_i^{-1} = (n / |Omega_i|) (F^T F + mu I)^{-1}``, the inverse of
    the Gram matrix that row ``i``'s uniform sample of ``|Omega_i|`` rows of ``F`` has in
    expectation; its ``r x r`` inverse is computed once per call (``O(n r^2 + r^3)``) and applied
    to all rows as one ``(num, r) x (r, r)`` product. So a call costs
    ``O((steps + 1) N r + (num + n) r^2 + r^3)``: linear in ``N r`` once rows have more than
    ``r`` entries, against ``O(N r^2 + num r^3)`` for :func:`_exact_solve`.

    Mixed precision (``correction_dtype``, e.g. float32 for float64 ``F``; default: ``F``'s
    dtype): the residual at the warm start, ``P_Omega(Y - X0 F^T) F``, is computed in ``F``'s
    dtype and only the CG correction ``X - X0`` in ``correction_dtype`` (PyTorch's float32 sampled
    product on CPU costs about 3 ns per entry plus the arithmetic, the float64 one about 25 ns).
    The correction is an approximate solve either way; its rounding error is relative to its own
    size, which goes to zero with the residual, so the fixed point (zero residual) and the
    attainable accuracy are those of ``F``'s dtype, as in mixed-precision iterative refinement.

    Returns:
        The ``(num, r)`` approximate solutions.
    """
    r = F.shape[1]
    scale = float(F.pow(2).sum()) / (side.num_other * r)
    # initial residual b - A X0 = P_Omega(Y - X0 F^T) F (the ridge terms cancel at X0)
    R = side.csr(side.values - side.sampled(X0, F)) @ F

    low = F.dtype if correction_dtype is None else correction_dtype
    F_low = F.to(low)
    Ft = F_low.T.contiguous()
    eye = torch.eye(r, dtype=F.dtype, device=F.device)
    pattern = side.csr(torch.ones_like(side.values, dtype=low))
    trace = pattern @ F_low.pow(2).sum(1, keepdim=True)
    lam = _ridge(trace[:, 0] / r, ridge, scale)[:, None]

    def matvec(X: Tensor) -> Tensor:
        t = torch.sparse.sampled_addmm(pattern, X, Ft, beta=0.0).values()
        return side.csr(t) @ F_low + lam * X

    # Preconditioner: E[G_i] = (c_i / n) F^T F for uniformly sampled entries.
    C = F.T @ F / side.num_other
    C = C + ridge * (torch.trace(C) / r + scale) * eye
    C_inv = torch.cholesky_solve(eye, torch.linalg.cholesky(C)).to(low)
    inv_counts = 1.0 / side.counts.clamp(min=1).to(low)[:, None]

    def precond(R: Tensor) -> Tensor:
        return (R @ C_inv) * inv_counts

    R = R.to(low)
    D = torch.zeros_like(R)  # the correction X - X0
    Z = precond(R)
    P = Z
    rz = (R * Z).sum(1, keepdim=True)
    tiny = torch.finfo(low).tiny
    for step in range(steps):
        AP = matvec(P)
        pap = (P * AP).sum(1, keepdim=True)
        alpha = torch.where(pap > tiny, rz / pap.clamp(min=tiny), torch.zeros_like(pap))
        D = D + alpha * P
        if step == steps - 1:
            break  # the last residual and direction would not be used
        R = R - alpha * AP
        Z = precond(R)
        rz_new = (R * Z).sum(1, keepdim=True)
        beta = torch.where(rz > tiny, rz_new / rz.clamp(min=tiny), torch.zeros_like(rz))
        P = Z + beta * P
        rz = rz_new
    return X0 + D.to(F.dtype)


def _altmin_iteration(
    rows_side: _Side,
    cols_side: _Side,
    U: Tensor,
    V: Tensor,
    solver: Solver,
    ridge: float,
    cg_steps: int,
) -> tuple[Tensor, Tensor]:
    """One AltMin iteration: ``V`` given ``U``, ``U`` given ``V``, then ``U`` re-orthonormalized.

    Returns:
        The new ``(U, V)``, with ``U`` orthonormal and ``U V^T`` the updated product.
    """
    if solver == "exact":
        V = _exact_solve(cols_side, U, V, ridge)
        U = _exact_solve(rows_side, V, U, ridge)
    else:
        low = torch.float32 if U.dtype == torch.float64 else None  # float32 corrections
        V = _sketched_solve(cols_side, U, V, ridge, cg_steps, low)
        U = _sketched_solve(rows_side, V, U, ridge, cg_steps, low)
    Q, R = torch.linalg.qr(U)
    return Q, V @ R.T


def _observed_error(rows_side: _Side, U: Tensor, V: Tensor, norm: float) -> float:
    residual = rows_side.sampled(U, V, minus_values=True)
    return float(torch.linalg.vector_norm(residual)) / norm


def _sparse_operator(side_r: _Side, side_c: _Side, scale: float) -> MatmatOperator:
    """``scale * P_Omega(M)`` as a matrix-free operator (two CSR matrices: it and its transpose)."""
    Y = side_r.csr(side_r.values * scale)
    Yt = side_c.csr(side_c.values * scale)
    return MatmatOperator(
        lambda X: Y @ X,
        (side_r.num, side_r.num_other),
        side_r.values.dtype,
        side_r.values.device,
        rmatmat=lambda X: Yt @ X,
    )


def _scaled_values(values: Tensor) -> tuple[Tensor, float]:
    """The entry values divided by a power of two near their largest magnitude, in float32+.

    Both completions are equivariant to a scaling of ``M`` (the factors scale with it, the
    relative errors do not change), so working with values of magnitude ~1 and scaling the
    result back is exact (a power of two) and keeps squares and norms from overflowing
    (entries of ``1e200``) or underflowing (``1e-200``). Half-precision values are completed in
    float32 (no sparse CSR products in half precision on CPU).

    Returns:
        ``(values / c, c)``.
    """
    work = values if values.dtype in (torch.float32, torch.float64) else values.float()
    maxabs = float(torch.linalg.vector_norm(work, ord=math.inf))
    if maxabs == 0.0:
        return work, 1.0
    c = math.ldexp(1.0, pow2_exponent(maxabs))
    return work / c, c


def _check_obs(obs: Observations, rank: int) -> tuple[int, int, int]:
    if not isinstance(obs, Observations):
        raise TypeError(f"obs must be an Observations, got {type(obs).__name__}")
    m, n = obs.shape
    rank = check_positive_int(rank, "rank")
    if rank > min(m, n):
        raise ValueError(f"rank must be <= min(m, n) = {min(m, n)}, got {rank}")
    return m, n, rank


def altmin_complete(
    obs: Observations,
    rank: int,
    *,
    iters: int = 50,
    tol: float = 1e-10,
    init: Init = "spectral",
    solver: Solver = "exact",
    cg_steps: int = 3,
    ridge: float | None = None,
    generator: torch.Generator | None = None,
) -> CompletionResult:
    """Complete a low-rank matrix from revealed entries by alternating least squares.

    Spectral initialization (``init="spectral"``): ``U_0`` = top-``rank`` left singular vectors
    of the rescaled zero-filled matrix ``(mn / |Omega|) P_Omega(M)``, computed by
    :func:`~subspaces.linalg.randomized_svd` on a sparse operator. Each iteration then solves for
    ``V`` given ``U`` and for ``U`` given ``V`` (every row's problem at once, see the module
    docstring), and re-orthonormalizes ``U`` by QR (moving ``R`` into ``V``, so ``U V^T`` is
    unchanged). The same revealed set is used in every iteration (the practical variant; the
    analysis of Jain et al. splits it into fresh subsets).

    Args:
        obs: the revealed entries.
        rank: target rank ``r``.
        iters: maximum number of iterations (one ``V`` and one ``U`` update each).
        tol: stop when the relative error on the revealed entries is ``<= tol``.
        init: ``"spectral"`` or ``"random"`` (orthonormalized Gaussian ``U_0``).
        solver: ``"exact"`` (batched Cholesky on the ``r x r`` normal equations,
            ``O(|Omega| r^2)`` per iteration) or ``"sketched"`` (``cg_steps`` warm-started
            preconditioned CG steps per update, ``O(|Omega| r)``; cheaper from ``r`` of about 16-32
            on, see the module docstring).
        cg_steps: CG steps per update for ``solver="sketched"``.
        ridge: relative weight of a proximal ridge ``lam_i ||x_i - x_i^prev||^2`` added to each
            row's problem (``lam_i = ridge * trace(G_i) / r``, plus a floor): keeps rows with
            fewer than ``r`` revealed entries solvable without biasing the limit; default
            ``1e-10`` in float64, ``1e-5`` otherwise.
        generator: randomness of the initialization.

    Returns:
        A :class:`CompletionResult` with ``U (m, r)``, ``V (n, r)`` and the error history.

    The entries are divided by a power of two near their largest magnitude before the
    iteration and ``V`` is multiplied back (exact), so entries of any scale (``1e-200`` or
    ``1e200``) complete as they would at scale 1; float16/bfloat16 entries are completed in
    float32 and the factors returned in their dtype.

    Raises:
        TypeError: if ``obs`` is not :class:`~subspaces.recovery.problems.Observations` or an
            integer argument is not an int.
        ValueError: if ``rank > min(m, n)``, an option is out of range, or the iteration
            produced non-finite factors.

    Example:
        >>> from subspaces.recovery import low_rank_matrix, sample_entries
        >>> g = torch.Generator().manual_seed(0)
        >>> M = low_rank_matrix(60, 50, 2, generator=g)
        >>> obs = sample_entries(M, 0.4, generator=g)
        >>> res = altmin_complete(obs, 2, generator=g)
        >>> res.converged, M.relative_error(res.U, res.V) < 1e-8
        (True, True)

    References:
        Jain, Netrapalli, Sanghavi, "Low-rank matrix completion using alternating minimization",
        STOC 2013. Gu, Song, Yin, Zhang, "Low rank matrix completion via robust alternating
        minimization in nearly linear time", ICLR 2024 (arXiv:2302.11068).
    """
    m, n, rank = _check_obs(obs, rank)
    iters = check_positive_int(iters, "iters")
    tol = check_positive_float(tol, "tol", allow_zero=True)
    check_choice(init, "init", ("spectral", "random"))
    check_choice(solver, "solver", ("exact", "sketched"))
    cg_steps = check_positive_int(cg_steps, "cg_steps")
    dtype = obs.values.dtype
    if ridge is None:
        ridge = 1e-10 if dtype == torch.float64 else 1e-5
    ridge = check_positive_float(ridge, "ridge", allow_zero=True)

    values, c = _scaled_values(obs.values)
    if float(torch.linalg.vector_norm(values)) == 0.0:
        zeros_u = obs.values.new_zeros(m, rank)
        return CompletionResult(zeros_u, obs.values.new_zeros(n, rank), [0.0], 0, True)
    rows_side = _group(obs.rows, obs.cols, values, m, n)
    cols_side = _group(obs.cols, obs.rows, values, n, m)
    norm = float(torch.linalg.vector_norm(values))

    if init == "spectral":
        op = _sparse_operator(rows_side, cols_side, 1.0 / obs.fraction)
        U = randomized_svd(op, rank, power_iters=3, generator=generator).U
    else:
        G0 = torch.randn(m, rank, dtype=values.dtype, generator=generator).to(values.device)
        U = torch.linalg.qr(G0).Q
    V = values.new_zeros(n, rank)

    history: list[float] = []
    for _ in range(iters):
        U, V = _altmin_iteration(rows_side, cols_side, U, V, solver, ridge, cg_steps)
        history.append(_observed_error(rows_side, U, V, norm))
        if not math.isfinite(history[-1]):
            raise ValueError("the iteration produced non-finite factors")
        if history[-1] <= tol:
            break
    return CompletionResult(
        U.to(dtype), (V * c).to(dtype), history, len(history), history[-1] <= tol
    )


def _filled_product(R: Tensor, U: Tensor, W: Tensor, X: Tensor) -> Tensor:
    """``(R + U W^T) X`` for a sparse residual ``R``: the filled matrix of Soft-Impute."""
    return R @ X + U @ (W.T @ X)


def soft_impute(
    obs: Observations,
    max_rank: int,
    *,
    shrinkage: float | None = None,
    iters: int = 100,
    tol: float = 1e-5,
    generator: torch.Generator | None = None,
) -> CompletionResult:
    """Soft-Impute: iterate ``Z <- S_lambda(P_Omega(M) + P_Omega^perp(Z))`` (nuclear-norm prox).

    ``S_lambda`` soft-thresholds the singular values by ``lambda``. Here ``Z = U diag(s) W^T`` is
    kept in factored form and the filled matrix ``P_Omega(M - Z) + Z`` (sparse plus low rank) is
    applied matrix-free to a rank-``max_rank`` :func:`~subspaces.linalg.randomized_svd`, so no
    dense ``(m, n)`` matrix is formed. Because of the shrinkage the estimate is biased: it does
    not reach exact recovery, which is why it is the baseline for :func:`altmin_complete`.

    Args:
        obs: the revealed entries.
        max_rank: rank of the truncated SVD in each iteration.
        shrinkage: ``lambda``; default ``sigma_max(P_Omega(M)) / 50`` (fancyimpute's default).
        iters: maximum number of iterations.
        tol: stop when the relative change ``||Z_new - Z||_F / ||Z||_F`` is ``<= tol``.
        generator: randomness of the randomized SVDs.

    Returns:
        A :class:`CompletionResult` with ``U = U_Z diag(s)`` and ``V = W``.

    As in :func:`altmin_complete`, the entries (and a given ``shrinkage``) are divided by a
    power of two near their largest magnitude and ``U`` is scaled back, so the history does not
    overflow for huge entries nor divide by zero for tiny ones; half-precision entries are
    completed in float32. All-zero revealed entries give the zero matrix.

    Raises:
        TypeError: if ``obs`` is not an :class:`~subspaces.recovery.problems.Observations`.
        ValueError: if an argument is out of range or the iteration produced non-finite
            factors.

    Example:
        >>> from subspaces.recovery import low_rank_matrix, sample_entries
        >>> g = torch.Generator().manual_seed(0)
        >>> M = low_rank_matrix(80, 60, 2, generator=g)
        >>> res = soft_impute(sample_entries(M, 0.5, generator=g), 5, generator=g)
        >>> M.relative_error(res.U, res.V) < 0.2
        True

    References:
        Mazumder, Hastie, Tibshirani, "Spectral regularization algorithms for learning large
        incomplete matrices", JMLR 11, 2010.
    """
    m, n, max_rank = _check_obs(obs, max_rank)
    iters = check_positive_int(iters, "iters")
    tol = check_positive_float(tol, "tol", allow_zero=True)
    if shrinkage is not None:
        shrinkage = check_positive_float(shrinkage, "shrinkage", allow_zero=True)
    values, c = _scaled_values(obs.values)  # values ~1: no overflow in norms and squares
    if float(torch.linalg.vector_norm(values)) == 0.0:  # M = 0 on the revealed entries
        zeros_u = obs.values.new_zeros(m, max_rank)
        return CompletionResult(zeros_u, obs.values.new_zeros(n, max_rank), [0.0], 0, True)
    rows_side = _group(obs.rows, obs.cols, values, m, n)
    cols_side = _group(obs.cols, obs.rows, values, n, m)
    norm = float(torch.linalg.vector_norm(values))
    if shrinkage is None:
        top = randomized_svd(_sparse_operator(rows_side, cols_side, 1.0), 1, generator=generator)
        lam = float(top.S[0]) / 50.0
    else:
        lam = shrinkage / c  # the shrinkage scales with the values
    dtype, device = values.dtype, values.device
    U = values.new_zeros(m, max_rank)  # U_Z diag(s)
    W = values.new_zeros(n, max_rank)
    history: list[float] = []
    converged = False
    for _ in range(iters):
        # residual on the revealed entries, in row-grouped and column-grouped order
        res_r = -rows_side.sampled(U, W, minus_values=True)
        res_c = -cols_side.sampled(W, U, minus_values=True)
        Rr, Rc = rows_side.csr(res_r), cols_side.csr(res_c)
        op = MatmatOperator(
            functools.partial(_filled_product, Rr, U, W),
            (m, n),
            dtype,
            device,
            rmatmat=functools.partial(_filled_product, Rc, W, U),
        )
        svd = randomized_svd(op, max_rank, power_iters=2, generator=generator)
        s = (svd.S - lam).clamp(min=0.0)
        U_new, W_new = svd.U * s, svd.V
        # ||Z_new - Z||_F via QR of the stacked factors
        R1 = torch.linalg.qr(torch.cat([U_new, -U], 1), mode="r").R
        R2 = torch.linalg.qr(torch.cat([W_new, W], 1), mode="r").R
        change = float(torch.linalg.matrix_norm(R1 @ R2.T))
        size = float(s.norm())
        U, W = U_new, W_new
        history.append(_observed_error(rows_side, U, W, norm))
        if not (math.isfinite(history[-1]) and math.isfinite(change)):
            raise ValueError("the iteration produced non-finite factors")
        if size == 0.0 or change <= tol * size:
            converged = True
            break
    out_dtype = obs.values.dtype
    return CompletionResult(
        (U * c).to(out_dtype), W.to(out_dtype), history, len(history), converged
    )
