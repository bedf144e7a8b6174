"""Train/eval mode handling shared by the domain packages. Nothing here is public API."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Put ``models`` in eval mode for the block; restore every submodule's flag afterwards.

    Flags are restored module by module (not with ``model.train(was)``), so a model whose
    submodules were in mixed modes comes back exactly as it was, also after an exception.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Dropout(), nn.Linear(2, 2))
        >>> net[1].eval()  # doctest: +ELLIPSIS
        Linear(...)
        >>> with eval_mode(net):
        ...     print(net.training, net[0].training)
        False False
        >>> net.training, net[0].training, net[1].training
        (True, True, False)
    """
    flags = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, flag in flags:
            m.training = flag
