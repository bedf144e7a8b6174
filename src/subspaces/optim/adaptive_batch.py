"""Adaptive batch sizes (AdAdaGrad, P21): a controller for any optimizer and a batch sampler.

Every ``test_interval`` steps :class:`BatchSizeController` computes the moments of the
per-sample gradients of the current batch's first ``max_test_samples`` samples (for models made
of ``nn.Linear`` layers from the layers' inputs and output gradients, without forming the
per-sample gradients; otherwise by ``torch.func.vmap`` over ``torch.func.grad`` of a
``functional_call``; the user's model is neither copied nor modified), runs one of the tests of
:mod:`subspaces.optim._batch_tests` (norm, inner-product, orthogonality, augmented
inner-product, coordinate-wise) and grows the batch to ``max(b, ceil(required))``, capped at
``max_batch_size``; the batch never shrinks (the paper's schemes only increase it).
:class:`AdaptiveBatchSampler` feeds a ``torch.utils.data.DataLoader(batch_sampler=...)`` with
batches of the controller's current size. Under ``torch.distributed`` the per-sample moments
are pooled across ranks exactly (:func:`all_reduce_moments`) and the batch size is global.

Usage (call :meth:`BatchSizeController.observe` after ``backward()`` and before ``step()``, so
the test sees the iterate the batch was drawn for)::

    ctrl = BatchSizeController(model, F.cross_entropy, initial_batch_size=16, max_batch_size=1024)
    loader = DataLoader(data, batch_sampler=AdaptiveBatchSampler(len(data), ctrl, seed=0))
    for x, y in loader:
        opt.zero_grad(); F.cross_entropy(model(x), y).backward()
        ctrl.observe(x, y); opt.step()

References:
    Lau, Liu & Kolar, "AdAdaGrad: Adaptive Batch Size Schemes for Adaptive Gradient Methods",
    arXiv:2402.11215, 2024 (code: timlautk/AdAdaGrad).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn
from torch.utils.data import Sampler

from .._checks import check_choice, check_positive_float, check_positive_int
from ._batch_tests import (
    TESTS,
    GradientStatistics,
    TestName,
    required_batch_size,
    statistics_from_moments,
)
from ._per_sample import per_sample_moments

__all__ = [
    "AdaptiveBatchSampler",
    "BatchSizeController",
    "BatchSizeRecord",
    "all_reduce_moments",
]


def all_reduce_moments(
    count: int, mean: Tensor, m2: Tensor, group: Any = None
) -> tuple[int, Tensor, Tensor]:
    """Pool ``(count, mean, M2)`` over all ranks of ``group`` with two ``all_reduce`` calls.

    The same formula as :func:`~subspaces.optim._batch_tests.pool_moments` (the law of total
    variance), written as sums: first ``(n, sum_r n_r mean_r)``, then
    ``sum_r M2_r + n_r (mean_r - mean)^2``. Every rank gets the pooled values.

    Args:
        count: this rank's number of samples (may be 0).
        mean: this rank's mean (any shape, the same on every rank).
        m2: this rank's sum of squared deviations (shape of ``mean``).
        group: the ``torch.distributed`` process group (``None``: the default group).

    Returns:
        The pooled ``(n, mean, M2)``.

    Example:
        In a process group of one rank (in ``torch.distributed`` runs each rank calls it
        with its own samples) the pooled moments are the rank's own:

        >>> import torch
        >>> import torch.distributed as dist
        >>> from subspaces.testing import free_port, init_gloo
        >>> init_gloo(0, 1, free_port(), threads=None)
        >>> x = torch.tensor([[1.0, 2.0], [3.0, 6.0], [5.0, 4.0]], dtype=torch.float64)
        >>> n, mean, m2 = all_reduce_moments(3, x.mean(0), ((x - x.mean(0)) ** 2).sum(0))
        >>> n, mean.tolist(), (m2 / (n - 1)).tolist()  # the sample variance per column
        (3, [3.0, 4.0], [4.0, 4.0])
        >>> dist.destroy_process_group()
    """
    import torch.distributed as dist

    flat = mean.reshape(-1)
    weighted = flat * count if count > 0 else torch.zeros_like(flat)
    buf = torch.cat([torch.tensor([float(count)], dtype=flat.dtype, device=flat.device), weighted])
    dist.all_reduce(buf, group=group)
    n = round(float(buf[0]))
    pooled = (buf[1:] / max(n, 1)).reshape(mean.shape)
    spread = (m2 + count * (mean - pooled) ** 2) if count > 0 else torch.zeros_like(m2)
    dist.all_reduce(spread, group=group)
    return n, pooled, spread


@dataclass(frozen=True)
class BatchSizeRecord:
    """One test: at optimizer step ``step`` the batch size became ``batch_size``.

    Attributes:
        step: the controller's step count when the test ran.
        batch_size: the batch size after the test (global under data parallelism).
        required: the test statistic, the batch size the test asked for (may be ``inf``).
        test_samples: per-sample gradients used (pooled over ranks).

    Example:
        Below the cap, a test that fails grows the batch to the size it asked for:

        >>> import math
        >>> import torch
        >>> from subspaces.optim import BatchSizeController
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Linear(4, 1)
        >>> ctrl = BatchSizeController(model, torch.nn.functional.mse_loss, initial_batch_size=4,
        ...                            max_batch_size=4096, eta=0.1, test_interval=1)
        >>> x = torch.randn(16, 4); y = x.sum(1, keepdim=True) + 3 * torch.randn(16, 1)
        >>> batch = ctrl.observe(x, y)
        >>> rec = ctrl.history[-1]
        >>> rec.step, rec.test_samples, rec.batch_size == batch == math.ceil(rec.required)
        (0, 16, True)
    """

    step: int
    batch_size: int
    required: float
    test_samples: int


class BatchSizeSource(Protocol):
    """Anything with an integer ``batch_size`` attribute (a :class:`BatchSizeController`)."""

    batch_size: int


class BatchSizeController:
    """Grow the batch size with an adaptive-sampling test every ``test_interval`` steps.

    Works with any optimizer (AdAdaGrad-Norm is this with :class:`~subspaces.optim.AdaGradNorm`,
    AdAdaGrad with ``torch.optim.Adagrad``; the paper pairs AdaGrad with the coordinate-wise or
    norm test). At a test the next batch size is ``min(max_batch_size, max(b, ceil(required)))``.

    Args:
        model: the model being trained (read, never modified).
        loss_fn: ``loss_fn(outputs, targets)``, mean-reduced over the batch.
        initial_batch_size: ``b_0`` (>= 1).
        max_batch_size: the cap (>= ``initial_batch_size``).
        test: ``"norm"`` (default), ``"inner_product"``, ``"orthogonality"``, ``"augmented"``
            or ``"coordinate"``.
        eta: norm / coordinate-wise test accuracy, in ``(0, 1)``.
        theta: inner-product test accuracy, in ``(0, 1)``.
        nu: orthogonality test accuracy (> 0).
        test_interval: test every this many steps (>= 1); the first test is at step 0.
        max_test_samples: per-sample gradients per test and rank (>= 2).
        distributed: pool the moments over ``torch.distributed`` ranks (batch sizes are global).
        process_group: the process group when ``distributed``.
        method: how per-sample moments are computed (:func:`~subspaces.optim.per_sample_moments`):
            ``"auto"`` uses the outer-product path for models made of ``nn.Linear`` layers
            (no per-sample gradient matrix) and ``vmap`` otherwise.

    Raises:
        ValueError: for out-of-range sizes or accuracies, a cap below the starting batch, an
            unknown test, or a model without trainable parameters.

    Example:
        >>> import torch
        >>> torch.manual_seed(0) and None
        >>> model = torch.nn.Linear(4, 1)
        >>> ctrl = BatchSizeController(model, torch.nn.functional.mse_loss, initial_batch_size=4,
        ...                            max_batch_size=64, eta=0.1, test_interval=1)
        >>> x = torch.randn(16, 4); y = x.sum(1, keepdim=True) + 3 * torch.randn(16, 1)
        >>> b = ctrl.observe(x, y)  # noisy targets: the norm test asks for a bigger batch
        >>> b > 4, b <= 64, ctrl.history[0].step
        (True, True, 0)
    """

    def __init__(
        self,
        model: nn.Module,
        loss_fn: Callable[[Tensor, Tensor], Tensor],
        *,
        initial_batch_size: int,
        max_batch_size: int,
        test: TestName = "norm",
        eta: float = 0.1,
        theta: float = 0.9,
        nu: float = 5.84,
        test_interval: int = 10,
        max_test_samples: int = 64,
        distributed: bool = False,
        process_group: Any = None,
        method: Literal["auto", "linear", "vmap"] = "auto",
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if not any(p.requires_grad for p in model.parameters()):
            raise ValueError(f"model {type(model).__name__} has no trainable parameters")
        check_positive_int(initial_batch_size, "initial_batch_size")
        check_positive_int(max_batch_size, "max_batch_size")
        if max_batch_size < initial_batch_size:
            raise ValueError(
                f"max_batch_size ({max_batch_size}) must be >= initial_batch_size "
                f"({initial_batch_size})"
            )
        for name, value in (("eta", eta), ("theta", theta)):
            if not 0.0 < check_positive_float(value, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {value}")
        check_positive_float(nu, "nu")
        self.test: TestName = check_choice(test, "test", TESTS)  # type: ignore[assignment]
        self.model, self.loss_fn = model, loss_fn
        self.eta, self.theta, self.nu = float(eta), float(theta), float(nu)
        self.initial_batch_size, self.max_batch_size = initial_batch_size, max_batch_size
        self.test_interval = check_positive_int(test_interval, "test_interval")
        self.max_test_samples = check_positive_int(max_test_samples, "max_test_samples", minimum=2)
        self.distributed, self.process_group = bool(distributed), process_group
        self.method: Literal["auto", "linear", "vmap"] = check_choice(  # type: ignore[assignment]
            method, "method", ("auto", "linear", "vmap")
        )
        self.batch_size = initial_batch_size
        self.steps = 0
        self.history: list[BatchSizeRecord] = []
        self.pending = False  # a test postponed from a one-sample batch
        self.last_statistics: GradientStatistics | None = None

    def _reducer(self) -> Any:
        if not self.distributed:
            return None
        return lambda n, m, s: all_reduce_moments(n, m, s, self.process_group)

    def required(self, inputs: Tensor, targets: Tensor) -> tuple[float, int]:
        """Run the test now on the first ``max_test_samples`` samples (state unchanged).

        Args:
            inputs: the current batch's inputs.
            targets: its targets.

        Returns:
            ``(required batch size, pooled number of test samples)``.
        """
        m = min(self.max_test_samples, int(inputs.shape[0]))
        n, mean, m2, inner = per_sample_moments(
            self.model, self.loss_fn, inputs[:m], targets[:m], method=self.method
        )
        stats = statistics_from_moments(n, mean, m2, inner, reducer=self._reducer())
        self.last_statistics = stats
        req = required_batch_size(stats, self.test, eta=self.eta, theta=self.theta, nu=self.nu)
        return req, stats.count

    def observe(self, inputs: Tensor, targets: Tensor) -> int:
        """Count one optimizer step; at a test step, test and grow the batch size.

        A test step whose batch holds a single sample (an epoch's last, truncated batch; on one
        process) cannot estimate a variance: the test moves to the next step.

        Args:
            inputs: the batch used for this step (its first samples feed the test).
            targets: its targets.

        Returns:
            The batch size for the next step.
        """
        if self.pending or self.steps % self.test_interval == 0:
            if not self.distributed and int(inputs.shape[0]) < 2:
                self.pending = True
                self.steps += 1
                return self.batch_size
            self.pending = False
            req, used = self.required(inputs, targets)
            if req > self.batch_size:
                grown = self.max_batch_size if math.isinf(req) else math.ceil(req)
                self.batch_size = min(self.max_batch_size, grown)
            self.history.append(BatchSizeRecord(self.steps, self.batch_size, req, used))
        self.steps += 1
        return self.batch_size

    @property
    def local_batch_size(self) -> int:
        """This rank's share, ``ceil(batch_size / world_size)`` (the batch size on one process)."""
        if not self.distributed:
            return self.batch_size
        import torch.distributed as dist

        return math.ceil(self.batch_size / dist.get_world_size(self.process_group))

    def state_dict(self) -> dict[str, Any]:
        """Batch size, step count, a postponed test and the history (ints, floats, a bool)."""
        return {
            "batch_size": self.batch_size,
            "steps": self.steps,
            "pending": self.pending,
            "history": [[r.step, r.batch_size, r.required, r.test_samples] for r in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output (e.g. loaded with ``weights_only=True``)."""
        size = int(state["batch_size"])
        if not self.initial_batch_size <= size <= self.max_batch_size:
            raise ValueError(
                f"batch_size {size} in the state is outside [{self.initial_batch_size}, "
                f"{self.max_batch_size}]"
            )
        self.batch_size, self.steps = size, int(state["steps"])
        self.pending = bool(state.get("pending", False))
        self.history = [
            BatchSizeRecord(int(s), int(b), float(r), int(m)) for s, b, r, m in state["history"]
        ]


class AdaptiveBatchSampler(Sampler[list[int]]):
    """Yield index batches whose size is read from a controller at every batch.

    Each epoch is one pass over a permutation (seeded by ``seed + epoch``, or the identity when
    ``shuffle=False``): consecutive batches of the current size, the last one shorter unless
    ``drop_last``. Iterating again continues with the next epoch. For data parallelism every rank
    builds the same sampler with its ``rank``; a global batch of ``b`` indices is cut into
    ``num_replicas`` shares of ``ceil(b / num_replicas)``. With ``DataLoader(num_workers > 0)`` a
    new size applies after the batches already prefetched.

    Args:
        data: the dataset size, or a sized dataset.
        batch_size: an int (a fixed size) or an object with a ``batch_size`` attribute.
        shuffle: permute each epoch.
        seed: seed of the permutations.
        drop_last: drop an epoch's last incomplete (global) batch.
        num_replicas: ranks sharing each global batch.
        rank: this rank.

    Raises:
        ValueError: for an empty dataset or a rank outside ``[0, num_replicas)``.

    Example:
        >>> s = AdaptiveBatchSampler(10, 4, shuffle=False)
        >>> list(s)
        [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    """

    def __init__(
        self,
        data: int | Sized,
        batch_size: int | BatchSizeSource,
        *,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        n = data if isinstance(data, int) else len(data)
        if n <= 0:
            raise ValueError(f"the dataset is empty (size {n}); expected at least one sample")
        if isinstance(batch_size, int):
            check_positive_int(batch_size, "batch_size")
        elif not hasattr(batch_size, "batch_size"):
            raise TypeError(
                f"batch_size must be an int or have a batch_size attribute, got "
                f"{type(batch_size).__name__}"
            )
        check_positive_int(num_replicas, "num_replicas")
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank must be in [0, {num_replicas}), got {rank}")
        self.num_samples, self.source = n, batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.num_replicas, self.rank = num_replicas, rank
        self.epoch, self.position = 0, 0

    def current_batch_size(self) -> int:
        """The global batch size the next batch will have (before truncation at epoch end)."""
        size = self.source if isinstance(self.source, int) else int(self.source.batch_size)
        return check_positive_int(size, "batch_size")

    def _order(self) -> Tensor:
        if not self.shuffle:
            return torch.arange(self.num_samples)
        gen = torch.Generator().manual_seed(self.seed + self.epoch)
        return torch.randperm(self.num_samples, generator=gen)

    def __iter__(self) -> Iterator[list[int]]:
        order = self._order()
        while self.position < self.num_samples:
            share = math.ceil(self.current_batch_size() / self.num_replicas)
            end = min(self.position + share * self.num_replicas, self.num_samples)
            if self.drop_last and end - self.position < share * self.num_replicas:
                break
            chunk = order[self.position : end]
            self.position = end
            yield chunk[self.rank * share : (self.rank + 1) * share].tolist()
        self.epoch, self.position = self.epoch + 1, 0

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning at the next iteration."""
        self.epoch, self.position = check_positive_int(epoch, "epoch", minimum=0), 0

    def state_dict(self) -> dict[str, int]:
        """The epoch and the position within it (ints)."""
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        """Resume at the saved epoch and position."""
        position = int(state["position"])
        if not 0 <= position <= self.num_samples:
            raise ValueError(f"position {position} is outside [0, {self.num_samples}]")
        self.epoch, self.position = int(state["epoch"]), position
