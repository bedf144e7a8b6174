"""``GGNOperator``: the generalized Gauss-Newton matrix ``J^T H_L J``."""

from __future__ import annotations

import torch
from torch import Tensor

from .._distributed import allreduce_packed
from ._model import Batch, FunctionalModel, check_loss_finite, mode_policy_applied
from .base import CurvatureOperator


class GGNOperator(CurvatureOperator):
    r"""The generalized Gauss-Newton matrix :math:`\frac{1}{N}\sum_i J_i^\top H_{\ell,i} J_i`.

    ``J_i`` is the Jacobian of the model output for sample ``i`` with respect to the parameters
    and ``H_l`` the Hessian of the loss with respect to the output. It equals the Hessian minus
    the term with second derivatives of the network, is positive semidefinite for convex losses
    (cross-entropy, squared error), and needs no second derivatives of the network: products are
    a ``jvp``, an output-space Hessian product and a ``vjp``, vectorized over columns with
    ``vmap`` (so it also works where a double backward is unavailable).

    Args: see :class:`~subspaces.curvature.CurvatureOperator`.

    Example:
        >>> import torch
        >>> X = torch.randn(30, 4, dtype=torch.float64)
        >>> y = torch.randint(0, 3, (30,))
        >>> model = torch.nn.Linear(4, 3).double()
        >>> G, H = GGNOperator(model, "cross_entropy", [(X, y)]), None
        >>> from subspaces.curvature import HessianOperator
        >>> torch.allclose(
        ...     G.to_dense(), HessianOperator(model, "cross_entropy", [(X, y)]).to_dense()
        ... )
        True

    References:
        Schraudolph, "Fast curvature matrix-vector products for second-order gradient descent",
        Neural Computation 2002; Martens, "New insights and perspectives on the natural gradient
        method", JMLR 2020.
    """

    def _output_rank(self, out: Tensor, batch: Batch) -> int:
        """An upper bound on the rank of the batch's output-space matrix.

        Returns:
            ``(C - 1)`` per counted position for cross-entropy on logits (the softmax Hessian
            has rank ``C - 1``), otherwise the number of output entries.
        """
        classes = self.loss.classes
        if classes is not None and not classes.log_probs:
            logits = classes.positions(out)
            mask = classes.position_mask(batch.targets, logits.shape[0])
            counted = logits.shape[0] if mask is None else int(mask.sum())
            return counted * (logits.shape[-1] - 1)
        return out.numel()

    def rank_bound(self) -> int:
        """An upper bound on the operator's rank, from one forward pass over the data.

        A GGN is a sum of ``J_i^T H_i J_i``, so its rank is at most the summed ranks of the
        output-space matrices ``H_i``: with few samples it is far below the number of
        parameters, and :func:`~subspaces.curvature.trace` uses that to get the trace exactly.

        With ``distributed``, the ranks of every rank's data are summed (one all-reduce of one
        number, which every rank joins even when its forward pass fails), so every rank gets the
        same bound and :func:`~subspaces.curvature.trace` picks the same sketch everywhere.

        Returns:
            ``min(P, sum over the data of the output-space ranks)``.
        """
        n = self.shape[0]
        group = self.process_group
        if group is None:
            return min(n, self._local_rank_sum(stop_at=n))
        error: BaseException | None = None
        local = 0
        try:
            local = self._local_rank_sum(stop_at=n)
        except Exception as err:  # every rank must join the all-reduce, then raise
            error = err
        _, (total,) = allreduce_packed(
            None,
            (min(local, n),),
            shape=(0,),
            dtype=torch.float64,
            device=self.device,
            group=group,
            error=error,
        )
        return min(n, round(total))

    def _local_rank_sum(self, stop_at: int) -> int:
        """Summed output-space ranks of this process's data, stopping at ``stop_at``."""
        fm = self.functional_model()
        total = 0
        with torch.no_grad(), mode_policy_applied(self.model, self.mode_policy):
            for batch in self._batches():
                total += self._output_rank(fm(fm.params, batch), batch)
                if total >= stop_at:
                    break
        return total

    def _output_matmat(self, out: Tensor, batch: Batch, U: Tensor) -> Tensor:
        """``H_L @ U`` for output-space tangents ``U`` (leading column dimension).

        Subclasses with another output-space matrix (the Fisher's ``E[s s^T]``) override this.

        Returns:
            The products, shaped like ``U``.
        """
        grad_out = torch.func.grad(lambda o: self.loss_fn(o, batch.targets))

        def hvp(u: Tensor) -> Tensor:
            # reverse-over-reverse in output space: small, and works for any twice
            # differentiable loss (some loss kernels have no forward-mode derivative)
            return torch.func.grad(lambda o: (grad_out(o) * u).sum())(out)

        return torch.func.vmap(hvp)(U)

    def _batch_matmat(
        self, fm: FunctionalModel, batch: Batch, V: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        def f(p: dict[str, Tensor]) -> Tensor:
            return fm(p, batch)

        # without has_aux, vjp returns exactly (output, vjp_fn); its annotation is a union
        # with the has_aux triple, so index the result instead of unpacking it
        primal = torch.func.vjp(f, fm.params)
        out, vjp_fn = primal[0].detach(), primal[1]
        check_loss_finite(self.loss_fn(out, batch.targets))
        JV = torch.func.vmap(lambda v: torch.func.jvp(f, (fm.params,), (v,))[1], in_dims=-1)(V)
        (res,) = torch.func.vmap(vjp_fn, out_dims=-1)(self._output_matmat(out, batch, JV))
        return res
