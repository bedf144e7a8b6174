r"""Stochastic trace and diagonal estimation: Hutchinson, Hutch++, XTrace, Diag++.

Every estimator touches ``A`` only through products with blocks of random test vectors (drawn by
:func:`~subspaces.linalg._random.random_matrix` from a caller's ``torch.Generator``), counts every
column it multiplies, and returns a standard error next to its estimate, so a caller can ask for a
target accuracy (``rtol=``) instead of guessing a budget.

Which one to use (see ``benchmarks/linalg_trace.py``):

* fast-decaying spectrum (a few large eigenvalues carry the trace): :func:`xtrace` or
  :func:`hutchpp_trace` need orders of magnitude fewer products than Hutchinson;
* flat, bulk-dominated spectrum (no low-rank part to capture): :func:`hutchinson_trace` is as good
  and simplest; sketching spends products on directions that carry little of the trace.

All estimators assume ``A`` is square and symmetric (only Hutchinson and Hutch++ remain
unbiased for a non-symmetric ``A``); symmetry is not checked (that would cost products; call
``as_operator(A).check_symmetric()`` once if in doubt).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor

from .._checks import check_choice, check_positive_float, check_positive_int
from ..linops import LinearOperator, as_operator
from ._random import DISTRIBUTIONS, Distribution, random_matrix

__all__ = [
    "DiagonalResult",
    "TraceResult",
    "diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "xtrace",
]

DiagonalMethod = Literal["hutchinson", "diag++"]
DIAGONAL_METHODS: tuple[str, ...] = ("hutchinson", "diag++")

#: In adaptive mode the stopping test looks at no fewer samples than this (and two batches).
_MIN_ADAPTIVE_SAMPLES = 10
#: Adaptive XTrace starts with this many test vectors and doubles.
_XTRACE_START = 8
#: Default probes per block in adaptive mode (the granularity of the stopping test).
_ADAPTIVE_BATCH = 32
#: Fixed-budget blocks hold up to this many entries (128 MiB in float64): wide blocks make dense
#: and batched products several times faster per column than narrow ones.
_BLOCK_ENTRIES = 2**24


# ----- results ---------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class TraceResult:
    """A trace estimate with its standard error.

    Attributes:
        estimate: the estimate of ``tr(A)``.
        stderr: its estimated standard error (``nan`` when fewer than two samples make it
            undefined), floored at the estimate's rounding ``sqrt(n) eps |scale|``: an exact
            estimate reports that floor, not 0.
        num_matvecs: products with ``A`` spent (columns multiplied).
        method: ``"hutchinson"``, ``"hutch++"`` or ``"xtrace"``.
        samples: per-sample estimates of the whole trace whose mean is ``estimate`` (Hutchinson:
            ``z^T A z``; Hutch++: exact part plus one deflated probe; XTrace: the leave-one-out
            estimates), float64; ``None`` when no sampling was needed (a Hutch++ sketch that
            spans the whole space).
        num_samples: data samples behind the operator, when it is a curvature operator.

    Example:
        >>> import torch
        >>> G = torch.randn(50, 50, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> A = G @ G.T
        >>> r = hutchinson_trace(A, 100, generator=torch.Generator().manual_seed(0))
        >>> print(r)
        trace 2621 ± 54 (100 matvecs, hutchinson)
        >>> abs(r.estimate - float(A.trace())) < 3 * r.stderr  # the error bar covers the truth
        True
        >>> r.samples.shape, abs(float(r.samples.mean()) - r.estimate) < 1e-9
        (torch.Size([100]), True)
    """

    estimate: float
    stderr: float
    num_matvecs: int
    method: str
    samples: Tensor | None = field(default=None, repr=False)
    num_samples: int | None = None

    def __str__(self) -> str:
        return (
            f"trace {self.estimate:.4g} ± {self.stderr:.2g} "
            f"({self.num_matvecs} matvecs, {self.method})"
        )


@dataclass(frozen=True, eq=False)
class DiagonalResult:
    """A diagonal estimate with entry-wise standard errors.

    Attributes:
        estimate: the estimate of ``diag(A)``, shape ``(n,)``, in ``A``'s dtype.
        stderr: entry-wise standard errors, shape ``(n,)`` (``nan`` with fewer than two probes).
        num_matvecs: products with ``A`` spent.
        method: ``"hutchinson"`` or ``"diag++"``.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64)) + 0.1
        >>> r = diagonal(A, 8, generator=torch.Generator().manual_seed(0))
        >>> print(r)
        diagonal of 5 entries, max stderr 0.08 (8 matvecs, hutchinson)
        >>> bool(((r.estimate - A.diagonal()).abs() < 3 * r.stderr).all())
        True
    """

    estimate: Tensor
    stderr: Tensor
    num_matvecs: int
    method: str

    def __str__(self) -> str:
        n = self.estimate.shape[0]
        err = float(self.stderr.abs().max()) if n else 0.0
        return (
            f"diagonal of {n} entries, max stderr {err:.2g} "
            f"({self.num_matvecs} matvecs, {self.method})"
        )


# ----- shared machinery ------------------------------------------------------------------------
class _Products:
    """Counted, finiteness-checked block products with a square operator, and its probes."""

    def __init__(
        self,
        A: Tensor | LinearOperator,
        distribution: str,
        generator: torch.Generator | None,
    ) -> None:
        op = as_operator(A)
        if op.device.type == "meta":
            raise ValueError(
                "A is on the meta device (a shape without values): move it to a real device"
            )
        if op.shape[0] != op.shape[1]:
            raise ValueError(f"A must be square (symmetric), got shape {op.shape}")
        if op.shape[0] == 0:
            raise ValueError("A is empty (shape (0, 0))")
        self.op = op
        self.n = op.shape[0]
        self.count = 0
        self.distribution: Distribution = check_choice(  # type: ignore[assignment]
            distribution, "distribution", DISTRIBUTIONS
        )
        self.generator = generator
        # QR and projections in at least float32 (half precision has no QR on CPU).
        self.work = torch.float64 if op.dtype == torch.float64 else torch.float32

    def __call__(self, X: Tensor) -> Tensor:
        """Multiply, count ``X.shape[1]`` products and check the result.

        Returns:
            ``A @ X`` in the working dtype.

        Raises:
            ValueError: if the operator returned NaN/Inf.
        """
        out = self.op.matmat(X.to(self.op.dtype))
        self.count += X.shape[1]
        if out.numel() and not bool(torch.isfinite(out).all()):
            bad = int((~torch.isfinite(out)).sum())
            raise ValueError(
                f"the operator returned non-finite values: {bad} NaN/Inf entries in A @ X "
                f"for a block of {X.shape[1]} vectors"
            )
        return out.to(self.work)

    def probes(self, b: int) -> Tensor:
        """Draw test vectors.

        Returns:
            ``(n, b)`` random test vectors in the working dtype.
        """
        return random_matrix(
            self.n,
            b,
            dtype=self.work,
            device=self.op.device,
            generator=self.generator,
            distribution=self.distribution,
        )


def _parse_mode(
    num_matvecs: int | None,
    rtol: float | None,
    max_matvecs: int,
    batch_size: int | None,
    minimum: int,
    method: str,
) -> tuple[int, float | None]:
    """Validate the budget arguments.

    Returns:
        ``(budget, rtol)``; ``rtol`` is None in fixed-budget mode.

    Raises:
        ValueError: if not exactly one of ``num_matvecs``/``rtol`` is given or a value is out of
            range.
        TypeError: if a count is not an int or ``rtol`` not a number.
    """
    if (num_matvecs is None) == (rtol is None):
        raise ValueError(
            "give exactly one of num_matvecs (a fixed budget) or rtol (adaptive: stop at "
            f"stderr <= rtol * |estimate|), got num_matvecs={num_matvecs!r} and rtol={rtol!r}"
        )
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    if num_matvecs is not None:
        check_positive_int(num_matvecs, "num_matvecs")
        if num_matvecs < minimum:
            raise ValueError(f"{method} needs num_matvecs >= {minimum}, got {num_matvecs}")
        return num_matvecs, None
    tol = check_positive_float(rtol, "rtol")
    check_positive_int(max_matvecs, "max_matvecs")
    if max_matvecs < minimum:
        raise ValueError(f"{method} needs max_matvecs >= {minimum}, got {max_matvecs}")
    return max_matvecs, tol


def _block_size(batch_size: int | None, n: int, adaptive: bool) -> int:
    """Probes per block product.

    Returns:
        ``batch_size`` if given; else 32 in adaptive mode and otherwise as many columns as fit
        in ``2**24`` entries (at least 32).
    """
    if batch_size is not None:
        return batch_size
    return _ADAPTIVE_BATCH if adaptive else max(_ADAPTIVE_BATCH, _BLOCK_ENTRIES // n)


def _mean_stderr(samples: Tensor) -> tuple[float, float]:
    """Summarize samples.

    Returns:
        The mean and its standard error ``std / sqrt(m)`` (``nan`` for one sample).
    """
    m = samples.shape[0]
    mean = float(samples.mean())
    if m < 2:
        return mean, math.nan
    return mean, float(samples.std(correction=1)) / math.sqrt(m)


def _converged(estimate: float, stderr: float, rtol: float) -> bool:
    return stderr <= rtol * abs(estimate)  # False for nan


def _warn_unconverged(method: str, res: TraceResult, rtol: float, budget: int) -> None:
    warnings.warn(
        f"{method}: stderr {res.stderr:.3g} > rtol * |estimate| = {rtol * abs(res.estimate):.3g} "
        f"after spending max_matvecs={budget} products; the result is less accurate than asked",
        RuntimeWarning,
        stacklevel=3,
    )


def _orth(Y: Tensor) -> Tensor:
    """Orthonormalize by Householder QR.

    Returns:
        ``Q`` with orthonormal columns and ``range(Y) ⊆ range(Q)`` (even if ``Y`` is singular).
    """
    return torch.linalg.qr(Y).Q


def _quadratic_forms(prod: _Products, b: int, Q: Tensor | None) -> Tensor:
    """Deflated Hutchinson samples.

    Returns:
        ``z^T (I - QQ^T) A (I - QQ^T) z`` for ``b`` fresh probes ``z`` (float64, ``(b,)``).
    """
    Z = prod.probes(b)
    if Q is not None and Q.shape[1]:
        Z = Z - Q @ (Q.T @ Z)
    AZ = prod(Z)
    return (Z.double() * AZ.double()).sum(0)


class _RunningStats:
    """Running mean and sum of squared deviations of scalar samples, batch by batch.

    Batches are merged by Chan, Golub & LeVeque's pairwise update, so each batch costs
    ``O(batch)`` however many came before (the adaptive stopping test used to re-summarize every
    sample after every batch: quadratic in the number of batches).
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean = 0.0
        self.m2 = 0.0

    def update(self, x: Tensor) -> None:
        """Merge a batch of samples (a 1-D tensor)."""
        b = x.shape[0]
        mb_t = x.mean()
        mb, m2b = (float(v) for v in torch.stack([mb_t, (x - mb_t).pow(2).sum()]).tolist())
        total = self.count + b
        delta = mb - self.mean
        self.mean += delta * (b / total)
        self.m2 += m2b + delta * delta * (self.count * b / total)
        self.count = total

    def mean_stderr(self) -> tuple[float, float]:
        """The mean and its standard error, as :func:`_mean_stderr` (``nan`` for one sample).

        Returns:
            ``(mean, stderr)``.
        """
        if self.count < 2:
            return self.mean, math.nan
        return self.mean, math.sqrt(max(self.m2, 0.0) / (self.count - 1)) / math.sqrt(self.count)


def _sample_until(
    draw: Callable[[int], Tensor],
    budget: int,
    batch_size: int,
    rtol: float | None,
    offset: float = 0.0,
) -> Tensor:
    """Draw sample batches until ``budget`` samples, or (adaptive) until the stderr target.

    The stopping test uses running statistics (``O(batch)`` per batch); the samples are
    concatenated once, at the end.

    Returns:
        All samples drawn, concatenated.
    """
    chunks: list[Tensor] = []
    stats = _RunningStats()
    m = 0
    min_samples = max(2 * batch_size, _MIN_ADAPTIVE_SAMPLES)
    while m < budget:
        b = min(batch_size, budget - m)
        chunks.append(draw(b))
        m += b
        if rtol is not None:
            stats.update(chunks[-1])
            if m >= min_samples:
                est, err = stats.mean_stderr()
                if _converged(offset + est, err, rtol):
                    break
    return torch.cat(chunks)


# ----- Hutchinson ------------------------------------------------------------------------------
def hutchinson_trace(
    A: Tensor | LinearOperator,
    num_matvecs: int | None = None,
    *,
    rtol: float | None = None,
    max_matvecs: int = 10_000,
    batch_size: int | None = None,
    distribution: Distribution = "rademacher",
    generator: torch.Generator | None = None,
) -> TraceResult:
    r"""Girard–Hutchinson trace estimator.

    .. math::
        \operatorname{tr}(A) \approx \frac{1}{m} \sum_{j=1}^{m} z_j^\top A z_j,
        \qquad \mathbb{E}[z z^\top] = I.

    Its variance is :math:`2(\|A\|_F^2 - \sum_i A_{ii}^2)/m` with Rademacher probes and
    :math:`2\|A\|_F^2/m` with Gaussian ones; ``stderr`` is the sample standard deviation of the
    :math:`z_j^\top A z_j` over :math:`\sqrt{m}`.

    References: Girard (1989); Hutchinson, "A stochastic estimator of the trace of the influence
    matrix for Laplacian smoothing splines", Comm. Stat. Simul. Comput. 18 (1989).

    Args:
        A: square symmetric ``(n, n)`` tensor or operator.
        num_matvecs: fixed budget: the number of probes (= products). Give this or ``rtol``.
        rtol: adaptive mode: draw batches of probes until
            ``stderr <= rtol * |estimate|`` (checked once at least two batches and 10 samples
            are in) or ``max_matvecs`` are spent (then a ``RuntimeWarning`` is issued).
        max_matvecs: budget cap in adaptive mode.
        batch_size: probes multiplied per block product; default 32 in adaptive mode, else as
            many as fit in ``2**24`` entries (at least 32).
        distribution: ``"rademacher"`` (default; exact on diagonal matrices), ``"gaussian"`` or
            ``"sphere"``.
        generator: source of randomness.

    Returns:
        A :class:`TraceResult` with ``samples`` the ``m`` quadratic forms.

    Raises:
        ValueError: if ``A`` is not square, not exactly one of ``num_matvecs``/``rtol`` is given,
            a count is out of range, ``distribution`` is unknown, or the operator returned
            NaN/Inf.
        TypeError: if ``A`` is neither a tensor nor an operator, or a count is not an int.

    Example:
        >>> import torch
        >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
        >>> r = hutchinson_trace(A, 10, generator=torch.Generator().manual_seed(0))
        >>> r.estimate, r.num_matvecs  # Rademacher probes are exact on a diagonal
        (5050.0, 10)
        >>> r.stderr < 1e-10  # exact: only the rounding floor sqrt(n) eps |trace|
        True
    """
    budget, tol = _parse_mode(num_matvecs, rtol, max_matvecs, batch_size, 1, "hutchinson_trace")
    prod = _Products(A, distribution, generator)
    bs = _block_size(batch_size, prod.n, tol is not None)
    samples = _sample_until(lambda b: _quadratic_forms(prod, b, None), budget, bs, tol)
    est, err = _mean_stderr(samples)
    res = _with_rounding(TraceResult(est, err, prod.count, "hutchinson", samples), prod)
    if tol is not None and not _converged(est, err, tol):
        _warn_unconverged("hutchinson_trace", res, tol, budget)
    return res


def _with_rounding(res: TraceResult, prod: _Products) -> TraceResult:
    """``res`` with its standard error floored at the rounding of the estimate.

    An exact trace (identical samples, or a sketch that spans the range) has zero sampling error
    but not zero rounding error: ``n`` products and sums in the operator's dtype. Without the
    floor it would report a standard error below its own rounding error.

    Returns:
        ``res`` with ``stderr = hypot(stderr, sqrt(n) eps scale)``, ``scale`` the largest of
        ``|estimate|`` and the mean absolute sample (``nan`` stays ``nan``).
    """
    if math.isnan(res.stderr):
        return res
    scale = abs(res.estimate)
    if res.samples is not None and res.samples.numel():
        scale = max(scale, float(res.samples.abs().mean()))
    floor = math.sqrt(prod.n) * torch.finfo(prod.op.dtype).eps * scale
    return dataclasses.replace(res, stderr=math.hypot(res.stderr, floor))


# ----- Hutch++ ---------------------------------------------------------------------------------
def hutchpp_trace(
    A: Tensor | LinearOperator,
    num_matvecs: int | None = None,
    *,
    rtol: float | None = None,
    max_matvecs: int = 10_000,
    sketch_size: int | None = None,
    batch_size: int | None = None,
    distribution: Distribution = "rademacher",
    generator: torch.Generator | None = None,
) -> TraceResult:
    r"""Hutch++: exact trace on a sketched range plus Hutchinson on the deflated rest.

    With ``k`` sketch vectors ``S``, ``Q = orth(A S)`` and ``h`` fresh probes ``g_j``:

    .. math::
        \operatorname{tr}(A) \approx \operatorname{tr}(Q^\top A Q)
        + \frac{1}{h} \sum_{j=1}^{h} g_j^\top (I - QQ^\top) A (I - QQ^\top) g_j .

    It costs ``2k + h`` products (just ``2n`` when ``k >= n``: the sketch then spans
    everything and the result is exact); the fixed-budget split is ``k = num_matvecs // 3`` and
    ``h = num_matvecs - 2k``. ``stderr`` is the sample standard deviation of the deflated
    quadratic forms over :math:`\sqrt{h}` (the first term is exact given ``Q``). Adaptive mode
    builds the sketch once (``sketch_size`` vectors) and then adds deflated probes until the
    target is met.

    Reference: Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal Stochastic Trace Estimation",
    SOSA 2021.

    Args:
        A: square symmetric ``(n, n)`` tensor or operator.
        num_matvecs: fixed total budget, ``>= 3``. Give this or ``rtol``.
        rtol: adaptive mode: stop when ``stderr <= rtol * |estimate|`` (at least two batches and
            10 deflated probes) or when ``max_matvecs`` are spent (``RuntimeWarning``).
        max_matvecs: budget cap in adaptive mode (``>= 3``).
        sketch_size: sketch vectors ``k`` in adaptive mode; default ``min(32,
            (max_matvecs - 1) // 2)``. Ignored in fixed mode.
        batch_size: deflated probes multiplied per block product; default 32 in adaptive mode,
            else as many as fit in ``2**24`` entries (at least 32).
        distribution: ``"rademacher"`` (default), ``"gaussian"`` or ``"sphere"``.
        generator: source of randomness.

    Returns:
        A :class:`TraceResult`; ``samples`` holds ``tr(Q^T A Q) + g_j^T (I-QQ^T) A (I-QQ^T) g_j``.

    Raises:
        ValueError: if ``A`` is not square, not exactly one of ``num_matvecs``/``rtol`` is given,
            the budget is below 3, ``distribution`` is unknown, or the operator returned NaN/Inf.
        TypeError: if ``A`` is neither a tensor nor an operator, or a count is not an int.

    Example:
        >>> import torch
        >>> U = torch.randn(200, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        >>> A = U @ U.T  # rank 5 < sketch size 10: the sketch captures all of A
        >>> r = hutchpp_trace(A, 30, generator=torch.Generator().manual_seed(0))
        >>> abs(r.estimate - float(A.trace())) < 1e-10 * float(A.trace()), r.num_matvecs
        (True, 30)
    """
    budget, tol = _parse_mode(num_matvecs, rtol, max_matvecs, batch_size, 3, "hutchpp_trace")
    prod = _Products(A, distribution, generator)
    bs = _block_size(batch_size, prod.n, tol is not None)
    if tol is None:
        k = budget // 3
    else:
        k = (
            _ADAPTIVE_BATCH
            if sketch_size is None
            else check_positive_int(sketch_size, "sketch_size")
        )
        k = max(1, min(k, (budget - 1) // 2))
    k = min(k, prod.n)
    Q = _orth(prod(prod.probes(k)))
    AQ = prod(Q)
    exact = float((Q.double() * AQ.double()).sum())
    if Q.shape[1] >= prod.n:  # the sketch spans R^n: tr(Q^T A Q) is the trace
        return _with_rounding(TraceResult(exact, 0.0, prod.count, "hutch++", None), prod)
    samples = _sample_until(
        lambda b: _quadratic_forms(prod, b, Q), budget - prod.count, bs, tol, exact
    )
    est, err = _mean_stderr(samples)
    res = TraceResult(exact + est, err, prod.count, "hutch++", exact + samples)
    res = _with_rounding(res, prod)
    if tol is not None and not _converged(res.estimate, err, tol):
        _warn_unconverged("hutchpp_trace", res, tol, budget)
    return res


# ----- XTrace ----------------------------------------------------------------------------------
class _XTraceState:
    r"""Test vectors ``Ω``, ``A Ω = Q R`` and ``Z = A Q``, grown block by block.

    A new block is orthogonalized against ``Q`` by block classical Gram–Schmidt with
    reorthogonalization (twice, then once more after normalization so that a block that is
    numerically inside ``range(Q)`` still yields orthonormal new columns); the products ``A Q``
    of earlier columns are kept, so each test vector costs exactly two products.
    """

    def __init__(self, prod: _Products) -> None:
        self.prod = prod
        n, dt, dev = prod.n, prod.work, prod.op.device
        self.Omega = torch.zeros(n, 0, dtype=dt, device=dev)
        self.Q = torch.zeros(n, 0, dtype=dt, device=dev)
        self.Z = torch.zeros(n, 0, dtype=dt, device=dev)
        self.R = torch.zeros(0, 0, dtype=dt, device=dev)

    @property
    def size(self) -> int:
        return self.Omega.shape[1]

    def add(self, Omega: Tensor) -> None:
        """Append test vectors ``Omega`` (``(n, b)``, ``size + b <= n``): ``2 b`` products."""
        Y = self.prod(Omega)
        Q, s, b = self.Q, self.size, Omega.shape[1]
        if s == 0:
            Qn, Rn = torch.linalg.qr(Y)
            C = Y.new_zeros(0, b)
        else:
            C = Q.T @ Y
            Y = Y - Q @ C
            C2 = Q.T @ Y
            Y = Y - Q @ C2
            C = C + C2
            Qa, Ra = torch.linalg.qr(Y)
            D = Q.T @ Qa
            Qn, Rb = torch.linalg.qr(Qa - Q @ D)
            # Y_new = Q C + Qa Ra = Q (C + D Ra) + Qn (Rb Ra)
            C = C + D @ Ra
            Rn = Rb @ Ra
        R = self.R.new_zeros(s + b, s + b)
        R[:s, :s] = self.R
        R[:s, s:] = C
        R[s:, s:] = Rn
        self.R = R
        self.Q = torch.cat([Q, Qn], 1)
        self.Z = torch.cat([self.Z, self.prod(Qn)], 1)
        self.Omega = torch.cat([self.Omega, Omega], 1)

    def estimates(self) -> tuple[Tensor, bool]:
        """Leave-one-out estimates (see :func:`xtrace` for the formulas).

        Returns:
            The ``s`` estimates ``t_i`` (float64) and whether ``Y`` was rank-deficient (or ``Q``
            spans the whole space), in which case the result is exact for low-rank ``A``.
        """
        n, s, work = self.prod.n, self.size, self.prod.work
        improved = self.prod.distribution == "sphere"
        R = self.R.double()
        H = self.Q.double().T @ self.Z.double()
        H = (H + H.T) / 2
        if self.Q.shape[1] >= n:  # Q is a basis of R^n: tr(Q^T A Q) is the exact trace
            return torch.full((s,), float(torch.trace(H)), dtype=torch.float64), True
        W = self.Q.double().T @ self.Omega.double()
        U, sv, Vh = torch.linalg.svd(R)
        eps = torch.finfo(work).eps
        r = int((sv > eps**0.5 * sv[0]).sum()) if float(sv[0]) > 0 else 0
        if r == s:
            eye = torch.eye(s, dtype=torch.float64, device=R.device)
            S = torch.linalg.solve_triangular(R.T, eye, upper=False)  # R^{-T}
            S = S / S.norm(dim=0, keepdim=True)
            HS, HW = H @ S, H @ W
            c = (S * W).sum(0)
            sHs = (S * HS).sum(0)
            resid = (
                (W * HW).sum(0)
                - (W * R).sum(0)
                + 2 * c * ((S * R).sum(0) - (S * HW).sum(0))
                + c**2 * sHs
            )
            if improved:
                norm2 = self.Omega.double().pow(2).sum(0)
                resid = resid * (n - s + 1) / (norm2 - W.pow(2).sum(0) + c**2)
            return torch.trace(H) - sHs + resid, False
        # Numerically rank-deficient Y = Q_r R_r (rank r < s, R_r = U_r^T R full row rank).
        # Column i is "essential" when dropping it lowers the rank, i.e. when e_i is orthogonal
        # to null(R); then P_i = Q_r (I - s_i s_i^T) Q_r^T with s_i the normalized
        # (R_r^+)^T e_i, as in the full-rank case. Otherwise (the generic case when A has rank
        # r < s) range(Y without i) = range(Y) and P_i = Q_r Q_r^T. Both are evaluated
        # explicitly in O(n s r) from (I - P_i) ω_i = ω_i - Q_r v_i and
        # A (I - P_i) ω_i = y_i - (A Q_r) v_i with v_i = w_i - c_i s_i.
        Ur = U[:, :r]
        Hr, Wr, Rr = Ur.T @ H @ Ur, Ur.T @ W, Ur.T @ R
        null_rows = Vh[r:].T.norm(dim=1)  # ||row i of a null(R) basis||
        essential = null_rows <= eps**0.25
        S = torch.linalg.pinv(Rr).T * essential  # (r, s); zero columns where not essential
        S = S / S.norm(dim=0, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
        c = (S * Wr).sum(0)
        V = (Wr - S * c).to(work)
        Qr, Zr = self.Q @ Ur.to(work), self.Z @ Ur.to(work)
        U1 = self.Omega - Qr @ V  # (I - P_i) ω_i
        U2 = self.Q @ self.R - Zr @ V  # A (I - P_i) ω_i
        resid = (U1.double() * U2.double()).sum(0)
        if improved:
            dim = r - essential.double()
            resid = resid * (n - dim) / U1.double().pow(2).sum(0)
        return torch.trace(Hr) - (S * (Hr @ S)).sum(0) + resid, True


def xtrace(
    A: Tensor | LinearOperator,
    num_matvecs: int | None = None,
    *,
    rtol: float | None = None,
    max_matvecs: int = 10_000,
    distribution: Distribution = "sphere",
    generator: torch.Generator | None = None,
) -> TraceResult:
    r"""XTrace: exchangeable (leave-one-out) Hutch++ that uses every product twice.

    With ``s = num_matvecs // 2`` test vectors ``Ω``, ``Y = AΩ = QR`` and ``H = Q^T A Q``, each
    test vector ``ω_i`` is held out in turn: ``P_i`` projects onto the range of ``Y`` without
    column ``i`` and

    .. math::
        t_i = \operatorname{tr}(A P_i) + \omega_i^\top (I - P_i) A (I - P_i)\, \omega_i,
        \qquad \widehat{\operatorname{tr}} = \frac{1}{s}\sum_i t_i,
        \qquad \text{stderr} = \operatorname{std}(t) / \sqrt{s}.

    Each :math:`t_i` is unbiased (``P_i`` does not depend on ``ω_i``), but the ``t_i`` share their
    test vectors and are positively correlated, so ``stderr`` (the paper's error estimate) is
    optimistic: over many seeds the RMS of ``(estimate - tr) / stderr`` is 1.2-1.75 in our tests
    and benchmark, where Hutchinson's and Hutch++'s are 1 within noise. The :math:`t_i` are
    computed in ``O(n s^2)`` without forming any ``P_i``: with ``S = R^{-T}`` column-normalized
    (``s_i``), ``W = Q^T Ω`` (``w_i``), ``r_i`` column ``i`` of ``R`` and ``c_i = s_i^T w_i``,

    .. math::
        t_i = \operatorname{tr} H - s_i^\top H s_i + w_i^\top H w_i - w_i^\top r_i
        + 2 c_i (s_i^\top r_i - s_i^\top H w_i) + c_i^2\, s_i^\top H s_i

    (``P_i = Q (I - s_i s_i^T) Q^T``, and ``A ω_i = Q r_i``, ``ω_i^T A Q = r_i^T`` by symmetry).
    With ``distribution="sphere"`` the held-out term is rescaled as if ``(I - P_i) ω_i`` had
    squared norm ``n - s + 1`` (the paper's "improved" XTrace, still unbiased).

    **Rank-deficient** ``Y`` (``A`` of rank below ``s``, a spectrum that falls below
    ``sqrt(eps)`` of its top, or dependent test vectors): the singular values of ``R`` above
    ``sqrt(eps) σ_max`` give a numerical rank ``r < s`` and a basis ``Q_r`` of the numerical range,
    and ``R^{-T}`` no longer exists. The leave-one-out projectors are then formed from the
    null space of ``R``: if column ``i`` takes part in a dependency, dropping it leaves the range
    unchanged and ``P_i = Q_r Q_r^T``; otherwise ``P_i = Q_r (I - s_i s_i^T) Q_r^T`` with ``s_i``
    from the pseudo-inverse of ``Q_r^T Y``; both terms of ``t_i`` are evaluated explicitly in
    ``O(n s r)``. When ``A`` has rank ``r < s`` every column is of the first kind, ``range(Q_r)
    = range(A)`` is mapped into itself by ``A``, the held-out terms vanish and the result is the
    exact trace with a rounding-level ``stderr``. If ``s >= n`` the basis ``Q`` spans ``R^n``
    and the exact ``tr(H)`` is returned.

    Adaptive mode starts with 8 test vectors and doubles their number (keeping ``Q``, ``R`` and
    ``A Q`` of earlier blocks, extended by block Gram–Schmidt) until
    ``stderr <= rtol * |estimate|`` (checked from 16 test vectors on, or at once when ``Y`` is
    rank-deficient), ``max_matvecs`` is spent (``RuntimeWarning``) or ``s`` reaches ``n``.

    Reference: Epperly, Tropp & Webber, "XTrace: Making the Most of Every Sample in Stochastic
    Trace Estimation", SIAM J. Matrix Anal. Appl. 45 (2024).

    Args:
        A: square symmetric ``(n, n)`` tensor or operator.
        num_matvecs: fixed budget, ``>= 4``; ``num_matvecs // 2`` test vectors (an odd budget
            leaves one product unused; ``num_matvecs`` of the result says what was spent) and at
            most ``n`` of them.
        rtol: adaptive mode target (give this or ``num_matvecs``).
        max_matvecs: budget cap in adaptive mode (``>= 4``).
        distribution: ``"sphere"`` (default: the paper's improved XTrace; against Rademacher
            test vectors at n = 2000 over 100 seeds it had 1.3x lower error on a slowly
            decaying spectrum, 0.8x at 300 products on a fast-decaying one, and equal error
            otherwise), ``"rademacher"`` or ``"gaussian"``.
        generator: source of randomness.

    Returns:
        A :class:`TraceResult` whose ``samples`` are the ``s`` leave-one-out estimates ``t_i``.

    Raises:
        ValueError: if ``A`` is not square, not exactly one of ``num_matvecs``/``rtol`` is given,
            the budget is below 4, ``distribution`` is unknown, or the operator returned NaN/Inf.
        TypeError: if ``A`` is neither a tensor nor an operator, or a count is not an int.

    Example:
        >>> import torch
        >>> from subspaces.testing import geometric_spectrum, matrix_with_spectrum
        >>> g = torch.Generator().manual_seed(0)
        >>> A = matrix_with_spectrum(geometric_spectrum(300, 0.8), generator=g)
        >>> r = xtrace(A, 60, generator=g)  # 30 test vectors capture the top eigenvalues
        >>> tr = float(A.trace())
        >>> abs(r.estimate - tr) / tr < 1e-3, r.stderr / tr < 1e-3
        (True, True)
        >>> U = torch.randn(300, 4, dtype=torch.float64, generator=g)
        >>> r = xtrace(U @ U.T, 20, generator=g)  # rank 4 < 10 test vectors: exact
        >>> abs(r.estimate - float((U * U).sum())) < 1e-10 * r.estimate
        True
    """
    budget, tol = _parse_mode(num_matvecs, rtol, max_matvecs, 1, 4, "xtrace")
    prod = _Products(A, distribution, generator)
    n = prod.n
    state = _XTraceState(prod)
    if tol is None:
        state.add(prod.probes(min(budget // 2, n)))
        samples, _ = state.estimates()
    else:
        target = min(_XTRACE_START, budget // 2, n)
        while True:
            state.add(prod.probes(target - state.size))
            samples, deficient = state.estimates()
            est, err = _mean_stderr(samples)
            done = (state.size >= 2 * _XTRACE_START or deficient) and _converged(est, err, tol)
            target = min(2 * state.size, budget // 2, n)
            if done or target <= state.size:
                break
    est, err = _mean_stderr(samples)
    if state.Q.shape[1] >= n:  # exact: Q spans R^n
        err = 0.0
    res = _with_rounding(TraceResult(est, err, prod.count, "xtrace", samples), prod)
    if tol is not None and not _converged(est, err, tol) and state.size < n:
        _warn_unconverged("xtrace", res, tol, budget)
    return res


# ----- diagonal --------------------------------------------------------------------------------
class _RunningMoments:
    """Entry-wise running mean and sum of squared deviations over column batches (Chan et al.)."""

    def __init__(self, n: int, device: torch.device) -> None:
        self.count = 0
        self.mean = torch.zeros(n, dtype=torch.float64, device=device)
        self.m2 = torch.zeros(n, dtype=torch.float64, device=device)

    def update(self, X: Tensor) -> None:
        b = X.shape[1]
        mb = X.mean(1)
        m2b = (X - mb.unsqueeze(1)).pow(2).sum(1)
        total = self.count + b
        delta = mb - self.mean
        self.mean = self.mean + delta * (b / total)
        self.m2 = self.m2 + m2b + delta.pow(2) * (self.count * b / total)
        self.count = total

    def stderr(self) -> Tensor:
        if self.count < 2:
            return torch.full_like(self.mean, math.nan)
        return (self.m2 / (self.count - 1)).sqrt() / math.sqrt(self.count)


def diagonal(
    A: Tensor | LinearOperator,
    num_matvecs: int,
    *,
    method: DiagonalMethod = "hutchinson",
    batch_size: int | None = None,
    distribution: Distribution = "rademacher",
    generator: torch.Generator | None = None,
) -> DiagonalResult:
    r"""Stochastic estimate of ``diag(A)`` with entry-wise standard errors.

    ``method="hutchinson"`` (Bekas, Kokiopoulou & Saad 2007) averages probes ``z ⊙ Az``:

    .. math::
        \operatorname{diag}(A) \approx \frac{1}{m} \sum_{j=1}^{m} z_j \odot A z_j ,

    unbiased for any probe with :math:`\mathbb{E}[zz^\top] = I`; with Rademacher probes entry
    ``i`` has variance :math:`\sum_{l \ne i} A_{il}^2 / m`, so a diagonal ``A`` is recovered
    exactly. ``method="diag++"`` (Baston & Nakatsukasa 2022) spends ``k = num_matvecs // 3``
    products on a sketch ``Q = orth(A S)`` and ``k`` on ``A Q``, takes
    :math:`\operatorname{diag}(QQ^\top A)` exactly and estimates the rest with the remaining
    probes:

    .. math::
        \operatorname{diag}(A) \approx \operatorname{diag}(Q (AQ)^\top)
        + \frac{1}{h}\sum_{j=1}^{h} z_j \odot (I - QQ^\top) A z_j ,

    which is exact when ``rank(A) <= k`` (and returned after ``2n`` products when ``k >= n``)
    and much more accurate than Hutchinson when a few
    eigenvalues dominate (it is not exact on a full-rank diagonal ``A``: the deflated residual
    ``(I - QQ^T) A`` is no longer diagonal).

    References: Bekas, Kokiopoulou & Saad, "An estimator for the diagonal of a matrix",
    Appl. Numer. Math. 57 (2007); Baston & Nakatsukasa, "Stochastic diagonal estimation:
    probabilistic bounds and an improved algorithm", arXiv:2201.10684 (2022).

    Args:
        A: square symmetric ``(n, n)`` tensor or operator.
        num_matvecs: total budget (``>= 1`` for Hutchinson, ``>= 3`` for Diag++).
        method: ``"hutchinson"`` or ``"diag++"``.
        batch_size: probes multiplied per block product; default as many as fit in ``2**24``
            entries (at least 32).
        distribution: ``"rademacher"`` (default), ``"gaussian"`` or ``"sphere"``.
        generator: source of randomness.

    Returns:
        A :class:`DiagonalResult` (estimate and stderr in ``A``'s dtype).

    Raises:
        ValueError: if ``A`` is not square, the budget is too small for the method, ``method`` or
            ``distribution`` is unknown, or the operator returned NaN/Inf.
        TypeError: if ``A`` is neither a tensor nor an operator, or a count is not an int.

    Example:
        >>> import torch
        >>> d = torch.arange(1.0, 6.0, dtype=torch.float64)
        >>> r = diagonal(torch.diag(d), 4, generator=torch.Generator().manual_seed(0))
        >>> r.estimate.tolist(), float(r.stderr.max())
        ([1.0, 2.0, 3.0, 4.0, 5.0], 0.0)
        >>> U = torch.randn(50, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        >>> r = diagonal(U @ U.T, 12, method="diag++", generator=torch.Generator().manual_seed(1))
        >>> torch.allclose(r.estimate, (U * U).sum(1)), r.num_matvecs
        (True, 12)
    """
    method = check_choice(method, "method", DIAGONAL_METHODS)  # type: ignore[assignment]
    check_positive_int(num_matvecs, "num_matvecs")
    if batch_size is not None:
        check_positive_int(batch_size, "batch_size")
    minimum = 3 if method == "diag++" else 1
    if num_matvecs < minimum:
        raise ValueError(
            f"diagonal(method={method!r}) needs num_matvecs >= {minimum}, got {num_matvecs}"
        )
    prod = _Products(A, distribution, generator)
    bs = _block_size(batch_size, prod.n, False)
    exact = torch.zeros(prod.n, dtype=torch.float64, device=prod.op.device)
    Q: Tensor | None = None
    if method == "diag++":
        Q = _orth(prod(prod.probes(min(num_matvecs // 3, prod.n))))
        exact = (Q.double() * prod(Q).double()).sum(1)
        if Q.shape[1] >= prod.n:  # the sketch spans R^n: diag(Q Q^T A) is the diagonal
            zero = torch.zeros_like(exact, dtype=prod.op.dtype)
            return DiagonalResult(exact.to(prod.op.dtype), zero, prod.count, method)
    moments = _RunningMoments(prod.n, prod.op.device)
    while prod.count < num_matvecs:
        Z = prod.probes(min(bs, num_matvecs - prod.count))
        AZ = prod(Z)
        if Q is not None:
            AZ = AZ - Q @ (Q.T @ AZ)
        moments.update(Z.double() * AZ.double())
    dtype = prod.op.dtype
    return DiagonalResult(
        (exact + moments.mean).to(dtype), moments.stderr().to(dtype), prod.count, method
    )
