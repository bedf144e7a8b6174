"""subspaces: the low-dimensional structure of learning.

Find the subspaces where learning happens (curvature spectra, gradient and representation
subspaces), compare them, and use them.

Example:
    >>> import torch, subspaces
    >>> A = torch.diag(torch.arange(1.0, 101.0, dtype=torch.float64))
    >>> top = subspaces.lanczos(A, 3, generator=torch.Generator().manual_seed(0))
    >>> top.eigenvalues.tolist(), top.all_converged
    ([100.0, 99.0, 98.0], True)
"""

from typing import TYPE_CHECKING

from .linalg import (
    Subspace,
    cg,
    diagonal,
    hutchinson_trace,
    hutchpp_trace,
    lanczos,
    minres,
    nystrom,
    power_iteration,
    randomized_eigh,
    randomized_range_finder,
    randomized_svd,
    slq_density,
    xtrace,
)
from .linops import LinearOperator

__version__ = "0.1.0"

if TYPE_CHECKING:
    # At run time ``subspaces.analyze`` is the package of the main job, made callable (see
    # ``__getattr__``); type checkers see the function it calls, so that
    # ``subspaces.analyze(model, loader, loss_fn, ...)`` is checked against its signature.
    # ``import subspaces.analyze as m`` and ``from subspaces.analyze import X`` still see the
    # package.
    from .analyze import analyze as analyze


def __getattr__(name: str) -> object:
    # ``subspaces.analyze`` (imported on first use: it pulls in the report and curvature code) is
    # the module of the main job, and callable: ``subspaces.analyze(model, loader, loss_fn, ...)``
    if name == "analyze":
        import importlib

        return importlib.import_module(".analyze", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LinearOperator",
    "Subspace",
    "__version__",
    "analyze",  # the callable package, imported on first use by __getattr__
    "cg",
    "diagonal",
    "hutchinson_trace",
    "hutchpp_trace",
    "lanczos",
    "minres",
    "nystrom",
    "power_iteration",
    "randomized_eigh",
    "randomized_range_finder",
    "randomized_svd",
    "slq_density",
    "xtrace",
]
