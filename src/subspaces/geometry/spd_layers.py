r"""SPD network layers: BiMap, ReEig, LogEig (Huang & Van Gool 2017) and SPD batch normalization.

Riemannian batch normalization (:class:`SPDBatchNorm`): each batch is centred at the identity,
biased to a learned SPD matrix ``B = exp(sym(P_B))`` and (with ``dispersion=True``, the
default) its Fréchet variance ``v`` normalized to a learned ``s^2`` (``s = exp(log_scale)``):

* ``"gbw"`` (Wang, Jin, Chen, Luo & Wu, CVPR 2025, arXiv:2504.00660): the generalized
  Bures-Wasserstein metric with power deformation ``theta`` and learnable metric parameter
  ``M = exp(sym(P_M))``. In the chart ``phi(X) = M^{-1/2} X^theta M^{-1/2}`` (an isometry onto
  the BW metric, up to ``theta^2``) the layer computes the BW barycenter ``mu`` of ``Z_i =
  phi(X_i)``, the variance ``v = mean_i d_BW(mu, Z_i)^2 / theta^2``, the logarithms
  ``Log_mu(Z_i)`` (velocity fields ``T_i - I``, ``T_i`` the optimal transport maps), transports
  them isometrically to ``I`` (in the eigenbasis of ``mu``, entry ``(i, j)`` times
  ``sqrt(2 / (mu_i + mu_j))``, the paper's transport), scales them by ``c = s / sqrt(v + eps)``,
  transports them isometrically from ``I`` to ``G = phi(B)`` and applies ``Exp_G``; the output
  is mapped back by ``phi^{-1}(Y) = (M^{1/2} Y M^{1/2})^{1/theta}``. Since the transports are
  linear isometries, the output has GBW Fréchet mean ``B`` and variance ``s^2 v / (v + eps)``
  while ``Exp_G`` stays inside the domain of ``Log_G`` (``I + c L_i`` positive definite,
  ``L_i`` the transported velocity fields; true for ``c <= 1`` and moderate spreads; outside it
  the output is still SPD but the mean/variance statements are only approximate);
* ``"bw"``: the same with ``theta = 1`` and ``M = I``;
* ``"ai"`` (Brooks et al. 2019, "Riemannian batch normalization for SPD neural networks"):
  ``X -> B^{1/2} (mu^{-1/2} X mu^{-1/2})^c B^{1/2}`` with ``mu`` the AI Karcher mean and
  ``v = mean_i ||log(mu^{-1/2} X_i mu^{-1/2})||_F^2`` (``c = 1`` with ``dispersion=False``,
  Brooks et al.'s layer; the dispersion step is that of Kobler et al. 2022).

Running statistics: the first training batch sets them (a warm start, so evaluation never uses
the identity left by the initialization); later batches move the running mean along the
layer's geodesic by ``momentum`` (for ``"gbw"`` under the current ``M``, the mean being stored
outside the chart) and the running variance by an exponential moving average. Evaluation mode
normalizes with them.

Example:
    >>> import torch
    >>> from subspaces.geometry import is_spd
    >>> torch.manual_seed(0) is not None
    True
    >>> A = torch.randn(8, 4, 6, dtype=torch.float64)
    >>> X = A @ A.mT / 6 + 0.1 * torch.eye(4, dtype=torch.float64)
    >>> net = torch.nn.Sequential(BiMap(4, 3), ReEig(), SPDBatchNorm(3, metric="gbw", theta=0.5))
    >>> Y = net.double()(X)
    >>> bool(is_spd(Y).all()), LogEig(3)(Y).shape
    (True, torch.Size([8, 6]))
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .._checks import (
    check_choice,
    check_finite,
    check_float_tensor,
    check_positive_float,
    check_positive_int,
)

# The layers use the unvalidated matrix functions: their inputs are SPD by construction and a
# validation (a host sync, and an error on rounding-level negative eigenvalues) per call would
# change training; the public ``spd_*`` functions validate.
from .spd_ai import _ai_mean
from .spd_bw import _bw_barycenter, _bw_geodesic, _pair_kernel, _transport_map
from .spd_functions import _clamp_eig, _exp, _log, _pow, _sqrt
from .spd_gbw import _check_theta, _gbw_chart, _gbw_unchart
from .spd_validation import sym

__all__ = ["BiMap", "LogEig", "ReEig", "SPDBatchNorm"]


def _check_batch(X: Tensor, n: int, name: str = "X") -> Tensor:
    X = check_float_tensor(X, name)
    if X.ndim < 2 or X.shape[-1] != X.shape[-2] or X.shape[-1] != n:
        raise ValueError(f"{name} must have shape (..., {n}, {n}), got {tuple(X.shape)}")
    return check_finite(X, name)


class BiMap(nn.Module):
    """Bilinear map ``X -> W^T X W`` with ``W`` (``n_in x n_out``) orthonormal columns.

    ``W`` is kept on the Stiefel manifold by parametrizing it as the Q factor (with signs fixed so
    that ``diag(R) > 0``) of an unconstrained matrix: gradient steps act on the raw parameter
    and every forward pass re-orthonormalizes (a QR retraction).

    Args:
        n_in: input size (``n_in >= n_out``).
        n_out: output size.
        seed: optional seed of the initialization.

    Raises:
        ValueError: if ``n_out > n_in``.

    Example:
        >>> m = BiMap(5, 2, seed=0)
        >>> W = m.weight
        >>> torch.allclose(W.T @ W, torch.eye(2), atol=1e-6)
        True
    """

    def __init__(self, n_in: int, n_out: int, seed: int | None = None) -> None:
        super().__init__()
        check_positive_int(n_in, "n_in")
        check_positive_int(n_out, "n_out")
        if n_out > n_in:
            raise ValueError(f"n_out must be <= n_in, got n_in={n_in}, n_out={n_out}")
        self.n_in, self.n_out = n_in, n_out
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        self.raw = nn.Parameter(torch.randn(n_in, n_out, generator=gen))

    @property
    def weight(self) -> Tensor:
        """The orthonormal ``W`` (``n_in x n_out``), the Q factor of the raw parameter."""
        Q, R = torch.linalg.qr(self.raw)
        signs = torch.sign(torch.diagonal(R)).clamp_min(0) * 2 - 1
        return Q * signs

    def forward(self, X: Tensor) -> Tensor:
        """Apply ``W^T X W``.

        Args:
            X: ``(..., n_in, n_in)`` SPD.

        Returns:
            ``(..., n_out, n_out)``.
        """
        X = _check_batch(X, self.n_in)
        W = self.weight.to(X.dtype)
        return sym(W.mT @ X @ W)


class ReEig(nn.Module):
    """Eigenvalue rectification ``U max(Λ, eps) U^T``.

    Args:
        eps: the floor on the eigenvalues.

    Example:
        >>> ReEig(0.5)(torch.diag(torch.tensor([0.1, 2.0])))
        tensor([[0.5000, 0.0000],
                [0.0000, 2.0000]])
    """

    def __init__(self, eps: float = 1e-4) -> None:
        super().__init__()
        self.eps = float(eps)

    def forward(self, X: Tensor) -> Tensor:
        """Rectify the eigenvalues.

        Args:
            X: ``(..., n, n)`` symmetric.

        Returns:
            SPD output.
        """
        X = _check_batch(X, X.shape[-1] if X.ndim >= 2 else -1)
        return _clamp_eig(X, self.eps)


class LogEig(nn.Module):
    """Matrix logarithm, then the upper triangle as a vector (off-diagonals times ``sqrt 2``).

    The ``sqrt 2`` makes the vectorization an isometry for the Frobenius norm.

    Args:
        n: matrix size; the output has ``n (n + 1) / 2`` features.

    Example:
        >>> LogEig(2)(torch.eye(2).expand(3, 2, 2)).shape
        torch.Size([3, 3])
    """

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = check_positive_int(n, "n")
        self.rows: Tensor
        self.cols: Tensor
        rows, cols = torch.triu_indices(n, n)
        self.register_buffer("rows", rows, persistent=False)
        self.register_buffer("cols", cols, persistent=False)

    def forward(self, X: Tensor) -> Tensor:
        """Vectorize ``log X``.

        Args:
            X: ``(..., n, n)`` SPD.

        Returns:
            ``(..., n (n + 1) / 2)``.
        """
        X = _check_batch(X, self.n)
        L = _log(X)
        v = L[..., self.rows, self.cols]
        scale = torch.full(v.shape[-1:], 2.0**0.5, dtype=v.dtype, device=v.device)
        scale[self.rows == self.cols] = 1.0
        return v * scale


class SPDBatchNorm(nn.Module):
    """Riemannian batch normalization of SPD matrices: centring, biasing, dispersion.

    Training mode normalizes with the batch statistics (gradients flow through the batch mean
    and dispersion, as in Euclidean batch norm), evaluation mode with the running ones. See the
    module docstring for the maps of each metric.

    Args:
        n: matrix size.
        metric: ``"gbw"`` (generalized Bures-Wasserstein, power ``theta`` and learnable metric
            parameter ``M``), ``"bw"`` (``theta = 1``, ``M = I``) or ``"ai"``
            (affine-invariant, Brooks et al. 2019).
        theta: the GBW power deformation (used only by ``"gbw"``; a finite nonzero number).
        momentum: weight of the batch statistics in the running statistics update, in
            ``(0, 1]``. The first training batch sets the running statistics (a warm start).
        max_iter: iterations of the barycenter / Karcher mean in training.
        dispersion: normalize the dispersion (Fréchet variance) to the learnable ``s^2`` (on
            by default; ``False`` centres and biases only, Brooks et al.'s layer for ``"ai"``).
        learn_metric: learn the GBW metric parameter ``M = exp(sym(P))`` (``"gbw"`` only; if
            ``False``, ``M = I``).
        eps: added to the variance before dividing by its square root.

    Raises:
        ValueError: for an unknown metric, ``theta == 0``, a momentum outside ``(0, 1]`` or
            ``eps < 0``.
        TypeError: if ``theta`` is not a number.

    Example:
        >>> X = torch.diag_embed(torch.tensor([[1.0, 4.0], [9.0, 16.0]], dtype=torch.float64))
        >>> from subspaces.geometry import spd_sqrt
        >>> bn = SPDBatchNorm(2, metric="bw").double()
        >>> Y = bn(X)  # commuting inputs: the BW barycenter is (mean of square roots)^2
        >>> torch.allclose(spd_sqrt(Y).mean(0), torch.eye(2, dtype=torch.float64))
        True
    """

    def __init__(
        self,
        n: int,
        metric: str = "gbw",
        theta: float = 0.5,
        momentum: float = 0.1,
        max_iter: int = 10,
        *,
        dispersion: bool = True,
        learn_metric: bool = True,
        eps: float = 1e-5,
    ) -> None:
        super().__init__()
        self.n = check_positive_int(n, "n")
        self.metric = check_choice(metric, "metric", ("bw", "gbw", "ai"))
        theta_value = _check_theta(theta)
        self.theta = theta_value if metric == "gbw" else 1.0
        momentum = check_positive_float(momentum, "momentum")
        if momentum > 1.0:
            raise ValueError(f"momentum must be in (0, 1], got {momentum}")
        self.momentum = momentum
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.eps = check_positive_float(eps, "eps", allow_zero=True)
        self.dispersion = bool(dispersion)
        self.running_mean: Tensor
        self.running_var: Tensor
        self.num_batches_tracked: Tensor
        self.bias_log = nn.Parameter(torch.zeros(n, n))
        self.metric_log = (
            nn.Parameter(torch.zeros(n, n)) if metric == "gbw" and learn_metric else None
        )
        self.log_scale = nn.Parameter(torch.zeros(())) if self.dispersion else None
        self.register_buffer("running_mean", torch.eye(n))
        self.register_buffer("running_var", torch.ones(()))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    @property
    def bias(self) -> Tensor:
        """The learned SPD bias ``B = exp(sym(P))`` (the output's Fréchet mean in training)."""
        return _exp(sym(self.bias_log))

    @property
    def metric_parameter(self) -> Tensor | None:
        """The GBW metric parameter ``M = exp(sym(P))`` (``None`` if not learned: ``M = I``)."""
        return None if self.metric_log is None else _exp(sym(self.metric_log))

    @property
    def scale(self) -> Tensor | None:
        """The learnable dispersion ``s`` (target standard deviation), ``None`` without it."""
        return None if self.log_scale is None else self.log_scale.exp()

    def _stats(self, Z: Tensor) -> tuple[Tensor, Tensor]:
        """Batch mean (in the chart for BW/GBW) and Fréchet variance under the layer's metric."""
        k = Z.shape[0]
        tol = 1e-10 if Z.dtype == torch.float64 else 1e-6
        if self.metric == "ai":
            w = torch.full((k,), 1.0 / k, dtype=Z.dtype, device=Z.device)
            mean = _ai_mean(Z, w, self.max_iter, tol)
            Mih = _pow(mean, -0.5)
            var = _log(sym(Mih @ Z @ Mih)).pow(2).sum((-2, -1)).mean()
            return mean, var
        mean = _bw_barycenter(Z, None, self.max_iter, tol)
        T = _transport_map(mean, Z)
        eye = torch.eye(self.n, dtype=Z.dtype, device=Z.device)
        var = ((T - eye) @ mean * (T - eye)).sum((-2, -1)).mean() / self.theta**2
        return mean, var

    def _update_running(self, mean: Tensor, var: Tensor, M: Tensor | None) -> None:
        """Move the running statistics toward the batch's (a geodesic step of ``momentum``)."""
        first = int(self.num_batches_tracked) == 0
        a = 1.0 if first else self.momentum
        if self.metric == "ai":
            if first:
                new = mean
            else:  # AI geodesic R #_a mean
                R = self.running_mean.to(mean.dtype)
                Rh, Rih = _sqrt(R), _pow(R, -0.5)
                new = Rh @ _pow(sym(Rih @ mean @ Rih), a) @ Rh
        else:  # the GBW geodesic under the current metric, stored outside the chart
            R = _gbw_chart(self.running_mean.to(mean.dtype), self.theta, M)
            new = _gbw_unchart(mean if first else _bw_geodesic(R, mean, a), self.theta, M)
        self.running_mean.copy_(sym(new).to(self.running_mean.dtype))
        self.running_var.copy_(((1 - a) * self.running_var + a * var).to(self.running_var.dtype))
        self.num_batches_tracked.add_(1)

    def forward(self, X: Tensor) -> Tensor:
        """Normalize the batch (training: batch statistics; evaluation: running statistics).

        Args:
            X: ``(k, n, n)`` SPD (``k >= 2`` in training).

        Returns:
            ``(k, n, n)`` SPD. In training, with the bias ``B`` and dispersion ``s``: Fréchet
            mean ``B`` and Fréchet variance ``s^2 v / (v + eps)`` under the layer's metric
            (``v`` the batch's variance), as long as the rescaled tangent vectors stay inside
            the domain of the logarithm (always for ``"ai"``; for BW/GBW while
            ``I + c (T_i - I)`` stays positive definite, see the module docstring).

        Raises:
            ValueError: if ``X`` is not ``(k, n, n)``, not finite, or a training batch has
                ``k < 2``.
        """
        X = _check_batch(X, self.n)
        if X.ndim != 3:
            raise ValueError(f"X must have shape (k, {self.n}, {self.n}), got {tuple(X.shape)}")
        if self.training and X.shape[0] < 2:
            raise ValueError(
                f"X must hold k >= 2 matrices in training (batch statistics), got k={X.shape[0]}"
            )
        M = None if self.metric_log is None else _exp(sym(self.metric_log.to(X.dtype)))
        Z = X if self.metric == "ai" else _gbw_chart(X, self.theta, M)
        if self.training:
            mean, var = self._stats(Z)
            with torch.no_grad():
                self._update_running(mean.detach(), var.detach(), None if M is None else M.detach())
        else:
            R = self.running_mean.to(X.dtype)
            mean = R if self.metric == "ai" else _gbw_chart(R, self.theta, M)
            var = self.running_var.to(X.dtype)
        c: Tensor | float = 1.0
        if self.log_scale is not None:
            c = self.log_scale.to(X.dtype).exp() / torch.sqrt(var + self.eps)
        B = _exp(sym(self.bias_log.to(X.dtype)))
        if self.metric == "ai":
            Mih = _pow(mean, -0.5)
            C = sym(Mih @ X @ Mih)
            if self.log_scale is not None:
                C = _exp(c * _log(C))
            Bh = _sqrt(B)
            return sym(Bh @ C @ Bh)
        # BW in the chart: Log at the mean (velocity field T - I), isometric transport to I,
        # scaling by c, isometric transport from I to the bias, Exp there.
        G = _gbw_chart(B, self.theta, M)
        eye = torch.eye(self.n, dtype=X.dtype, device=X.device)
        W = _pair_kernel(mean, _transport_map(mean, Z) - eye, 0.5)  # L_I of the vector at I
        L = _pair_kernel(G, c * W, -0.5)  # L_G of the vector at G
        Y = sym((eye + L) @ G @ (eye + L))
        return _gbw_unchart(Y, self.theta, M)
