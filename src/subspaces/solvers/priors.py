"""Priors with closed-form diffusion denoisers (Tweedie's formula) and exact posterior means.

For a variance-preserving diffusion ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` (``a = alpha_bar_t``)
Tweedie's formula gives the minimum mean-squared-error denoiser ``E[x_0 | x_t] = (x_t + (1 - a)
grad log p_t(x_t)) / sqrt(a)`` and the matching noise prediction ``E[eps | x_t] = (x_t - sqrt(a)
E[x_0 | x_t]) / sqrt(1 - a)``. For Gaussian and Gaussian-mixture priors both are closed form, so
a sampler driven by them (:func:`subspaces.solvers.dds`, :func:`subspaces.solvers.dps`) can be
checked against exact answers: :meth:`LowRankGaussianPrior.posterior_mean` is the exact
posterior mean of ``y = A x + sigma n`` under the prior.

* :class:`LowRankGaussianPrior`: ``x = mu + U z + s0 w`` with ``U (n, k)`` orthonormal, ``z ~
  N(0, diag(lam))``, ``w ~ N(0, I)``: data near the ``k``-dimensional affine subspace ``mu +
  span(U)`` (the "clean-data manifold" whose tangent space is ``span(U)``).
* :class:`~subspaces.solvers.GaussianMixturePrior` (:mod:`subspaces.solvers.mixture`): ``sum_j
  w_j N(mu_j, Sigma_j)``, the responsibility-weighted per-component Wiener filters.
* :class:`ClosedFormDenoiser`: either prior bound to a noise schedule, called like a diffusion
  network, ``denoiser(x_t, t)``, returning ``eps`` or ``x_0``.

References:
    Efron. "Tweedie's formula and selection bias." JASA 106(496), 2011.

    Chung, Lee, Ye. "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems."
    ICLR 2024 (arXiv:2303.05754): the tangent-space (Krylov) picture these priors make exact.
"""

from __future__ import annotations

import math
from typing import Literal, Protocol

import torch
from torch import Tensor

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)
from ..linops.base import LinearOperator, as_operator

__all__ = ["ClosedFormDenoiser", "LowRankGaussianPrior"]

Prediction = Literal["epsilon", "x0"]


class _TweediePrior(Protocol):
    dim: int
    dtype: torch.dtype

    def denoise(self, x: Tensor, alpha_bar: Tensor) -> Tensor: ...


def _check_batch(x: Tensor, dim: int, dtype: torch.dtype, name: str = "x") -> Tensor:
    x = check_finite(check_float_tensor(x, name, ndim=(1, 2)), name)
    if x.shape[-1] != dim:
        raise ValueError(f"{name} must have {dim} entries per row, got shape {tuple(x.shape)}")
    if x.dtype != dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but the prior has dtype {dtype}")
    return x


def _check_alpha_bar(alpha_bar: Tensor | float, x: Tensor) -> Tensor:
    a = torch.as_tensor(alpha_bar, dtype=x.dtype, device=x.device)
    if a.ndim > 1 or (a.ndim == 1 and (x.ndim != 2 or a.shape[0] != x.shape[0])):
        raise ValueError(
            f"alpha_bar must be a scalar or hold one value per row of x {tuple(x.shape)}, got "
            f"shape {tuple(a.shape)}"
        )
    if not bool(((a > 0) & (a < 1)).all()):
        raise ValueError(f"alpha_bar must be in (0, 1), got {a.tolist()}")
    return a.unsqueeze(-1) if a.ndim == 1 else a


class LowRankGaussianPrior:
    """``x ~ N(mu, U diag(lam) U^T + s0^2 I)`` with orthonormal ``U (n, k)``.

    Args:
        mean: ``(n,)``.
        basis: ``(n, k)`` with orthonormal columns (checked to ``sqrt(eps)``).
        variances: ``(k,)`` positive variances along the columns of ``basis``.
        noise_std: ``s0 >= 0``, the isotropic spread off the subspace (0: data exactly on it).

    Raises:
        ValueError: for mismatched shapes, non-orthonormal ``basis``, non-positive variances or
            non-finite values.
        TypeError: for non-float tensors or mixed dtypes.

    Example:
        >>> U = torch.eye(3, dtype=torch.float64)[:, :1]
        >>> prior = LowRankGaussianPrior(torch.zeros(3, dtype=torch.float64), U,
        ...                              torch.tensor([4.0], dtype=torch.float64))
        >>> prior.denoise(torch.tensor([1.0, 1.0, 1.0], dtype=torch.float64), 0.5).tolist()
        [1.131370849898476, 0.0, 0.0]
    """

    def __init__(
        self, mean: Tensor, basis: Tensor, variances: Tensor, noise_std: float = 0.0
    ) -> None:
        mean = check_finite(check_float_tensor(mean, "mean", ndim=1), "mean")
        basis = check_finite(check_float_tensor(basis, "basis", ndim=2), "basis")
        variances = check_finite(check_float_tensor(variances, "variances", ndim=1), "variances")
        n, k = basis.shape
        if mean.shape[0] != n or variances.shape[0] != k:
            raise ValueError(
                f"mean must have {n} entries and variances {k} (basis is {n} x {k}), got "
                f"{mean.shape[0]} and {variances.shape[0]}"
            )
        if not (mean.dtype == basis.dtype == variances.dtype):
            raise TypeError(
                f"mean, basis and variances must share a dtype, got {mean.dtype}, "
                f"{basis.dtype}, {variances.dtype}"
            )
        if k > n:
            raise ValueError(f"basis has more columns ({k}) than rows ({n})")
        gram_err = float((basis.T @ basis - torch.eye(k, dtype=basis.dtype)).abs().max())
        if gram_err > torch.finfo(basis.dtype).eps ** 0.5:
            raise ValueError(
                f"basis columns are not orthonormal (max |U^T U - I| = {gram_err:.2e})"
            )
        if not bool((variances > 0).all()):
            raise ValueError(f"variances must be positive, got {variances.tolist()}")
        self.mean, self.basis, self.variances = mean, basis, variances
        self.noise_std = check_positive_float(noise_std, "noise_std", allow_zero=True)
        self.dim, self.rank, self.dtype = n, k, mean.dtype

    @classmethod
    def smooth(
        cls,
        shape: tuple[int, int],
        rank: int,
        *,
        length_scale: float = 4.0,
        noise_std: float = 0.0,
        dtype: torch.dtype = torch.float64,
        generator: torch.Generator | None = None,
    ) -> LowRankGaussianPrior:
        """A prior of smooth images: the principal directions of ``rank`` smooth random fields.

        Each field is white noise blurred by a periodic Gaussian of ``length_scale`` pixels
        (Fourier amplitude ``exp(-pi^2 l^2 |f|^2)``); ``basis`` is their left singular vectors
        and ``variances`` the squared singular values normalised to mean 1; ``mean`` is zero.
        Most of the energy of ``span(basis)`` lies at spatial frequencies below about ``H / (2
        l)`` cycles per image, which is what MRI masks sample fully.

        Args:
            shape: image shape ``(H, W)``.
            rank: ``k``, ``1 <= k <= H W``.
            length_scale: correlation length in pixels (> 0).
            noise_std: ``s0``.
            dtype: floating dtype.
            generator: random generator for the fields.

        Returns:
            The prior.

        Raises:
            ValueError: for a bad shape, rank or length scale.
        """
        h, w = int(shape[0]), int(shape[1])
        if h < 1 or w < 1 or isinstance(rank, bool) or not 1 <= rank <= h * w:
            raise ValueError(f"need H, W >= 1 and 1 <= rank <= H W, got {shape} and {rank}")
        length_scale = check_positive_float(length_scale, "length_scale")
        fy = torch.fft.fftfreq(h, dtype=torch.float64)
        fx = torch.fft.fftfreq(w, dtype=torch.float64)
        ky, kx = torch.meshgrid(fy, fx, indexing="ij")
        amplitude = torch.exp(-(math.pi**2) * length_scale**2 * (ky**2 + kx**2))
        noise = torch.randn(rank, h, w, generator=generator, dtype=torch.float64)
        fields = torch.fft.ifft2(torch.fft.fft2(noise) * amplitude).real.reshape(rank, -1)
        basis, sv, _ = torch.linalg.svd(fields.T, full_matrices=False)
        lam = sv**2 / (sv**2).mean()
        return cls(
            torch.zeros(h * w, dtype=dtype), basis.to(dtype), lam.to(dtype), noise_std=noise_std
        )

    def covariance(self) -> Tensor:
        """The dense ``(n, n)`` covariance ``U diag(lam) U^T + s0^2 I``.

        Returns:
            The covariance matrix.
        """
        U = self.basis
        eye = torch.eye(self.dim, dtype=self.dtype, device=U.device)
        return (U * self.variances) @ U.T + self.noise_std**2 * eye

    def sample(self, num: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num`` samples.

        Returns:
            ``(num, n)`` tensor.
        """
        num = check_positive_int(num, "num")
        z = torch.randn(num, self.rank, generator=generator, dtype=torch.float64)
        w = torch.randn(num, self.dim, generator=generator, dtype=torch.float64)
        x = self.mean + (z.to(self.dtype) * self.variances.sqrt()) @ self.basis.T
        return x + self.noise_std * w.to(self.dtype)

    def denoise(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """Tweedie's ``E[x_0 | x_t = x]`` for ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps``.

        Per eigen-direction of the covariance with variance ``d`` the posterior mean shrinks the
        centred observation by ``sqrt(a) d / (a d + 1 - a)``: ``d = lam_i + s0^2`` inside
        ``span(U)`` and ``s0^2`` outside it (so with ``s0 = 0`` the output lies on ``mu +
        span(U)``).

        Args:
            x: ``(n,)`` or ``(b, n)``.
            alpha_bar: ``a`` in ``(0, 1)``, a scalar or one per row.

        Returns:
            ``E[x_0 | x_t]`` shaped like ``x``.

        Raises:
            ValueError: for a wrong shape, non-finite values or ``a`` outside ``(0, 1)``.
            TypeError: for a dtype other than the prior's.
        """
        x = _check_batch(x, self.dim, self.dtype)
        a = _check_alpha_bar(alpha_bar, x)
        r = x - a.sqrt() * self.mean
        s2 = self.noise_std**2
        coef_in = a.sqrt() * (self.variances + s2) / (a * (self.variances + s2) + 1 - a)
        coef_out = a.sqrt() * s2 / (a * s2 + 1 - a)
        c = r @ self.basis
        inside = (c * coef_in) @ self.basis.T
        return self.mean + inside + coef_out * (r - c @ self.basis.T)

    def posterior_mean(
        self, A: Tensor | LinearOperator, y: Tensor, noise_std: float = 0.0
    ) -> Tensor:
        """The exact ``E[x | y]`` for ``y = A x + sigma n``, ``n ~ N(0, I)``, under this prior.

        ``mu + Sigma A^T (A Sigma A^T + sigma^2 I)^+ (y - A mu)`` with the pseudo-inverse taken
        by a symmetric eigendecomposition (eigenvalues below ``m eps`` times the largest are
        dropped), which is the limit ``sigma -> 0`` for noiseless data: with ``s0 = 0`` and
        ``A U`` of full column rank it is ``mu + U (A U)^+ (y - A mu)``. ``A`` is materialised
        (``n`` products), so this is meant for moderate ``n`` (a few thousand).

        Args:
            A: ``(m, n)`` tensor or operator.
            y: ``(m,)`` measurements or ``(m, b)`` several.
            noise_std: ``sigma >= 0``.

        Returns:
            ``(n,)`` or ``(n, b)``.

        Raises:
            ValueError: for mismatched shapes or non-finite measurements.
            TypeError: for a dtype other than the prior's.
        """
        op = as_operator(A)
        if op.shape[1] != self.dim:
            raise ValueError(f"A has {op.shape[1]} columns but the prior has dimension {self.dim}")
        y = check_finite(check_float_tensor(y, "y", ndim=(1, 2)), "y")
        if y.shape[0] != op.shape[0]:
            raise ValueError(
                f"y must have {op.shape[0]} rows (A is {op.shape}), got {tuple(y.shape)}"
            )
        if op.dtype != self.dtype or y.dtype != self.dtype:
            raise TypeError(f"A and y must have the prior's dtype {self.dtype}")
        sigma = check_positive_float(noise_std, "noise_std", allow_zero=True)
        dense = op.to_dense()
        sigma_at = self.covariance() @ dense.T
        gram = dense @ sigma_at + sigma**2 * torch.eye(op.shape[0], dtype=self.dtype)
        evals, evecs = torch.linalg.eigh(gram)
        cutoff = op.shape[0] * torch.finfo(self.dtype).eps * evals.abs().max()
        inv = torch.where(evals > cutoff, 1 / evals.clamp(min=float(cutoff)), 0.0)
        Y = y.unsqueeze(1) if y.ndim == 1 else y
        resid = Y - dense @ self.mean.unsqueeze(1)
        out = self.mean.unsqueeze(1) + sigma_at @ (evecs @ (inv.unsqueeze(1) * (evecs.T @ resid)))
        return out.squeeze(1) if y.ndim == 1 else out

    def denoiser(
        self, alphas_bar: Tensor, prediction: Prediction = "epsilon"
    ) -> ClosedFormDenoiser:
        """This prior's exact denoiser for a noise schedule (see :class:`ClosedFormDenoiser`).

        Returns:
            The denoiser.
        """
        return ClosedFormDenoiser(self, alphas_bar, prediction)


class ClosedFormDenoiser:
    """A prior's exact denoiser called like a diffusion network: ``denoiser(x_t, t)``.

    Args:
        prior: a :class:`LowRankGaussianPrior` or
            :class:`~subspaces.solvers.GaussianMixturePrior` (anything with ``dim``, ``dtype``
            and ``denoise(x, alpha_bar)``).
        alphas_bar: ``(T,)`` schedule (:func:`subspaces.solvers.alphas_bar`).
        prediction: ``"epsilon"`` (returns ``E[eps | x_t]``, like an epsilon-network) or
            ``"x0"`` (returns ``E[x_0 | x_t]``).

    Raises:
        ValueError: for an unknown ``prediction`` or a schedule outside ``(0, 1)``.

    Example:
        >>> from subspaces.solvers import alphas_bar, betas
        >>> prior = LowRankGaussianPrior.smooth((4, 4), 3)
        >>> abar = alphas_bar(betas(100))
        >>> eps_net = prior.denoiser(abar, "epsilon")
        >>> x0_net = prior.denoiser(abar, "x0")
        >>> x, t = torch.randn(2, 16, dtype=torch.float64), torch.tensor([10, 90])
        >>> a = abar[t].unsqueeze(1)
        >>> torch.allclose(x0_net(x, t), (x - (1 - a).sqrt() * eps_net(x, t)) / a.sqrt())
        True
    """

    def __init__(
        self, prior: _TweediePrior, alphas_bar: Tensor, prediction: Prediction = "epsilon"
    ) -> None:
        self.prediction = check_choice(prediction, "prediction", ("epsilon", "x0"))
        abar = check_finite(check_float_tensor(alphas_bar, "alphas_bar", ndim=1), "alphas_bar")
        if not bool(((abar > 0) & (abar < 1)).all()):
            raise ValueError("alphas_bar must hold values in (0, 1)")
        self.prior, self.alphas_bar = prior, abar.to(prior.dtype)

    def __call__(self, x: Tensor, t: Tensor) -> Tensor:
        """Evaluate at ``x (b, n)`` and integer time steps ``t (b,)`` (or a scalar).

        Returns:
            ``(b, n)``: the noise or clean-data prediction.

        Raises:
            ValueError: for time steps outside ``[0, T)``; as the prior's ``denoise``.
            TypeError: for non-integer time steps.
        """
        steps = torch.as_tensor(t, device=self.alphas_bar.device)
        if steps.is_floating_point() or steps.is_complex():
            raise TypeError(f"t must hold integer time steps, got dtype {steps.dtype}")
        T = self.alphas_bar.shape[0]
        if steps.numel() and not bool(((steps >= 0) & (steps < T)).all()):
            raise ValueError(f"time steps must be in [0, {T}), got {steps.tolist()}")
        a = self.alphas_bar[steps.long()]
        x0 = self.prior.denoise(x, a)
        if self.prediction == "x0":
            return x0
        a = a.unsqueeze(-1) if a.ndim == 1 else a
        return (x - a.sqrt() * x0) / (1 - a).sqrt()
