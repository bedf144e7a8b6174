"""Low-rank and quantized optimizers (GaLore family, P11 DCT projector, Q-GaLore P18).

Example:
    >>> import torch
    >>> from subspaces.optim import SubspaceAdamW
    >>> W = torch.nn.Parameter(torch.randn(32, 16))
    >>> opt = SubspaceAdamW([{"params": [W], "rank": 4, "projector": "rsvd"}], lr=1e-2)
    >>> (W ** 2).sum().backward(); opt.step()
    >>> opt.state[W]["exp_avg"].shape
    torch.Size([32, 4])
"""

from .layerwise import LayerwiseStepper
from .projectors import (
    PROJECTORS,
    CoordinateProjector,
    DCTProjector,
    Projector,
    RandomizedSVDProjector,
    RandomProjector,
    SVDProjector,
    dct_basis,
    dct_rows,
    get_projector,
)
from .subspace_adamw import NonFiniteGradientError, SubspaceAdamW

__all__ = [
    "PROJECTORS",
    "CoordinateProjector",
    "DCTProjector",
    "LayerwiseStepper",
    "NonFiniteGradientError",
    "Projector",
    "RandomProjector",
    "RandomizedSVDProjector",
    "SVDProjector",
    "SubspaceAdamW",
    "dct_basis",
    "dct_rows",
    "get_projector",
]
