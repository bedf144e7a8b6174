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

from ._batch_tests import (
    GradientStatistics,
    gradient_statistics,
    pool_moments,
    required_batch_size,
    statistics_from_moments,
)
from ._per_sample import per_sample_gradients, per_sample_moments
from .adagrad_norm import AdaGradNorm, adagrad_norm
from .adaptive_batch import (
    AdaptiveBatchSampler,
    BatchSizeController,
    BatchSizeRecord,
    all_reduce_moments,
)
from .groups import projected_param_groups
from .layerwise import LayerwiseStepper
from .memory import MemoryReport, memory_report, model_bytes, optimizer_state_bytes, tensor_bytes
from .newton import NewtonGR, NewtonResult, newton_gr
from .projectors import (
    PROJECTORS,
    CoordinateProjector,
    DCTProjector,
    NystromProjector,
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
from .surrogate import SurrogateStep, TargetSurrogate

__all__ = [
    "PROJECTORS",
    "AdaGradNorm",
    "AdaptiveBatchSampler",
    "BatchSizeController",
    "BatchSizeRecord",
    "CoordinateProjector",
    "DCTProjector",
    "GradientStatistics",
    "Int8Linear",
    "Int8Weight",
    "LayerwiseStepper",
    "MemoryReport",
    "NewtonGR",
    "NewtonResult",
    "NonFiniteGradientError",
    "NystromProjector",
    "Projector",
    "RandomProjector",
    "RandomizedSVDProjector",
    "SVDProjector",
    "SubspaceAdamW",
    "SurrogateStep",
    "TargetSurrogate",
    "adagrad_norm",
    "all_reduce_moments",
    "dct_basis",
    "dct_rows",
    "get_projector",
    "gradient_statistics",
    "int8_module_of",
    "memory_report",
    "model_bytes",
    "newton_gr",
    "optimizer_state_bytes",
    "pack_int4",
    "pack_int8",
    "per_sample_gradients",
    "per_sample_moments",
    "pool_moments",
    "projected_param_groups",
    "quantize_int8",
    "quantize_linear_layers",
    "required_batch_size",
    "statistics_from_moments",
    "stochastic_round",
    "tensor_bytes",
    "unpack_int4",
    "unpack_int8",
]
