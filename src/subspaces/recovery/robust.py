"""Robust matrix sensing with gross outliers: the l1 sub-gradient method from a small start.

Ma and Fattahi (JMLR 2023, "Global convergence of sub-gradient method for robust matrix
recovery: small initialization, noisy measurements, and over-parameterization") recover
``M* = X* X*^T`` from ``y = A(M*) + s`` where a fraction ``p < 1/2`` of the measurements carry
arbitrary gross errors ``s_i``, by minimizing the l1 loss ``(1/m) sum_i |A(U U^T)_i - y_i|`` over
``U`` in ``R^{n x k}`` for any ``k >= r`` (even ``k = n``) with the sub-gradient method (SubGM):
a small initialization ``U_0 = alpha B`` and geometrically decaying steps ``eta_t = eta_0 rho^t``.
Least squares (:func:`l2_gradient_descent`) fits the outliers and stalls at an error of the order
of their size.

:func:`outlier_measurements` corrupts a fraction of the measurements of a target;
:func:`subgradient_method` runs SubGM. The operator and targets come from
:mod:`subspaces.recovery.sensing`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_float
from .sensing import (
    FactoredResult,
    Measurements,
    _check_diverged,
    _check_problem,
    _check_run,
    _error,
    symmetric_gd,
)

__all__ = ["l2_gradient_descent", "outlier_measurements", "subgradient_method"]


def _check_fraction(fraction: float) -> float:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
        raise TypeError(f"fraction must be a number, got {type(fraction).__name__}")
    fraction = float(fraction)
    if not 0.0 <= fraction < 0.5:
        raise ValueError(f"outlier fraction must lie in [0, 0.5), got {fraction}")
    return fraction


def outlier_measurements(
    meas: Measurements,
    target: Tensor,
    fraction: float,
    *,
    magnitude: float = 10.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Measurements ``y = A(target) + s`` with a random fraction of gross outliers ``s_i``.

    ``round(fraction * m)`` measurements, chosen uniformly at random, get an additive error
    ``s_i ~ magnitude * rms(A(target)) * N(0, 1)``; the others are exact.

    Args:
        meas: the measurement operator.
        target: the ``(n1, n2)`` matrix measured.
        fraction: fraction of corrupted measurements, in ``[0, 0.5)``.
        magnitude: size of the outliers relative to the root-mean-square clean measurement.
        generator: source of randomness.

    Returns:
        ``(y, corrupted)``: the ``(m,)`` measurements and the boolean mask of the outliers.

    Raises:
        ValueError: if ``fraction`` is outside ``[0, 0.5)``, ``magnitude`` is not positive, or
            ``target`` has the wrong shape or holds NaN/Inf.
        TypeError: if an argument has the wrong type.

    Example:
        >>> from subspaces.recovery.sensing import gaussian_measurements, psd_target
        >>> g = torch.Generator().manual_seed(0)
        >>> X = psd_target(8, 2, generator=g)
        >>> meas = gaussian_measurements(100, 8, generator=g)
        >>> y, bad = outlier_measurements(meas, X @ X.T, 0.2, generator=g)
        >>> int(bad.sum()), bool(torch.allclose(y[~bad], meas.apply(X @ X.T)[~bad]))
        (20, True)
    """
    if not isinstance(meas, Measurements):
        raise TypeError(f"meas must be a Measurements, got {type(meas).__name__}")
    fraction = _check_fraction(fraction)
    magnitude = check_positive_float(magnitude, "magnitude")
    target = check_float_tensor(target, "target", ndim=2)
    if tuple(target.shape) != meas.shape:
        raise ValueError(
            f"target must have the measured shape {meas.shape}, got {tuple(target.shape)}"
        )
    check_finite(target, "target")
    clean = meas.apply(target)
    m = meas.num_measurements
    count = round(fraction * m)
    corrupted = torch.zeros(m, dtype=torch.bool)
    corrupted[torch.randperm(m, generator=generator)[:count]] = True
    rms = float(clean.pow(2).mean().sqrt())
    noise = torch.randn(m, dtype=clean.dtype, generator=generator) * magnitude * rms
    return clean + noise * corrupted, corrupted


def subgradient_method(
    meas: Measurements,
    y: Tensor,
    k: int,
    *,
    lr: float = 0.3,
    decay: float = 0.985,
    steps: int = 1200,
    init_scale: float = 1e-6,
    target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> FactoredResult:
    """SubGM on the l1 loss ``(1/m) sum_i |A(U U^T)_i - y_i|`` (Ma and Fattahi 2023).

    ``U_{t+1} = U_t - eta_t D_t U_t`` with ``D_t = 2 sym(A*(sign(A(U_t U_t^T) - y))) / sqrt(m)``
    (a sub-gradient of the loss is ``D_t U_t``; with the RIP-scaled operator ``A`` of
    :mod:`~subspaces.recovery.sensing` this is ``(1/m) sum_i sign(r_i) (A_i + A_i^T) U_t``),
    ``eta_t = lr * decay^t`` and ``U_0 = init_scale * N(0, 1) / sqrt(n)``.

    Args:
        meas: the measurement operator (square ``n x n`` matrices).
        y: ``(m,)`` measurements, possibly with gross outliers.
        k: number of columns of ``U``, any ``rank(M*) <= k <= n``.
        lr: initial step ``eta_0``.
        decay: geometric decay factor ``rho`` in ``(0, 1]``.
        steps: number of iterations.
        init_scale: ``alpha``, the scale of the small initialization.
        target: the true ``M*`` to measure the error against (else the relative residual).
        generator: source of randomness for the initialization.

    Returns:
        :class:`~subspaces.recovery.sensing.FactoredResult` with ``F = G = U``.

    Raises:
        ValueError: if ``k > n``, ``decay`` is outside ``(0, 1]``, shapes do not match, ``y`` holds
            NaN/Inf, a parameter is not positive, or the iteration diverges (a non-finite iterate:
            ``lr`` too large).
        TypeError: if an argument has the wrong type.

    Example:
        >>> from subspaces.recovery.sensing import gaussian_measurements, psd_target
        >>> g = torch.Generator().manual_seed(0)
        >>> X = psd_target(10, 2, generator=g)
        >>> meas = gaussian_measurements(600, 10, generator=g)
        >>> y, _ = outlier_measurements(meas, X @ X.T, 0.2, generator=g)
        >>> res = subgradient_method(meas, y, 10, target=X @ X.T, generator=g)
        >>> float(res.errors[-1]) < 1e-6
        True
    """
    y, target = _check_problem(meas, y, k, target, symmetric=True)
    lr, steps, init_scale = _check_run(lr, steps, init_scale)
    decay = check_positive_float(decay, "decay")
    if decay > 1:
        raise ValueError(f"decay must lie in (0, 1], got {decay}")
    n = meas.shape[0]
    m = meas.num_measurements
    U = init_scale * torch.randn(n, k, dtype=y.dtype, generator=generator) / math.sqrt(n)
    errors = [_error(U @ U.T, meas, y, target)]
    eta = lr
    for t in range(steps):
        D = meas.adjoint(torch.sign(meas.apply(U @ U.T) - y)) / math.sqrt(m)
        U = U - eta * (D + D.T) @ U
        eta *= decay
        errors.append(_check_diverged(_error(U @ U.T, meas, y, target), t + 1, lr))
    return FactoredResult(U, U, torch.tensor(errors, dtype=torch.float64))


def l2_gradient_descent(
    meas: Measurements,
    y: Tensor,
    k: int,
    *,
    lr: float = 0.2,
    steps: int = 800,
    init_scale: float = 1e-3,
    target: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> FactoredResult:
    """The least-squares baseline: GD on ``1/4 ||A(U U^T) - y||^2`` from a small start.

    The same iteration as :func:`~subspaces.recovery.sensing.symmetric_gd` (there the documented
    details); with outliers it converges to a least-squares fit of the corrupted data, whose error
    is of the order of the outliers.

    Args:
        meas: the measurement operator (square ``n x n`` matrices).
        y: ``(m,)`` measurements.
        k: number of columns of ``U`` (``<= n``).
        lr: step size.
        steps: number of steps.
        init_scale: ``alpha`` of the random initialization.
        target: the true ``M*`` to measure the error against.
        generator: source of randomness for the initialization.

    Returns:
        :class:`~subspaces.recovery.sensing.FactoredResult` with ``F = G = U``.

    Raises:
        ValueError: as :func:`~subspaces.recovery.sensing.symmetric_gd`.
        TypeError: as :func:`~subspaces.recovery.sensing.symmetric_gd`.

    Example:
        >>> from subspaces.recovery.sensing import gaussian_measurements, psd_target
        >>> g = torch.Generator().manual_seed(0)
        >>> X = psd_target(10, 2, generator=g)
        >>> meas = gaussian_measurements(600, 10, generator=g)
        >>> y, _ = outlier_measurements(meas, X @ X.T, 0.2, generator=g)
        >>> res = l2_gradient_descent(meas, y, 10, target=X @ X.T, generator=g)
        >>> float(res.errors[-1]) > 1e-2
        True
    """
    return symmetric_gd(
        meas, y, k, lr=lr, steps=steps, init_scale=init_scale, target=target, generator=generator
    )
