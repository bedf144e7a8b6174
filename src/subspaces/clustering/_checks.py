"""Input validation shared by the estimators of :mod:`subspaces.clustering`.

Every estimator validates its data and configuration through these helpers, so errors are uniform:
a ``ValueError`` or ``TypeError`` that names the argument, its value and what was expected.

Example:
    >>> import torch
    >>> X = check_data(torch.zeros(5, 3), n_clusters=2)
    >>> X.shape, X.dtype
    (torch.Size([5, 3]), torch.float32)
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .._checks import check_positive_int

__all__ = [
    "as_generator",
    "check_data",
    "check_fitted",
    "check_labels",
    "check_n_clusters",
    "check_subspace_dim",
    "seed_of",
]

_KEEP_DTYPES = (torch.float32, torch.float64)


def check_n_clusters(n_clusters: Any, name: str = "n_clusters") -> int:
    """Return ``n_clusters`` if it is an int ``>= 1``.

    Args:
        n_clusters: the value to check.
        name: the argument's name in the error message.

    Returns:
        The number of clusters.

    Raises:
        TypeError: if it is not an int.
        ValueError: if it is ``<= 0``.

    Example:
        >>> check_n_clusters(3)
        3
    """
    if isinstance(n_clusters, (np.integer,)):
        n_clusters = int(n_clusters)
    return check_positive_int(n_clusters, name)


def check_data(
    X: Any,
    name: str = "X",
    *,
    n_clusters: int | None = None,
    dtype: torch.dtype | None = None,
    min_features: int = 1,
) -> Tensor:
    """Validate a data matrix ``(n_samples, n_features)`` and return it as a floating tensor.

    Accepts a tensor or anything ``numpy.asarray`` takes. float32 and float64 are kept (unless
    ``dtype`` is given); other dtypes (integers, float16) become float64. The caller's tensor is
    never modified.

    Args:
        X: the data, one sample per row.
        name: the argument's name in error messages.
        n_clusters: if given, the data must have at least this many samples.
        dtype: convert to this floating dtype.
        min_features: the least number of columns.

    Returns:
        The data as a 2-D floating tensor.

    Raises:
        TypeError: if ``X`` is not numeric.
        ValueError: if ``X`` is not 2-D, is empty, holds NaN/Inf (the first bad rows are named),
            or has fewer samples than ``n_clusters``.

    Example:
        >>> import torch
        >>> check_data(torch.tensor([[0.0, float("nan")], [1.0, 2.0]]))
        Traceback (most recent call last):
            ...
        ValueError: X has 1 row(s) with NaN or Inf values (rows [0]); remove or impute them
    """
    if isinstance(X, Tensor):
        T = X.detach()
        if T.device.type == "meta":
            raise ValueError(f"{name} is on the meta device (a shape without values)")
    else:
        try:
            arr = np.asarray(X)
        except Exception as err:
            raise TypeError(f"{name} must be a tensor or an array, got {type(X).__name__}") from err
        if arr.dtype.kind not in "biuf":
            raise TypeError(f"{name} must hold real numbers, got numpy dtype {arr.dtype}")
        T = torch.from_numpy(np.ascontiguousarray(arr))
    if T.is_complex() or T.dtype == torch.bool:
        raise TypeError(f"{name} must hold real numbers, got {T.dtype}")
    target = dtype if dtype is not None else (T.dtype if T.dtype in _KEEP_DTYPES else torch.float64)
    T = T.to(target)
    if T.ndim != 2:
        raise ValueError(f"{name} must be 2-D (n_samples, n_features), got shape {tuple(T.shape)}")
    n, p = T.shape
    if n == 0 or p < min_features:
        raise ValueError(
            f"{name} must have at least 1 sample and {min_features} feature(s), got shape "
            f"{tuple(T.shape)}"
        )
    bad = ~torch.isfinite(T).all(dim=1)
    if bool(bad.any()):
        rows = torch.nonzero(bad).flatten()
        shown = rows[:5].tolist()
        more = "" if rows.numel() <= 5 else ", ..."
        raise ValueError(
            f"{name} has {rows.numel()} row(s) with NaN or Inf values (rows "
            f"{str(shown)[:-1]}{more}]); remove or impute them"
        )
    if n_clusters is not None and n < n_clusters:
        raise ValueError(
            f"{name} has {n} sample(s), fewer than n_clusters={n_clusters}: need at least one "
            "sample per cluster"
        )
    return T


def check_subspace_dim(dim: Any, ambient_dim: int, name: str = "subspace_dim") -> int:
    """Return ``dim`` if it is an int with ``1 <= dim <= ambient_dim``.

    Args:
        dim: the subspace dimension.
        ambient_dim: the dimension of the space the subspace lives in.
        name: the argument's name in error messages.

    Returns:
        The dimension.

    Raises:
        TypeError: if it is not an int.
        ValueError: if it is < 1 or above ``ambient_dim``.

    Example:
        >>> check_subspace_dim(4, 3)
        Traceback (most recent call last):
            ...
        ValueError: subspace_dim=4 is above the ambient dimension 3 of the data
    """
    if isinstance(dim, np.integer):
        dim = int(dim)
    dim = check_positive_int(dim, name)
    if dim > ambient_dim:
        raise ValueError(f"{name}={dim} is above the ambient dimension {ambient_dim} of the data")
    return dim


def check_labels(labels: Any, n_samples: int, name: str = "labels") -> Tensor:
    """Validate integer labels of ``n_samples`` samples (any integer values, e.g. -1 allowed).

    Args:
        labels: 1-D integer labels (tensor or array-like).
        n_samples: the expected length.
        name: the argument's name in error messages.

    Returns:
        The labels as a ``torch.long`` tensor.

    Raises:
        TypeError: if they are not integers.
        ValueError: if they are not 1-D of length ``n_samples``.

    Example:
        >>> check_labels([0, 1, 1], 3).tolist()
        [0, 1, 1]
    """
    if isinstance(labels, Tensor):
        T = labels.detach().cpu()
    else:
        T = torch.from_numpy(np.ascontiguousarray(np.asarray(labels)))
    if T.numel() == 0 and T.is_floating_point():
        T = T.long()  # numpy makes an empty list float64
    if T.is_floating_point() or T.is_complex() or T.dtype == torch.bool:
        if T.is_floating_point() and T.numel() and bool((T.round() == T).all()):
            T = T.long()
        else:
            raise TypeError(f"{name} must be integer labels, got {T.dtype}")
    if T.ndim != 1 or T.shape[0] != n_samples:
        raise ValueError(f"{name} must be 1-D with {n_samples} entries, got shape {tuple(T.shape)}")
    return T.long()


def as_generator(random_state: Any, name: str = "random_state") -> torch.Generator:
    """A CPU ``torch.Generator`` from ``None`` (fresh entropy), an int seed or a generator.

    Args:
        random_state: ``None``, an int ``>= 0`` or a ``torch.Generator`` (used as is).
        name: the argument's name in error messages.

    Returns:
        The generator.

    Raises:
        TypeError: for any other type.
        ValueError: for a negative seed.

    Example:
        >>> g1, g2 = as_generator(3), as_generator(3)
        >>> bool(torch.rand(1, generator=g1) == torch.rand(1, generator=g2))
        True
    """
    if isinstance(random_state, torch.Generator):
        return random_state
    g = torch.Generator()
    if random_state is None:
        g.seed()
        return g
    if isinstance(random_state, np.integer):
        random_state = int(random_state)
    if isinstance(random_state, bool) or not isinstance(random_state, int):
        raise TypeError(
            f"{name} must be None, an int or a torch.Generator, got "
            f"{type(random_state).__name__} ({random_state!r})"
        )
    if random_state < 0:
        raise ValueError(f"{name} must be >= 0, got {random_state}")
    return g.manual_seed(random_state)


def seed_of(generator: torch.Generator) -> int:
    """Draw a 31-bit int seed from ``generator`` (for libraries that take an int, e.g. sklearn).

    Args:
        generator: the generator to draw from.

    Returns:
        An int in ``[0, 2**31)``.

    Example:
        >>> seed_of(torch.Generator().manual_seed(0)) == seed_of(torch.Generator().manual_seed(0))
        True
    """
    return int(torch.randint(0, 2**31 - 1, (1,), generator=generator))


def check_fitted(estimator: Any, attribute: str = "labels_") -> None:
    """Raise if ``estimator`` has not been fitted (it lacks ``attribute``).

    Args:
        estimator: the estimator.
        attribute: a learned attribute that ``fit`` sets.

    Raises:
        RuntimeError: if the estimator is not fitted.

    Example:
        >>> class E:
        ...     pass
        >>> check_fitted(E())
        Traceback (most recent call last):
            ...
        RuntimeError: this E is not fitted yet: call fit(X) first
    """
    if not hasattr(estimator, attribute):
        raise RuntimeError(f"this {type(estimator).__name__} is not fitted yet: call fit(X) first")
