r"""P12: intrinsic dimension ``d_int90`` of digits MLPs is nearly constant across widths.

Li, Farkhoor, Liu and Yosinski (ICLR 2018, "Measuring the intrinsic dimension of objective
landscapes", arXiv:1804.08838) train networks only in a random subspace ``theta0 + P z`` and call
``d_int90`` the smallest ``d`` reaching 90 % of the fully trained accuracy. For MNIST MLPs they
measured ``d_int90 ~ 750`` for all widths and depths they tried: adding parameters does not change
the dimension of the solution set's "reach". Digits (8x8, 1438 training images) is a smaller
problem, so its ``d_int90`` is expected to be smaller, but equally width-independent.

Protocol: ReLU MLPs ``64 -> w -> w -> 10`` (float32), widths 32/64/128 (full: also 256), one
initialization seed per width. Baseline: every parameter trained with Adam (lr 1e-3). Subspace
trainings: Adam (lr 3e-2) on ``z`` with a Fastfood projection (``O(D)`` memory), same epochs and
minibatches of 64. Accuracy is measured on the held-out 20 % test split. ``d_int90`` is found by
:func:`subspaces.intrinsic.d_int90_search`: a coarse doubling sweep, then integer bisection
inside the bracket (fast: 2 steps, so ``d_int90`` is resolved to about a quarter of the
bracket; full: 4 steps).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..intrinsic import d_int90_search
from ._common import figure_png, load_digits_tensors, mlp, single_thread
from .registry import ExperimentResult, register

DEPTH = 2
WIDTHS_FAST = (32, 64, 128)
WIDTHS_FULL = (32, 64, 128, 256)
DIMS_FAST = (50, 100, 200, 400, 800, 1600)
DIMS_FULL = (25, 50, 100, 200, 400, 800, 1600, 3200)
EPOCHS_FAST = 10
EPOCHS_FULL = 20
BISECTION_FAST = 2
BISECTION_FULL = 4
LR_SUBSPACE = 3e-2
LR_FULL = 1e-3
BATCH = 64
PROJECTION = "fastfood"
THRESHOLD = 0.9
MAX_RATIO = 2.0  # max/min of d_int90 across widths
MIN_PARAM_GROWTH = 4.0  # parameter count of the widest over the narrowest net


def _plot(runs: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for i, r in enumerate(runs):
        ds = [p["d"] for p in r["curve"]]
        acc = [p["accuracy"] for p in r["curve"]]
        color = f"C{i}"
        ax.semilogx(ds, acc, "o-", color=color, ms=3, label=f"width {r['width']} (D={r['D']})")
        ax.axhline(r["target"], color=color, ls=":", lw=0.8)
        if r["d_int90"] is not None:
            ax.axvline(r["d_int90"], color=color, ls="--", lw=0.8)
    ax.set_xlabel("subspace dimension d")
    ax.set_ylabel("test accuracy")
    ax.set_title("Digits MLPs trained in random subspaces (dotted: 90 % of baseline)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


@register(
    "P12",
    title="Intrinsic dimension is nearly constant across widths",
    paper="Li, Farkhoor, Liu & Yosinski 2018, Measuring the intrinsic dimension of objective "
    "landscapes (ICLR 2018, arXiv:1804.08838)",
    claim=(
        "The intrinsic dimension d_int90 of digits MLPs of several widths is nearly constant "
        "across widths (Li et al. 2018 measured ~750 for MNIST MLPs; digits is smaller)"
    ),
    criterion=(
        "digits MLPs 64-w-w-10 with w in 32/64/128 [+256 full], Fastfood subspace training: "
        "d_int90 (test accuracy >= 0.9 x the fully trained net's) is found for every width and "
        f"max/min of d_int90 across widths <= {MAX_RATIO:g} while the parameter count grows "
        f">= {MIN_PARAM_GROWTH:g}x"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Measure ``d_int90`` of digits MLPs of several widths.

    Args:
        fast: widths 32/64/128, 10 epochs, 2 bisection steps if true; else widths up to 256, 20
            epochs, 4 bisection steps.
        seed: seeds the data split, the initializations, the projections and the minibatches.

    Returns:
        Per width: parameter count, baseline accuracy, ``d_int90``, the accuracy-vs-``d`` curve;
        the verdict and the figure ``accuracy_vs_d``.
    """
    start = time.perf_counter()
    widths = WIDTHS_FAST if fast else WIDTHS_FULL
    dims = DIMS_FAST if fast else DIMS_FULL
    epochs = EPOCHS_FAST if fast else EPOCHS_FULL
    steps = BISECTION_FAST if fast else BISECTION_FULL
    runs: list[dict[str, Any]] = []
    with single_thread():
        Xtr, ytr, Xte, yte = load_digits_tensors(None, dtype=torch.float32, seed=seed)
        for width in widths:
            t0 = time.perf_counter()
            init_seed = seed * 1000 + width

            def make(width: int = width, init_seed: int = init_seed) -> torch.nn.Module:
                return mlp(Xtr.shape[1], width, 10, depth=DEPTH, seed=init_seed)

            D = sum(p.numel() for p in make().parameters())
            res = d_int90_search(
                make,
                (Xtr, ytr),
                [d for d in dims if d <= D],
                eval_data=(Xte, yte),
                threshold=THRESHOLD,
                projection=PROJECTION,
                seed=seed,
                epochs=epochs,
                lr=LR_SUBSPACE,
                baseline_lr=LR_FULL,
                batch_size=BATCH,
                bisection_steps=steps,
            )
            runs.append(
                {
                    "width": width,
                    "D": D,
                    "baseline_accuracy": res.baseline_accuracy,
                    "target": res.target,
                    "d_int90": res.d_int90,
                    "bracket": list(res.bracket),
                    "curve": res.points,
                    "num_trained": res.num_trained,
                    "compression": D / res.d_int90 if res.d_int90 else None,
                    "seconds": time.perf_counter() - t0,
                }
            )
    found = [r["d_int90"] for r in runs if r["d_int90"] is not None]
    all_found = len(found) == len(runs)
    ratio = max(found) / min(found) if found else float("inf")
    growth = runs[-1]["D"] / runs[0]["D"]
    passed = bool(all_found and ratio <= MAX_RATIO and growth >= MIN_PARAM_GROWTH)
    measured: dict[str, Any] = {
        "protocol": {
            "depth": DEPTH,
            "widths": list(widths),
            "dims": list(dims),
            "epochs": epochs,
            "bisection_steps": steps,
            "projection": PROJECTION,
            "optimizer": "adam",
            "lr_subspace": LR_SUBSPACE,
            "lr_full": LR_FULL,
            "batch_size": BATCH,
            "threshold": THRESHOLD,
            "accuracy_on": "test split (20 %)",
        },
        "runs": runs,
        "d_int90_ratio": ratio,
        "param_growth": growth,
        "all_found": all_found,
        "seconds": time.perf_counter() - start,
    }
    per = ", ".join(
        f"w{r['width']} (D={r['D']}, base {r['baseline_accuracy']:.3f}): d_int90={r['d_int90']} "
        f"(bracket {r['bracket'][0]}-{r['bracket'][1]})"
        for r in runs
    )
    summary = (
        f"{per}; max/min d_int90 = {ratio:.2f} (criterion <= {MAX_RATIO:g}) while parameters "
        f"grow {growth:.1f}x (>= {MIN_PARAM_GROWTH:g}x); Li et al.: ~750 on MNIST"
    )
    return ExperimentResult(
        measured=measured, passed=passed, summary=summary, figures={"accuracy_vs_d": _plot(runs)}
    )
