"""Krylov solvers with learned parts and diffusion inverse problems (P06, P15).

Linear systems on grids (Poisson / variable-coefficient diffusion on masked domains),
preconditioners, the deep conjugate direction method (P15) and the decomposed diffusion sampler
(P06), all on top of :mod:`subspaces.linalg` (``cg`` / ``minres``) and :mod:`subspaces.linops`.
"""

from ._diffusion import Denoiser, SamplerResult
from .dcdm import DirectionNet, TrainResult, dcdm, dcdm_loss, ritz_rhs, train_direction_net
from .dds import data_consistency, dds
from .dps import dps
from .flexible_cg import Preconditioner, flexible_cg
from .grids import GridDiffusion, box_mask, disk_mask, poisson_2d, random_obstacles
from .measurements import ParallelBeamProjection, SubsampledFourier, fourier_mask
from .mixture import GaussianMixturePrior
from .preconditioners import IncompleteCholesky, jacobi
from .priors import ClosedFormDenoiser, LowRankGaussianPrior
from .schedules import alphas_bar, betas, timesteps

__all__: list[str] = [
    "ClosedFormDenoiser",
    "Denoiser",
    "DirectionNet",
    "GaussianMixturePrior",
    "GridDiffusion",
    "IncompleteCholesky",
    "LowRankGaussianPrior",
    "ParallelBeamProjection",
    "Preconditioner",
    "SamplerResult",
    "SubsampledFourier",
    "TrainResult",
    "alphas_bar",
    "betas",
    "box_mask",
    "data_consistency",
    "dcdm",
    "dcdm_loss",
    "dds",
    "disk_mask",
    "dps",
    "flexible_cg",
    "fourier_mask",
    "jacobi",
    "poisson_2d",
    "random_obstacles",
    "ritz_rhs",
    "timesteps",
    "train_direction_net",
]
