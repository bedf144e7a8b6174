"""``FisherOperator``: Monte-Carlo and empirical Fisher information."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_positive_int
from ._model import Batch, FunctionalModel, LossFn, ModePolicy, ParamSpec
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
      expectation equals the GGN exactly). Samples are drawn once per batch from ``generator``
      and reused, so the operator is a fixed symmetric matrix.
    * ``kind="empirical"``: the observed labels (the "empirical Fisher", a sum of outer products of
      per-sample gradients); works with any loss that is a mean over samples.

    Products need no second derivatives: ``J v``, a per-sample inner product, and ``J^T``.

    Args:
        model, loss_fn, data, params, mode_policy, dtype, progress, batch_size_fn: see
            :class:`~subspaces.curvature.CurvatureOperator`.
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
        )
        self.kind = check_choice(kind, "kind", KINDS)
        self.mc_samples = check_positive_int(mc_samples, "mc_samples")
        if kind == "mc" and self.likelihood is None:
            raise ValueError(
                "kind='mc' needs a known likelihood: loss_fn 'cross_entropy' or 'mse' "
                "(use kind='empirical' or GGNOperator for a custom loss)"
            )
        self.generator = generator
        self._sampled: dict[int, Tensor] = {}
        self._batch_index = 0

    def _output_gradients(self, out: Tensor, batch: Batch) -> Tensor:
        """Per-sample output gradients ``s``: shape ``(m, *out.shape)`` with ``m`` draws."""
        n = batch.size
        if self.kind == "empirical":
            g = torch.func.grad(lambda o: self.loss_fn(o, batch.targets))(out)
            return (g * n).unsqueeze(0)
        key = self._batch_index
        if key not in self._sampled:
            m = self.mc_samples
            gen = self.generator
            if self.likelihood == "cross_entropy":
                probs = torch.softmax(out.to(torch.float64), dim=-1).reshape(-1, out.shape[-1])
                idx = torch.multinomial(probs.cpu(), m, replacement=True, generator=gen).T.to(
                    out.device
                )
                onehot = torch.nn.functional.one_hot(idx, out.shape[-1]).to(out.dtype)
                # d/d logits of the per-sample CE (a mean over positions for sequence outputs)
                positions = out[0].numel() // out.shape[-1]
                s = (probs.to(out.dtype).unsqueeze(0) - onehot) / positions
                self._sampled[key] = s.reshape(m, *out.shape)
            else:  # mse: NLL of N(y; o, d/2 I) is ||o - y||^2 / d for d outputs per sample
                d = out[0].numel()
                eps = torch.randn((m, *out.shape), generator=gen, dtype=torch.float64).to(out)
                self._sampled[key] = (2.0 / d) * eps * (d / 2.0) ** 0.5
        return self._sampled[key]

    def _accumulate(self, per_batch: Any) -> Tensor:
        counter = {"i": 0}

        def indexed(fm: FunctionalModel, batch: Batch) -> Tensor:
            self._batch_index = counter["i"]
            counter["i"] += 1
            return per_batch(fm, batch)

        return super()._accumulate(indexed)

    def _output_matmat(self, out: Tensor, batch: Batch, U: Tensor) -> Tensor:
        """``E[s s^T] @ U`` per sample, averaged over the draws: the Fisher's output matrix.

        Returns:
            The products, shaped like ``U`` (``(b, n, ...)``).
        """
        S = self._output_gradients(out, batch)  # (m, n, ...)
        m, n = S.shape[0], batch.size
        # coefficient per (column, draw, sample): <s_i, u_i>
        coef = (U.reshape(U.shape[0], 1, n, -1) * S.reshape(1, m, n, -1)).sum(-1)
        prod = (coef.unsqueeze(-1) * S.reshape(1, m, n, -1)).sum(1) / m  # (b, n, d)
        # the GGN's output Hessian of a mean loss carries 1/n; so does this sample average
        return (prod / n).reshape(U.shape)
