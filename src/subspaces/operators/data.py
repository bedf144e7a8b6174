r"""PDE data for operator learning, computed in-library and cached: Darcy flow and viscous Burgers.

``neuraloperator``'s wheel does not ship its small data files (they download at run time), so the
two standard problems of Li et al. (arXiv:2010.08895) are generated here.

**Darcy flow** ``-div(a grad u) = f`` on ``(0, 1)^2``, ``u = 0`` on the boundary, ``f = 1``. The
coefficient is ``a = 12`` where a Gaussian random field with covariance ``(-Laplacian + 9 I)^{-2}``
(Neumann boundary: a cosine series) is positive and ``a = 3`` elsewhere, as in the FNO paper. The
solver is the 5-point finite-volume scheme on the node grid ``x_j = j / N``: face coefficients are
harmonic means of the neighbouring node values (flux continuity across a jump), the sparse system
is solved with ``scipy.sparse.linalg.spsolve``; it is second-order accurate for smooth ``a``. A
sample at resolution ``n`` (dividing ``N``) is the fine solution at the points ``i / n``,
``i = 0..n-1`` (the points of the normalised periodic grid the FNO uses; ``u(1) = u(0) = 0``).

**Burgers** ``u_t + (u^2 / 2)_x = nu u_xx`` on the periodic unit interval, ``nu = 0.1``, from
``u_0 ~ N(0, 625 (-Laplacian + 25 I)^{-2})`` to ``u(., 1)``: Fourier pseudo-spectral in space
(2/3-rule dealiasing of the flux) and the integrating-factor fourth-order Runge-Kutta scheme in
time (diffusion integrated exactly), a fixed step from the CFL bound of ``u_0`` (the maximum
principle keeps ``max |u|`` from growing).

Datasets are cached as ``.npz`` files (written atomically, read with ``allow_pickle=False``) whose
names carry a hash of every generator parameter, so a changed parameter never reads a stale file.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as spla
import torch
from torch import Tensor

from .._checks import check_positive_float, check_positive_int
from .._io import atomic_write_bytes, settings_hash

__all__ = [
    "burgers",
    "burgers_solve",
    "darcy_coefficients",
    "darcy_flow",
    "darcy_solve",
    "default_cache_dir",
]


def default_cache_dir() -> Path:
    """``$SUBSPACES_CACHE`` if set, else ``$XDG_CACHE_HOME/subspaces`` (``~/.cache/subspaces``).

    Returns:
        The directory (not created).

    Example:
        >>> import os
        >>> old = os.environ.get("SUBSPACES_CACHE")
        >>> os.environ["SUBSPACES_CACHE"] = "/tmp/my-cache"
        >>> str(default_cache_dir())
        '/tmp/my-cache'
        >>> _ = os.environ.pop("SUBSPACES_CACHE") if old is None else os.environ.update(
        ...     SUBSPACES_CACHE=old)
    """
    if os.environ.get("SUBSPACES_CACHE"):
        return Path(os.environ["SUBSPACES_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "subspaces"


def _cached(
    name: str,
    params: dict[str, Any],
    cache_dir: str | os.PathLike[str] | None,
    make: Callable[[], dict[str, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Load ``name-<hash>.npz`` from the cache or make, write (atomically) and return it."""
    directory = default_cache_dir() if cache_dir is None else Path(cache_dir)
    path = directory / "operators" / f"{name}-{settings_hash(params)[:16]}.npz"
    if path.exists():
        with np.load(path, allow_pickle=False) as f:
            return {k: f[k] for k in f.files}
    arrays = make()
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(path, buffer.getvalue())
    return arrays


def darcy_coefficients(
    n_samples: int, grid_size: int, *, alpha: float = 2.0, tau: float = 3.0, seed: int = 0
) -> np.ndarray:
    """Thresholded Gaussian random fields on the node grid ``j / N``, ``j = 0..N``.

    The field is ``sum_k xi_k (pi^2 |k|^2 + tau^2)^{-alpha/2} cos(pi k_1 x) cos(pi k_2 y)`` over
    ``0 <= k_1, k_2 < N`` without ``k = 0`` (``xi_k`` standard normal), and the coefficient is 12
    where it is positive, 3 elsewhere.

    Args:
        n_samples: number of fields.
        grid_size: ``N`` (intervals per side).
        alpha: smoothness exponent of the covariance.
        tau: inverse length scale.
        seed: NumPy seed.

    Returns:
        ``(n_samples, N + 1, N + 1)`` float64 array with values in ``{3, 12}``.

    Example:
        >>> a = darcy_coefficients(2, 8)
        >>> a.shape, sorted(set(a.ravel().tolist())) == [3.0, 12.0]
        ((2, 9, 9), True)
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    n = check_positive_int(grid_size, "grid_size", minimum=2)
    check_positive_float(alpha, "alpha")
    check_positive_float(tau, "tau")
    k = np.arange(n)
    x = np.arange(n + 1) / n
    cos = np.cos(np.pi * np.outer(x, k))  # (N+1, K)
    scale = (np.pi**2 * (k[:, None] ** 2 + k[None, :] ** 2) + tau**2) ** (-alpha / 2)
    scale[0, 0] = 0.0
    xi = np.random.default_rng(seed).standard_normal((n_samples, n, n)) * scale
    field = np.einsum("ik,skl,jl->sij", cos, xi, cos)
    return np.where(field > 0, 12.0, 3.0)


def darcy_solve(a: np.ndarray, f: float | np.ndarray = 1.0) -> np.ndarray:
    """Solve ``-div(a grad u) = f`` on the unit square, ``u = 0`` on the boundary.

    Args:
        a: ``(N + 1, N + 1)`` positive coefficient at the nodes ``(i / N, j / N)``.
        f: right-hand side, a number or an ``(N + 1, N + 1)`` array at the nodes.

    Returns:
        ``(N + 1, N + 1)`` solution at the nodes (zero on the boundary).

    Raises:
        ValueError: for a non-square or too small grid, non-positive or non-finite ``a``, or an
            ``f`` of another shape.

    Example:
        >>> x = np.linspace(0, 1, 33)
        >>> u = darcy_solve(np.ones((33, 33)))  # Poisson: max u = 0.0737 at the centre
        >>> round(float(u[16, 16]), 3)
        0.074
    """
    a = np.asarray(a, dtype=np.float64)
    if a.ndim != 2 or a.shape[0] != a.shape[1] or a.shape[0] < 3:
        raise ValueError(f"a must be a square (N + 1, N + 1) grid with N >= 2, got {a.shape}")
    if not np.all(np.isfinite(a)) or a.min() <= 0:
        raise ValueError(f"a must be finite and positive, got min {a.min()}")
    n = a.shape[0] - 1
    rhs = np.broadcast_to(np.asarray(f, dtype=np.float64), a.shape) if np.ndim(f) == 0 else f
    if np.shape(rhs) != a.shape:
        raise ValueError(f"f must be a number or an array of shape {a.shape}, got {np.shape(f)}")
    h = 1.0 / n
    m = n - 1  # interior nodes per side
    inner = a[1:-1, 1:-1]
    # harmonic means on the four faces of each interior control volume
    east = 2 * inner * a[2:, 1:-1] / (inner + a[2:, 1:-1])
    west = 2 * inner * a[:-2, 1:-1] / (inner + a[:-2, 1:-1])
    north = 2 * inner * a[1:-1, 2:] / (inner + a[1:-1, 2:])
    south = 2 * inner * a[1:-1, :-2] / (inner + a[1:-1, :-2])
    idx = np.arange(m * m).reshape(m, m)
    rows = [idx.ravel()]
    cols = [idx.ravel()]
    vals = [(east + west + north + south).ravel()]
    for coef, di, dj in ((east, 1, 0), (west, -1, 0), (north, 0, 1), (south, 0, -1)):
        i0, i1 = max(0, -di), m - max(0, di)
        j0, j1 = max(0, -dj), m - max(0, dj)
        rows.append(idx[i0:i1, j0:j1].ravel())
        cols.append(idx[i0 + di : i1 + di, j0 + dj : j1 + dj].ravel())
        vals.append(-coef[i0:i1, j0:j1].ravel())
    matrix = sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(m * m,) * 2
    )
    u = np.zeros_like(a)
    u[1:-1, 1:-1] = spla.spsolve(matrix, h * h * np.asarray(rhs)[1:-1, 1:-1].ravel()).reshape(m, m)
    return u


def darcy_flow(
    n_samples: int,
    resolutions: tuple[int, ...] = (16, 32),
    *,
    fine_grid: int = 64,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Darcy samples ``(a, u)`` at several resolutions, from one fine solve per sample (cached).

    Args:
        n_samples: number of coefficient/solution pairs.
        resolutions: grid sizes ``n`` (each must divide ``fine_grid``).
        fine_grid: ``N``, intervals per side of the solve.
        seed: seed of the random fields.
        cache_dir: cache root (default :func:`default_cache_dir`); the file is
            ``operators/darcy-<hash>.npz`` below it.

    Returns:
        ``{n: (a, u)}`` with float32 tensors of shape ``(n_samples, 1, n, n)``.

    Raises:
        ValueError: for a resolution that does not divide ``fine_grid``.

    Example:
        >>> import tempfile
        >>> data = darcy_flow(3, (4, 8), fine_grid=8, cache_dir=tempfile.mkdtemp())
        >>> a, u = data[8]
        >>> tuple(a.shape), bool((data[4][1] == u[:, :, ::2, ::2]).all())
        ((3, 1, 8, 8), True)
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    fine = check_positive_int(fine_grid, "fine_grid", minimum=2)
    res = tuple(check_positive_int(r, "resolution", minimum=2) for r in resolutions)
    for r in res:
        if fine % r:
            raise ValueError(f"resolution {r} must divide fine_grid={fine}")
    params = {"n": n_samples, "res": list(res), "fine": fine, "seed": seed, "v": 1}

    def make() -> dict[str, np.ndarray]:
        a = darcy_coefficients(n_samples, fine, seed=seed)
        u = np.stack([darcy_solve(ai) for ai in a])
        out = {}
        for r in res:
            step = fine // r
            out[f"a{r}"] = a[:, :-1:step, :-1:step].astype(np.float32)
            out[f"u{r}"] = u[:, :-1:step, :-1:step].astype(np.float32)
        return out

    arrays = _cached("darcy", params, cache_dir, make)
    return {
        r: (
            torch.from_numpy(arrays[f"a{r}"]).unsqueeze(1),
            torch.from_numpy(arrays[f"u{r}"]).unsqueeze(1),
        )
        for r in res
    }


def burgers_solve(
    u0: np.ndarray, t_end: float = 1.0, *, viscosity: float = 0.1, cfl: float = 0.4
) -> np.ndarray:
    """Integrate viscous Burgers on the periodic unit interval from ``u0`` to ``t_end``.

    Args:
        u0: ``(batch, N)`` or ``(N,)`` initial values at ``x_i = i / N``.
        t_end: final time (``> 0``).
        viscosity: ``nu > 0``.
        cfl: Courant number of the fixed step ``dt = cfl * dx / max |u0|`` (at most
            ``t_end / 100``).

    Returns:
        ``u(., t_end)`` with the shape of ``u0``.

    Raises:
        ValueError: for NaN/Inf in ``u0`` or a non-positive ``t_end``, ``viscosity`` or ``cfl``.

    Example:
        >>> x = np.arange(64) / 64
        >>> u = burgers_solve(np.sin(2 * np.pi * x), 0.5)
        >>> bool(abs(u.mean()) < 1e-12 and np.abs(u).max() < 1)  # mean kept, decays
        True
    """
    u = np.atleast_2d(np.asarray(u0, dtype=np.float64))
    if not np.all(np.isfinite(u)):
        raise ValueError("u0 contains NaN or Inf")
    t_end = check_positive_float(t_end, "t_end")
    nu = check_positive_float(viscosity, "viscosity")
    check_positive_float(cfl, "cfl")
    n = u.shape[-1]
    k = 2 * np.pi * np.fft.rfftfreq(n, d=1.0 / n)
    dealias = np.arange(k.size) < (n // 3 + 1)
    steps = max(100, math.ceil(t_end * max(np.abs(u).max(), 1e-12) * n / cfl))
    dt = t_end / steps
    lin = -nu * k**2

    def nonlinear(v: np.ndarray) -> np.ndarray:
        w = np.fft.irfft(v, n=n)
        return -0.5j * k * np.fft.rfft(w * w) * dealias

    e_half = np.exp(lin * dt / 2)
    e_full = e_half**2
    v = np.fft.rfft(u)
    for _ in range(steps):
        k1 = nonlinear(v)
        k2 = nonlinear(e_half * (v + dt / 2 * k1))
        k3 = nonlinear(e_half * v + dt / 2 * k2)
        k4 = nonlinear(e_full * v + dt * e_half * k3)
        v = e_full * v + dt / 6 * (e_full * k1 + 2 * e_half * (k2 + k3) + k4)
    out = np.fft.irfft(v, n=n)
    return out.reshape(np.shape(u0))


def burgers(
    n_samples: int,
    resolutions: tuple[int, ...] = (64, 128),
    *,
    fine_grid: int = 1024,
    viscosity: float = 0.1,
    t_end: float = 1.0,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
) -> dict[int, tuple[Tensor, Tensor]]:
    """Burgers samples ``(u_0, u(., t_end))`` at several resolutions (cached).

    ``u_0`` has Fourier coefficients ``25 (4 pi^2 k^2 + 25)^{-1} xi_k`` (the FNO paper's
    ``N(0, 625 (-Laplacian + 25 I)^{-2})``), ``xi_k`` complex standard normal.

    Args:
        n_samples: number of pairs.
        resolutions: grid sizes (each must divide ``fine_grid``).
        fine_grid: points of the solve.
        viscosity: ``nu``.
        t_end: final time.
        seed: NumPy seed.
        cache_dir: cache root (default :func:`default_cache_dir`).

    Returns:
        ``{n: (u0, u_end)}`` with float32 tensors of shape ``(n_samples, 1, n)``.

    Raises:
        ValueError: for a resolution that does not divide ``fine_grid``.

    Example:
        >>> import tempfile
        >>> data = burgers(2, (16,), fine_grid=64, t_end=0.1, cache_dir=tempfile.mkdtemp())
        >>> tuple(data[16][0].shape)
        (2, 1, 16)
    """
    n_samples = check_positive_int(n_samples, "n_samples")
    fine = check_positive_int(fine_grid, "fine_grid", minimum=4)
    res = tuple(check_positive_int(r, "resolution", minimum=2) for r in resolutions)
    for r in res:
        if fine % r:
            raise ValueError(f"resolution {r} must divide fine_grid={fine}")
    params = {
        "n": n_samples,
        "res": list(res),
        "fine": fine,
        "nu": viscosity,
        "t": t_end,
        "seed": seed,
        "v": 1,
    }

    def make() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        kk = np.fft.rfftfreq(fine, d=1.0 / fine)
        std = 25.0 / (4 * np.pi**2 * kk**2 + 25.0)
        xi = rng.standard_normal((n_samples, kk.size)) + 1j * rng.standard_normal(
            (n_samples, kk.size)
        )
        xi[:, 0] = xi[:, 0].real * math.sqrt(2)
        coef = std * xi / math.sqrt(2)
        coef[:, fine // 2 :] = 0.0  # keep the field band-limited below the Nyquist frequency
        u0 = np.fft.irfft(coef, n=fine, norm="forward")
        u1 = burgers_solve(u0, t_end, viscosity=viscosity)
        out = {}
        for r in res:
            out[f"x{r}"] = u0[:, :: fine // r].astype(np.float32)
            out[f"y{r}"] = u1[:, :: fine // r].astype(np.float32)
        return out

    arrays = _cached("burgers", params, cache_dir, make)
    return {
        r: (
            torch.from_numpy(arrays[f"x{r}"]).unsqueeze(1),
            torch.from_numpy(arrays[f"y{r}"]).unsqueeze(1),
        )
        for r in res
    }
