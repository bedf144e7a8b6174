"""Random test matrices for randomized algorithms (one place, seeded through generators)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

Distribution = Literal["gaussian", "rademacher", "sphere"]
DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "rademacher", "sphere")


def random_matrix(
    n: int,
    b: int,
    *,
    dtype: torch.dtype,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
    distribution: Distribution = "gaussian",
) -> Tensor:
    """Draw an ``(n, b)`` random matrix.

    Samples are drawn on the generator's device (CPU when none is given) and then moved, so a
    CPU generator gives the same numbers on every device.

    Args:
        n: rows.
        b: columns.
        dtype: floating dtype of the result.
        device: device of the result.
        generator: source of randomness.
        distribution: ``gaussian`` (N(0, 1) entries), ``rademacher`` (+-1 entries) or ``sphere``
            (Gaussian columns rescaled to norm ``sqrt(n)``).

    Returns:
        The random matrix.

    Raises:
        ValueError: for an unknown distribution.
    """
    gen_device = generator.device if generator is not None else torch.device("cpu")
    if distribution == "rademacher":
        X = torch.randint(0, 2, (n, b), generator=generator, device=gen_device).to(dtype) * 2 - 1
    elif distribution in ("gaussian", "sphere"):
        X = torch.randn(n, b, generator=generator, device=gen_device, dtype=torch.float64).to(dtype)
        if distribution == "sphere":
            X = X * (n**0.5 / X.norm(dim=0, keepdim=True).clamp_min(1e-30))
    else:
        raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")
    return X.to(device)
