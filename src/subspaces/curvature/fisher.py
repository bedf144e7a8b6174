"""``FisherOperator``: Monte-Carlo and empirical Fisher information."""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int
from ._model import Batch, LossFn, ModePolicy, ParamSpec, Reduction, splitmix64, uniform53
from .base import Progress
from .ggn import GGNOperator

FisherKind = Literal["mc", "empirical"]
KINDS: tuple[str, ...] = ("mc", "empirical")


class FisherOperator(GGNOperator):
    r"""The Fisher :math:`\frac{1}{N}\sum_i J_i^\top\, \mathbb{E}[s_i s_i^\top]\, J_i`.

    ``s_i`` is the gradient of sample ``i``'s loss with respect to the model output:

    * ``kind="mc"`` (the true Fisher, Monte-Carlo): labels are sampled from the model's own
      predictive distribution (``mc_samples`` per sample) — categorical for
      ``"cross_entropy"``, Gaussian for ``"mse"`` (variance matching the loss, so that the
      expectation equals the GGN exactly). The labels of each sample come from a counter-based
      hash (splitmix64 in int64 tensor operations, on the data's device) of one draw from
      ``generator`` and a hash of the sample's data, so the operator is a fixed symmetric
      matrix, whatever batch a sample lands in (a shuffled loader included) and on any device.
      These draws replace the former one ``torch.Generator`` per sample: a given ``generator``
      seed now draws other labels than before (from the same distribution).
    * ``kind="empirical"``: the observed labels (the "empirical Fisher", a sum of outer products of
      per-sample gradients); works with any loss that is a mean over samples.

    Products need no second derivatives: ``J v``, a per-sample inner product, and ``J^T``.

    Args:
        model, loss_fn, data, params, mode_policy, dtype, progress, batch_size_fn, reduction,
            distributed: see :class:`~subspaces.curvature.CurvatureOperator`.
        kind: ``"mc"`` or ``"empirical"``.
        mc_samples: labels sampled per data point (``kind="mc"``).
        generator: randomness for the sampled labels.

    Raises:
        ValueError: for ``kind="mc"`` with a loss whose likelihood is unknown (a custom callable),
            or bad ``kind``/``mc_samples``.

    Example:
        >>> import torch
        >>> X, y = torch.randn(64, 3, dtype=torch.float64), torch.randn(64, 2, dtype=torch.float64)
        >>> model = torch.nn.Linear(3, 2).double()
        >>> F = FisherOperator(model, "mse", [(X, y)], kind="mc", mc_samples=2000,
        ...                    generator=torch.Generator().manual_seed(0))
        >>> from subspaces.curvature import GGNOperator
        >>> G = GGNOperator(model, "mse", [(X, y)]).to_dense()
        >>> bool((F.to_dense() - G).abs().max() < 0.1 * G.abs().max())
        True

    References:
        Kunstner, Hennig, Balles, "Limitations of the empirical Fisher approximation for natural
        gradient descent", NeurIPS 2019; Martens, JMLR 2020.
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: str | LossFn,
        data: Any,
        params: ParamSpec = None,
        *,
        kind: FisherKind = "mc",
        mc_samples: int = 1,
        generator: torch.Generator | None = None,
        mode_policy: ModePolicy = "error",
        dtype: torch.dtype | None = None,
        progress: Progress | None = None,
        batch_size_fn: Any = None,
        reduction: Reduction | None = None,
        distributed: Any = False,
    ) -> None:
        super().__init__(
            model,
            loss_fn,
            data,
            params,
            mode_policy=mode_policy,
            dtype=dtype,
            progress=progress,
            batch_size_fn=batch_size_fn,
            reduction=reduction,
            distributed=distributed,
        )
        self.kind = check_choice(kind, "kind", KINDS)
        self.mc_samples = check_positive_int(mc_samples, "mc_samples")
        if kind == "mc" and self.likelihood is None:
            raise ValueError(
                f"kind='mc' needs a loss that is a negative log-likelihood ('cross_entropy', "
                f"'mse', nn.CrossEntropyLoss() or nn.MSELoss()), but {self.loss.no_likelihood}; "
                "use kind='empirical' or GGNOperator"
            )
        if kind == "empirical" and self.loss.no_per_sample is not None:
            raise ValueError(
                f"kind='empirical' needs per-sample losses, but {self.loss.no_per_sample}; "
                "use GGNOperator or kind='mc' with an unweighted loss"
            )
        self.generator = generator
        self._seed: int | None = None

    def _batch_weight(self, batch: Batch) -> float:
        if self.kind == "empirical":  # a mean over samples of per-sample outer products
            return 1.0 if self.reduction == "sum" else float(batch.size)
        return super()._batch_weight(batch)

    def _output_rank(self, out: Tensor, batch: Batch) -> int:
        """Rank bound of the batch's output matrix: one term per sample (and draw).

        Returns:
            For the empirical Fisher the number of samples; for the Monte-Carlo Fisher the
            smaller of the GGN's bound and ``mc_samples`` per unit (position or sample).
        """
        if self.kind == "empirical":
            return batch.size
        if self.likelihood == "cross_entropy" and self.loss.classes is not None:
            units = self.loss.classes.positions(out).shape[0]
        else:
            units = batch.size
        return min(super()._output_rank(out, batch), units * self.mc_samples)

    def _draws(self, out: Tensor, batch: Batch) -> tuple[Tensor, float]:
        """Sampled output gradients and the factor of their outer products.

        Returns:
            ``S`` of shape ``(m, units, k)`` (one ``k``-vector per unit: a position of a class
            loss, a sample of the squared error, a sample of the empirical Fisher) and ``kappa``
            such that the batch's output matrix is ``kappa / m * sum_draws sum_units s s^T``.
        """
        n = batch.size
        mean = self.reduction == "mean"
        if self.kind == "empirical":
            g = torch.func.grad(lambda o: self.loss_fn(o, batch.targets))(out)
            # per-sample losses l_i: the batch loss is their mean (or sum)
            s = (g * n if mean else g).reshape(1, n, -1)
            return s, (1.0 / n if mean else 1.0)
        S = self._sample(out, batch)
        if self.likelihood == "cross_entropy":
            kappa = 1.0 / self._batch_weight(batch) if mean else 1.0
        else:  # squared error: the mean runs over every entry
            kappa = 1.0 / out.numel() if mean else 1.0
        return S, kappa

    def _base_seed(self) -> int:
        """One integer drawn from ``generator`` at the first product, kept for good.

        Returns:
            The operator's seed.
        """
        if self._seed is None:
            self._seed = int(torch.randint(0, 2**62, (1,), generator=self.generator))
        return self._seed

    def _uniforms(self, batch: Batch, draws: int, per: int, device: torch.device) -> Tensor:
        """Uniforms ``(draws, n, per)`` in ``[0, 1)``, fixed per sample, from a counter-based hash.

        Uniform ``c`` of sample ``i`` is ``splitmix64(seed_i ^ splitmix64(c))`` (top 53 bits),
        where ``seed_i = splitmix64(key_i ^ base)`` mixes the hash of the sample's data with the
        operator's seed: int64 tensor operations on ``device``, no generator per sample, the same
        bits on every device and in any batch composition.

        Returns:
            A float64 tensor ``(draws, n, per)``.
        """
        assert batch.keys is not None  # set by the data loop
        keys = torch.tensor(batch.keys, dtype=torch.int64, device=device)
        seeds = splitmix64(keys ^ self._base_seed())
        counters = splitmix64(torch.arange(draws * per, dtype=torch.int64, device=device))
        h = splitmix64(seeds.reshape(1, -1, 1) ^ counters.reshape(draws, 1, per))
        return uniform53(h)

    def _sample(self, out: Tensor, batch: Batch) -> Tensor:
        """Output gradients of the per-unit negative log-likelihood at sampled labels.

        The labels of a sample come from a counter-based hash of the operator's seed and a hash
        of the sample's data (:meth:`_uniforms`), so they do not depend on which batch the
        sample is in, on the batch's device or on the pass: a shuffled loader gives the same
        operator on every pass. Draw ``j`` of a sample does not depend on ``mc_samples``
        (more samples add draws). A categorical label is drawn by inverting the cumulative
        distribution of ``softmax(logits)`` at a uniform; a Gaussian one by Box-Muller.

        Returns:
            ``(m, units, k)``: for cross-entropy ``p_t - onehot(c)`` with ``c ~ p_t`` per
            position (zero at ignored positions); for the squared error ``sqrt(2) eps`` per
            sample, whose outer product has the expectation ``2 I``, the output Hessian of
            ``sum (o - y)^2``.
        """
        m, n = self.mc_samples, batch.size
        if self.likelihood == "cross_entropy":
            classes = self.loss.classes
            assert classes is not None
            logits = classes.positions(out)  # (P, C), sample-major
            P, C = logits.shape
            u = self._uniforms(batch, m, P // n, out.device).reshape(m, P, 1)
            probs = torch.softmax(logits.to(torch.float64), dim=-1)
            cdf = probs.cumsum(-1)
            cdf[:, -1] = 1.0  # rounding: the last class takes what the cumulative sum misses
            cdf = cdf.unsqueeze(0).expand(m, P, C).contiguous()
            idx = torch.searchsorted(cdf, u, right=True).squeeze(-1).clamp_max(C - 1)
            onehot = torch.nn.functional.one_hot(idx, C)
            s = probs.to(out.dtype).unsqueeze(0) - onehot.to(out.dtype)  # (m, P, C)
            mask = classes.position_mask(batch.targets, P)
            return s if mask is None else s * mask.to(s).reshape(1, -1, 1)
        d = out[0].numel()
        u = self._uniforms(batch, m, 2 * d, out.device).reshape(m, n, d, 2)
        radius = torch.sqrt(-2.0 * torch.log1p(-u[..., 0]))  # 1 - u in (0, 1]
        eps = radius * torch.cos(2 * math.pi * u[..., 1])  # standard normal (Box-Muller)
        return (2.0**0.5 * eps).to(out)  # (m, n, d)

    def _output_matmat(self, out: Tensor, batch: Batch, U: Tensor) -> Tensor:
        """``E[s s^T] @ U`` per unit, averaged over the draws: the Fisher's output matrix.

        Returns:
            The products, shaped like ``U`` (``(b, *out.shape)``).
        """
        S, kappa = self._draws(out, batch)  # (m, units, k)
        m, units = S.shape[0], S.shape[1]
        b = U.shape[0]
        classes = self.loss.classes if self.likelihood == "cross_entropy" else None
        if classes is not None and self.kind == "mc":
            Uu = classes.positions(U, lead=1)  # (b, P, C)
        else:
            Uu = U.reshape(b, units, -1)
        coef = (Uu.unsqueeze(1) * S.unsqueeze(0)).sum(-1)  # (b, m, units): <s, u> per unit
        prod = (coef.unsqueeze(-1) * S.unsqueeze(0)).sum(1) * (kappa / m)  # (b, units, k)
        if classes is not None and self.kind == "mc":
            return classes.unpositions(prod, tuple(out.shape), lead=1)
        return prod.reshape(U.shape)
