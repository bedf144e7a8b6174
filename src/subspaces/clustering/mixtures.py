r"""Mixtures of low-rank Gaussians and their exact optimal (posterior-mean) denoiser.

The data model of Wang, Zhang, Zhang, Chen, Ma & Qu, "Diffusion models learn low-dimensional
distributions via subspace clustering" (arXiv:2409.02426, 2024), the *mixture of low-rank
Gaussians* (MoLRG): ``K`` subspaces of dimension ``d`` in ``R^n`` with orthonormal bases ``U_k``,
and a sample is

.. math::
    x_0 = U_k a, \qquad k \sim \pi, \quad a \sim \mathcal N(0, I_d),

so component ``k`` is ``N(0, U_k U_k^T)``. A diffusion model sees ``x_t = x_0 + \sigma
\varepsilon`` (``\varepsilon \sim N(0, I_n)``), whose component densities are ``N(0, U_k U_k^T +
\sigma^2 I)``. Because ``(U U^T + \sigma^2 I)^{-1} = \sigma^{-2}(I - U U^T/(1 + \sigma^2))``,

.. math::
    \log p_k(x_t) = -\tfrac{n}{2}\log 2\pi - \tfrac{d}{2}\log(1 + \sigma^2)
        - \tfrac{n-d}{2}\log\sigma^2 - \frac{\|x_t\|^2}{2\sigma^2}
        + \frac{\|U_k^T x_t\|^2}{2\sigma^2(1 + \sigma^2)},

and the optimal denoiser (the posterior mean, the minimizer of the denoising loss) is

.. math::
    \mathbb E[x_0 \mid x_t] = \sum_k w_k(x_t)\, \frac{U_k U_k^T x_t}{1 + \sigma^2},
    \qquad w_k \propto \pi_k \exp\Big(\frac{\|U_k^T x_t\|^2}{2\sigma^2(1 + \sigma^2)}\Big).

:func:`equiangular_bases` builds ``K`` bases whose pairwise principal angles all equal a chosen
angle. :class:`LowRankGaussianMixture` samples, evaluates log-likelihoods, posteriors, the exact
denoiser and the score.

Example:
    >>> import torch
    >>> g = torch.Generator().manual_seed(0)
    >>> mix = LowRankGaussianMixture.random(10, 2, 3, generator=g, dtype=torch.float64)
    >>> X, labels = mix.sample(5, generator=g)
    >>> X.shape, labels.shape
    (torch.Size([5, 10]), torch.Size([5]))
    >>> bool((mix.denoise(X, 1e-3) - X).norm() < 1e-3 * X.norm())  # clean points are kept
    True
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from .._checks import check_float_tensor, check_positive_float, check_positive_int
from ..linalg.subspace import Subspace
from ._checks import check_data, check_subspace_dim

__all__ = ["LowRankGaussianMixture", "equiangular_bases"]


def _check_sigma(sigma: Any, m: int, ref: Tensor, name: str = "sigma") -> Tensor:
    """``sigma`` (a positive number or ``(m,)`` positive tensor) as an ``(m, 1)`` tensor."""
    if isinstance(sigma, Tensor):
        s = sigma.detach().to(dtype=ref.dtype, device=ref.device)
        if s.ndim == 0:
            s = s.expand(m)
        if s.ndim != 1 or s.shape[0] != m:
            raise ValueError(
                f"{name} must be a number or a 1-D tensor with {m} entries (one per row), got "
                f"shape {tuple(s.shape)}"
            )
        if not bool((torch.isfinite(s) & (s > 0)).all()):
            raise ValueError(f"{name} must hold finite values > 0, got min {float(s.min())}")
        return s.unsqueeze(1)
    value = check_positive_float(sigma, name)
    return torch.full((m, 1), value, dtype=ref.dtype, device=ref.device)


def equiangular_bases(
    ambient_dim: int,
    subspace_dim: int,
    n_subspaces: int,
    *,
    angle: float = math.pi / 2,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    r"""``K`` random ``d``-dimensional subspaces of ``R^n`` at one common principal angle.

    All principal angles between any two of the subspaces equal ``angle``.
    With orthonormal blocks ``S`` (shared) and ``F_1, ..., F_K`` (private), ``U_k = \sqrt{\cos
    \theta}\, S + \sqrt{1 - \cos\theta}\, F_k`` has ``U_k^T U_l = \cos\theta\, I`` for ``k \ne l``,
    so every principal angle between two of them is ``\theta``; the whole frame is then rotated by
    a random orthogonal matrix. Orthogonal subspaces (``angle = pi/2``) need ``K d <= n``, other
    angles ``(K + 1) d <= n``.

    Args:
        ambient_dim: ``n``.
        subspace_dim: ``d``, between 1 and ``n``.
        n_subspaces: ``K >= 1``.
        angle: the common principal angle in radians, in ``(0, pi/2]``.
        generator: random generator.
        dtype: floating dtype of the result.

    Returns:
        ``(K, n, d)`` orthonormal bases.

    Raises:
        ValueError: if ``d`` is above ``n``, the angle is outside ``(0, pi/2]``, or the subspaces
            do not fit in ``R^n``.
        TypeError: for non-integer dimensions.

    Example:
        >>> import torch
        >>> U = equiangular_bases(8, 2, 3, angle=math.pi / 3, dtype=torch.float64,
        ...                       generator=torch.Generator().manual_seed(0))
        >>> cos = torch.linalg.svdvals(U[0].T @ U[2])
        >>> bool(torch.allclose(cos, torch.full((2,), 0.5, dtype=torch.float64)))
        True
    """
    n = check_positive_int(ambient_dim, "ambient_dim")
    d = check_subspace_dim(subspace_dim, n)
    K = check_positive_int(n_subspaces, "n_subspaces")
    theta = check_positive_float(angle, "angle")
    if theta > math.pi / 2 + 1e-12:
        raise ValueError(f"angle must be in (0, pi/2] radians, got {theta}")
    orthogonal = abs(theta - math.pi / 2) <= 1e-12
    need = K * d if orthogonal or K == 1 else (K + 1) * d
    if need > n:
        raise ValueError(
            f"{K} subspaces of dimension subspace_dim={d} at angle {theta:.4g} need ambient_dim >= "
            f"{need}, got ambient_dim={n}"
        )
    G = torch.randn(n, n, generator=generator, dtype=torch.float64)
    Q, R = torch.linalg.qr(G)
    Q = Q * torch.sign(torch.diagonal(R)).unsqueeze(0)  # Haar-distributed rotation
    if orthogonal or K == 1:
        U = torch.stack([Q[:, k * d : (k + 1) * d] for k in range(K)])
    else:
        c = math.cos(theta)
        S = Q[:, :d]
        U = torch.stack(
            [
                math.sqrt(c) * S + math.sqrt(1 - c) * Q[:, (k + 1) * d : (k + 2) * d]
                for k in range(K)
            ]
        )
    return U.to(dtype)


class LowRankGaussianMixture:
    r"""Mixture of low-rank Gaussians ``sum_k pi_k N(0, U_k U_k^T)`` (Wang et al. 2024).

    Args:
        bases: ``(K, n, d)`` orthonormal bases (``max |U_k^T U_k - I| <= sqrt(eps)`` of the dtype),
            float32 or float64, ``1 <= d <= n``.
        weights: mixing weights ``(K,)``, positive, normalized to sum 1; uniform if omitted.

    Raises:
        ValueError: if a basis is not orthonormal, ``d > n``, or the weights are not positive.
        TypeError: if ``bases`` is not a floating tensor.

    Example:
        >>> import torch
        >>> U = torch.eye(4, dtype=torch.float64)[:, :2].reshape(1, 4, 2)
        >>> mix = LowRankGaussianMixture(U)
        >>> x = torch.tensor([[1.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
        >>> mix.denoise(x, 1.0).tolist()  # U U^T x / (1 + sigma^2)
        [[0.5, 0.0, 0.0, 0.0]]
    """

    def __init__(self, bases: Tensor, weights: Tensor | None = None) -> None:
        U = check_float_tensor(bases, "bases", ndim=3)
        if U.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"bases must be float32 or float64, got {U.dtype}")
        K, n, d = U.shape
        if K == 0 or n == 0:
            raise ValueError(
                f"bases must have shape (K, n, d) with K, n >= 1, got {tuple(U.shape)}"
            )
        check_subspace_dim(d, n, "subspace dimension d (bases.shape[2])")
        if not bool(torch.isfinite(U).all()):
            raise ValueError("bases contain NaN or Inf")
        gram = U.double().transpose(1, 2) @ U.double()
        err = float((gram - torch.eye(d, dtype=torch.float64)).abs().max())
        tol = torch.finfo(U.dtype).eps ** 0.5
        if err > tol:
            raise ValueError(
                f"bases must have orthonormal columns (max |U_k^T U_k - I| = {err:.2e} > {tol:.1e})"
            )
        if weights is None:
            w = torch.full((K,), 1.0 / K, dtype=U.dtype, device=U.device)
        else:
            w = check_float_tensor(weights, "weights", ndim=1).to(U.dtype)
            if w.shape[0] != K:
                raise ValueError(f"weights must have {K} entries (one per basis), got {w.shape[0]}")
            if not bool((torch.isfinite(w) & (w > 0)).all()):
                raise ValueError(f"weights must be finite and > 0, got {w.tolist()}")
            w = w / w.sum()
        self.bases = U.detach().clone()
        self.weights = w.detach().clone()

    @classmethod
    def random(
        cls,
        ambient_dim: int,
        subspace_dim: int,
        n_subspaces: int,
        *,
        angle: float = math.pi / 2,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> LowRankGaussianMixture:
        """A uniform mixture on :func:`equiangular_bases` (all pairwise principal angles ``angle``).

        Args:
            ambient_dim: ``n``.
            subspace_dim: ``d``.
            n_subspaces: ``K``.
            angle: common principal angle in radians, in ``(0, pi/2]``.
            generator: random generator.
            dtype: float32 or float64.

        Returns:
            The mixture.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> mix = LowRankGaussianMixture.random(6, 2, 2, generator=g)
            >>> mix.n_components, mix.ambient_dim, mix.subspace_dim
            (2, 6, 2)
        """
        U = equiangular_bases(
            ambient_dim, subspace_dim, n_subspaces, angle=angle, generator=generator, dtype=dtype
        )
        return cls(U)

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return int(self.bases.shape[0])

    @property
    def ambient_dim(self) -> int:
        """Ambient dimension ``n``."""
        return int(self.bases.shape[1])

    @property
    def subspace_dim(self) -> int:
        """Subspace dimension ``d``."""
        return int(self.bases.shape[2])

    def subspaces(self) -> list[Subspace]:
        """The component subspaces as :class:`~subspaces.linalg.subspace.Subspace` objects.

        Returns:
            ``K`` subspaces.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> mix = LowRankGaussianMixture.random(6, 2, 3, generator=g)
            >>> [S.dim for S in mix.subspaces()]
            [2, 2, 2]
        """
        return [Subspace(U) for U in self.bases]

    def sample(
        self, n_samples: int, *, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Draw ``x_0 = U_k a`` with ``k ~ weights`` and ``a ~ N(0, I_d)``.

        Args:
            n_samples: number of samples.
            generator: random generator.

        Returns:
            ``(X, labels)``: samples ``(n_samples, n)`` and their components ``(n_samples,)``.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> mix = LowRankGaussianMixture.random(6, 2, 3, generator=g)
            >>> X, y = mix.sample(4, generator=torch.Generator().manual_seed(1))
            >>> X.shape, y.dtype
            (torch.Size([4, 6]), torch.int64)
        """
        m = check_positive_int(n_samples, "n_samples")
        labels = torch.multinomial(self.weights.double(), m, replacement=True, generator=generator)
        return self.sample_components(labels, generator=generator), labels

    def sample_components(
        self, labels: Tensor, *, generator: torch.Generator | None = None
    ) -> Tensor:
        """Draw one sample of each requested component (``labels[i]`` gives row ``i``'s component).

        Args:
            labels: ``(m,)`` integer components in ``[0, K)``.
            generator: random generator.

        Returns:
            ``(m, n)`` samples.

        Raises:
            ValueError: for labels outside ``[0, K)``.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> mix = LowRankGaussianMixture.random(6, 2, 3, generator=g)
            >>> X = mix.sample_components(torch.tensor([2, 2]))
            >>> bool(torch.allclose(mix.bases[2] @ (mix.bases[2].T @ X.T), X.T, atol=1e-5))
            True
        """
        labels = torch.as_tensor(labels).long()
        if labels.ndim != 1 or (
            labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.n_components)
        ):
            raise ValueError(
                f"labels must be a 1-D tensor of components in [0, {self.n_components}), got "
                f"shape {tuple(labels.shape)} with values {labels.unique().tolist()[:5]}"
            )
        a = torch.randn(
            labels.shape[0], self.subspace_dim, generator=generator, dtype=self.bases.dtype
        )
        return torch.einsum("mnd,md->mn", self.bases[labels], a)

    def _check_x(self, x: Any) -> Tensor:
        if isinstance(x, Tensor) and x.is_floating_point() and x.ndim == 2:
            X = x.to(self.bases.dtype)  # keeps an autograd graph through x
            check_data(X.detach(), "x")
        else:
            X = check_data(x, "x", dtype=self.bases.dtype)
        if X.shape[1] != self.ambient_dim:
            raise ValueError(
                f"x must have {self.ambient_dim} columns (the ambient dimension), got {X.shape[1]}"
            )
        return X

    def component_log_likelihoods(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        r"""``log pi_k + log N(x; 0, U_k U_k^T + sigma^2 I)`` for every row and component.

        Args:
            x: ``(m, n)`` noisy points ``x_t``.
            sigma: noise level ``> 0`` (a number or one per row).

        Returns:
            ``(m, K)`` joint log-densities.

        Example:
            >>> U = torch.eye(3, dtype=torch.float64)[:, :1].reshape(1, 3, 1)
            >>> x = torch.tensor([[0.3, -0.2, 0.5]], dtype=torch.float64)
            >>> C = torch.diag(torch.tensor([2.0, 1.0, 1.0], dtype=torch.float64))
            >>> ref = torch.distributions.MultivariateNormal(torch.zeros(3, dtype=torch.float64), C)
            >>> lp = LowRankGaussianMixture(U).component_log_likelihoods(x, 1.0)
            >>> bool(torch.allclose(lp[:, 0], ref.log_prob(x)))
            True
        """
        X = self._check_x(x)
        s2 = _check_sigma(sigma, X.shape[0], X) ** 2  # (m, 1)
        n, d = self.ambient_dim, self.subspace_dim
        proj = torch.einsum("mn,knd->mkd", X, self.bases).pow(2).sum(-1)  # (m, K)
        sq = X.pow(2).sum(1, keepdim=True)
        const = (
            -0.5 * n * math.log(2 * math.pi)
            - 0.5 * d * torch.log1p(s2)
            - 0.5 * (n - d) * torch.log(s2)
        )
        return (
            torch.log(self.weights).unsqueeze(0)
            + const
            - sq / (2 * s2)
            + proj / (2 * s2 * (1 + s2))
        )

    def log_likelihood(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Log-density of the noisy mixture ``x_t = x_0 + sigma * eps`` at each row.

        Args:
            x: ``(m, n)`` points.
            sigma: noise level ``> 0``.

        Returns:
            ``(m,)`` log-densities.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> mix = LowRankGaussianMixture.random(4, 1, 2, generator=g)
            >>> mix.log_likelihood(torch.zeros(3, 4), 0.5).shape
            torch.Size([3])
        """
        return torch.logsumexp(self.component_log_likelihoods(x, sigma), dim=1)

    def posterior(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Posterior component probabilities ``P(k | x_t)`` (rows sum to 1).

        Args:
            x: ``(m, n)`` noisy points.
            sigma: noise level ``> 0``.

        Returns:
            ``(m, K)`` responsibilities.

        Example:
            >>> U = torch.stack([torch.eye(4, dtype=torch.float64)[:, :2],
            ...                  torch.eye(4, dtype=torch.float64)[:, 2:]])
            >>> x = torch.tensor([[3.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
            >>> bool(LowRankGaussianMixture(U).posterior(x, 0.1)[0, 0] > 0.999)
            True
        """
        return torch.softmax(self.component_log_likelihoods(x, sigma), dim=1)

    def denoise(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        r"""The exact optimal denoiser ``E[x_0 | x_t = x]`` at noise level ``sigma``.

        ``sum_k P(k | x) U_k U_k^T x / (1 + sigma^2)``: the minimizer over all functions of the
        denoising loss ``E ||D(x_0 + sigma eps) - x_0||^2``.

        Args:
            x: ``(m, n)`` noisy points.
            sigma: noise level ``> 0``.

        Returns:
            ``(m, n)`` posterior means.

        Example:
            >>> g = torch.Generator().manual_seed(0)
            >>> mix = LowRankGaussianMixture.random(6, 2, 2, generator=g)
            >>> mix.denoise(torch.randn(3, 6), 0.7).shape
            torch.Size([3, 6])
        """
        X = self._check_x(x)
        s = _check_sigma(sigma, X.shape[0], X)
        w = self.posterior(X, s.squeeze(1))  # (m, K)
        coords = torch.einsum("mn,knd->mkd", X, self.bases)
        proj = torch.einsum("mkd,knd->mkn", coords, self.bases)
        return (w.unsqueeze(-1) * proj).sum(1) / (1 + s**2)

    def score(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        r"""The score ``grad log p_sigma(x)``, by Tweedie's formula ``(E[x_0 | x] - x) / sigma^2``.

        Args:
            x: ``(m, n)`` noisy points.
            sigma: noise level ``> 0``.

        Returns:
            ``(m, n)`` scores.

        Example:
            >>> mix = LowRankGaussianMixture.random(5, 2, 2, dtype=torch.float64,
            ...                                     generator=torch.Generator().manual_seed(0))
            >>> x = torch.randn(2, 5, dtype=torch.float64, requires_grad=True)
            >>> g, = torch.autograd.grad(mix.log_likelihood(x, 0.8).sum(), x)
            >>> bool(torch.allclose(g, mix.score(x.detach(), 0.8)))
            True
        """
        X = self._check_x(x)
        s = _check_sigma(sigma, X.shape[0], X)
        return (self.denoise(X, s.squeeze(1)) - X) / s**2
