r"""P16: transformers as support vector machines (Tarzanagh, Li, Thrampoulidis & Oymak 2023).

"Transformers as Support Vector Machines" (NeurIPS 2023, arXiv:2308.16898): gradient descent on
the attention weights of a one-layer softmax attention model ``f = v^T X^T softmax(X W z)``
converges in direction to the hard-margin attention SVM that separates the selected token of each
sequence from the others; with ``W`` as the variable the SVM minimizes the Frobenius norm, with the
key-query factorization ``W = K Q^T`` it minimizes the nuclear norm.

Protocol: random problems from :func:`~subspaces.representations.make_attention_data` (``n = 4``
sequences of ``T = 3`` unit tokens in ``d = 16``, unit queries, a unit head ``v`` and labels
``+-1``; the selected token ``alpha_i`` is the globally optimal one, ``argmax_t y_i v^T x_{i,t}``),
float64, logistic loss, normalized GD with step 0.1 for ``W`` (from a N(0, 0.01^2) start) and
for ``(K, Q)`` (``d x d`` each, same start). The norms diverge (``||K Q^T||`` reaches the
thousands), so the softmax saturates far beyond the float64 range; :func:`attention_gd`
evaluates the gradient in the log domain, so its direction stays exact. The SVM solutions come from
:func:`~subspaces.representations.attention_svm` (Frobenius exactly by NNLS; nuclear with a
certified duality gap). Also recorded: the tokens GD selects at the end, whether the selection
is locally optimal, and ``corr(W_fro, W_nuc)`` (how distinguishable the two targets are).

Passed iff on every problem ``corr(W_GD, W_fro) >= 0.99``, ``corr(W_GD, W_fro) >
corr(W_GD, W_nuc)`` and ``corr(KQ_GD, W_nuc) > corr(KQ_GD, W_fro)`` (``corr`` the
:func:`~subspaces.representations.directional_correlation` at the last GD iterate). This is the
rule fixed before the first full run. On that run (seed 0) the (K, Q) part fails on 2 of the 10
problems, where the (K, Q) iterates head, slowly, to a direction closer to the Frobenius solution
(the (K, Q) problem is non-convex and the paper's guarantee for it is local); the average over
problems and the number of problems where the nuclear solution wins are reported as well.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from ..representations.attention_svm import (
    attention_gd,
    attention_svm,
    directional_correlation,
    is_locally_optimal,
    make_attention_data,
)
from ._common import figure_png, single_thread
from .registry import ExperimentResult, register

N, T, D = 4, 3, 16
LR = 0.1
INIT = 0.01
MIN_CORR = 0.99


def _seeded(seed: int, *keys: int) -> int:
    value = seed
    for k in keys:
        value = value * 1_000_003 + k
    return value % (2**62)


def run_problem(seed: int, steps_w: int, steps_kq: int) -> dict[str, Any]:
    """Solve both SVMs and run GD in both parameterizations on one random problem.

    Args:
        seed: seeds the problem and the initializations.
        steps_w: normalized-GD steps on ``W``.
        steps_kq: normalized-GD steps on ``(K, Q)``.

    Returns:
        Correlations (final and per checkpoint), duality gaps, selections and timings.

    Example:
        >>> r = run_problem(0, 100, 100)
        >>> r["corr_w_fro"] > 0.95 and r["selected_is_optimal_w"]
        True
    """
    data = make_attention_data(N, T, D, generator=torch.Generator().manual_seed(_seeded(seed, 1)))
    X, Z, y, v, alpha = data["X"], data["Z"], data["y"], data["v"], data["alpha"]
    fro = attention_svm(X, Z, alpha, "fro")
    nuc = attention_svm(X, Z, alpha, "nuclear")
    gd_w = attention_gd(
        X,
        Z,
        y,
        v,
        parameterization="W",
        steps=steps_w,
        lr=LR,
        init_scale=INIT,
        generator=torch.Generator().manual_seed(_seeded(seed, 2)),
        record_every=10,
    )
    gd_kq = attention_gd(
        X,
        Z,
        y,
        v,
        parameterization="KQ",
        steps=steps_kq,
        lr=LR,
        init_scale=INIT,
        generator=torch.Generator().manual_seed(_seeded(seed, 3)),
        record_every=10,
    )

    def curve(gd: Any, ref: torch.Tensor) -> list[float]:
        return [directional_correlation(W, ref) for W in gd.checkpoints]

    sv = torch.linalg.svdvals(nuc.W)
    return {
        "seed": seed,
        "corr_w_fro": directional_correlation(gd_w.W, fro.W),
        "corr_w_nuc": directional_correlation(gd_w.W, nuc.W),
        "corr_kq_fro": directional_correlation(gd_kq.W, fro.W),
        "corr_kq_nuc": directional_correlation(gd_kq.W, nuc.W),
        "corr_fro_nuc": directional_correlation(fro.W, nuc.W),
        "curve_steps_w": gd_w.steps,
        "curve_w_fro": curve(gd_w, fro.W),
        "curve_w_nuc": curve(gd_w, nuc.W),
        "curve_steps_kq": gd_kq.steps,
        "curve_kq_fro": curve(gd_kq, fro.W),
        "curve_kq_nuc": curve(gd_kq, nuc.W),
        "kq_steps_run": len(gd_kq.loss),
        "kq_stopped_early": gd_kq.stopped_early,
        "norm_w_final": float(gd_w.W.norm()),
        "norm_kq_final": float(gd_kq.W.norm()),
        "fro_gap": fro.gap,
        "nuclear_gap": nuc.gap,
        "nuclear_rank": int((sv > 1e-8 * sv[0]).sum()),
        "fro_rank": int(torch.linalg.matrix_rank(fro.W)),
        "selected_is_optimal_w": bool((gd_w.selected == alpha).all()),
        "selected_is_optimal_kq": bool((gd_kq.selected == alpha).all()),
        "alpha_locally_optimal": is_locally_optimal(X, Z, alpha, data["scores"]),
    }


def _plot(r: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    ax.plot(r["curve_steps_w"], r["curve_w_fro"], color="C0", label="W-GD vs Frobenius SVM")
    ax.plot(r["curve_steps_w"], r["curve_w_nuc"], color="C0", ls="--", label="W-GD vs nuclear")
    ax.plot(r["curve_steps_kq"], r["curve_kq_nuc"], color="C3", label="KQ-GD vs nuclear SVM")
    ax.plot(r["curve_steps_kq"], r["curve_kq_fro"], color="C3", ls="--", label="KQ-GD vs Frobenius")
    ax.set_xlabel("normalized GD step")
    ax.set_ylabel("directional correlation")
    ax.set_ylim(0.5, 1.0)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(f"Attention SVM (n={N}, T={T}, d={D}), problem seed {r['seed']}")
    fig.tight_layout()
    return figure_png(fig)


@register(
    "P16",
    title="Transformers as support vector machines",
    paper="Tarzanagh, Li, Thrampoulidis & Oymak 2023, Transformers as support vector machines "
    "(NeurIPS 2023, arXiv:2308.16898)",
    claim=(
        "Gradient descent on a 1-layer softmax attention converges in direction to the "
        "attention SVM separating the selected tokens: the Frobenius-norm SVM for the W "
        "parameterization, the nuclear-norm SVM for the (K, Q) parameterization"
    ),
    criterion=(
        "on every random problem (n=4, T=3, d=16, unit tokens, globally optimal tokens; fast: 3 "
        "problems, 400 steps on W, 1000 on (K, Q); full: 10 problems, 2000 steps on W, 3000 on "
        "(K, Q); normalized GD, step 0.1, logistic loss, float64): "
        "corr(W_GD, W_fro) >= 0.99, corr(W_GD, W_fro) > corr(W_GD, W_nuc) and "
        "corr(KQ_GD, W_nuc) > corr(KQ_GD, W_fro)"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Run GD in both parameterizations on random problems and compare with both SVMs.

    Args:
        fast: 3 problems, 400 steps on W and 1000 on (K, Q) if true, else 10 problems, 2000
            steps on W and 3000 on (K, Q).
        seed: base seed of the problems.

    Returns:
        The result (per-problem correlations, gaps, the verdict and a figure).
    """
    start = time.perf_counter()
    n_problems, steps_w, steps_kq = (3, 400, 1000) if fast else (10, 2000, 3000)
    with single_thread():
        problems = [
            run_problem(_seeded(seed, 100 + p), steps_w, steps_kq) for p in range(n_problems)
        ]
    ok_w = [p["corr_w_fro"] >= MIN_CORR and p["corr_w_fro"] > p["corr_w_nuc"] for p in problems]
    kq_nuclear_wins = [p["corr_kq_nuc"] > p["corr_kq_fro"] for p in problems]
    keys = ("corr_w_fro", "corr_w_nuc", "corr_kq_fro", "corr_kq_nuc", "corr_fro_nuc")
    mean = {k: sum(p[k] for p in problems) / n_problems for k in keys}
    measured: dict[str, Any] = {
        "problems": problems,
        "min_corr_w_fro": min(p["corr_w_fro"] for p in problems),
        "mean": mean,
        "max_nuclear_gap": max(p["nuclear_gap"] for p in problems),
        "all_selected_optimal": all(
            p["selected_is_optimal_w"] and p["selected_is_optimal_kq"] for p in problems
        ),
        "w_criterion_holds": ok_w,
        "kq_nuclear_wins": kq_nuclear_wins,
        "steps_w": steps_w,
        "steps_kq": steps_kq,
        "seconds": time.perf_counter() - start,
    }
    passed = all(ok_w) and all(kq_nuclear_wins)
    summary = (
        f"W-GD ({steps_w} steps): corr with Frobenius SVM "
        f"min {measured['min_corr_w_fro']:.4f} (mean {mean['corr_w_fro']:.4f}) vs nuclear "
        f"{mean['corr_w_nuc']:.4f} (W criterion holds on {sum(ok_w)}/{n_problems}); "
        f"KQ-GD ({steps_kq} steps): mean corr with nuclear SVM {mean['corr_kq_nuc']:.4f} vs "
        f"Frobenius {mean['corr_kq_fro']:.4f}, nuclear closer on {sum(kq_nuclear_wins)}/"
        f"{n_problems} problems (the two SVM solutions correlate "
        f"{mean['corr_fro_nuc']:.3f}); nuclear SVM duality gap <= "
        f"{measured['max_nuclear_gap']:.1e}; GD selected the optimal tokens: "
        f"{measured['all_selected_optimal']}"
    )
    return ExperimentResult(measured, passed, summary, {"correlation": _plot(problems[0])})
