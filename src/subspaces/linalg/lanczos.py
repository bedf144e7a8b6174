"""Thick-restart block Lanczos with full reorthogonalization and certified residuals."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_int
from ..linops import LinearOperator
from ._random import random_matrix
from .eigen import EigenResult, checked_matmat, prepare_symmetric, start_block

Which = Literal["largest", "smallest", "both_ends"]
WHICH: tuple[str, ...] = ("largest", "smallest", "both_ends")

#: Memory the growth of a default-sized basis may reach (basis and products): a restart loses
#: about one product, so a larger basis is worth it only while it is cheap to hold.
_GROW_BYTES = 1 << 30


def _wanted_order(theta: Tensor, which: str) -> Tensor:
    """Indices of Ritz values (ascending ``theta``) from most to least wanted."""
    m = theta.shape[0]
    if which == "largest":
        return torch.arange(m - 1, -1, -1)
    if which == "smallest":
        return torch.arange(m)
    # both ends: largest, smallest, second largest, second smallest, ...
    hi, lo, out = m - 1, 0, []
    while lo <= hi:
        out.append(hi)
        hi -= 1
        if lo <= hi:
            out.append(lo)
            lo += 1
    return torch.tensor(out, dtype=torch.long)


def _orthogonalize_rows(X: Tensor, Vt: Tensor) -> Tensor:
    """Classical Gram-Schmidt of the columns of ``X`` against the rows of ``Vt``, twice.

    "Twice is enough" (Giraud et al. 2005) for full reorthogonalization.

    Returns:
        ``X - V V^T X`` (after two passes), with ``V = Vt^T``.
    """
    for _ in range(2):
        X = X - ((Vt @ X).T @ Vt).T
    return X


def _steps_to_converge(theta: Tensor, idx: Tensor, res: Tensor, target: float) -> float:
    """Products a wanted Ritz pair still needs, from the Chebyshev rate of its gap.

    A Ritz value ``theta_j`` near the top of the spectrum converges like a Chebyshev polynomial
    on the rest of it: its residual shrinks by about ``exp(2 sqrt(gamma))`` per product, with
    ``gamma = (theta_j - theta_{j-1}) / (theta_{j-1} - theta_min)`` the gap to the next Ritz
    value relative to the spread of the rest (mirrored for the bottom end; Saad, "Numerical
    methods for large eigenvalue problems", sec. 6.6). Clustered wanted values have a small
    ``gamma`` and need many products.

    Args:
        theta: ascending Ritz values.
        idx: positions (in ``theta``) of the wanted pairs not yet converged.
        res: their residual norms.
        target: the residual to reach.

    Returns:
        The largest estimate over the pairs (``inf`` for a pair tied with its neighbour).
    """
    m = theta.shape[0]
    worst = 0.0
    for j, r in zip(idx.tolist(), res.tolist(), strict=True):
        if r <= target or m < 3:
            continue
        if 2 * j >= m - 1:  # upper end: the gap below, relative to the spread down to the bottom
            gap, spread = theta[j] - theta[j - 1], theta[j - 1] - theta[0]
        else:
            gap, spread = theta[j + 1] - theta[j], theta[-1] - theta[j + 1]
        gamma = float(gap) / max(float(spread), 1e-300)
        if gamma <= 0.0:
            return float("inf")
        worst = max(worst, math.log(r / target) / (2.0 * math.sqrt(gamma)))
    return worst


def _certify(Yc: Tensor, Vt: Tensor, Wt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Ritz pairs from coefficients ``Yc`` on the basis rows ``Vt`` with products ``Wt = (A V)^T``.

    The vectors ``x = Yc^T Vt`` are normalized and, if the basis lost orthonormality, replaced
    by a Rayleigh-Ritz on their span; the values are Rayleigh quotients and the residuals
    ``||A x - theta x||`` are formed from the stored products (``A x = Yc^T Wt``: linear in the
    basis, so a real product up to the rounding of the combination, which is done in float64).

    Returns:
        ``(theta, X rows, residual norms)`` in the basis dtype.
    """
    dtype = Vt.dtype
    f64 = torch.float64
    Xt = Yc.T.to(f64) @ Vt.to(f64)
    AXt = Yc.T.to(f64) @ Wt.to(f64)
    k = Xt.shape[0]
    gram = Xt @ Xt.T
    eye = torch.eye(k, dtype=f64, device=Xt.device)
    if float((gram - eye).abs().max()) > 100.0 * torch.finfo(dtype).eps * max(k, 1):
        # Orthonormalize the span (X = Q R, so A Q = (A X) R^{-1}) and redo the small
        # eigenproblem on it.
        Q, R = torch.linalg.qr(Xt.T)
        AQ = torch.linalg.solve_triangular(R, AXt.T, upper=True, left=False)
        G = Q.T @ AQ
        _, Z = torch.linalg.eigh((G + G.T) / 2)
        Xt, AXt = (Q @ Z).T, (AQ @ Z).T
    else:
        nrm = Xt.norm(dim=1, keepdim=True)
        Xt, AXt = Xt / nrm, AXt / nrm
    theta = (Xt * AXt).sum(dim=1)
    res = (AXt - theta.unsqueeze(1) * Xt).norm(dim=1)
    return theta.to(dtype), Xt.to(dtype), res.to(dtype)


def lanczos(
    A: Tensor | LinearOperator,
    k: int,
    which: Which = "largest",
    *,
    tol: float | None = None,
    max_matvecs: int | None = None,
    block_size: int = 1,
    max_basis: int | None = None,
    v0: Any = None,
    generator: torch.Generator | None = None,
) -> EigenResult:
    r"""Extreme eigenpairs of a symmetric operator by thick-restart block Lanczos.

    The Krylov basis ``V`` is kept with full reorthogonalization (two passes of classical
    Gram-Schmidt), and the products ``W = A V`` are stored, so every residual
    :math:`\|A x - \theta x\|` is computed explicitly from real products rather than
    extrapolated from the recurrence: ``converged`` is a certificate, not "stopped changing".
    When the basis reaches ``max_basis`` columns it is compressed to the most wanted Ritz vectors
    (thick restart, Wu & Simon 2000; Stathopoulos & Saad's Krylov-Schur view) and the
    expansion continues from their residuals, so no product is thrown away; a default-sized
    basis grows instead while the wanted eigenvalues are clustered (see ``max_basis``). With a
    block size ``b > 1`` each step multiplies ``b`` vectors at once (one batched product), which
    finds eigenvalues of multiplicity up to ``b`` and is faster per vector for batched operators.

    What is certified: each returned value is within its residual of an eigenvalue of ``A``. Like
    every Krylov method, Lanczos can still miss an eigenvalue whose eigenvector is nearly
    orthogonal to the start block (or an extra copy of a repeated one) and return the next one in
    its place; for clustered spectra use ``block_size > 1`` or a tighter ``tol``.

    Args:
        A: symmetric ``(n, n)`` tensor or operator.
        k: number of eigenpairs, ``1 <= k <= n``.
        which: ``"largest"`` (algebraic, returned descending), ``"smallest"`` (ascending) or
            ``"both_ends"`` (``ceil(k/2)`` largest and ``floor(k/2)`` smallest, descending).
        tol: relative residual tolerance: a pair is converged when
            ``||A x - theta x|| <= tol * scale`` with ``scale`` the largest ``|theta|`` seen
            (an estimate of ``||A||_2``). Default ``1e-8`` in float64, ``1e-5`` otherwise.
        max_matvecs: budget of products; on exhaustion the result has ``converged`` False where
            the tolerance is not met. Default ``max(1000, 50 * max_basis)``.
        block_size: vectors multiplied per step.
        max_basis: basis size that triggers a restart (a memory bound: about
            ``2 * max_basis * n`` numbers). Default ``min(n, max(4 k, k + 30) + block_size)``,
            which may grow to twice that (while the basis and its products fit in 1 GiB)
            during the run when the Ritz values say the wanted eigenvalues are clustered: when a
            pair not yet converged needs more than half the products (by the Chebyshev rate of
            its gap to the next Ritz value) that a restart would leave room for, the basis is
            enlarged instead of restarted. ``result.basis_size`` says how large it got.
        v0: start vector ``(n,)``, block ``(n, c)`` or a :class:`~subspaces.Subspace` (warm start,
            e.g. the previous eigenspace when tracking training); random by default. A start
            wider than ``block_size`` is folded into ``block_size`` sums of its columns. With
            ``block_size`` equal to the warm subspace's dimension the first step is a
            Rayleigh-Ritz on the old eigenspace, which certifies loose tolerances in ``k``
            products; with ``block_size=1`` Lanczos starts from the sum of the old eigenvectors,
            which wins at tight tolerances.
        generator: randomness for the start block.

    Returns:
        An :class:`~subspaces.linalg.EigenResult` with eigenvalues, orthonormal eigenvectors,
        residuals, per-pair ``converged`` flags and the number of products.

    Raises:
        ValueError: for a non-square operator, ``k`` out of range, a bad ``which`` / ``v0``,
            or non-finite products.

    Example:
        >>> import torch
        >>> from subspaces.testing import matrix_with_spectrum
        >>> lam = torch.linspace(1.0, 100.0, 200, dtype=torch.float64)
        >>> A = matrix_with_spectrum(lam, generator=torch.Generator().manual_seed(0))
        >>> r = lanczos(A, 3, generator=torch.Generator().manual_seed(1))
        >>> r.all_converged, torch.allclose(r.eigenvalues, lam[-3:].flip(0))
        (True, True)

    References:
        Lanczos (1950); Golub & Underwood (1977) for the block version; Wu & Simon, "Thick-restart
        Lanczos method for large symmetric eigenvalue problems", SIMAX 22(2), 2000.
    """
    op, n, tol = prepare_symmetric(A, k, tol)
    which = check_choice(which, "which", WHICH)  # type: ignore[assignment]
    b = check_positive_int(block_size, "block_size")
    if b > n:
        raise ValueError(f"block_size must be <= n = {n}, got {b}")
    grow = max_basis is None
    if max_basis is None:
        max_basis = min(n, max(4 * k, k + 30) + b)
    check_positive_int(max_basis, "max_basis")
    if max_basis < min(n, k + b):
        raise ValueError(f"max_basis must be >= k + block_size = {k + b} (or n), got {max_basis}")
    max_basis = min(max_basis, n)
    # A default basis may grow (up to twice its size, and while the basis and its products fit
    # in _GROW_BYTES) instead of restarting while the wanted values are clustered; a max_basis
    # given is a memory bound and is kept.
    basis_cap = max_basis
    if grow:
        fits = _GROW_BYTES // (2 * n * op.dtype.itemsize) - b
        basis_cap = max(max_basis, min(n, 2 * max_basis, fits))
    budget = (
        max(1000, 50 * max_basis)
        if max_matvecs is None
        else check_positive_int(max_matvecs, "max_matvecs")
    )
    dtype, device = op.dtype, op.device
    breakdown = max(100.0 * torch.finfo(dtype).eps, 1e-12)

    block = start_block(v0, n, b, dtype, device, generator)
    if block.shape[1] > b:
        # A warm start wider than the block (e.g. the previous top-k eigenspace with b=1) is
        # folded into b start vectors, each the sum of a group of its basis vectors: Lanczos
        # from a vector inside the old eigenspace keeps the Krylov structure that makes it fast.
        fold = torch.zeros(block.shape[1], b, dtype=dtype, device=device)
        fold[torch.arange(block.shape[1]), torch.arange(block.shape[1]) % b] = 1.0
        block = torch.linalg.qr(block @ fold).Q
    # The bases are stored as rows (Vt = V^T, Wt = (A V)^T) in preallocated buffers: products
    # with a few coefficient vectors are then wide GEMMs ((c, m) @ (m, n)), several times faster
    # than tall-skinny (n, m) @ (m, c) ones, and no step reallocates the basis.
    cap = max_basis + b
    Vt = torch.empty(cap, n, dtype=dtype, device=device)
    Wt = torch.empty(cap, n, dtype=dtype, device=device)
    H = torch.empty(0, 0, dtype=torch.float64)
    m, matvecs, restarts, peak, scale = 0, 0, 0, 0, 0.0

    while True:
        Wb = checked_matmat(op, block)
        matvecs += block.shape[1]
        nb_in = block.shape[1]
        # Extend the projected matrix H = V^T A V by the new block (computed in float64).
        cross = (Vt[:m] @ Wb).to(torch.float64)
        diag = (block.T @ Wb).to(torch.float64)
        H = torch.cat([torch.cat([H, cross], 1), torch.cat([cross.T, (diag + diag.T) / 2], 1)], 0)
        Vt[m : m + nb_in] = block.T
        Wt[m : m + nb_in] = Wb.T
        m += nb_in
        peak = max(peak, m)

        theta, Y = torch.linalg.eigh(H)
        scale = max(scale, float(theta.abs().max()))
        order = _wanted_order(theta, which)
        Yd = Y.to(dtype)
        cand = order[: min(m, k)]
        Yc = Yd.index_select(1, cand)
        th_c = theta.index_select(0, cand).to(dtype)
        # The Krylov continuation F = (I - V V^T) A V_last of the last block is the next block,
        # and (Krylov relation) also the residual of every Ritz vector: A x - theta x = F y_last.
        # That estimate is cheap (n x b x k); it is confirmed below by explicit residuals.
        F = _orthogonalize_rows(Wb, Vt[:m])
        estimate = (Yc[m - nb_in : m].T @ F.T).norm(dim=1)
        done = m >= n or matvecs >= budget
        if done or (len(cand) >= k and bool((estimate <= tol * scale).all())):
            # Explicit residuals ||A x - theta x|| from stored products: the certificate.
            Xt = Yc.T @ Vt[:m]  # Ritz vectors as rows
            Rt = Yc.T @ Wt[:m] - th_c.unsqueeze(1) * Xt
            res = Rt.norm(dim=1)
            conv = res <= tol * scale
            if done or (len(cand) >= k and bool(conv.all())):
                break

        # Next block: the Krylov continuation of the last block.
        nb = min(b, n - m, budget - matvecs)
        F = F[:, :nb]

        if m + nb > max_basis and max_basis < basis_cap:
            # What the spectrum says so far: if a wanted pair needs more than half the products
            # a restart would leave room for (clustered wanted values: small relative gaps, slow
            # Chebyshev rate), grow the basis instead; a restart would throw away directions
            # the cluster still needs and cost products to rebuild them. Half: the Ritz gaps of
            # an unresolved cluster overstate the true ones, so the estimate is optimistic.
            keep_n = min(max(k + (max_basis - k) // 2, k), max_basis - nb)
            slow = estimate > tol * scale
            need = _steps_to_converge(theta, cand[slow], estimate[slow], tol * scale)
            if 2.0 * need > max_basis - keep_n:
                max_basis = min(basis_cap, max_basis + max(nb, max_basis - keep_n))
                Vt = torch.cat([Vt[:m], Vt.new_empty(max_basis + b - m, n)])
                Wt = torch.cat([Wt[:m], Wt.new_empty(max_basis + b - m, n)])

        if m + nb > max_basis:  # thick restart: keep the most wanted Ritz vectors
            keep_n = min(max(k + (max_basis - k) // 2, k), max_basis - nb)
            Yk = Yd.index_select(1, order[:keep_n])
            Vt[:keep_n], Wt[:keep_n] = Yk.T @ Vt[:m], Yk.T @ Wt[:m]  # F stays orthogonal
            H = torch.diag(theta.index_select(0, order[:keep_n]))
            m = keep_n
            restarts += 1

        # F is already orthogonal to V (two passes), and stays so after a restart (V shrinks
        # within its span)
        # A column of F at rounding level of A's scale is noise, not a Krylov direction: its
        # orthogonality to V after Gram-Schmidt is lost in proportion (the breakdown threshold
        # must follow the dtype: a fixed 1e-12 let float32 noise into the basis).
        Q, Rr = torch.linalg.qr(F)
        ok = torch.diagonal(Rr).abs() > breakdown * max(scale, float(Wb.norm(dim=0).max()), 1e-300)
        missing = nb - int(ok.sum())
        if missing > 0:  # an invariant subspace was found: continue with fresh directions
            fresh = random_matrix(n, missing, dtype=dtype, device=device, generator=generator)
            Q = torch.cat([Q[:, ok], fresh], 1)
        # A third pass keeps the basis orthonormal to working precision whatever F's size.
        block = torch.linalg.qr(_orthogonalize_rows(Q, Vt[:m])).Q

    # Final selection and ordering of the k wanted pairs, certified again on normalized vectors.
    vals, Xt, resid = _certify(Yc, Vt[:m], Wt[:m])
    convk = resid <= tol * scale
    perm = torch.argsort(vals) if which == "smallest" else torch.argsort(vals, descending=True)
    vecs = Xt.index_select(0, perm).T.contiguous()
    return EigenResult(
        eigenvalues=vals[perm],
        eigenvectors=vecs,
        residuals=resid[perm],
        converged=convk[perm],
        num_matvecs=matvecs,
        tol=tol,
        scale=scale,
        num_restarts=restarts,
        basis_size=peak,
        method="lanczos" if b == 1 else f"block lanczos (b={b})",
    )
