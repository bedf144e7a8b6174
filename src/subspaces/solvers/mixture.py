"""A Gaussian-mixture prior with its exact diffusion denoiser (Tweedie's formula).

For ``x_0 ~ sum_j w_j N(mu_j, Sigma_j)`` and ``x_t = sqrt(a) x_0 + sqrt(1 - a) eps`` the noised
marginal is the mixture ``sum_j w_j N(sqrt(a) mu_j, a Sigma_j + (1 - a) I)`` and ``E[x_0 | x_t]``
is the posterior-responsibility-weighted average of the per-component Wiener filters, which equals
Tweedie's ``(x_t + (1 - a) grad log p_t(x_t)) / sqrt(a)``.

References:
    Efron. "Tweedie's formula and selection bias." JASA 106(496), 2011.

    Chung, Lee, Ye. "Decomposed Diffusion Sampler for Accelerating Large-Scale Inverse Problems."
    ICLR 2024 (arXiv:2303.05754).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._checks import check_finite, check_float_tensor, check_positive_int
from .priors import ClosedFormDenoiser, Prediction, _check_alpha_bar, _check_batch

__all__ = ["GaussianMixturePrior"]


class GaussianMixturePrior:
    """``x ~ sum_j w_j N(mu_j, Sigma_j)``, with the exact Tweedie denoiser.

    Args:
        weights: ``(K,)`` positive mixture weights (normalised to sum 1).
        means: ``(K, n)``.
        covariances: ``(K, n, n)`` symmetric positive semi-definite.

    Raises:
        ValueError: for mismatched shapes, non-positive weights, non-symmetric or indefinite
            covariances (an eigenvalue below ``-sqrt(eps)`` times the largest), non-finite values.
        TypeError: for non-float tensors or mixed dtypes.

    Example:
        >>> prior = GaussianMixturePrior(
        ...     torch.tensor([0.5, 0.5], dtype=torch.float64),
        ...     torch.tensor([[-2.0], [2.0]], dtype=torch.float64),
        ...     torch.full((2, 1, 1), 0.25, dtype=torch.float64))
        >>> x0 = prior.denoise(torch.tensor([[0.0], [3.0]], dtype=torch.float64), 0.5)
        >>> abs(float(x0[0, 0])) < 1e-12, 1.5 < float(x0[1, 0]) < 2.5  # symmetric; near a mode
        (True, True)
    """

    def __init__(self, weights: Tensor, means: Tensor, covariances: Tensor) -> None:
        weights = check_finite(check_float_tensor(weights, "weights", ndim=1), "weights")
        means = check_finite(check_float_tensor(means, "means", ndim=2), "means")
        covariances = check_finite(
            check_float_tensor(covariances, "covariances", ndim=3), "covariances"
        )
        K, n = means.shape
        if weights.shape[0] != K or covariances.shape != (K, n, n):
            raise ValueError(
                f"with means of shape {(K, n)} need weights ({K},) and covariances {(K, n, n)}, "
                f"got {tuple(weights.shape)} and {tuple(covariances.shape)}"
            )
        if not (weights.dtype == means.dtype == covariances.dtype):
            raise TypeError("weights, means and covariances must share a dtype")
        if not bool((weights > 0).all()):
            raise ValueError(f"weights must be positive, got {weights.tolist()}")
        asym = float((covariances - covariances.transpose(1, 2)).abs().max())
        scale = float(covariances.abs().max().clamp(min=1e-300))
        tol = torch.finfo(means.dtype).eps ** 0.5
        if asym > tol * scale:
            raise ValueError(f"covariances must be symmetric (max asymmetry {asym:.2e})")
        evals, evecs = torch.linalg.eigh(covariances)
        if float(evals.min()) < -tol * scale:
            raise ValueError(
                f"covariances must be positive semi-definite (eigenvalue {float(evals.min()):.3e})"
            )
        self.weights = weights / weights.sum()
        self.means, self.covariances = means, covariances
        self._evals, self._evecs = evals.clamp(min=0), evecs
        self.dim, self.num_components, self.dtype = n, K, means.dtype

    def sample(self, num: int, *, generator: torch.Generator | None = None) -> Tensor:
        """Draw ``num`` samples.

        Returns:
            ``(num, n)`` tensor.
        """
        num = check_positive_int(num, "num")
        comp = torch.multinomial(self.weights.double(), num, replacement=True, generator=generator)
        z = torch.randn(num, self.dim, generator=generator, dtype=torch.float64).to(self.dtype)
        root = self._evecs * self._evals.sqrt().unsqueeze(1)  # (K, n, n): V diag(sqrt d)
        return self.means[comp] + torch.einsum("bij,bj->bi", root[comp], z)

    def log_marginal(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """``log p_t(x)`` of the noised prior ``sum_j w_j N(sqrt(a) mu_j, a Sigma_j + (1 - a) I)``.

        Returns:
            ``(b,)`` (or a scalar for ``x`` of shape ``(n,)``).
        """
        return torch.logsumexp(self._component_terms(x, alpha_bar)[0], dim=-1)

    def _component_terms(self, x: Tensor, alpha_bar: Tensor | float) -> tuple[Tensor, Tensor]:
        """Per-component log weight x likelihood and posterior mean.

        Returns:
            ``(log_joint (b, K), means (b, K, n))`` (batch dim dropped for a vector ``x``).
        """
        xb = _check_batch(x, self.dim, self.dtype)
        a = _check_alpha_bar(alpha_bar, xb)
        X = xb.unsqueeze(0) if xb.ndim == 1 else xb
        A = a.reshape(-1, 1, 1) if a.ndim else a  # (b, 1, 1) or scalar
        var = A * self._evals.unsqueeze(0) + (1 - A)  # (b or 1, K, n)
        centred = X.unsqueeze(1) - A.sqrt() * self.means.unsqueeze(0)  # (b, K, n)
        proj = torch.einsum("kij,bki->bkj", self._evecs, centred)  # V^T (x - sqrt(a) mu)
        log_joint = (
            self.weights.log()
            - 0.5 * (proj**2 / var).sum(-1)
            - 0.5 * var.log().sum(-1)
            - 0.5 * self.dim * math.log(2 * math.pi)
        )
        shrink = A.sqrt() * self._evals.unsqueeze(0) / var
        mean = self.means.unsqueeze(0) + torch.einsum("kij,bkj->bki", self._evecs, shrink * proj)
        if xb.ndim == 1:
            return log_joint.squeeze(0), mean.squeeze(0)
        return log_joint, mean

    def denoise(self, x: Tensor, alpha_bar: Tensor | float) -> Tensor:
        """Tweedie's ``E[x_0 | x_t = x]``: responsibilities times per-component Wiener filters.

        ``sum_j r_j(x) (mu_j + sqrt(a) Sigma_j (a Sigma_j + (1 - a) I)^{-1} (x - sqrt(a) mu_j))``
        with ``r_j`` the posterior component probabilities under the noised mixture.

        Args:
            x: ``(n,)`` or ``(b, n)``.
            alpha_bar: ``a`` in ``(0, 1)``, a scalar or one per row.

        Returns:
            ``E[x_0 | x_t]`` shaped like ``x``.

        Raises:
            ValueError: for a wrong shape, non-finite values or ``a`` outside ``(0, 1)``.
            TypeError: for a dtype other than the prior's.
        """
        log_joint, mean = self._component_terms(x, alpha_bar)
        resp = torch.softmax(log_joint, dim=-1)
        return (resp.unsqueeze(-1) * mean).sum(-2)

    def denoiser(
        self, alphas_bar: Tensor, prediction: Prediction = "epsilon"
    ) -> ClosedFormDenoiser:
        """This prior's exact denoiser for a noise schedule (see :class:`ClosedFormDenoiser`).

        Returns:
            The denoiser.
        """
        return ClosedFormDenoiser(self, alphas_bar, prediction)
