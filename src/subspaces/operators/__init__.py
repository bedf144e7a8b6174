"""Neural operators: spectral convolutions, the FNO, PDE data generators, losses and probes.

Layers are discretisations of operators between function spaces (Berner, Liu-Schiaffini,
Kossaifi, Duruisseaux, Bonev, Azizzadenesheli & Anandkumar, arXiv:2506.10973), so a model trained
on one grid evaluates on another without retraining (the FNO of Li et al., arXiv:2010.08895).
"""

from .data import burgers, burgers_solve, darcy_coefficients, darcy_flow, darcy_solve
from .fno import FNO, ChannelMLP, grid_embedding
from .interop import load_neuralop_state_dict
from .losses import H1Loss, LpLoss, central_gradient
from .probe import SpectralProbe, effective_rank, probe_model, probe_spectral_conv
from .spectral_conv import SpectralConv, kept_frequencies

__all__ = [
    "FNO",
    "ChannelMLP",
    "H1Loss",
    "LpLoss",
    "SpectralConv",
    "SpectralProbe",
    "burgers",
    "burgers_solve",
    "central_gradient",
    "darcy_coefficients",
    "darcy_flow",
    "darcy_solve",
    "effective_rank",
    "grid_embedding",
    "kept_frequencies",
    "load_neuralop_state_dict",
    "probe_model",
    "probe_spectral_conv",
]
