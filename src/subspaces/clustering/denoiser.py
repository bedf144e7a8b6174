r"""Low-rank denoisers trained on finite samples, and why training them is subspace clustering.

Wang, Zhang, Zhang, Chen, Ma & Qu, "Diffusion models learn low-dimensional distributions via
subspace clustering" (arXiv:2409.02426, 2024) parameterize the denoising autoencoder of a diffusion
model like the optimal denoiser of a mixture of low-rank Gaussians
(:class:`~subspaces.clustering.mixtures.LowRankGaussianMixture`):

.. math::
    D_U(x_t, \sigma) = \sum_{k=1}^K w_k(x_t)\, \frac{U_k U_k^T x_t}{1 + \sigma^2}, \qquad
    w_k \propto \exp\Big(\frac{\|U_k^T x_t\|^2}{2\sigma^2(1 + \sigma^2)}\Big),

with ``U_k`` orthonormal ``n x d`` (:class:`LowRankDenoiser`; here ``U_k`` is the sign-fixed QR
factor of a free parameter), and train it on ``N`` samples ``x_i`` with the diffusion loss
``mean_{i, sigma, eps} ||D_U(x_i + sigma eps, sigma) - x_i||^2`` (:func:`denoising_loss`,
:func:`train_denoiser`).

**The equivalence.** For one subspace, and for ``K`` subspaces once the weights pick the
component a point is closest to (small ``sigma``), with ``c = 1/(1 + sigma^2)``

.. math::
    \mathbb E_\varepsilon \|D_U(x_i + \sigma\varepsilon, \sigma) - x_i\|^2
    = \|x_i\|^2 - (2c - c^2) \max_k \|U_k^T x_i\|^2 + \sigma^2 c^2 d,

so minimizing the training loss is maximizing ``sum_i max_k ||U_k^T x_i||^2``: the k-subspaces
(subspace clustering) objective over the training samples (:func:`subspace_clustering_objective`,
:func:`clustering_loss_prediction`). The paper deduces that the subspaces are learned once each
component has about ``d`` samples (the samples of a component span its subspace), a sample
complexity linear in the intrinsic dimension; experiment ``P20`` measures that phase transition.

The subspaces are read from a trained :class:`LowRankDenoiser` (:meth:`LowRankDenoiser.subspaces`)
or from any denoiser through its Jacobians at the samples (:func:`recover_subspaces`); the
estimator :class:`DiffusionSubspaceClustering` clusters data by training the denoiser.

Example:
    >>> import torch
    >>> from subspaces.clustering.mixtures import LowRankGaussianMixture
    >>> g = torch.Generator().manual_seed(0)
    >>> mix = LowRankGaussianMixture.random(6, 2, 2, generator=g, dtype=torch.float64)
    >>> X, y = mix.sample(16, generator=g)
    >>> fit = train_denoiser(X, 2, 2, steps=150, noise_draws=1, generator=g)
    >>> err = subspace_recovery_error(fit.denoiser.subspaces(), mix.subspaces())
    >>> bool(max(err) < 0.1)
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_float, check_positive_int
from ..linalg.subspace import Subspace
from ._checks import as_generator, check_data, check_subspace_dim
from .base import ClusterEstimator

__all__ = [
    "DEFAULT_SIGMAS",
    "DenoiserFit",
    "DiffusionSubspaceClustering",
    "LowRankDenoiser",
    "clustering_loss_prediction",
    "denoising_loss",
    "recover_subspaces",
    "subspace_clustering_objective",
    "subspace_recovery_error",
    "train_denoiser",
    "train_denoiser_batch",
]

Init = Literal["seeded", "random"]
INITS: tuple[str, ...] = ("seeded", "random")

#: Noise levels of the training loss when none are given: 8 log-spaced values in [0.05, 1].
DEFAULT_SIGMAS: tuple[float, ...] = tuple(float(s) for s in np.geomspace(0.05, 1.0, 8))


def _sigma_column(sigma: float | Tensor, m: int, ref: Tensor) -> Tensor:
    if isinstance(sigma, Tensor):
        s = sigma.to(dtype=ref.dtype, device=ref.device)
        s = s.expand(m) if s.ndim == 0 else s
        if s.shape != (m,):
            raise ValueError(f"sigma must be a number or have shape ({m},), got {tuple(s.shape)}")
        if not bool((torch.isfinite(s) & (s > 0)).all()):
            raise ValueError("sigma must hold finite values > 0")
        return s.unsqueeze(1)
    return torch.full((m, 1), check_positive_float(sigma, "sigma"), dtype=ref.dtype)


def _check_sigmas(sigmas: Sequence[float] | None) -> list[float]:
    if sigmas is None:
        return list(DEFAULT_SIGMAS)
    values = [check_positive_float(s, "sigmas[i]") for s in sigmas]
    if not values:
        raise ValueError("sigmas must hold at least one noise level > 0, got an empty sequence")
    return values


class LowRankDenoiser(nn.Module):
    r"""The low-rank parameterization of the denoiser (Wang et al. 2024, Sec. 3).

    ``D(x, sigma) = sum_k softmax_k(||U_k^T x||^2 / (2 sigma^2 (1 + sigma^2))) U_k U_k^T x /
    (1 + sigma^2)`` with ``U_k`` the QR factor (signs fixed so ``diag(R) > 0``) of the parameter
    ``weight[k]`` of shape ``(n, d)``. With the true bases it is the exact optimal denoiser of the
    uniform mixture of low-rank Gaussians.

    Args:
        ambient_dim: ``n``.
        subspace_dim: ``d`` (``1 <= d <= n``).
        n_components: ``K``.
        generator: random generator for the initialization (Gaussian).
        dtype: parameter dtype (float32 or float64).

    Example:
        >>> import torch
        >>> D = LowRankDenoiser(5, 2, 3, generator=torch.Generator().manual_seed(0))
        >>> D(torch.randn(4, 5), 0.5).shape, D.bases().shape
        (torch.Size([4, 5]), torch.Size([3, 5, 2]))
    """

    def __init__(
        self,
        ambient_dim: int,
        subspace_dim: int,
        n_components: int,
        *,
        generator: torch.Generator | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        n = check_positive_int(ambient_dim, "ambient_dim")
        d = check_subspace_dim(subspace_dim, n)
        K = check_positive_int(n_components, "n_components")
        if dtype not in (torch.float32, torch.float64):
            raise TypeError(f"dtype must be torch.float32 or torch.float64, got {dtype}")
        init = torch.randn(K, n, d, generator=generator, dtype=torch.float64) / math.sqrt(n)
        self.weight = nn.Parameter(init.to(dtype))

    @classmethod
    def from_bases(cls, bases: Tensor) -> LowRankDenoiser:
        """A denoiser whose subspaces are the given orthonormal bases ``(K, n, d)``.

        Args:
            bases: ``(K, n, d)`` orthonormal bases (float32 or float64).

        Returns:
            The denoiser (``bases()`` returns ``bases`` up to rounding).

        Example:
            >>> U = torch.eye(4, dtype=torch.float64)[:, :2].reshape(1, 4, 2)
            >>> bool(torch.allclose(LowRankDenoiser.from_bases(U).bases(), U))
            True
        """
        from .mixtures import LowRankGaussianMixture

        U = LowRankGaussianMixture(bases).bases  # validates orthonormality and shapes
        K, n, d = U.shape
        out = cls(n, d, K, dtype=U.dtype)
        with torch.no_grad():
            out.weight.copy_(U)
        return out

    def bases(self) -> Tensor:
        """The orthonormal bases ``U_k`` (differentiable in the parameter).

        Returns:
            ``(K, n, d)`` with orthonormal columns.
        """
        return _orthonormal(self.weight)

    def forward(self, x: Tensor, sigma: float | Tensor) -> Tensor:
        """Denoise ``x`` (rows) at noise level ``sigma`` (a number or one per row).

        Args:
            x: ``(m, n)`` noisy points.
            sigma: noise level(s) ``> 0``.

        Returns:
            ``(m, n)`` denoised points.
        """
        U = self.bases()
        s2 = _sigma_column(sigma, x.shape[0], U) ** 2
        return _batched_denoise(U.unsqueeze(0), x.to(U.dtype).unsqueeze(0), s2)[0]

    @torch.no_grad()
    def subspaces(self) -> list[Subspace]:
        """The learned subspaces.

        Returns:
            ``K`` :class:`~subspaces.linalg.subspace.Subspace` objects.
        """
        return [Subspace(U) for U in self.bases().detach()]

    @torch.no_grad()
    def assign(self, X: Tensor) -> Tensor:
        """Cluster labels ``argmax_k ||U_k^T x||`` (the hard weights of the small-noise limit).

        Args:
            X: ``(m, n)`` points.

        Returns:
            ``(m,)`` long labels in ``[0, K)``.
        """
        U = self.bases()
        return torch.einsum("mn,knd->mkd", X.to(U.dtype), U).pow(2).sum(-1).argmax(1)


def denoising_loss(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    X: Tensor,
    sigmas: Sequence[float] | None = None,
    *,
    noise_draws: int = 1,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    r"""The diffusion training loss ``mean_{i, sigma, eps} ||D(x_i + sigma eps, sigma) - x_i||^2``.

    Every sample is paired with every noise level and ``noise_draws`` Gaussian noise vectors.

    Args:
        denoiser: ``D(x_t (m, n), sigma (m,)) -> (m, n)``, e.g. a :class:`LowRankDenoiser`.
        X: ``(N, n)`` clean training samples.
        sigmas: noise levels (default :data:`DEFAULT_SIGMAS`).
        noise_draws: noise vectors per sample and level.
        generator: random generator for the noise.
        noise: optional fixed noise ``(len(sigmas) * noise_draws * N, n)`` (then ``generator`` is
            not used), for a deterministic loss.

    Returns:
        The scalar loss (differentiable in the denoiser's parameters).

    Raises:
        ValueError: for an empty or non-positive noise level or ``noise`` of the wrong shape.

    Example:
        >>> import torch
        >>> U = torch.eye(3, dtype=torch.float64)[:, :1].reshape(1, 3, 1)
        >>> X = torch.tensor([[2.0, 0.0, 0.0]], dtype=torch.float64)
        >>> D = LowRankDenoiser.from_bases(U)
        >>> with torch.no_grad():
        ...     loss = denoising_loss(D, X, [0.1], noise_draws=20000,
        ...                           generator=torch.Generator().manual_seed(0))
        >>> c = 1 / 1.01  # closed form: ||x||^2 - (2c - c^2) ||U^T x||^2 + sigma^2 c^2 d
        >>> bool(abs(float(loss) - (4 - (2 * c - c * c) * 4 + 0.01 * c * c)) < 1e-3)
        True
    """
    levels = _check_sigmas(sigmas)
    draws = check_positive_int(noise_draws, "noise_draws")
    N = X.shape[0]
    X0 = X.repeat(len(levels) * draws, 1)
    s = torch.tensor(levels, dtype=X.dtype).repeat_interleave(N * draws)
    if noise is None:
        noise = torch.randn(X0.shape, generator=generator, dtype=X.dtype)
    elif noise.shape != X0.shape:
        raise ValueError(f"noise must have shape {tuple(X0.shape)}, got {tuple(noise.shape)}")
    out = denoiser(X0 + s.unsqueeze(1) * noise, s)
    return (out - X0).pow(2).sum(1).mean()


@dataclass
class DenoiserFit:
    """A trained :class:`LowRankDenoiser` with its training record.

    Attributes:
        denoiser: the best of the ``n_init`` runs (lowest final loss on fixed noise).
        loss_history: training loss per step of that run.
        final_loss: its loss on a fixed noise draw (the selection criterion).
        final_losses: the final loss of every run.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> axis = torch.tensor([[0.0, 1.0, 0.0]], dtype=torch.float64)
        >>> X = torch.randn(30, 1, dtype=torch.float64, generator=g) * axis  # a line in R^3
        >>> fit = train_denoiser(X, 1, 1, steps=80, noise_draws=1, n_init=3, generator=0)
        >>> len(fit.loss_history), len(fit.final_losses), fit.final_loss == min(fit.final_losses)
        (80, 3, True)
        >>> U = fit.denoiser.bases()[0, :, 0].detach()  # the learned line is the y axis
        >>> abs(float(U[1])) > 0.999
        True
    """

    denoiser: LowRankDenoiser
    loss_history: list[float] = field(default_factory=list)
    final_loss: float = math.nan
    final_losses: list[float] = field(default_factory=list)


def _orthonormal(W: Tensor) -> Tensor:
    """Sign-fixed QR factor of ``W (..., n, d)`` (differentiable)."""
    Q, R = torch.linalg.qr(W)
    sign = torch.where(torch.diagonal(R, dim1=-2, dim2=-1) < 0, -1.0, 1.0).to(Q.dtype)
    return Q * sign.unsqueeze(-2)


def _seeded_init(X: Tensor, K: int, d: int, gen: torch.Generator) -> Tensor:
    """``(B, K, n, d)`` starting bases from cosine-weighted covariances around seed samples."""
    B, N, _ = X.shape
    Xn = X / X.norm(dim=2, keepdim=True).clamp_min(torch.finfo(X.dtype).tiny)
    cos2 = (Xn @ Xn.transpose(1, 2)).pow(2)  # (B, N, N)
    seeds = [torch.randint(0, N, (B,), generator=gen)]
    for _ in range(1, K):
        closeness = torch.stack([cos2[torch.arange(B), j] for j in seeds]).amax(0)  # (B, N)
        seeds.append(closeness.argmin(1))
    out = []
    for j in seeds:
        w = cos2[torch.arange(B), j]  # (B, N)
        C = torch.einsum("bi,bin,bim->bnm", w, X, X)
        _, vecs = torch.linalg.eigh(C)
        out.append(vecs[..., -d:])
    return torch.stack(out, dim=1)


def _batched_denoise(U: Tensor, x: Tensor, s2: Tensor) -> Tensor:
    """``U (B, K, n, d)``, ``x (B, m, n)``, ``s2 (m, 1)`` -> ``(B, m, n)``."""
    coords = torch.einsum("bmn,bknd->bmkd", x, U)
    w = torch.softmax(coords.pow(2).sum(-1) / (2 * s2 * (1 + s2)), dim=2)
    return torch.einsum("bmk,bmkd,bknd->bmn", w, coords, U) / (1 + s2)


def _batched_loss(U: Tensor, X: Tensor, levels: Tensor, noise: Tensor) -> Tensor:
    """Per-model losses ``(B,)`` for data ``X (B, N, n)`` and noise ``(B, L * N, n)``."""
    N = X.shape[1]
    X0 = X.repeat(1, levels.shape[0] // N, 1)
    out = _batched_denoise(U, X0 + levels.unsqueeze(1) * noise, levels.pow(2).unsqueeze(1))
    return (out - X0).pow(2).sum(2).mean(1)


def train_denoiser_batch(
    X: Any,
    n_components: int,
    subspace_dim: int,
    *,
    sigmas: Sequence[float] | None = None,
    steps: int = 500,
    lr: float = 0.05,
    noise_draws: int = 4,
    init: Init = "seeded",
    generator: torch.Generator | int | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Train ``B`` independent low-rank denoisers on ``B`` data sets at once.

    See :func:`train_denoiser` for the training itself. The models share nothing but the step
    schedule: the loss is the sum of the ``B`` losses, so each gets its own gradient, and Adam
    acts entry by entry. One batched run is much faster than ``B`` runs on small problems (the
    cost is per-step overhead).

    Args:
        X: ``(B, N, n)`` data sets (float32 or float64; no NaN/Inf).
        n_components: ``K``.
        subspace_dim: ``d``.
        sigmas: training noise levels (default :data:`DEFAULT_SIGMAS`).
        steps: Adam steps.
        lr: initial learning rate (cosine decay to 0).
        noise_draws: noise vectors per sample and level at each step.
        init: ``"seeded"`` (each ``U_k`` starts as the top-``d`` eigenvectors of the covariance
            of the samples weighted by their squared cosine to a seed sample: the first seed at
            random, the next ones the samples least aligned with the earlier seeds) or
            ``"random"`` (Gaussian).
        generator: random generator or int seed (initialization and noise).

    Returns:
        ``(bases, final_losses, history)``: ``(B, K, n, d)`` orthonormal bases, ``(B,)`` losses on
        one fixed noise draw after training, ``(steps, B)`` training losses.

    Raises:
        ValueError: if ``X`` is not 3-D, holds NaN/Inf, has fewer samples than components, for
            ``subspace_dim`` above the ambient dimension, or if the loss diverges.

    Example:
        >>> import torch
        >>> X = torch.randn(3, 20, 1, dtype=torch.float64) * torch.tensor([1.0, 0.0, 0.0])
        >>> U, final, hist = train_denoiser_batch(X, 1, 1, steps=60, noise_draws=1, generator=0)
        >>> U.shape, bool((U[:, 0, 0, 0].abs() > 0.999).all())
        (torch.Size([3, 1, 3, 1]), True)
    """
    data = X.detach() if isinstance(X, Tensor) else torch.as_tensor(np.asarray(X))
    if data.ndim != 3:
        raise ValueError(f"X must be 3-D (B, N, n), got shape {tuple(data.shape)}")
    K = check_positive_int(n_components, "n_components")
    for b in range(data.shape[0]):
        check_data(data[b], f"X[{b}]", n_clusters=K)
    if data.dtype not in (torch.float32, torch.float64):
        data = data.double()
    B, N, n = data.shape
    d = check_subspace_dim(subspace_dim, n)
    levels = _check_sigmas(sigmas)
    n_steps = check_positive_int(steps, "steps")
    rate = check_positive_float(lr, "lr")
    draws = check_positive_int(noise_draws, "noise_draws")
    how = check_choice(init, "init", INITS)
    gen = as_generator(generator, "generator")
    s = torch.tensor(levels, dtype=data.dtype).repeat_interleave(N * draws)
    rows = s.shape[0]
    eval_noise = torch.randn(B, rows, n, generator=gen, dtype=data.dtype)
    start = torch.randn(B, K, n, d, generator=gen, dtype=torch.float64) / math.sqrt(n)
    if how == "seeded":
        start = _seeded_init(data.double(), K, d, gen) + 1e-3 * start
    W = start.to(data.dtype).requires_grad_(True)
    opt = torch.optim.Adam([W], lr=rate)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=n_steps)
    history = []
    for _step in range(n_steps):
        opt.zero_grad(set_to_none=True)
        noise = torch.randn(B, rows, n, generator=gen, dtype=data.dtype)
        losses = _batched_loss(_orthonormal(W), data, s, noise)
        losses.sum().backward()
        opt.step()
        sched.step()
        history.append(losses.detach())
    with torch.no_grad():
        U = _orthonormal(W)
        final = _batched_loss(U, data, s, eval_noise)
    if not bool(torch.isfinite(final).all()):
        raise ValueError(f"the denoising loss became non-finite; lower lr (got {rate})")
    return U.detach(), final, torch.stack(history)


def train_denoiser(
    X: Any,
    n_components: int,
    subspace_dim: int,
    *,
    sigmas: Sequence[float] | None = None,
    steps: int = 500,
    lr: float = 0.05,
    noise_draws: int = 4,
    n_init: int = 1,
    generator: torch.Generator | int | None = None,
) -> DenoiserFit:
    """Train a :class:`LowRankDenoiser` on finite samples with the diffusion loss (Adam).

    Each step draws fresh noise for every sample, noise level and draw (``N * len(sigmas) *
    noise_draws`` rows) and takes one Adam step on the free parameters (``lr`` decays by a cosine
    schedule to 0). With ``n_init > 1`` the runs start from independent Gaussian initializations
    (trained together, :func:`train_denoiser_batch`) and the one with the lowest loss on a common
    fixed noise draw is kept.

    Args:
        X: ``(N, n)`` clean training samples (float32 or float64 kept; no NaN/Inf).
        n_components: ``K``.
        subspace_dim: ``d``.
        sigmas: training noise levels (default :data:`DEFAULT_SIGMAS`).
        steps: Adam steps per run.
        lr: initial learning rate.
        noise_draws: noise vectors per sample and level at each step.
        n_init: independent initializations.
        generator: random generator (or int seed) for initialization and noise.

    Returns:
        A :class:`DenoiserFit`.

    Raises:
        ValueError: for NaN/Inf rows, fewer samples than ``n_components``, ``subspace_dim``
            above the ambient dimension, non-positive counts or noise levels.

    Example:
        >>> import torch
        >>> X = torch.randn(30, 1, dtype=torch.float64) * torch.tensor([[1.0, 1.0, 0.0]])
        >>> fit = train_denoiser(X, 1, 1, steps=100, noise_draws=1, generator=0)
        >>> U = fit.denoiser.bases()[0, :, 0].detach()
        >>> bool(abs(abs(float(U @ torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))) - 2**0.5)
        ...      < 1e-3)
        True
    """
    K = check_positive_int(n_components, "n_components")
    data = check_data(X, "X", n_clusters=K)
    runs = check_positive_int(n_init, "n_init")
    U, final, history = train_denoiser_batch(
        data.unsqueeze(0).expand(runs, -1, -1),
        K,
        subspace_dim,
        sigmas=sigmas,
        steps=steps,
        lr=lr,
        noise_draws=noise_draws,
        generator=generator,
    )
    best = int(final.argmin())
    return DenoiserFit(
        LowRankDenoiser.from_bases(U[best]),
        history[:, best].tolist(),
        float(final[best]),
        final.tolist(),
    )


def subspace_clustering_objective(bases: Tensor, X: Tensor) -> tuple[Tensor, Tensor]:
    """The k-subspaces objective ``mean_i max_k ||U_k^T x_i||^2`` and the maximizing labels.

    Args:
        bases: ``(K, n, d)`` orthonormal bases.
        X: ``(N, n)`` samples.

    Returns:
        ``(objective, labels)``: a scalar tensor and ``(N,)`` long labels.

    Example:
        >>> import torch
        >>> U = torch.eye(2).reshape(2, 2, 1)  # the two coordinate axes
        >>> obj, labels = subspace_clustering_objective(U, torch.tensor([[3.0, 1.0], [0.0, 2.0]]))
        >>> float(obj), labels.tolist()
        (6.5, [0, 1])
    """
    proj = torch.einsum("mn,knd->mkd", X.to(bases.dtype), bases).pow(2).sum(-1)
    best, labels = proj.max(1)
    return best.mean(), labels


def clustering_loss_prediction(bases: Tensor, X: Tensor, sigma: float) -> Tensor:
    r"""The denoising loss at one noise level predicted from the clustering objective.

    ``mean_i ||x_i||^2 - (2c - c^2) mean_i max_k ||U_k^T x_i||^2 + sigma^2 c^2 d`` with ``c = 1 /
    (1 + sigma^2)``: exact for one subspace, and the small-``sigma`` limit for several (where the
    soft weights select the closest subspace). The loss is a decreasing affine function of the
    k-subspaces objective, so the two have the same minimizers (the paper's equivalence).

    Args:
        bases: ``(K, n, d)`` orthonormal bases.
        X: ``(N, n)`` clean samples.
        sigma: noise level ``> 0``.

    Returns:
        The predicted loss (a scalar tensor).

    Example:
        >>> import torch
        >>> U = torch.eye(3, dtype=torch.float64)[:, :1].reshape(1, 3, 1)
        >>> X = torch.tensor([[2.0, 1.0, 0.0]], dtype=torch.float64)
        >>> with torch.no_grad():
        ...     exact = denoising_loss(LowRankDenoiser.from_bases(U), X, [0.5], noise_draws=50000,
        ...         generator=torch.Generator().manual_seed(0))
        >>> bool(abs(float(exact - clustering_loss_prediction(U, X, 0.5))) < 0.01)
        True
    """
    s = check_positive_float(sigma, "sigma")
    c = 1.0 / (1.0 + s * s)
    obj, _ = subspace_clustering_objective(bases, X)
    sq = X.to(bases.dtype).pow(2).sum(1).mean()
    return sq - (2 * c - c * c) * obj + s * s * c * c * bases.shape[2]


def _jacobians(denoiser: Callable[[Tensor, Tensor], Tensor], X: Tensor, sigma: float) -> Tensor:
    """Per-row Jacobians ``dD(x_i)/dx_i`` of a row-wise denoiser, one backward pass per output."""
    x = X.detach().clone().requires_grad_(True)
    s = torch.full((X.shape[0],), sigma, dtype=X.dtype)
    out = denoiser(x, s)
    rows = []
    for j in range(X.shape[1]):
        (g,) = torch.autograd.grad(out[:, j].sum(), x, retain_graph=j + 1 < X.shape[1])
        rows.append(g)
    return torch.stack(rows, dim=1)  # (m, n_out, n_in)


def recover_subspaces(
    denoiser: Callable[[Tensor, Tensor], Tensor],
    X: Any,
    subspace_dim: int,
    n_subspaces: int,
    *,
    sigma: float = 0.05,
) -> tuple[list[Subspace], Tensor]:
    r"""Read the subspaces off any denoiser from its Jacobians at the samples.

    At a point on component ``k`` and small ``sigma`` the optimal denoiser's Jacobian is
    ``U_k U_k^T / (1 + sigma^2)`` (the weights are saturated), so the top-``d`` eigenvectors of
    each symmetrized Jacobian give a local subspace. These are grouped around ``K`` centers chosen
    by farthest-point selection on the projection distance ``||P_i - P_j||_F``, each point joins
    its nearest center, and each group's subspace is the top-``d`` eigenspace of the mean of its
    projectors.

    Args:
        denoiser: ``D(x (m, n), sigma (m,)) -> (m, n)``, differentiable in ``x`` and acting row by
            row (e.g. :class:`LowRankDenoiser` or ``LowRankGaussianMixture.denoise``).
        X: ``(N, n)`` probe points (e.g. training samples), ``N >= n_subspaces``.
        subspace_dim: ``d``.
        n_subspaces: ``K``.
        sigma: noise level at which the Jacobians are taken.

    Returns:
        ``(subspaces, labels)``: ``K`` subspaces and the group of each probe.

    Example:
        >>> import torch
        >>> from subspaces.clustering.mixtures import LowRankGaussianMixture
        >>> g = torch.Generator().manual_seed(0)
        >>> mix = LowRankGaussianMixture.random(8, 2, 2, generator=g, dtype=torch.float64)
        >>> X, _ = mix.sample(20, generator=g)
        >>> found, _ = recover_subspaces(mix.denoise, X, 2, 2)
        >>> bool(max(subspace_recovery_error(found, mix.subspaces())) < 1e-6)
        True
    """
    K = check_positive_int(n_subspaces, "n_subspaces")
    data = check_data(X, "X", n_clusters=K)
    d = check_subspace_dim(subspace_dim, data.shape[1])
    s = check_positive_float(sigma, "sigma")
    J = _jacobians(denoiser, data, s).double()
    _, vecs = torch.linalg.eigh(0.5 * (J + J.transpose(1, 2)))
    V = vecs[:, :, -d:]  # (m, n, d) top-d eigenvectors
    P = V @ V.transpose(1, 2)
    flat = P.reshape(P.shape[0], -1)
    dist = torch.cdist(flat, flat)
    centers = [0]
    for _ in range(1, K):
        centers.append(int(dist[:, centers].min(1).values.argmax()))
    labels = dist[:, centers].argmin(1)
    found = []
    for k in range(K):
        members = P[labels == k]
        _, ev = torch.linalg.eigh(members.mean(0))
        found.append(Subspace(ev[:, -d:].contiguous().to(data.dtype)))
    return found, labels


def subspace_recovery_error(
    estimated: Sequence[Subspace], truth: Sequence[Subspace]
) -> list[float]:
    r"""``sin`` of the largest principal angle of each true subspace to its matched estimate.

    Estimates are matched to the true subspaces one-to-one by the Hungarian algorithm on the
    projection distance ``sin theta_max = ||P_1 - P_2||_2``.

    Args:
        estimated: at least as many subspaces as ``truth``, same ambient dimension.
        truth: the true subspaces.

    Returns:
        One ``sin theta_max`` in ``[0, 1]`` per true subspace (0 = recovered exactly).

    Raises:
        ValueError: if fewer estimates than true subspaces are given.

    Example:
        >>> import torch
        >>> e = torch.eye(3, dtype=torch.float64)
        >>> S = [Subspace(e[:, :1]), Subspace(e[:, 1:2])]
        >>> subspace_recovery_error(S[::-1], S)
        [0.0, 0.0]
    """
    from scipy.optimize import linear_sum_assignment

    if len(estimated) < len(truth) or not truth:
        raise ValueError(
            f"need at least as many estimated subspaces as true ones (>= 1), got "
            f"{len(estimated)} estimated and {len(truth)} true"
        )
    cost = np.zeros((len(truth), len(estimated)))
    for i, T in enumerate(truth):
        for j, E in enumerate(estimated):
            cost[i, j] = float(torch.sin(T.principal_angles(E).max()))
    rows, cols = linear_sum_assignment(cost)
    out = [0.0] * len(truth)
    for i, j in zip(rows, cols, strict=True):
        out[i] = float(max(0.0, min(1.0, cost[i, j])))
    return out


class DiffusionSubspaceClustering(ClusterEstimator):
    """Subspace clustering by training a low-rank diffusion denoiser (Wang et al. 2024).

    ``fit`` trains a :class:`LowRankDenoiser` with :func:`train_denoiser` and labels each sample by
    the subspace that captures most of it.

    Args:
        n_clusters: number of subspaces ``K``.
        subspace_dim: their dimension ``d``.
        sigmas: training noise levels (default :data:`DEFAULT_SIGMAS`, suited to data of unit
            variance along each subspace direction).
        steps: Adam steps per initialization.
        lr: learning rate.
        noise_draws: noise vectors per sample and level at each step.
        n_init: initializations (the lowest final loss is kept).
        random_state: ``None``, an int seed or a ``torch.Generator``.

    Attributes:
        labels_: ``(N,)`` cluster labels.
        subspaces_: learned :class:`~subspaces.linalg.subspace.Subspace` objects.
        denoiser_: the trained :class:`LowRankDenoiser`.
        loss_history_: training loss per step.

    Example:
        >>> import torch
        >>> from subspaces.clustering.mixtures import LowRankGaussianMixture
        >>> from subspaces.clustering.metrics import clustering_accuracy
        >>> g = torch.Generator().manual_seed(1)
        >>> mix = LowRankGaussianMixture.random(6, 2, 2, generator=g, dtype=torch.float64)
        >>> X, y = mix.sample(16, generator=g)
        >>> est = DiffusionSubspaceClustering(2, 2, steps=150, noise_draws=1, n_init=1,
        ...                                   random_state=0).fit(X)
        >>> clustering_accuracy(y, est.labels_)
        1.0
    """

    def __init__(
        self,
        n_clusters: int,
        subspace_dim: int,
        *,
        sigmas: Sequence[float] | None = None,
        steps: int = 500,
        lr: float = 0.05,
        noise_draws: int = 4,
        n_init: int = 3,
        random_state: int | torch.Generator | None = None,
    ) -> None:
        self.n_clusters = n_clusters
        self.subspace_dim = subspace_dim
        self.sigmas = sigmas
        self.steps = steps
        self.lr = lr
        self.noise_draws = noise_draws
        self.n_init = n_init
        self.random_state = random_state

    def fit(self, X: Any, y: Any = None) -> DiffusionSubspaceClustering:
        """Train the denoiser on ``X`` and label its rows.

        Args:
            X: ``(N, n)`` data.
            y: ignored.

        Returns:
            ``self``.
        """
        del y
        fit = train_denoiser(
            X,
            self.n_clusters,
            self.subspace_dim,
            sigmas=self.sigmas,
            steps=self.steps,
            lr=self.lr,
            noise_draws=self.noise_draws,
            n_init=self.n_init,
            generator=self.random_state,
        )
        data = check_data(X, "X")
        self.denoiser_ = fit.denoiser
        self.loss_history_ = fit.loss_history
        self.subspaces_ = fit.denoiser.subspaces()
        self.labels_ = fit.denoiser.assign(data)
        return self

    def predict(self, X: Any) -> Tensor:
        """Label new points by the learned subspace that captures most of each.

        Args:
            X: ``(m, n)`` points.

        Returns:
            ``(m,)`` long labels.

        Raises:
            ValueError: if ``X`` has another number of columns than in ``fit``.
        """
        self._check_fitted("denoiser_")
        data = check_data(X, "X")
        n = self.subspaces_[0].ambient_dim
        if data.shape[1] != n:
            raise ValueError(f"X must have {n} columns (as in fit), got {data.shape[1]}")
        return self.denoiser_.assign(data)
