"""The main job, ``subspaces analyze``: train a model while tracking its curvature, then report.

With no arguments it trains an MLP on the bundled digits data with SGD, measures the Hessian
every ``every`` steps on the full training set (top-``k`` eigenpairs warm-started from the previous
checkpoint, trace with a standard error, gradient fraction in the top eigenspace, eigenspace
overlap, mini-batch vs full-data sharpness), computes the final spectrum (top eigenvalues,
outliers vs bulk, SLQ density) and writes ``report.html``, ``summary.json`` and the figures.

A checkpoint (model, optimizer, tracker, history, random states) is written atomically after
every epoch, with a format version, a SHA-256 checksum and the hash of the run's settings
(:func:`subspaces._io.write_checkpoint`); ``resume=True`` continues an interrupted run from it,
keeping the finished work, and refuses a checkpoint that is damaged, truncated, of another
format or from another run. A folder that holds another run (a checkpoint, ``summary.json`` or
``report.html``) is never overwritten silently: ``resume=True`` continues it, ``force=True``
starts over in it, anything else is an error.

Two entry points: :func:`run_analyze` (the command line's run: settings in an
:class:`AnalyzeConfig`, our training loop on tensors) and :func:`analyze` (your own model, loader
and loss; also reachable as ``subspaces.analyze(...)``: this package is callable).

The package has one concept per module: ``_config`` (settings, device), ``_user_code`` (the
``--model``/``--data`` factories), ``_batches`` (the curvature data: a seeded subset in
mini-batches), ``_losses``, ``_outdir`` (safe output folders), ``_checkpoint`` (checkpoints and
resuming), ``_costs`` (predicted phase costs), ``_final`` (the final spectrum), ``_summary``
(the report's sections), ``_loop`` (evaluation, optimizer and run state of our loop), ``_ddp``
(runs under ``torchrun``), ``_train`` (:func:`run_analyze`) and ``_api`` (:func:`analyze`).

Under ``torchrun`` (``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` set),
:func:`run_analyze` and so ``subspaces analyze`` run data-parallel: each rank trains on its slice
of every global batch (the ranks' gradients summed by one all-reduce) and measures curvature on
its shard of the curvature samples, with the numbers of one process with the same global batch;
only rank 0 writes (see :mod:`subspaces.analyze._ddp`).
"""

from __future__ import annotations

import sys
import types
from typing import Any

from ._api import analyze
from ._batches import MappedBatches, curvature_batches, subset_indices
from ._checkpoint import CHECKPOINT, CHECKPOINT_KIND, CHECKPOINT_VERSION
from ._config import DEVICE_TYPES, DTYPES, LOSSES, OPTIMIZERS, AnalyzeConfig
from ._losses import causal_lm_loss
from ._outdir import RUN_FILES
from ._summary import BATCHNORM_NOTE
from ._train import run_analyze
from ._user_code import default_mlp

__all__ = [
    "BATCHNORM_NOTE",
    "CHECKPOINT",
    "CHECKPOINT_KIND",
    "CHECKPOINT_VERSION",
    "DEVICE_TYPES",
    "DTYPES",
    "LOSSES",
    "OPTIMIZERS",
    "RUN_FILES",
    "AnalyzeConfig",
    "MappedBatches",
    "analyze",
    "causal_lm_loss",
    "curvature_batches",
    "default_mlp",
    "run_analyze",
    "subset_indices",
]


class _CallableModule(types.ModuleType):
    """This package, callable: ``subspaces.analyze(model, ...)`` is :func:`analyze`.

    The package exports the entry point under its own name; making the module callable keeps
    ``subspaces.analyze.AnalyzeConfig``, ``import subspaces.analyze as m`` and
    ``from subspaces.analyze import analyze`` all working.
    """

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        return analyze(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
