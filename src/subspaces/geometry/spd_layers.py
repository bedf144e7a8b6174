r"""SPD network layers: BiMap, ReEig, LogEig (Huang & Van Gool 2017) and SPD batch normalization.

:class:`SPDBatchNorm` centers a batch at the identity under one of three metrics:

* ``"ai"`` (Brooks et al. 2019, "Riemannian batch normalization for SPD neural networks"):
  ``X -> B^{1/2} M^{-1/2} X M^{-1/2} B^{1/2}`` with ``M`` the AI Karcher mean (AI parallel
  transport from ``M`` to ``I`` and then from ``I`` to the bias ``B``);
* ``"bw"``: ``X -> Exp_B(transport(Log_M X)) = T B T`` with ``M`` the BW barycenter,
  ``T = M^{-1/2} (M^{1/2} X M^{1/2})^{1/2} M^{-1/2}`` and the velocity-field transport of
  :func:`~subspaces.geometry.bw_transport`; with ``B = I`` the output barycenter is exactly ``I``;
* ``"gbw"`` (Wang et al., CVPR 2025, arXiv:2504.00660): the ``"bw"`` map applied to ``X^theta``
  and followed by ``(.)^{1/theta}``.

The bias ``B = exp(sym(P))`` is a learned SPD matrix (initialized at ``I``). Batch statistics
are used in training; a running mean (geodesic interpolation toward the batch mean under the
layer's metric, with weight ``momentum``) in evaluation. Only centering is implemented, no
dispersion (variance) normalization.

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

from .._checks import check_choice, check_finite, check_float_tensor, check_positive_int

# The layers use the unvalidated matrix functions: their inputs are SPD by construction and a
# validation (a host sync, and an error on rounding-level negative eigenvalues) per call would
# change training; the public ``spd_*`` functions validate.
from .spd import _ai_mean, _bw_barycenter, _clamp_eig, _exp, _log, _pow, _sqrt, sym

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
    """Riemannian batch normalization (centering) of SPD matrices.

    Args:
        n: matrix size.
        metric: ``"bw"``, ``"gbw"`` or ``"ai"`` (see the module docstring).
        theta: the GBW power (used only by ``"gbw"``; nonzero).
        momentum: weight of the batch mean in the running mean update.
        max_iter: iterations of the barycenter / Karcher mean in training.

    Raises:
        ValueError: for an unknown metric or ``theta == 0``.

    Example:
        >>> X = torch.diag_embed(torch.tensor([[1.0, 4.0], [9.0, 16.0]], dtype=torch.float64))
        >>> from subspaces.geometry import spd_sqrt
        >>> bn = SPDBatchNorm(2, metric="bw").double()
        >>> Y = bn(X)
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
    ) -> None:
        super().__init__()
        self.n = check_positive_int(n, "n")
        self.metric = check_choice(metric, "metric", ("bw", "gbw", "ai"))
        if float(theta) == 0.0:
            raise ValueError("theta must be nonzero")
        self.theta = float(theta) if metric == "gbw" else 1.0
        self.momentum = float(momentum)
        self.max_iter = check_positive_int(max_iter, "max_iter")
        self.running_mean: Tensor
        self.bias_log = nn.Parameter(torch.zeros(n, n))
        self.register_buffer("running_mean", torch.eye(n))

    def _mean(self, X: Tensor) -> Tensor:
        """Batch mean of (deformed) inputs ``X`` of shape ``(k, n, n)`` under the layer's metric."""
        tol = 1e-10 if X.dtype == torch.float64 else 1e-6
        if self.metric == "ai":
            w = torch.full((X.shape[0],), 1.0 / X.shape[0], dtype=X.dtype, device=X.device)
            return _ai_mean(X, w, self.max_iter, tol)
        return _bw_barycenter(X, None, self.max_iter, tol)

    def _update_running(self, M: Tensor) -> None:
        R = self.running_mean.to(M.dtype)
        a = self.momentum
        if self.metric == "ai":  # AI geodesic R #_a M
            Rh, Rih = _sqrt(R), _pow(R, -0.5)
            new = Rh @ _pow(sym(Rih @ M @ Rih), a) @ Rh
        else:  # BW geodesic ((1 - a) I + a T) R ((1 - a) I + a T), T the OT map R -> M
            Rh, Rih = _sqrt(R), _pow(R, -0.5)
            T = Rih @ _sqrt(sym(Rh @ M @ Rh)) @ Rih
            G = (1 - a) * torch.eye(self.n, dtype=M.dtype, device=M.device) + a * T
            new = G @ R @ G.mT
        self.running_mean.copy_(sym(new).to(self.running_mean.dtype))

    def forward(self, X: Tensor) -> Tensor:
        """Center the batch (training: batch mean; evaluation: running mean).

        Args:
            X: ``(k, n, n)`` SPD.

        Returns:
            ``(k, n, n)`` SPD, with mean ``I`` under the layer's metric when the bias is ``I``.

        Raises:
            ValueError: if ``X`` is not ``(k, n, n)``.
        """
        X = _check_batch(X, self.n)
        if X.ndim != 3:
            raise ValueError(f"X must have shape (k, {self.n}, {self.n}), got {tuple(X.shape)}")
        Xd = _pow(X, self.theta) if self.theta != 1.0 else X
        if self.training:
            M = self._mean(Xd)
            with torch.no_grad():
                self._update_running(M.detach())
        else:
            M = self.running_mean.to(X.dtype)
        B = _exp(sym(self.bias_log.to(X.dtype)))
        if self.metric == "ai":
            Mih = _pow(M, -0.5)
            Bh = _sqrt(B)
            Y = Bh @ Mih @ Xd @ Mih @ Bh
        else:
            Mh, Mih = _sqrt(M), _pow(M, -0.5)
            T = sym(Mih @ _sqrt(sym(Mh @ Xd @ Mh)) @ Mih)
            Y = T @ B @ T
        Y = sym(Y)
        return _pow(Y, 1.0 / self.theta) if self.theta != 1.0 else Y
