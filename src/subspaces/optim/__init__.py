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

from .groups import projected_param_groups
from .layerwise import LayerwiseStepper
from .memory import MemoryReport, memory_report, model_bytes, optimizer_state_bytes, tensor_bytes
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
from .quantization import (
    Int8Linear,
    Int8Weight,
    int8_module_of,
    pack_int4,
    pack_int8,
    quantize_int8,
    quantize_linear_layers,
    stochastic_round,
    unpack_int4,
    unpack_int8,
)
from .subspace_adamw import NonFiniteGradientError, SubspaceAdamW

__all__ = [
    "PROJECTORS",
    "CoordinateProjector",
    "DCTProjector",
    "Int8Linear",
    "Int8Weight",
    "LayerwiseStepper",
    "MemoryReport",
    "NonFiniteGradientError",
    "Projector",
    "RandomProjector",
    "RandomizedSVDProjector",
    "SVDProjector",
    "SubspaceAdamW",
    "dct_basis",
    "dct_rows",
    "get_projector",
    "int8_module_of",
    "memory_report",
    "model_bytes",
    "optimizer_state_bytes",
    "pack_int4",
    "pack_int8",
    "projected_param_groups",
    "quantize_int8",
    "quantize_linear_layers",
    "stochastic_round",
    "tensor_bytes",
    "unpack_int4",
    "unpack_int8",
]
