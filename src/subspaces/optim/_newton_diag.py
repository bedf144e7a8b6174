"""The exact diagonal of the generalized Gauss-Newton matrix, from per-sample Jacobians."""

from __future__ import annotations

import torch
from torch import Tensor

from ..curvature import GGNOperator
from ..curvature._model import Batch, FunctionalModel
from ..linops.structured import Diagonal

_CHUNK_ENTRIES = 2**22  # Jacobian entries held at once (32 MiB in float64)


class DiagonalGGN(GGNOperator):
    r"""``diag(G)`` of the GGN ``G = (1/N) sum_i J_i^T H_i J_i`` as a diagonal operator.

    ``diag(G)_p = (1/N) sum_i sum_{a,b} J_i[a, p] H_i[a, b] J_i[b, p]``, from per-sample
    Jacobians (``vmap`` of ``jacrev`` over the samples of a batch, in chunks) and the per-sample
    output-space Hessians ``H_i`` (the GGN's own output-space product applied to unit vectors).
    Needs batches whose inputs are tensors with a leading sample dimension, a model that treats
    samples independently (no BatchNorm in training mode) and a loss without class weights or
    ignored targets (each sample weighs the same).

    Args: see :class:`~subspaces.curvature.CurvatureOperator`.

    Raises:
        ValueError: at the first product, for batches the per-sample Jacobian cannot split.
    """

    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().__init__(*args, **kwargs)
        if self.loss.no_per_sample is not None:
            raise ValueError(
                f"curvature='diag_ggn' needs per-sample losses, but {self.loss.no_per_sample}"
            )
        self._diag: Tensor | None = None

    def diagonal(self) -> Tensor:
        """The diagonal (computed once, in one pass over the data).

        Returns:
            A 1-D tensor of the operator's size.
        """
        if self._diag is None:
            self._diag = self._accumulate(self._batch_diagonal)
        return self._diag

    def _batch_diagonal(self, fm: FunctionalModel, batch: Batch) -> Tensor:
        if batch.kwargs or not all(isinstance(a, Tensor) for a in batch.args):
            raise ValueError("curvature='diag_ggn' needs (inputs, targets) batches of tensors")
        with torch.no_grad():
            out = fm(fm.params, batch)
        if out.ndim != 2 or out.shape[0] != batch.size:
            raise ValueError(
                f"curvature='diag_ggn' needs outputs of shape (samples, k), got {tuple(out.shape)}"
            )
        n, k = out.shape
        # H_i e_j for every sample at once (the batch loss is block diagonal over samples)
        units = torch.eye(k, dtype=out.dtype, device=out.device).unsqueeze(1).expand(k, n, k)
        HL = self._output_matmat(out, batch, units.contiguous())  # (k, n, k): [j, i, a] = H_i[a, j]
        names = fm.names

        def single(p: dict[str, Tensor], *xs: Tensor) -> Tensor:
            args = tuple(x.unsqueeze(0) for x in xs)
            return torch.func.functional_call(fm.model, {**fm.fixed, **p}, args).reshape(k)

        jac = torch.func.vmap(torch.func.jacrev(single), in_dims=(None,) + (0,) * len(batch.args))
        total = sum(fm.params[m].numel() for m in names)
        step = max(1, _CHUNK_ENTRIES // max(1, k * total))
        diag = torch.zeros(total, dtype=out.dtype, device=out.device)
        for s in range(0, n, step):
            J = jac(fm.params, *(a[s : s + step] for a in batch.args))
            Jf = torch.cat([J[m].reshape(J[m].shape[0], k, -1) for m in names], dim=2)
            diag += torch.einsum("iap,jia,ijp->p", Jf, HL[:, s : s + step], Jf)
        return diag

    def _matmat(self, X: Tensor) -> Tensor:
        return Diagonal(self.diagonal())._matmat(X)
