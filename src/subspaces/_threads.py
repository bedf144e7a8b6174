"""How many intra-op threads torch uses, chosen from the size of the work and always restored.

On a shared machine, OpenMP threads oversubscribe: the many small products of a small model run
several times slower with two threads than with one while another process keeps a core busy
(BENCHMARKS.md, "threads"). Large products still gain from every core. So the library picks one
thread for small work, all of torch's threads for large work, lets the user override it, and puts
the caller's setting back afterwards.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch

__all__ = ["SMALL_WORK", "choose_threads", "intra_op_threads"]

SMALL_WORK = 100_000_000
"""Work per product (multiply-adds, or parameters x samples for a model) below which one thread
is used: under it a second thread gains little on an idle machine and loses several-fold on a
shared one (a 10k-parameter model on 10k samples, a 10,000 x 10,000 matrix-vector product)."""

Threads = int | Literal["auto"] | None


def choose_threads(work: float, threads: Threads = "auto") -> int:
    """The intra-op thread count for products of ``work`` multiply-adds.

    Args:
        work: multiply-adds of one typical product (e.g. parameters x batch size for a model).
        threads: ``"auto"`` (one thread below :data:`SMALL_WORK`, else torch's current count),
            ``None`` (torch's current count, unchanged) or an explicit positive count.

    Returns:
        The number of threads.

    Raises:
        ValueError: if ``threads`` is not ``"auto"``, ``None`` or a positive int, or ``work`` is
            negative.

    Example:
        >>> choose_threads(1e4), choose_threads(1e4, threads=3)
        (1, 3)
        >>> choose_threads(1e10) == torch.get_num_threads()
        True
    """
    if isinstance(work, bool) or not isinstance(work, (int, float)) or not work >= 0:
        raise ValueError(f"work must be a number >= 0, got {work!r}")
    if threads is None:
        return torch.get_num_threads()
    if threads == "auto":
        return 1 if work < SMALL_WORK else torch.get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ValueError(f"threads must be 'auto', None or an int >= 1, got {threads!r}")
    return threads


@contextmanager
def intra_op_threads(n: int | None) -> Iterator[int]:
    """Run the block with ``n`` intra-op threads (``None``: unchanged), then restore the caller's.

    Args:
        n: thread count, or ``None`` to leave torch's setting alone.

    Yields:
        The thread count in effect inside the block.

    Raises:
        ValueError: if ``n`` is not ``None`` or a positive int.

    Example:
        >>> before = torch.get_num_threads()
        >>> with intra_op_threads(1) as n:
        ...     n, torch.get_num_threads()
        (1, 1)
        >>> torch.get_num_threads() == before
        True
    """
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise ValueError(f"thread count must be None or an int >= 1, got {n!r}")
    before = torch.get_num_threads()
    if n is not None and n != before:
        torch.set_num_threads(n)
    try:
        yield torch.get_num_threads()
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)
