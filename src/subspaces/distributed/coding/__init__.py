"""Sequential gradient coding for stragglers (P26).

Krishnan, Ebrahimi & Khisti, "Sequential Gradient Coding For Straggler Mitigation" (ICLR 2023,
arXiv:2211.13802): a sequence of ``J`` gradient jobs, job ``t`` started in round ``t`` and due
by round ``t + T``. The gradient code of Tandon et al. (:func:`gradient_code`,
:class:`GradientCodingScheme`, ``T = 0``) codes across workers only; selective repetition
(:class:`SelectiveRepeatSGC`) and the multiplexed scheme (:class:`MultiplexedSGC`) code across
rounds too. :func:`simulate` runs a scheme round by round against a straggler model
(:class:`IIDStragglers`, the bursty :class:`GilbertElliott`, or :class:`TraceStragglers` replaying
recorded times) and reports the normalized load per worker, the completion time of the ``J`` jobs
and the rounds in which the master had to wait for every worker. :mod:`.runner` runs a scheme
on real gloo processes (``run_local`` spawns them; ``run_coded`` under ``torchrun``), computing
coded partial gradients and decoding the exact gradient at the master.
"""

from .gradient_code import decoding_vector, gradient_code
from .schemes import GradientCodingScheme, MultiplexedSGC, Scheme, SelectiveRepeatSGC
from .simulate import SimulationResult, mu_rule, simulate
from .stragglers import BurstyWindow, GilbertElliott, IIDStragglers, StragglerModel, TraceStragglers

__all__ = [
    "BurstyWindow",
    "GilbertElliott",
    "GradientCodingScheme",
    "IIDStragglers",
    "MultiplexedSGC",
    "Scheme",
    "SelectiveRepeatSGC",
    "SimulationResult",
    "StragglerModel",
    "TraceStragglers",
    "decoding_vector",
    "gradient_code",
    "mu_rule",
    "simulate",
]
