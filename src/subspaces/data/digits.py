"""The 8x8 handwritten digits bundled with scikit-learn (1797 images, 10 classes)."""

from __future__ import annotations

import torch
from torch import Tensor


def load_digits_split(
    *,
    test_fraction: float = 0.2,
    classes: list[int] | None = None,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Digits as standardized tensors, split into train and test (stratification-free shuffle).

    Pixels are standardized with the training split's mean and standard deviation (constant
    pixels are left at zero).

    Args:
        test_fraction: share of the samples held out, in ``[0, 1)``.
        classes: keep only these labels (relabelled ``0..len(classes)-1``); all ten by default.
        seed: seed of the shuffle.
        dtype: floating dtype of the inputs.

    Returns:
        ``(X_train, y_train, X_test, y_test)`` with ``X`` of shape ``(n, 64)`` and integer labels.

    Raises:
        ValueError: for a bad ``test_fraction`` or unknown classes.
        ImportError: if scikit-learn is missing.

    Example:
        >>> Xtr, ytr, Xte, yte = load_digits_split()
        >>> Xtr.shape[1], len(ytr) + len(yte), int(ytr.max()) + 1
        (64, 1797, 10)
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:  # pragma: no cover
        raise ImportError(
            "the digits data needs scikit-learn: pip install 'subspaces[report]'"
        ) from err
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    bunch = load_digits()
    X = torch.as_tensor(bunch.data, dtype=torch.float64)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    if classes is not None:
        unknown = sorted(set(classes) - set(range(10)))
        if unknown or not classes:
            raise ValueError(f"classes must be a non-empty subset of 0..9, got {classes}")
        keep = torch.isin(y, torch.tensor(classes))
        X, y = X[keep], y[keep]
        remap = torch.full((10,), -1, dtype=torch.long)
        remap[torch.tensor(classes)] = torch.arange(len(classes))
        y = remap[y]
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    X, y = X[perm], y[perm]
    n_test = round(test_fraction * len(y))
    Xtr, ytr, Xte, yte = X[n_test:], y[n_test:], X[:n_test], y[:n_test]
    mean, std = Xtr.mean(0), Xtr.std(0)
    std = torch.where(std > 0, std, torch.ones_like(std))
    return ((Xtr - mean) / std).to(dtype), ytr, ((Xte - mean) / std).to(dtype), yte
