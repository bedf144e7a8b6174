"""Activation steering: sites, activation collection, directions, steering hooks, export.

Read activations at named sites of a causal LM (:func:`find_sites`, :func:`collect_activations`),
fit steering directions and subspaces with scikit-learn habits (:class:`MeanDifference`,
:class:`PCADifference`, :class:`ClusteredDirections`, ...), and steer inside a context manager
that removes exactly the hooks it added (:func:`steer`). On top: per-layer probes, ACT and G-ACT
(P01), a neuron-attribution baseline, subspace rerouting (P02) and steering evaluation. See
``docs/steering.md``.
"""

from .act import ACT, GACT
from .attribution import NeuronAttributionSteering, mlp_output_projections
from .collect import collect_activations, pad_prompts
from .directions import (
    ClusteredDirections,
    LDADirection,
    LogisticDirection,
    MeanDifference,
    PCACentered,
    PCADifference,
)
from .evaluate import probe_accuracy, steering_report, strength_sweep, target_token_mass
from .export import load_vectors, save_vectors
from .probes import LinearProbe, fit_layer_probes
from .reroute import OutputTokenSearch, RerouteTarget, SearchResult, SubspaceRerouting
from .sites import SITE_KINDS, Site, find_sites, hidden_size, num_layers, resolve_site
from .steer import MODES, POSITIONS, Intervention, SteeringHandle, apply_operator, steer

__all__ = [
    "ACT",
    "GACT",
    "MODES",
    "POSITIONS",
    "SITE_KINDS",
    "ClusteredDirections",
    "Intervention",
    "LDADirection",
    "LinearProbe",
    "LogisticDirection",
    "MeanDifference",
    "NeuronAttributionSteering",
    "OutputTokenSearch",
    "PCACentered",
    "PCADifference",
    "RerouteTarget",
    "SearchResult",
    "Site",
    "SteeringHandle",
    "SubspaceRerouting",
    "apply_operator",
    "collect_activations",
    "find_sites",
    "fit_layer_probes",
    "hidden_size",
    "load_vectors",
    "mlp_output_projections",
    "num_layers",
    "pad_prompts",
    "probe_accuracy",
    "resolve_site",
    "save_vectors",
    "steer",
    "steering_report",
    "strength_sweep",
    "target_token_mass",
]
