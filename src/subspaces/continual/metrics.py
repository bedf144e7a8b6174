"""The accuracy matrix of a task sequence and its summaries: ACC, BWT and forgetting.

``R[i, j]`` is the accuracy on task ``j`` measured right after training on task ``i`` (row ``i``:
the model after task ``i``; column ``j``: the test set of task ``j``). Only the lower triangle
with the diagonal (``j <= i``) enters the summaries; entries above the diagonal (a task not yet
seen) may be anything, NaN included.

- ACC (average accuracy, Lopez-Paz & Ranzato 2017): ``mean_j R[T-1, j]``.
- BWT (backward transfer, Lopez-Paz & Ranzato 2017): ``mean_{j < T-1} (R[T-1, j] - R[j, j])``;
  negative is forgetting, positive means later tasks improved an old one.
- Forgetting (Chaudhry et al. 2018): ``mean_{j < T-1} (max_{l < T-1} R[l, j] - R[T-1, j])``,
  the drop of each old task from its best accuracy (``l`` ranges over ``j .. T-2``).

The definitions are those of the GPM, TRGP and Avalanche code (Avalanche's ``bwt_metrics`` and
``forgetting_metrics``), written out here.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["AccuracyMatrix", "average_accuracy", "backward_transfer", "forgetting"]


def _as_matrix(R: Tensor | Sequence[Sequence[float]], name: str = "R") -> Tensor:
    if isinstance(R, Tensor):
        if not (R.is_floating_point() or R.dtype in (torch.int32, torch.int64)):
            raise TypeError(f"{name} must hold real numbers, got dtype {R.dtype}")
        M = R.detach().to("cpu", torch.float64)
    else:
        try:
            M = torch.as_tensor(R, dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise TypeError(f"{name} must be a square matrix of numbers, got {R!r}") from err
    if M.ndim != 2 or M.shape[0] != M.shape[1] or M.shape[0] == 0:
        raise ValueError(
            f"{name} must be a non-empty square (tasks x tasks) matrix, got shape {tuple(M.shape)}"
        )
    lower = torch.tril(torch.ones_like(M, dtype=torch.bool))
    bad = lower & ~torch.isfinite(M)
    if bool(bad.any()):
        i, j = (int(v) for v in bad.nonzero()[0])
        raise ValueError(
            f"{name}[{i}, {j}] = {float(M[i, j])} is not finite; the lower triangle and the "
            "diagonal (task j evaluated after training task i >= j) must be numbers"
        )
    return M


def average_accuracy(R: Tensor | Sequence[Sequence[float]]) -> float:
    """ACC: the mean accuracy over all tasks after the last task, ``mean_j R[T-1, j]``.

    Args:
        R: ``(T, T)`` accuracy matrix, ``R[i, j]`` = accuracy on task ``j`` after task ``i``.

    Returns:
        The average accuracy (in the units of ``R``).

    Raises:
        ValueError: if ``R`` is not square or its lower triangle is not finite.
        TypeError: if ``R`` does not hold numbers.

    Example:
        >>> average_accuracy([[0.9, float("nan")], [0.7, 0.8]])
        0.75
    """
    M = _as_matrix(R)
    return float(M[-1].mean())


def backward_transfer(R: Tensor | Sequence[Sequence[float]]) -> float:
    """BWT: ``mean_{j < T-1} (R[T-1, j] - R[j, j])`` (Lopez-Paz & Ranzato 2017).

    Args:
        R: ``(T, T)`` accuracy matrix with ``T >= 2``.

    Returns:
        The backward transfer; negative values are forgetting.

    Raises:
        ValueError: for fewer than two tasks, a non-square matrix or a non-finite entry in the
            lower triangle.
        TypeError: if ``R`` does not hold numbers.

    Example:
        >>> round(backward_transfer([[0.9, 0.0, 0.0], [0.8, 0.9, 0.0], [0.6, 0.95, 0.9]]), 12)
        -0.125
    """
    M = _as_matrix(R)
    T = M.shape[0]
    if T < 2:
        raise ValueError(f"backward transfer needs at least 2 tasks, got a {T}x{T} matrix")
    return float((M[-1, :-1] - M.diagonal()[:-1]).mean())


def forgetting(R: Tensor | Sequence[Sequence[float]]) -> float:
    """Average forgetting: ``mean_{j < T-1} (max_{j <= l < T-1} R[l, j] - R[T-1, j])``.

    Chaudhry et al. 2018 ("Riemannian walk for incremental learning"): how far each old task
    fell from its best accuracy before the last task.

    Args:
        R: ``(T, T)`` accuracy matrix with ``T >= 2``.

    Returns:
        The average forgetting (may be negative when every old task ends at its best).

    Raises:
        ValueError: for fewer than two tasks, a non-square matrix or a non-finite entry in the
            lower triangle.
        TypeError: if ``R`` does not hold numbers.

    Example:
        >>> round(forgetting([[0.9, 0.0, 0.0], [0.95, 0.9, 0.0], [0.6, 0.95, 0.9]]), 12)
        0.15
    """
    M = _as_matrix(R)
    T = M.shape[0]
    if T < 2:
        raise ValueError(f"forgetting needs at least 2 tasks, got a {T}x{T} matrix")
    drops = [float(M[j : T - 1, j].max() - M[T - 1, j]) for j in range(T - 1)]
    return sum(drops) / len(drops)


class AccuracyMatrix:
    """The accuracy matrix, filled row by row as a task sequence is learned.

    Args:
        num_tasks: the number of tasks ``T``.

    Raises:
        ValueError: if ``num_tasks`` < 1.
        TypeError: if it is not an int.

    Example:
        >>> acc = AccuracyMatrix(2)
        >>> acc.record(0, [0.9])
        >>> acc.record(1, [0.8, 0.95])
        >>> acc.acc, round(acc.bwt, 12), round(acc.forgetting, 12)
        (0.875, -0.1, 0.1)
    """

    def __init__(self, num_tasks: int) -> None:
        if isinstance(num_tasks, bool) or not isinstance(num_tasks, int):
            raise TypeError(f"num_tasks must be an int, got {type(num_tasks).__name__}")
        if num_tasks < 1:
            raise ValueError(f"num_tasks must be >= 1, got {num_tasks}")
        self.num_tasks = num_tasks
        self.values = torch.full((num_tasks, num_tasks), float("nan"), dtype=torch.float64)
        self._rows = 0

    def record(self, task: int, accuracies: Sequence[float] | Tensor) -> None:
        """Store the accuracies on tasks ``0 .. task`` measured after training ``task``.

        Rows must be recorded in order (``task`` = 0, 1, 2, ...).

        Args:
            task: the task just trained.
            accuracies: ``task + 1`` numbers (more are allowed: the first ``task + 1`` count, the
                rest are kept as they are, e.g. zero-shot accuracies on future tasks).

        Raises:
            ValueError: for a row out of order, too few or non-finite accuracies.
        """
        if task != self._rows or task >= self.num_tasks:
            raise ValueError(
                f"task must be recorded in order: expected {self._rows} (of {self.num_tasks}), "
                f"got {task!r}"
            )
        row = torch.as_tensor(accuracies, dtype=torch.float64).flatten()
        if row.numel() < task + 1 or row.numel() > self.num_tasks:
            raise ValueError(
                f"accuracies after task {task} must have {task + 1} to {self.num_tasks} "
                f"entries, got {row.numel()}"
            )
        if not bool(torch.isfinite(row[: task + 1]).all()):
            raise ValueError(f"accuracies after task {task} must be finite, got {row.tolist()}")
        self.values[task, : row.numel()] = row
        self._rows += 1

    def _complete(self) -> Tensor:
        if self._rows == 0:
            raise ValueError("no task recorded yet")
        return self.values[: self._rows, : self._rows]

    @property
    def acc(self) -> float:
        """ACC over the tasks recorded so far (:func:`average_accuracy`)."""
        return average_accuracy(self._complete())

    @property
    def bwt(self) -> float:
        """BWT over the tasks recorded so far (:func:`backward_transfer`)."""
        return backward_transfer(self._complete())

    @property
    def forgetting(self) -> float:
        """Average forgetting over the tasks recorded so far (:func:`forgetting`)."""
        return forgetting(self._complete())

    def tolist(self) -> list[list[float]]:
        """The recorded rows, lower triangle and diagonal (row ``i`` has ``i + 1`` entries).

        Returns:
            Nested lists of floats.
        """
        return [self.values[i, : i + 1].tolist() for i in range(self._rows)]
