r"""Reproductions of the papers' claims, one module each, run by ``subspaces reproduce``.

Every module of this package whose name matches ``^[A-Z]\d\d_`` (``P08_hessian_outliers.py``,
``C01_krylov_vs_power.py``) is imported here and registers one experiment with
:func:`~subspaces.experiments.registry.register`, so a new reproduction is one new file. A module
that fails to import does not break the others: its error is kept in :func:`import_errors`, shown
by ``subspaces reproduce --list`` and checked by the test suite.

Example:
    >>> from subspaces.experiments import get
    >>> get("C01").id
    'C01'
"""

from __future__ import annotations

import importlib
import pkgutil
import re

from .registry import (
    Experiment,
    ExperimentResult,
    _record_import_error,
    all_experiments,
    get,
    import_errors,
    register,
    temporarily_registered,
    unregister,
)

__all__ = [
    "Experiment",
    "ExperimentResult",
    "all_experiments",
    "get",
    "import_errors",
    "register",
    "temporarily_registered",
    "unregister",
]

MODULE_PATTERN = re.compile(r"^[A-Z]\d\d_")


def _discover() -> None:
    """Import every reproduction module of this package (names matching ``MODULE_PATTERN``)."""
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if not MODULE_PATTERN.match(info.name):
            continue
        try:
            importlib.import_module(f"{__name__}.{info.name}")
        except Exception as error:  # one broken reproduction must not hide the others
            _record_import_error(info.name, error)


_discover()
