"""The experiment registry: each reproduction declares its claim, its criterion and a ``run``.

A reproduction is one module of :mod:`subspaces.experiments` named like ``P08_hessian_outliers.py``
(``P`` + two digits for a paper of ``PAPERS.md``, ``C`` + two digits for a check of the core that
is not a paper). It registers one function::

    @register(
        "P08",
        title="Hessian outliers and bulk",
        paper="Sagun et al. 2017, Empirical analysis of the Hessian of over-parametrized networks",
        claim="...",
        criterion="...",
    )
    def run(fast: bool, seed: int) -> ExperimentResult:
        ...
        return ExperimentResult(measured={"outliers": 9}, passed=True, summary="9 outliers")

``fast=True`` is the small setting the test suite runs; ``fast=False`` the full reproduction.
``subspaces reproduce`` (see :mod:`subspaces.cli`) runs them and writes their results.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "Experiment",
    "ExperimentResult",
    "RunFunction",
    "UnknownExperimentError",
    "all_experiments",
    "format_interval",
    "get",
    "import_errors",
    "register",
    "temporarily_registered",
    "unregister",
]

ID_PATTERN = re.compile(r"^[A-Z]\d\d$")
_FIGURE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


@dataclass(frozen=True)
class ExperimentResult:
    """What a reproduction measured and whether it met its criterion.

    Args:
        measured: the measured numbers, by name (JSON-convertible: numbers, strings, lists,
            tensors and NumPy values are fine).
        passed: whether the criterion held.
        summary: one human sentence with the key numbers, printed next to the verdict.
        figures: PNG images by name (letters, digits, ``_``, ``-``); written as ``ID_<name>.png``.
        headline: keys of ``measured`` whose values are seed summaries (from
            :func:`subspaces.experiments._stats.seed_summary` or ``paired_summary``: a mapping with
            ``mean``, ``n`` and ``ci95`` or ``ci``); ``subspaces reproduce`` prints their mean and
            interval beside the verdict, so a verdict is read with its spread over seeds.

    Raises:
        TypeError: if ``measured`` is not a mapping, ``passed`` is not a bool, ``summary`` is not
            a string, or a figure is not bytes.
        ValueError: for a figure name that is not a plain file-name stem, or a ``headline`` key
            that is not in ``measured`` or whose value is not a seed summary.

    Example:
        >>> r = ExperimentResult({"error": 1e-9}, passed=True, summary="error 1e-9")
        >>> r.passed, r.figures
        (True, {})
    """

    measured: dict[str, Any]
    passed: bool
    summary: str = ""
    figures: dict[str, bytes] = field(default_factory=dict)
    headline: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.measured, Mapping):
            raise TypeError(f"measured must be a dict, got {type(self.measured).__name__}")
        passed = self.passed
        if isinstance(passed, np.bool_) or (
            isinstance(passed, torch.Tensor) and passed.dtype == torch.bool and passed.numel() == 1
        ):
            passed = bool(passed)  # what criteria computed with NumPy or torch produce
        if not isinstance(passed, bool):
            raise TypeError(f"passed must be a bool, got {type(passed).__name__} ({passed!r})")
        if not isinstance(self.summary, str):
            raise TypeError(f"summary must be a str, got {type(self.summary).__name__}")
        for name, data in self.figures.items():
            if not isinstance(name, str) or not _FIGURE_NAME.match(name):
                raise ValueError(
                    f"figure name {name!r} must be letters, digits, '_' or '-' "
                    "(it becomes part of a file name)"
                )
            if not isinstance(data, (bytes, bytearray)):
                raise TypeError(f"figure {name!r} must be PNG bytes, got {type(data).__name__}")
        headline = (self.headline,) if isinstance(self.headline, str) else tuple(self.headline)
        for key in headline:
            value = self.measured.get(key) if isinstance(key, str) else None
            if not (
                isinstance(value, Mapping)
                and "mean" in value
                and "n" in value
                and ("ci95" in value or "ci" in value)
            ):
                raise ValueError(
                    f"headline key {key!r} must name a seed summary in measured (a mapping with "
                    f"'mean', 'n' and 'ci95' or 'ci'), got {type(value).__name__}"
                )
        object.__setattr__(self, "measured", dict(self.measured))
        object.__setattr__(self, "passed", passed)
        object.__setattr__(self, "headline", headline)


def format_interval(name: str, summary: Mapping[str, Any]) -> str:
    """One line for a seed summary: ``name mean [low, high] (n seeds)``.

    Args:
        name: the quantity's name.
        summary: a seed summary (``mean``, ``n``, and ``ci95`` or ``ci`` with ``level``).

    Returns:
        The formatted text.

    Example:
        >>> format_interval("gap", {"mean": 0.031, "ci95": [0.01, 0.05], "n": 3})
        'gap 0.031 [0.01, 0.05] (95%, 3 seeds)'
    """
    if "ci95" in summary:
        low, high = summary["ci95"]
        level = 0.95
    else:
        low, high = summary["ci"]
        level = float(summary.get("level", 0.95))
    n = int(summary["n"])
    seeds = "1 seed" if n == 1 else f"{n} seeds"
    return (
        f"{name} {float(summary['mean']):.4g} [{float(low):.4g}, {float(high):.4g}] "
        f"({100 * level:g}%, {seeds})"
    )


RunFunction = Callable[[bool, int], ExperimentResult]


@dataclass(frozen=True)
class Experiment:
    """A registered reproduction.

    Attributes:
        id: ``P08``-style identifier (capital letter and two digits).
        title: short title.
        paper: the paper it reproduces (authors, year, title), or ``"core"`` for checks of the
            library that are not papers.
        claim: the claim being reproduced, stated so that it can be false.
        criterion: the measured condition that decides pass or fail.
        run: ``run(fast, seed) -> ExperimentResult``.
        slow: whether the full (not ``fast``) setting takes more than a few minutes.

    Example:
        >>> def run(fast: bool, seed: int) -> ExperimentResult:
        ...     error = abs(sum(1 / 2**k for k in range(60)) - 2.0)
        ...     return ExperimentResult({"error": error}, passed=error < 1e-12)
        >>> with temporarily_registered("X96", run, claim="the geometric series sums to 2") as e:
        ...     print(e.id, e.paper, e.slow, "|", e.claim)
        ...     print(e.run(True, 0).passed)
        X96 core False | the geometric series sums to 2
        True
    """

    id: str
    title: str
    paper: str
    claim: str
    criterion: str
    run: RunFunction
    slow: bool = False


_REGISTRY: dict[str, Experiment] = {}
_IMPORT_ERRORS: dict[str, str] = {}


def _check_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def register(
    id: str,
    title: str,
    paper: str,
    claim: str,
    criterion: str,
    slow: bool = False,
) -> Callable[[RunFunction], RunFunction]:
    """Decorator that registers ``run(fast, seed) -> ExperimentResult`` as experiment ``id``.

    The decorated function is returned unchanged, so it can still be called directly.

    Args:
        id: capital letter and two digits, e.g. ``"P08"`` or ``"C01"``.
        title: short title.
        paper: the paper (authors, year, title) or ``"core"``.
        claim: the claim, stated so that it can be false.
        criterion: the measured condition that decides pass or fail.
        slow: whether the full setting takes more than a few minutes.

    Returns:
        The decorator.

    Raises:
        ValueError: if ``id`` is malformed or already registered, or a text field is empty.

    Example:
        >>> @register("X98", "Doc example", "core", "1 + 1 = 2", "the sum equals 2")
        ... def run(fast: bool, seed: int) -> ExperimentResult:
        ...     return ExperimentResult({"sum": 1 + 1}, passed=1 + 1 == 2)
        >>> get("X98").run(True, 0).passed
        True
        >>> unregister("X98").title
        'Doc example'
    """
    if not isinstance(id, str) or not ID_PATTERN.match(id):
        raise ValueError(
            f"experiment id must be a capital letter and two digits like 'P08', got {id!r}"
        )
    for value, name in (
        (title, "title"),
        (paper, "paper"),
        (claim, "claim"),
        (criterion, "criterion"),
    ):
        _check_text(value, name)

    def decorator(run: RunFunction) -> RunFunction:
        if not callable(run):
            raise TypeError(f"experiment {id} must decorate a function, got {type(run).__name__}")
        if id in _REGISTRY:
            other = _REGISTRY[id].run
            raise ValueError(
                f"experiment id {id!r} is already registered by "
                f"{getattr(other, '__module__', '?')}.{getattr(other, '__qualname__', '?')}"
            )
        _REGISTRY[id] = Experiment(id, title, paper, claim, criterion, run, bool(slow))
        return run

    return decorator


def unregister(id: str) -> Experiment:
    """Remove experiment ``id`` from the registry (for tests and interactive use).

    Args:
        id: a registered id.

    Returns:
        The removed experiment.

    Raises:
        KeyError: for an id that is not registered.

    Example:
        >>> _ = register("X97", "Doc example", "core", "claim", "criterion")(
        ...     lambda fast, seed: ExperimentResult({}, passed=True))
        >>> unregister("X97").id, "X97" in [e.id for e in all_experiments()]
        ('X97', False)
    """
    get(id)  # the same clear error for an unknown id
    return _REGISTRY.pop(id)


@contextmanager
def temporarily_registered(
    id: str,
    run: RunFunction,
    *,
    title: str = "Temporary experiment",
    paper: str = "core",
    claim: str = "a temporary claim",
    criterion: str = "a temporary criterion",
    slow: bool = False,
) -> Iterator[Experiment]:
    """Register ``run`` as ``id`` for the duration of a ``with`` block, then remove it.

    Args:
        id: an unused id.
        run: ``run(fast, seed) -> ExperimentResult``.
        title: short title.
        paper: the paper or ``"core"``.
        claim: the claim.
        criterion: the criterion.
        slow: the slow flag.

    Yields:
        The registered experiment.

    Example:
        >>> with temporarily_registered("X97", lambda fast, seed: ExperimentResult({}, True)):
        ...     "X97" in [e.id for e in all_experiments()]
        True
        >>> "X97" in [e.id for e in all_experiments()]
        False
    """
    register(id, title, paper, claim, criterion, slow)(run)
    try:
        yield _REGISTRY[id]
    finally:
        _REGISTRY.pop(id, None)


class UnknownExperimentError(KeyError):
    """An experiment id that is not registered; the message lists the known ids.

    Example:
        >>> try:
        ...     get("Z99")
        ... except UnknownExperimentError as error:
        ...     print(type(error).__name__, isinstance(error, KeyError), str(error).split(";")[0])
        UnknownExperimentError True unknown experiment id 'Z99'
    """

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


def get(id: str) -> Experiment:
    """The experiment registered as ``id``.

    Args:
        id: e.g. ``"C01"``.

    Returns:
        The experiment.

    Raises:
        UnknownExperimentError: (a ``KeyError``) for an unknown id; the message lists the known
            ids and any reproduction module that failed to import.

    Example:
        >>> get("C01").title
        'Certified Krylov eigensolver vs power iteration'
    """
    try:
        return _REGISTRY[id]
    except (KeyError, TypeError):
        known = ", ".join(sorted(_REGISTRY)) or "none"
        message = f"unknown experiment id {id!r}; known ids: {known}"
        if _IMPORT_ERRORS:
            message += f" (modules that failed to import: {', '.join(sorted(_IMPORT_ERRORS))})"
        raise UnknownExperimentError(message) from None


def all_experiments() -> list[Experiment]:
    """Every registered experiment, sorted by id.

    Returns:
        The experiments.

    Example:
        >>> "C01" in [e.id for e in all_experiments()]
        True
    """
    return [_REGISTRY[k] for k in sorted(_REGISTRY)]


def import_errors() -> dict[str, str]:
    """Reproduction modules that failed to import, with the error text (empty when all is well).

    Returns:
        ``{module name: "ErrorType: message"}``.

    Example:
        >>> len(all_experiments()) >= 34  # imports every bundled reproduction module
        True
        >>> import_errors()  # and none failed
        {}
    """
    return dict(_IMPORT_ERRORS)


def _record_import_error(module: str, error: BaseException) -> None:
    _IMPORT_ERRORS[module] = f"{type(error).__name__}: {error}"
