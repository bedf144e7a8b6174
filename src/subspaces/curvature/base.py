"""``CurvatureOperator``: the data loop shared by the Hessian, GGN and Fisher operators.

A subclass writes one per-batch product, ``_batch_matmat(fm, batch, V)``, returning ``M_b @ V`` for
the batch's matrix ``M_b`` and a block ``V`` given as a dict of parameter-shaped tensors with a
trailing column dimension. The base class loops over the data, weights each batch by its number
of samples (not by batches), checks finiteness, reports progress and applies the train-mode
policy.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .._checks import check_choice, check_finite
from .._distributed import allreduce_packed, block_checksum, resolve_group
from .._tensorlist import ParamLayout
from ..linops import LinearOperator
from ._fsdp import fsdp_functional_model
from ._model import (
    MODE_POLICIES,
    Batch,
    FunctionalModel,
    LossFn,
    ModePolicy,
    ParamSpec,
    Reduction,
    check_deterministic,
    check_loss,
    data_changed_error,
    iterate_batches,
    mode_policy_applied,
    num_params,
    resolve_loss,
    sample_keys,
    select_params,
    split_batch,
)

Progress = Callable[[int, int | None], None]


class CurvatureOperator(LinearOperator):
    """Base class of curvature matrices of ``loss(model(x), y)`` averaged over a data set.

    Args:
        model: any ``nn.Module``; it is never modified (parameters are passed functionally).
        loss_fn: ``"cross_entropy"``, ``"mse"``, a PyTorch loss module (its options are
            honoured: ``nn.CrossEntropyLoss(weight=..., label_smoothing=..., ignore_index=...,
            reduction=...)``, ``nn.MSELoss(reduction=...)``, ...) or a callable
            ``loss_fn(outputs, targets)`` returning a scalar (``targets`` is ``y`` for
            ``(X, y)`` batches and the whole dict for dict batches). The operator is the
            curvature of this loss on the whole data set taken as one batch, however it is
            split: a mean is weighted by each batch's denominator (its samples, or for a class
            loss its counted positions' class weights), a sum adds up.
        data: an iterable of batches (re-iterable: a list or a DataLoader), or one batch. Batches
            are ``(X, y)``, dicts of model inputs (Hugging Face style) or tensors.
        params: which parameters: ``None`` (all trainable), glob patterns on
            ``named_parameters()`` names, or a dict.
        mode_policy: what to do when BatchNorm/Dropout modules are in training mode:
            ``"error"`` (default, raise), ``"eval"`` (evaluate the whole model in eval mode for
            each pass and restore your modes; this also switches off functional dropout,
            ``F.dropout(x, p, training=self.training)``), ``"as_is"`` (use batch statistics;
            running statistics are never updated). Whatever the policy, the first pass
            evaluates the loss of one batch twice and raises if the two values differ (a random
            forward pass is not a matrix).
        dtype: compute in this dtype (e.g. ``torch.float64``) on cast copies of the parameters.
        progress: called as ``progress(batches_done, total_or_None)`` after each batch.
        batch_size_fn: returns the number of samples of a batch (default: leading dimension of
            the first input tensor).
        reduction: how a name or callable ``loss_fn`` reduces over a batch's samples:
            ``"mean"`` (default) or ``"sum"``; read from a loss module.
        distributed: data parallelism: ``False`` (default, one process), ``True`` (the default
            ``torch.distributed`` process group, e.g. under ``torchrun``) or a process group.
            Each rank passes its own shard of the data; every product is then the product of
            the whole data set (all shards as one batch, weighted by samples), with one
            ``all_reduce`` of the packed product per matmat, identical on every rank. Random
            blocks must be drawn identically on every rank (pass a seeded ``generator`` to
            ``top_eigen``, ``trace``, ...): a product of different blocks raises. A rank that
            fails makes every rank raise instead of hanging. A model sharded with FSDP2
            (``fully_shard``, ``DTensor`` parameters) needs ``distributed``: its full
            parameters are gathered once, when the operator is built (a collective, and the
            whole model in memory on every rank while the operator lives); vectors are full
            and replicated (see ``subspaces.curvature._fsdp`` for costs and what is refused).

    Raises:
        ValueError: bad ``params``, ``mode_policy``, ``loss_fn`` or ``reduction`` (a loss module
            with ``reduction="none"``, or a ``reduction`` that contradicts the module's), or
            ``distributed`` without an initialized process group.
        TypeError: bad argument types.
    """

    SELF_ADJOINT = True
    max_block: int = 16
    """Columns multiplied at once inside a batch; wider blocks are split into chunks."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: str | LossFn,
        data: Any,
        params: ParamSpec = None,
        *,
        mode_policy: ModePolicy = "error",
        dtype: torch.dtype | None = None,
        progress: Progress | None = None,
        batch_size_fn: Callable[[Any], int] | None = None,
        reduction: Reduction | None = None,
        distributed: Any = False,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        check_choice(mode_policy, "mode_policy", MODE_POLICIES)
        if dtype is not None and not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating dtype, got {dtype}")
        self.model = model
        self.loss = resolve_loss(loss_fn, reduction)
        self.loss_fn, self.likelihood = self.loss.fn, self.loss.likelihood
        self.reduction = self.loss.reduction
        self.data = iterate_batches(data)
        self.selected = select_params(model, params)
        self.mode_policy = mode_policy
        self.progress = progress
        self.batch_size_fn = batch_size_fn
        self.process_group = resolve_group(distributed)
        first = next(iter(self.selected.values()))
        n = num_params(self.selected)
        super().__init__(
            (n, n), dtype or first.dtype, first.device, ParamLayout.from_params(self.selected)
        )
        # an FSDP2 model's parameters are gathered here, once, on every rank (a collective)
        self._fm: FunctionalModel | None = fsdp_functional_model(
            model, self.selected, self.dtype, self.process_group
        )
        self._deterministic = False
        self._fingerprint: tuple[int, int] | None = None
        self.num_samples: int | None = None
        self.num_batches: int | None = None

    # ----- plumbing ----------------------------------------------------------------------------
    @property
    def param_names(self) -> tuple[str, ...]:
        """Names of the parameters the operator acts on, in layout order."""
        return self.layout.names if self.layout is not None else ()

    def functional_model(self) -> FunctionalModel:
        """The functional view of the model (built on first use, cast to the operator dtype)."""
        if self._fm is None:
            self._fm = FunctionalModel(self.model, self.selected, self.dtype)
        return self._fm

    def _batches(self) -> Any:
        fm = self.functional_model()
        total = len(self.data) if hasattr(self.data, "__len__") else None  # type: ignore[arg-type]
        count, samples, key_sum = 0, 0, 0
        for raw in self.data:
            batch = split_batch(raw, fm.device, self.dtype, self.batch_size_fn)
            batch.keys = sample_keys(raw, batch.size)
            samples += batch.size
            key_sum = (key_sum + sum(batch.keys)) % 2**64
            yield batch
            count += 1
            if self.progress is not None:
                self.progress(count, total)
        if count == 0:
            raise ValueError("data is empty: no batches")
        # the data set as a multiset of samples: a shuffled loader passes, a changing one not
        fingerprint = (samples, key_sum)
        if self._fingerprint is None:
            self._fingerprint = fingerprint
        elif fingerprint != self._fingerprint:
            raise data_changed_error(self._fingerprint, fingerprint)

    def _loss(self, fm: FunctionalModel, p: dict[str, Tensor], batch: Batch) -> Tensor:
        return check_loss(self.loss_fn(fm(p, batch), batch.targets))

    def _check_deterministic(self, fm: FunctionalModel, batch: Batch) -> None:
        """On the operator's first pass: refuse a random forward (two losses differ)."""
        if not self._deterministic:
            check_deterministic(lambda: self._loss(fm, fm.params, batch), self.mode_policy)
            self._deterministic = True

    def _batch_weight(self, batch: Batch) -> float:
        """The batch's weight in the data-set loss: its mean's denominator (1 for a sum)."""
        return self.loss.normalizer(batch.targets, batch.size)

    def _accumulate(
        self,
        per_batch: Callable[[FunctionalModel, Batch], Tensor],
        shape: tuple[int, ...] | None = None,
        block: Tensor | None = None,
    ) -> Tensor:
        """``sum_b c_b per_batch(b) / sum_b c_b`` over one pass (a plain sum for sum losses).

        ``c_b`` is the batch's weight (:meth:`_batch_weight`), so the result is the curvature of
        the loss of the whole data set as one batch, independent of how it is split. With
        ``distributed``, the sums run over the batches of every rank (one ``all_reduce``).

        Args:
            per_batch: the per-batch result.
            shape: the result's shape; needed with ``distributed`` so that a rank that fails
                still joins the all-reduce (``None``: such a rank raises at once and the
                others wait for the process group's timeout).
            block: the block being multiplied; with ``distributed``, every rank checks that
                all ranks multiplied the same block.

        Returns:
            The weighted combination of the per-batch results.

        Raises:
            ValueError: if the loss counts no sample in the data.
        """
        return self._reduce(lambda: self._local_sums(per_batch), shape, block)

    def _reduce(
        self,
        local: Callable[[], tuple[Tensor | None, float, int, int]],
        shape: tuple[int, ...] | None,
        block: Tensor | None,
    ) -> Tensor:
        """Combine this process's ``(weighted sum, weight, samples, batches)`` with the others'.

        Returns:
            The weighted sum over all ranks divided by the total weight (a sum for sum losses).

        Raises:
            ValueError: if the loss counts no sample in the data.
        """
        group = self.process_group
        if group is None:
            total, weight, samples, batches = local()
        else:
            error: BaseException | None = None
            total, weight, samples, batches = None, 0.0, 0, 0
            try:
                total, weight, samples, batches = local()
            except Exception as err:  # every rank must join the all-reduce, then raise
                if shape is None:
                    raise
                error = err
            if shape is None:
                if total is None:
                    raise ValueError(
                        "with distributed=..., a rank that counts no sample needs the shape of "
                        "the result"
                    )
                shape = tuple(total.shape)
            total, (weight, samples_f, batches_f) = allreduce_packed(
                total,
                (weight, samples, batches),
                shape=shape,
                dtype=self.dtype,
                device=self.device,
                group=group,
                error=error,
                checksum=None if block is None else block_checksum(block),
            )
            samples, batches = round(samples_f), round(batches_f)
            if weight == 0.0:
                total = None  # no rank counted a sample
        self.num_samples, self.num_batches = samples, batches
        if self.reduction == "sum" and total is not None:
            return total
        if total is None or weight <= 0:
            raise ValueError(
                "the loss counts no sample in the data (every target is ignore_index, or the "
                "class weights of the targets sum to 0)"
            )
        return total / weight

    def _local_sums(
        self, per_batch: Callable[[FunctionalModel, Batch], Tensor]
    ) -> tuple[Tensor | None, float, int, int]:
        """This process's ``(sum_b c_b per_batch(b), sum_b c_b, samples, batches)``."""
        fm = self.functional_model()
        total: Tensor | None = None
        samples, batches, weight = 0, 0, 0.0
        with mode_policy_applied(self.model, self.mode_policy):
            for batch in self._batches():
                c = self._batch_weight(batch)
                samples += batch.size
                batches += 1
                if c == 0.0:  # a mean that counts nothing here (every target ignored)
                    continue
                self._check_deterministic(fm, batch)
                out = per_batch(fm, batch)
                out = out * c if c != 1.0 else out
                total = out if total is None else total + out
                weight += c
        return total, weight, samples, batches

    # ----- products ----------------------------------------------------------------------------
    def _batch_matmat(
        self, fm: FunctionalModel, batch: Batch, V: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """``M_b @ V`` for one batch; ``V`` and the result carry a trailing column dimension."""
        raise NotImplementedError

    def _matmat(self, X: Tensor) -> Tensor:
        assert self.layout is not None
        V = self.layout.unflatten(X)

        width = X.shape[1]
        chunk = self.max_block

        def per_batch(fm: FunctionalModel, batch: Batch) -> Tensor:
            assert self.layout is not None
            if width <= chunk:
                return self.layout.flatten(self._batch_matmat(fm, batch, V))
            # vmap's cost per vector rises again for wide blocks (measured: 7.7 ms/vector at 16
            # columns, 26 ms at 100 on an 85k-parameter MLP): multiply in chunks of max_block
            parts = []
            for start in range(0, width, chunk):
                Vc = {name: v[..., start : start + chunk] for name, v in V.items()}
                parts.append(self.layout.flatten(self._batch_matmat(fm, batch, Vc)))
            return torch.cat(parts, dim=1)

        out = self._accumulate(per_batch, (X.shape[0], width), X)
        try:
            check_finite(out, "curvature product")
        except ValueError as err:
            raise ValueError(f"the operator returned non-finite values: {err}") from None
        return out

    def loss_and_gradient(self) -> tuple[float, Tensor]:
        """Full-data loss and gradient (flat, in layout order), weighted by samples.

        Returns:
            ``(loss, gradient)``.

        Raises:
            ValueError: if the loss is not a finite scalar.
        """
        assert self.layout is not None

        def per_batch(fm: FunctionalModel, batch: Batch) -> Tensor:
            grads, loss = torch.func.grad_and_value(lambda p: self._loss(fm, p, batch))(fm.params)
            check_finite(loss.reshape(1), "loss")
            assert self.layout is not None
            return torch.cat([self.layout.flatten(grads), loss.detach().reshape(1)])

        out = self._accumulate(per_batch, (self.shape[0] + 1,))
        return float(out[-1]), out[:-1]

    def __repr__(self) -> str:
        n = self.shape[0]
        return (
            f"{type(self).__name__}(num_params={n}, params={len(self.param_names)} tensors, "
            f"dtype={self.dtype}, num_samples={self.num_samples})"
        )
