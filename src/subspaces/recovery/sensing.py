"""Matrix sensing by factored gradient descent, exact and over-parameterized.

A Gaussian linear measurement operator ``A(M)_i = <A_i, M> / sqrt(m)`` (:class:`Measurements`,
drawn by :func:`gaussian_measurements`; RIP-scaled so that ``E ||A(M)||^2 = ||M||_F^2``) observes
a low-rank matrix ``M*`` (:func:`psd_target`). Gradient descent on the factored least-squares loss
``f = 1/4 ||A(X X^T) - y||^2`` (:func:`symmetric_gd`) or ``1/2 ||A(F G^T) - y||^2``
(:func:`asymmetric_gd`) recovers it. Xiong, Ding and Du (ICLR 2024, "How over-parameterization
slows down gradient descent in matrix sensing: the curses of symmetry and initialization",
arXiv:2310.01769) show:

- symmetric, exact rank ``k = r``: linear convergence; over-parameterized ``k > r`` from a small
  random initialization: the error cannot beat ``Omega(1 / T^2)`` (sublinear);
- asymmetric ``F G^T`` with ``k > r``: linear convergence, but at a rate ``exp(-Omega(alpha^2 T))``
  that depends on the initialization scale ``alpha``;
- modifying a single step of GD (a re-scaling of the factors that keeps ``F G^T`` and creates
  imbalance between ``F`` and ``G``) gives a linear rate independent of ``alpha``.

The one-step modification implemented here (``rebalance_at`` of :func:`asymmetric_gd`) is the
variant recorded in the project's research notes (paper's exact algorithm not re-checked): at step
``T1`` take the thin SVD ``G = P S Q^T`` and set ``G <- G (G^T G)^{-1/2} = P Q^T`` and
``F <- F (G^T G)^{1/2} = F Q S Q^T``. ``F G^T`` is unchanged, every singular value of ``G``
becomes 1, and the components of ``F`` in the nuisance directions (where ``S`` is tiny, of order
``alpha``) are shrunk by ``S``; afterwards they decay at a rate set by ``||G|| = 1``, not by
``alpha``.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float, check_positive_int

__all__ = [
    "FactoredResult",
    "Measurements",
    "asymmetric_gd",
    "gaussian_measurements",
    "psd_target",
    "symmetric_gd",
]


def _check_dtype(dtype: object) -> torch.dtype:
    """Return ``dtype`` if it is a real floating torch dtype, else raise ``TypeError``."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a real floating torch.dtype, got {dtype!r}")
    return dtype


def _work_dtype(dtype: torch.dtype) -> torch.dtype:
    """QR and SVD run in at least float32 (no float16/bfloat16 CPU kernels)."""
    return dtype if dtype in (torch.float32, torch.float64) else torch.float32


@dataclass(frozen=True)
class Measurements:
    """The linear map ``A(M)_i = <A_i, M> / sqrt(m)`` given by ``m`` sensing matrices.

    Stored as one ``(m, n1 * n2)`` matrix, so applying ``A`` or its adjoint
    ``A*(z) = sum_i z_i A_i / sqrt(m)`` is a single (batched) tensor contraction.

    Args:
        matrices: ``(m, n1, n2)`` floating tensor of the sensing matrices ``A_i``.
        symmetric: whether every ``A_i`` is symmetric (then ``A`` only sees the symmetric part
            of its argument).

    Raises:
        TypeError: if ``matrices`` is not a floating tensor.
        ValueError: if it is not 3-d, is empty, holds NaN/Inf, or is claimed symmetric but is not.

    Example:
        >>> meas = Measurements(torch.eye(2, dtype=torch.float64)[None].repeat(4, 1, 1))
        >>> meas.num_measurements, meas.shape
        (4, (2, 2))
        >>> meas.apply(torch.eye(2, dtype=torch.float64))  # trace / sqrt(4)
        tensor([1., 1., 1., 1.], dtype=torch.float64)
    """

    matrices: Tensor
    symmetric: bool = False

    def __post_init__(self) -> None:
        A = check_float_tensor(self.matrices, "matrices", ndim=3)
        if A.numel() == 0:
            raise ValueError(f"matrices must be non-empty, got shape {tuple(A.shape)}")
        check_finite(A, "matrices")
        if self.symmetric and (
            A.shape[1] != A.shape[2] or not torch.allclose(A, A.transpose(1, 2))
        ):
            raise ValueError("symmetric=True but the sensing matrices are not symmetric")

    @property
    def num_measurements(self) -> int:
        """Number ``m`` of measurements."""
        return int(self.matrices.shape[0])

    @property
    def shape(self) -> tuple[int, int]:
        """``(n1, n2)``, the shape of the sensed matrices."""
        return (int(self.matrices.shape[1]), int(self.matrices.shape[2]))

    def _flat(self) -> Tensor:
        return self.matrices.reshape(self.num_measurements, -1)

    @functools.cached_property
    def _packed(self) -> tuple[Tensor, Tensor, Tensor]:
        """Symmetric matrices: the ``(m, n(n+1)/2)`` upper triangles and their indices.

        ``<A_i, M> = <A_i, sym(M)>`` only needs the upper triangle of each ``A_i`` (with the
        off-diagonal entries of ``M + M^T``), so applying ``A`` or ``A*`` reads half the data.
        Built once, on first use (the instance is frozen; the cache is in ``__dict__``).
        """
        n = self.shape[0]
        iu = torch.triu_indices(n, n, device=self.matrices.device)
        return self.matrices[:, iu[0], iu[1]].contiguous(), iu[0], iu[1]

    def apply(self, M: Tensor) -> Tensor:
        """``A(M)``: the ``m`` measurements of ``M`` (or of each matrix of a batch).

        Args:
            M: ``(..., n1, n2)`` tensor.

        Returns:
            ``(..., m)`` tensor ``<A_i, M> / sqrt(m)``.

        Raises:
            ValueError: if the trailing shape of ``M`` is not ``(n1, n2)``.
        """
        if M.ndim < 2 or tuple(M.shape[-2:]) != self.shape:
            raise ValueError(f"M must have trailing shape {self.shape}, got {tuple(M.shape)}")
        M = M.to(self.matrices.dtype)
        scale = 1 / math.sqrt(self.num_measurements)
        if self.symmetric:
            P, r, c = self._packed
            both = M + M.transpose(-1, -2)  # off-diagonal: M_jk + M_kj; diagonal: 2 M_jj
            v = both[..., r, c]
            v = torch.where(r == c, v / 2, v)
            return (v @ P.T) * scale
        return (M.reshape(*M.shape[:-2], -1) @ self._flat().T) * scale

    def adjoint(self, z: Tensor) -> Tensor:
        """``A*(z) = sum_i z_i A_i / sqrt(m)`` (or of each vector of a batch).

        Args:
            z: ``(..., m)`` tensor.

        Returns:
            ``(..., n1, n2)`` tensor.

        Raises:
            ValueError: if the last dimension of ``z`` is not ``m``.
        """
        if z.ndim < 1 or z.shape[-1] != self.num_measurements:
            raise ValueError(
                f"z must have last dimension {self.num_measurements}, got {tuple(z.shape)}"
            )
        z = z.to(self.matrices.dtype)
        scale = 1 / math.sqrt(self.num_measurements)
        if self.symmetric:
            P, r, c = self._packed
            tri = (z @ P) * scale
            out = tri.new_zeros(*z.shape[:-1], *self.shape)
            out[..., r, c] = tri
            out[..., c, r] = tri
            return out
        return ((z @ self._flat()) * scale).reshape(*z.shape[:-1], *self.shape)


def gaussian_measurements(
    m: int,
    n: int,
    n2: int | None = None,
    *,
    symmetric: bool = True,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> Measurements:
    """Draw ``m`` Gaussian sensing matrices, RIP-scaled.

    General: ``A_i`` has i.i.d. ``N(0, 1)`` entries. Symmetric: ``A_i = (B_i + B_i^T) / 2`` with
    ``B_i`` i.i.d. ``N(0, 1)``, so ``<A_i, M> = <B_i, M>`` for symmetric ``M``. Either way
    ``E ||A(M)||^2 = ||M||_F^2`` for the matrices ``A`` sees, and ``A`` satisfies the restricted
    isometry property on rank-``r`` matrices once ``m >~ n r`` (Recht, Fazel, Parrilo 2010).

    Args:
        m: number of measurements.
        n: number of rows ``n1``.
        n2: number of columns (default ``n``; must equal ``n`` when ``symmetric``).
        symmetric: draw symmetric sensing matrices.
        dtype: floating dtype.
        generator: source of randomness.

    Returns:
        The :class:`Measurements`.

    Raises:
        TypeError: if a size is not an int or ``dtype`` is not a floating dtype.
        ValueError: if a size is < 1, or ``symmetric`` with ``n2 != n``.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> meas = gaussian_measurements(4000, 5, generator=g)
        >>> M = torch.eye(5, dtype=torch.float64)
        >>> abs(float(meas.apply(M).norm() ** 2) / 5 - 1) < 0.1  # E ||A(M)||^2 = ||M||_F^2
        True
    """
    m = check_positive_int(m, "m")
    n = check_positive_int(n, "n")
    n2 = n if n2 is None else check_positive_int(n2, "n2")
    if symmetric and n2 != n:
        raise ValueError(f"symmetric sensing matrices must be square, got n={n}, n2={n2}")
    dtype = _check_dtype(dtype)
    B = torch.randn(m, n, n2, dtype=dtype, generator=generator)
    if symmetric:
        B = (B + B.transpose(1, 2)) / 2
    return Measurements(B, symmetric=symmetric)


def psd_target(
    n: int,
    rank: int,
    *,
    condition: float = 1.0,
    dtype: torch.dtype = torch.float64,
    generator: torch.Generator | None = None,
) -> Tensor:
    """A factor ``X*`` of a random PSD target ``M* = X* X*^T`` with ``||M*||_2 = 1``.

    The eigenvalues of ``M*`` are spaced evenly from ``1`` down to ``1 / condition``; the
    eigenvectors are a uniformly random orthonormal set (drawn and orthonormalized in float32 for
    float16/bfloat16, then rounded).

    Args:
        n: dimension.
        rank: rank ``r``, ``1 <= r <= n``.
        condition: condition number ``kappa >= 1`` of ``M*`` on its range.
        dtype: floating dtype.
        generator: source of randomness.

    Returns:
        ``(n, r)`` factor ``X*``.

    Raises:
        ValueError: if ``rank > n`` or ``condition < 1``.
        TypeError: if a size is not an int or ``dtype`` is not a floating dtype.

    Example:
        >>> X = psd_target(10, 2, condition=4.0, generator=torch.Generator().manual_seed(0))
        >>> torch.linalg.eigvalsh(X @ X.T)[-2:]
        tensor([0.2500, 1.0000], dtype=torch.float64)
    """
    n = check_positive_int(n, "n")
    rank = check_positive_int(rank, "rank")
    condition = check_positive_float(condition, "condition")
    if rank > n:
        raise ValueError(f"rank must be <= n = {n}, got {rank}")
    if condition < 1:
        raise ValueError(f"condition must be >= 1, got {condition}")
    dtype = _check_dtype(dtype)
    work = _work_dtype(dtype)
    Q = torch.linalg.qr(torch.randn(n, rank, dtype=work, generator=generator)).Q
    eig = torch.linspace(1.0, 1.0 / condition, rank, dtype=work) if rank > 1 else Q.new_ones(1)
    return (Q * eig.sqrt()).to(dtype)


@dataclass(frozen=True)
class FactoredResult:
    """Factors ``F, G`` of an estimate ``F G^T`` and the error history of the run.

    Attributes:
        F: ``(n1, k)`` left factor (``X`` for the symmetric parameterization).
        G: ``(n2, k)`` right factor (the same tensor as ``F`` for the symmetric one).
        errors: ``(steps + 1,)`` float64 history, entry ``t`` after ``t`` steps:
            ``||F G^T - M*||_F / ||M*||_F`` when a target was given, else the relative residual
            ``||A(F G^T) - y|| / ||y||``.
        rebalance_step: the step at which the one-step modification was applied, or ``None``.

    Example:
        >>> import torch
        >>> from subspaces.recovery import gaussian_measurements, psd_target, symmetric_gd
        >>> g = torch.Generator().manual_seed(0)
        >>> Xs = psd_target(10, 2, generator=g)
        >>> meas = gaussian_measurements(400, 10, generator=g)
        >>> M = Xs @ Xs.T
        >>> res = symmetric_gd(meas, meas.apply(M), 2, steps=500, target=M, generator=g)
        >>> res.G is res.F, tuple(res.errors.shape), res.rebalance_step
        (True, (501,), None)
        >>> err = torch.linalg.matrix_norm(res.estimate - M) / torch.linalg.matrix_norm(M)
        >>> bool(abs(err - res.errors[-1]) < 1e-12), float(res.errors[-1]) < 1e-8
        (True, True)
    """

    F: Tensor
    G: Tensor
    errors: Tensor
    rebalance_step: int | None = None

    @property
    def estimate(self) -> Tensor:
        """The ``(n1, n2)`` estimate ``F G^T``."""
        return self.F @ self.G.T


def _check_problem(
    meas: Measurements, y: Tensor, k: int, target: Tensor | None, *, symmetric: bool
) -> tuple[Tensor, Tensor | None]:
    if not isinstance(meas, Measurements):
        raise TypeError(f"meas must be a Measurements, got {type(meas).__name__}")
    y = check_float_tensor(y, "y", ndim=1)
    check_finite(y, "y")
    if y.shape[0] != meas.num_measurements:
        raise ValueError(f"y must have {meas.num_measurements} entries, got {y.shape[0]}")
    n1, n2 = meas.shape
    if symmetric and n1 != n2:
        raise ValueError(f"the symmetric parameterization needs square matrices, got {(n1, n2)}")
    k = check_positive_int(k, "k")
    if k > min(n1, n2):
        raise ValueError(f"rank k must be <= min(n1, n2) = {min(n1, n2)}, got {k}")
    if target is not None:
        target = check_float_tensor(target, "target", ndim=2)
        check_finite(target, "target")
        if tuple(target.shape) != (n1, n2):
            raise ValueError(f"target must have shape {(n1, n2)}, got {tuple(target.shape)}")
        if float(target.norm()) == 0:
            raise ValueError("target must be non-zero")
        target = target.to(meas.matrices.dtype)
    return y.to(meas.matrices.dtype), target


def _check_run(lr: float, steps: int, init_scale: float) -> tuple[float, int, float]:
    return (
        check_positive_float(lr, "lr"),
        check_positive_int(steps, "steps"),
        check_positive_float(init_scale, "init_scale"),
    )


def _error(est: Tensor, meas: Measurements, y: Tensor, target: Tensor | None) -> float:
    """Relative error of ``est`` (against ``target``, else the relative residual), in float64.

    Returns:
        The error, a float.
    """
    if target is not None:
        t64 = target.to(torch.float64)
        diff = est.to(torch.float64) - t64
        return float(torch.linalg.matrix_norm(diff) / torch.linalg.matrix_norm(t64))
    y64 = y.to(torch.float64)
    return float((meas.apply(est).to(torch.float64) - y64).norm() / y64.norm().clamp_min(1e-300))


def _check_diverged(error: float, step: int, lr: float) -> float:
    """Return ``error``, or raise if the iterate became non-finite (the step size blew it up).

    Raises:
        ValueError: if ``error`` is NaN or Inf.
    """
    if not math.isfinite(error):
        raise ValueError(
            f"the iteration diverged at step {step} (non-finite iterate): lr = {lr} is too large "
            "for this problem's scale; reduce lr"
        )
    return error


def symmetric_gd(
    meas: Measurements,
    y: Tensor,
    k: int,
    *,
    lr: float = 0.2,
    steps: int = 1000,
    init_scale: float = 1e-2,
    target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> FactoredResult:
    """Gradient descent on ``f(X) = 1/4 ||A(X X^T) - y||^2``, ``X`` in ``R^{n x k}``.

    ``X_{t+1} = X_t - lr * S_t X_t`` with ``S_t`` the symmetrized ``A*(A(X_t X_t^T) - y)``, from
    ``X_0 = init_scale * N(0, 1) / sqrt(n)``. Exact parameterization (``k = r``) converges
    linearly; over-parameterization (``k > r``) only sublinearly (Xiong, Ding, Du 2024).

    Args:
        meas: the measurement operator (square ``n x n`` matrices).
        y: ``(m,)`` measurements.
        k: number of columns of ``X`` (``<= n``; ``k > rank(M*)`` over-parameterizes).
        lr: step size.
        steps: number of GD steps.
        init_scale: ``alpha`` of the random initialization.
        target: the true ``M*`` to measure the error against (else the residual is recorded).
        generator: source of randomness for the initialization.

    Returns:
        :class:`FactoredResult` with ``F = G = X`` and the error after each step.

    Raises:
        ValueError: if ``k > n``, shapes do not match, ``y`` holds NaN/Inf, a parameter is not
            positive, or the iteration diverges (a non-finite iterate: ``lr`` too large).
        TypeError: if ``meas`` or ``y`` has the wrong type.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> Xs = psd_target(10, 2, generator=g)
        >>> meas = gaussian_measurements(400, 10, generator=g)
        >>> M = Xs @ Xs.T
        >>> res = symmetric_gd(meas, meas.apply(M), 2, steps=500, target=M, generator=g)
        >>> float(res.errors[-1]) < 1e-8
        True
    """
    y, target = _check_problem(meas, y, k, target, symmetric=True)
    lr, steps, init_scale = _check_run(lr, steps, init_scale)
    n = meas.shape[0]
    X = init_scale * torch.randn(n, k, dtype=y.dtype, generator=generator) / math.sqrt(n)
    errors = [_error(X @ X.T, meas, y, target)]
    for t in range(steps):
        S = meas.adjoint(meas.apply(X @ X.T) - y)
        S = (S + S.T) / 2
        X = X - lr * S @ X
        errors.append(_check_diverged(_error(X @ X.T, meas, y, target), t + 1, lr))
    return FactoredResult(X, X, torch.tensor(errors, dtype=torch.float64))


def asymmetric_gd(
    meas: Measurements,
    y: Tensor,
    k: int,
    *,
    lr: float = 0.2,
    steps: int = 1000,
    init_scale: float = 1e-2,
    rebalance_at: int | None = None,
    target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> FactoredResult:
    """Gradient descent on ``f(F, G) = 1/2 ||A(F G^T) - y||^2``, optionally with one modified step.

    ``F <- F - lr * R G``, ``G <- G - lr * R^T F`` (simultaneous) with ``R = A*(A(F G^T) - y)``,
    from ``F_0, G_0 = init_scale * N(0, 1) / sqrt(n)``. For ``k > r`` this converges linearly at a
    rate that degrades like ``alpha^2`` (Xiong, Ding, Du 2024). With ``rebalance_at = T1`` the
    step ``T1`` is replaced by the re-scaling ``G <- P Q^T``, ``F <- F Q S Q^T`` where
    ``G = P S Q^T`` (thin SVD): ``F G^T`` is unchanged, ``G`` becomes an isometry and the
    over-parameterized part of ``F`` shrinks by the tiny singular values of ``G``; the rate
    afterwards no longer depends on ``alpha`` (the variant of the paper's one-step modification
    recorded in the project notes; see the module docstring).

    Args:
        meas: the measurement operator (general ``n1 x n2`` sensing matrices; symmetric ones do
            not see the antisymmetric part of ``F G^T``).
        y: ``(m,)`` measurements.
        k: number of columns of ``F`` and ``G`` (``<= min(n1, n2)``).
        lr: step size.
        steps: number of steps (the modified one included).
        init_scale: ``alpha`` of the random initialization.
        rebalance_at: step ``T1`` in ``[0, steps)`` to replace by the re-balancing, or ``None``
            for vanilla GD.
        target: the true ``M*`` to measure the error against (else the residual is recorded).
        generator: source of randomness for the initialization.

    Returns:
        :class:`FactoredResult` with the factors and the error after each step.

    Raises:
        ValueError: if ``k > min(n1, n2)``, ``rebalance_at`` is out of range, shapes do not
            match, ``y`` holds NaN/Inf, a parameter is not positive, or the iteration diverges
            (a non-finite iterate: ``lr`` too large).
        TypeError: if ``meas`` or ``y`` has the wrong type.

    Example:
        >>> g = torch.Generator().manual_seed(0)
        >>> Xs = psd_target(10, 2, generator=g)
        >>> meas = gaussian_measurements(400, 10, symmetric=False, generator=g)
        >>> M = Xs @ Xs.T
        >>> res = asymmetric_gd(meas, meas.apply(M), 4, steps=600, init_scale=1e-3,
        ...                     rebalance_at=200, target=M, generator=g)
        >>> float(res.errors[-1]) < 1e-8, res.rebalance_step
        (True, 200)
    """
    y, target = _check_problem(meas, y, k, target, symmetric=False)
    lr, steps, init_scale = _check_run(lr, steps, init_scale)
    if rebalance_at is not None:
        rebalance_at = check_positive_int(rebalance_at, "rebalance_at", minimum=0)
        if rebalance_at >= steps:
            raise ValueError(f"rebalance_at must be < steps = {steps}, got {rebalance_at}")
    n1, n2 = meas.shape
    scale = init_scale / math.sqrt(max(n1, n2))
    F = scale * torch.randn(n1, k, dtype=y.dtype, generator=generator)
    G = scale * torch.randn(n2, k, dtype=y.dtype, generator=generator)
    errors = [_error(F @ G.T, meas, y, target)]
    for t in range(steps):
        if t == rebalance_at:
            work = _work_dtype(G.dtype)
            P, S, Qh = torch.linalg.svd(G.to(work), full_matrices=False)
            F = (F.to(work) @ (Qh.T * S) @ Qh).to(G.dtype)
            G = (P @ Qh).to(G.dtype)
        else:
            R = meas.adjoint(meas.apply(F @ G.T) - y)
            F, G = F - lr * R @ G, G - lr * R.T @ F
        errors.append(_check_diverged(_error(F @ G.T, meas, y, target), t + 1, lr))
    return FactoredResult(F, G, torch.tensor(errors, dtype=torch.float64), rebalance_at)
