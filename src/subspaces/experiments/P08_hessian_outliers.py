r"""P08: C-1 Hessian outliers above a bulk (Sagun et al. 2017; Papyan 2019, 2020).

Sagun, Evci, Güney, Dauphin and Bottou (2017) found the Hessian spectrum of a trained classifier to
be a bulk near zero plus a few outliers, and tied their number to the number of classes; Papyan
(2019, 2020) explained them by class-mean structure of the logit Jacobians. For softmax
cross-entropy the output Hessian ``diag(p) - p p^T`` has rank ``C - 1``, and that is the number of
outliers seen. Adding parameters rescales the bulk; changing the data moves the outliers.

The run trains ReLU MLPs (two hidden layers, float64, plain SGD, lr 0.1, batches of 64, 10
epochs) and takes the top ``C + 8`` eigenvalues of the full-data Hessian with certified Lanczos:

(a)/(b) all ten digit classes at several widths: ``C - 1 = 9`` outliers at every width, the bulk
    edge (the ``C``-th eigenvalue) shrinks as the width grows;
(c) digits restricted to 3 and 5 classes: 2 and 4 outliers; and a ten-class Gaussian mixture at
    two separations of the class means: 9 outliers each, at magnitudes that move with the
    separation.

Two choices of the protocol matter on a data set this small (about 144 training images a class),
and both are reported as controls in the full run. The inputs are PCA-whitened (standardized
principal components): with per-pixel standardization the input covariance has eigenvalues
7.3, 5.8, 5.1, 4.0, ... and the first layer's Hessian block, roughly ``E[x x^T]`` times an
output-side factor, splits each class direction over several input directions, filling the gap
(measured: ``lambda_9 / lambda_10 ~ 1.2-1.4``). And the networks are trained for a fixed short
budget (train accuracy 95-99 %, rising with width) rather than to a vanishing loss: an outlier's
size scales with the residual confusion ``p (1 - p)`` of its classes, so once classes are fitted
with full confidence their outliers sink toward the bulk (measured after 60 epochs at 100 % train
accuracy: ``lambda_9 / lambda_10 ~ 1.0-1.1``, and 8 or fewer outliers by the largest gap).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor

from ._common import accuracy, figure_png, load_digits_tensors, mlp, single_thread, train
from .registry import ExperimentResult, register

DEPTH = 2
EPOCHS = 10
LR = 0.1
BATCH = 64
EXTRA_EIGENVALUES = 8  # top C + 8 eigenvalues: the bulk edge and a few below it
EIG_RTOL = 1e-3
WIDTHS_FAST = (32, 64, 128)
WIDTHS_FULL = (32, 64, 128, 256)
SUBSET_WIDTH = 64
SUBSETS = ((0, 1, 2), (0, 1, 2, 3, 4))
GMM_CLASSES = 10
GMM_DIM = 32
GMM_SAMPLES = 2000
GMM_SEPARATIONS = (4.0, 6.0)  # distance between class means, in units of the noise std

MIN_GAP = 1.5  # lambda_{C-1} / lambda_C, and the threshold passed to bulk_outliers
MIN_OUTLIER_SHIFT = 1.25  # factor by which the mean outlier moves between the two separations


def _seeded(seed: int, *keys: int) -> int:
    value = seed
    for k in keys:
        value = value * 1_000_003 + k
    return value % (2**62)


def gaussian_mixture(
    num_classes: int, num_samples: int, dim: int, separation: float, seed: int
) -> tuple[Tensor, Tensor]:
    """Balanced Gaussian classes with orthogonal means at pairwise distance ``separation``.

    Args:
        num_classes: ``C`` (at most ``dim``).
        num_samples: total samples (class ``i % C`` for sample ``i``).
        dim: input dimension.
        separation: distance between any two class means; the noise is ``N(0, I)``.
        seed: seeds the means and the noise.

    Returns:
        ``(X, y)``: float64 inputs ``(num_samples, dim)`` and long labels.

    Example:
        >>> X, y = gaussian_mixture(3, 300, 8, 4.0, seed=0)
        >>> X.shape, int(y.max())
        (torch.Size([300, 8]), 2)
    """
    gen = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(dim, num_classes, generator=gen, dtype=torch.float64))[0]
    means = basis.T * (separation / 2**0.5)
    y = torch.arange(num_samples) % num_classes
    X = means[y] + torch.randn(num_samples, dim, generator=gen, dtype=torch.float64)
    return X, y


def hessian_outliers(
    model: torch.nn.Module,
    X: Tensor,
    y: Tensor,
    num_classes: int,
    *,
    seed: int = 0,
    extra: int = EXTRA_EIGENVALUES,
    rtol: float = EIG_RTOL,
    min_gap: float = MIN_GAP,
) -> dict[str, Any]:
    """Top ``C + extra`` eigenvalues of the full-data cross-entropy Hessian and their split.

    Args:
        model: a classifier in eval mode.
        X: inputs (all of them form the one batch of the Hessian).
        y: labels in ``0 .. C-1``.
        num_classes: ``C``.
        seed: seeds the Lanczos start block.
        extra: eigenvalues computed beyond ``C``.
        rtol: relative residual tolerance of Lanczos.
        min_gap: the smallest ratio :func:`~subspaces.curvature.bulk_outliers` counts as a gap.

    Returns:
        ``eigenvalues`` (descending), ``num_outliers`` and ``split_bulk_edge`` from
        :func:`~subspaces.curvature.bulk_outliers`, ``gap_after_c_minus_1``
        (``lambda_{C-1} / lambda_C``), ``largest_gap_index`` (1-based position of the largest
        ratio ``lambda_j / lambda_{j+1}``), ``bulk_edge`` (``lambda_C``), outlier statistics,
        ``num_params``, ``num_matvecs`` and ``all_converged``.
    """
    from ..curvature import HessianOperator, bulk_outliers, top_eigen

    C = num_classes
    H = HessianOperator(model, "cross_entropy", (X, y), dtype=torch.float64)
    result = top_eigen(H, k=C + extra, rtol=rtol, generator=torch.Generator().manual_seed(seed))
    lam = result.eigenvalues.sort(descending=True).values
    split = bulk_outliers(lam, min_ratio=min_gap)
    ratios = lam[:-1] / lam[1:]
    outliers = lam[: C - 1]
    return {
        "num_params": H.shape[0],
        "eigenvalues": lam.tolist(),
        "num_outliers": split.num_outliers,
        "split_gap_ratio": split.gap_ratio,
        "split_bulk_edge": split.bulk_edge,
        "gap_after_c_minus_1": float(ratios[C - 2]),
        "largest_gap_index": int(torch.argmax(ratios)) + 1,
        "bulk_edge": float(lam[C - 1]),
        "outlier_mean": float(outliers.mean()),
        "outlier_min": float(outliers.min()),
        "outlier_max": float(outliers.max()),
        "num_matvecs": result.num_matvecs,
        "all_converged": bool(result.converged.all()),
    }


def train_and_measure(
    X: Tensor,
    y: Tensor,
    num_classes: int,
    width: int,
    seed: int,
    *,
    epochs: int = EPOCHS,
) -> tuple[dict[str, Any], torch.nn.Module]:
    """Train a ReLU MLP with the protocol of this module and measure its Hessian outliers.

    Args:
        X: float64 training inputs.
        y: labels.
        num_classes: ``C``.
        width: hidden units per layer.
        seed: seeds the initialization, the shuffling and Lanczos.
        epochs: SGD epochs (lr 0.1, batches of 64).

    Returns:
        The measurement of :func:`hessian_outliers` plus ``width``, ``classes``, ``epochs``,
        ``train_accuracy``, ``train_loss`` and ``seconds``; and the trained model.
    """
    start = time.perf_counter()
    model = mlp(X.shape[1], width, num_classes, depth=DEPTH, seed=_seeded(seed, 1)).double()
    history = train(
        model, X, y, optimizer="sgd", lr=LR, epochs=epochs, batch_size=BATCH, seed=_seeded(seed, 2)
    )
    model.eval()
    out = hessian_outliers(model, X, y, num_classes, seed=_seeded(seed, 3))
    out = {
        "classes": num_classes,
        "width": width,
        "epochs": epochs,
        "train_accuracy": accuracy(model, X, y),
        "train_loss": history["final_loss"],
        **out,
        "seconds": time.perf_counter() - start,
    }
    return out, model


def _ok(m: dict[str, Any]) -> bool:
    C = m["classes"]
    return bool(m["num_outliers"] == C - 1 and m["gap_after_c_minus_1"] >= MIN_GAP)


def _plot_spectra(settings: list[tuple[str, dict[str, Any]]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(settings)
    ncols = min(4, n)
    nrows = -(-n // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(3.2 * ncols, 2.7 * nrows), squeeze=False)
    for ax, (label, m) in zip(axes.flat, settings, strict=False):
        lam = torch.tensor(m["eigenvalues"])
        idx = torch.arange(1, lam.numel() + 1)
        C = m["classes"]
        colors = ["C3" if i < C - 1 else "C0" for i in range(lam.numel())]
        ax.vlines(idx, 0, lam, colors=colors, lw=1.5)
        ax.scatter(idx, lam, c=colors, s=14, zorder=3)
        ax.axhline(
            m["bulk_edge"], color="k", ls="--", lw=0.8, label=f"bulk edge {m['bulk_edge']:.3g}"
        )
        ax.set_title(
            f"{label}\n{m['num_outliers']} outliers (C-1={C - 1}), "
            f"gap {m['gap_after_c_minus_1']:.2f}",
            fontsize=8,
        )
        ax.set_xlabel("index", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=6, loc="upper right")
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    axes[0][0].set_ylabel("Hessian eigenvalue", fontsize=8)
    fig.suptitle("Top Hessian eigenvalues: C-1 outliers (red) above the bulk", fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def _plot_density(dens: Any, m: dict[str, Any], label: str) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    grid, values = dens.grid.numpy(), dens.density.numpy()
    ax.semilogy(grid, values.clip(min=1e-12), color="C0", lw=1.2, label="SLQ density")
    C = m["classes"]
    for i, lam in enumerate(m["eigenvalues"][: C - 1]):
        ax.axvline(
            lam, color="C3", lw=0.8, alpha=0.8, label="outliers (Lanczos)" if i == 0 else None
        )
    ax.axvline(m["bulk_edge"], color="k", ls="--", lw=0.8, label="bulk edge")
    ax.set_ylim(bottom=max(values.max() * 1e-7, 1e-12))
    ax.set_xlabel("eigenvalue")
    ax.set_ylabel("density")
    ax.set_title(f"Hessian spectral density, {label}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return figure_png(fig)


@register(
    "P08",
    title="Hessian outliers: C-1 above a bulk",
    paper="Sagun, Evci, Güney, Dauphin & Bottou 2017, Empirical analysis of the Hessian of "
    "over-parametrized neural networks (arXiv:1706.04454); Papyan 2019/2020",
    claim=(
        "The Hessian of a trained softmax cross-entropy classifier with C classes has C-1 "
        "outliers above a bulk near zero; widening the network shrinks the bulk edge while the "
        "C-1 outliers remain, and changing the data (number of classes, separability) moves the "
        "outliers"
    ),
    criterion=(
        "in every setting (digits, 10 classes, widths 32/64/128 [+256 full]; digits with 3 and 5 "
        "classes; 10-class Gaussian mixture at separations 4 and 6) bulk_outliers(min_ratio=1.5) "
        "counts exactly C-1 outliers and lambda_{C-1}/lambda_C >= 1.5; the bulk edge lambda_C "
        "at the widest net < at the narrowest; the mean outlier differs by a factor >= 1.25 "
        "between the two separations"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train the networks, count their Hessian outliers and draw the spectra.

    Args:
        fast: widths 32/64/128 and a 4-probe density if true; else widths up to 256, two more
            seeds at width 64, a 10-probe density and two controls (per-pixel standardized
            inputs; training to 100 % accuracy), reported but not part of the verdict.
        seed: seeds the data split, the initializations, the shuffling and the probes.

    Returns:
        Per setting: eigenvalues, outlier count, gap, bulk edge, accuracy; the verdict and two
        figures (``top_eigenvalues``, ``density``).
    """
    from ..curvature import HessianOperator, density

    start = time.perf_counter()
    widths = WIDTHS_FAST if fast else WIDTHS_FULL
    measured: dict[str, Any] = {
        "protocol": {
            "depth": DEPTH,
            "epochs": EPOCHS,
            "lr": LR,
            "batch_size": BATCH,
            "optimizer": "sgd",
            "inputs": "digits PCA-whitened (standardized principal components)",
            "eigenvalues": f"top C+{EXTRA_EIGENVALUES}, Lanczos rtol {EIG_RTOL}",
            "min_gap": MIN_GAP,
        }
    }
    panels: list[tuple[str, dict[str, Any]]] = []
    with single_thread():
        Xtr, ytr, _, _ = load_digits_tensors(None, seed=seed, whiten=True)
        width_runs: list[dict[str, Any]] = []
        density_model: torch.nn.Module | None = None
        density_m: dict[str, Any] = {}
        for width in widths:
            m, model = train_and_measure(Xtr, ytr, 10, width, seed)
            width_runs.append(m)
            panels.append((f"digits C=10, width {width}", m))
            if width == SUBSET_WIDTH:
                density_model, density_m = model, m
        measured["widths"] = width_runs

        subset_runs = []
        for classes in SUBSETS:
            Xs, ys, _, _ = load_digits_tensors(classes, seed=seed, whiten=True)
            m, _ = train_and_measure(Xs, ys, len(classes), SUBSET_WIDTH, seed)
            m["digits"] = list(classes)
            subset_runs.append(m)
            panels.append((f"digits C={len(classes)}, width {SUBSET_WIDTH}", m))
        measured["subsets"] = subset_runs

        gmm_runs = []
        for sep in GMM_SEPARATIONS:
            Xg, yg = gaussian_mixture(
                GMM_CLASSES, GMM_SAMPLES, GMM_DIM, sep, seed=_seeded(seed, 7, int(sep * 10))
            )
            m, _ = train_and_measure(Xg, yg, GMM_CLASSES, SUBSET_WIDTH, seed)
            m["separation"] = sep
            gmm_runs.append(m)
            panels.append((f"Gaussian mixture C=10, separation {sep:g}", m))
        measured["separations"] = gmm_runs

        if not fast:
            measured["width64_seeds"] = [
                train_and_measure(Xtr, ytr, 10, SUBSET_WIDTH, seed + s)[0] for s in (1, 2)
            ]
            Xp, yp, _, _ = load_digits_tensors(None, seed=seed)
            measured["control_pixel_standardized"] = train_and_measure(
                Xp, yp, 10, SUBSET_WIDTH, seed
            )[0]
            measured["control_trained_60_epochs"] = train_and_measure(
                Xtr, ytr, 10, SUBSET_WIDTH, seed, epochs=60
            )[0]

        assert density_model is not None
        t0 = time.perf_counter()
        H = HessianOperator(density_model, "cross_entropy", (Xtr, ytr), dtype=torch.float64)
        dens = density(
            H,
            num_runs=4 if fast else 10,
            steps=60,
            generator=torch.Generator().manual_seed(_seeded(seed, 9)),
        )
        measured["density"] = {
            "width": SUBSET_WIDTH,
            "num_runs": 4 if fast else 10,
            "steps": 60,
            "num_matvecs": dens.num_matvecs,
            "seconds": time.perf_counter() - t0,
            "largest_node": float(dens.nodes.max()),
        }

    all_runs = width_runs + subset_runs + gmm_runs
    counts_ok = all(_ok(m) for m in all_runs)
    bulk_shrinks = width_runs[-1]["bulk_edge"] < width_runs[0]["bulk_edge"]
    shift = gmm_runs[1]["outlier_mean"] / gmm_runs[0]["outlier_mean"]
    outliers_move = max(shift, 1.0 / shift) >= MIN_OUTLIER_SHIFT
    passed = counts_ok and bulk_shrinks and outliers_move
    measured.update(
        {
            "outlier_counts": {
                f"C{m['classes']}_w{m['width']}"
                + (f"_sep{m['separation']:g}" if "separation" in m else ""): m["num_outliers"]
                for m in all_runs
            },
            "all_counts_c_minus_1": counts_ok,
            "bulk_edge_by_width": {str(m["width"]): m["bulk_edge"] for m in width_runs},
            "bulk_edge_shrinks_with_width": bulk_shrinks,
            "outlier_mean_by_width": {str(m["width"]): m["outlier_mean"] for m in width_runs},
            "separation_outlier_ratio": shift,
            "separation_bulk_ratio": gmm_runs[1]["bulk_edge"] / gmm_runs[0]["bulk_edge"],
            "outliers_move_with_separation": outliers_move,
            "seconds": time.perf_counter() - start,
        }
    )
    figures = {
        "top_eigenvalues": _plot_spectra(panels),
        "density": _plot_density(dens, density_m, f"digits C=10, width {SUBSET_WIDTH}"),
    }
    counts = ", ".join(
        f"{label.split(',')[0] if 'Gauss' not in label else 'GMM sep ' + label.split()[-1]}"
        f"{'' if 'Gauss' in label else ' w' + str(m['width'])}: {m['num_outliers']} "
        f"(gap {m['gap_after_c_minus_1']:.2f})"
        for label, m in panels
    )
    summary = (
        f"outliers (C-1 expected): {counts}; bulk edge {width_runs[0]['bulk_edge']:.3f} at width "
        f"{widths[0]} -> {width_runs[-1]['bulk_edge']:.3f} at width {widths[-1]}; separation "
        f"{GMM_SEPARATIONS[0]:g} -> {GMM_SEPARATIONS[1]:g} moves the mean outlier x{shift:.2f} "
        f"(bulk edge x{measured['separation_bulk_ratio']:.2f})"
    )
    if not fast:
        pix = measured["control_pixel_standardized"]
        long = measured["control_trained_60_epochs"]
        summary += (
            f"; controls (not in the verdict): per-pixel standardized inputs "
            f"{pix['num_outliers']} outliers, lambda9/lambda10 {pix['gap_after_c_minus_1']:.2f}; "
            f"60 epochs (train acc {long['train_accuracy']:.3f}) {long['num_outliers']} outliers, "
            f"lambda9/lambda10 {long['gap_after_c_minus_1']:.2f}"
        )
    return ExperimentResult(measured=measured, passed=passed, summary=summary, figures=figures)
