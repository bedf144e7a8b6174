"""The ``summary.json`` sections and notes shared by both entry points (the report input)."""

from __future__ import annotations

from typing import Any

from torch import nn

from ..dynamics import CurvatureTracker
from ._final import _Final


def _curvature_section(tracker: CurvatureTracker, batch_size: int | None) -> dict[str, Any]:
    recs = tracker.records
    return {
        "step": [r["step"] for r in recs],
        "eigenvalues": [r["eigenvalues"] for r in recs],
        "residuals": [r["residuals"] for r in recs],
        "trace": [r.get("trace") for r in recs],
        "trace_stderr": [r.get("trace_stderr") for r in recs],
        "grad_fraction": [r["grad_fraction"] for r in recs],
        "overlap_prev": [r["overlap_prev"] for r in recs],
        "batch_lambda_max": [r.get("batch_lambda_max") for r in recs],
        "matvecs": [r["matvecs"] for r in recs],
        "num_samples": recs[0]["num_samples"] if recs else None,
        "batch_size": batch_size,
    }


def _final_sections(
    final: _Final, lr: float | None, batch_size: int | None
) -> dict[str, dict[str, Any]]:
    top, split, tr, dens = final.top, final.split, final.tr, final.dens
    lam = float(top.eigenvalues[0])
    out: dict[str, dict[str, Any]] = {
        "final": {
            "eigenvalues": top.eigenvalues.tolist(),
            "residuals": top.residuals.tolist(),
            "converged": top.converged.tolist(),
            "num_outliers": split.num_outliers if split else 0,
            "bulk_edge": split.bulk_edge if split else None,
            "gap_ratio": split.gap_ratio if split else None,
            "trace": tr.estimate,
            "trace_stderr": tr.stderr,
            "num_samples": top.num_samples,
            "matvecs": top.num_matvecs + tr.num_matvecs + dens.num_matvecs,
            "density": {
                "grid": dens.grid.tolist(),
                "density": dens.density.tolist(),
                "nodes": dens.nodes.tolist(),
                "weights": dens.weights.tolist(),
            },
        }
    }
    if lr is not None:
        out["stability"] = {
            "lr": lr,
            "gd_threshold": 2 / lr,
            "final_lambda_max": lam,
            "final_trace": tr.estimate,
            "eta_lambda_over_2": lr * lam / 2,
            "eta_trace_over_2": lr * tr.estimate / 2,
        }
        if batch_size is not None:
            out["stability"]["sgd_trace_threshold"] = 2 * batch_size / lr
    return out


def _has_stochastic(model: nn.Module) -> bool:
    from ..curvature._model import _STOCHASTIC

    return any(isinstance(m, _STOCHASTIC) for m in model.modules())


def _subset_note(n: int, samples: int | None, seed: int, used: int | None) -> str:
    if samples is None or samples >= n:
        return (
            f"Curvature is measured on the full training set ({used if used else n} samples), "
            "never on one mini-batch; the mini-batch sharpness is shown separately."
        )
    return (
        f"Curvature is measured on a random subset of {samples} of the {n} training samples "
        f"(seed {seed}), the same subset at every checkpoint, never on one mini-batch; each "
        "product is summed over its mini-batches, exactly."
    )


BATCHNORM_NOTE = (
    "BatchNorm and Dropout are evaluated in eval mode for every curvature measurement "
    "(BatchNorm with its running statistics), so the Hessian is that of the deterministic "
    "eval-mode loss; the training modes are restored afterwards."
)


def _loss_name(loss_fn: Any) -> str:
    if isinstance(loss_fn, str):
        return loss_fn
    if isinstance(loss_fn, nn.Module):
        return type(loss_fn).__name__
    return getattr(loss_fn, "__name__", type(loss_fn).__name__)
