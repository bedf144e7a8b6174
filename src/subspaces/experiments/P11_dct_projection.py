"""P11: SVD-free low-rank gradient projection with a DCT basis (Modoranu et al. 2025).

Paper: Modoranu, Safaryan, Schultheis, Ryabinin, Chumachenko, Alistarh, "SVD-Free Low-Rank
Adaptive Gradient Optimization for Large Language Models" (v3+: "FFT-based Dynamic Subspace
Selection for Low-Rank Adaptive Optimization of Large Language Models"), arXiv 2505.17967.

Method as published (DCT-AdamW): at a refresh, the gradient ``G_t`` (plus the error-feedback
buffer ``Xi``) is multiplied by the fixed orthogonal DCT matrix (here through an FFT,
Makhoul's algorithm), the ``r`` columns with the largest **l1 norm** of ``G_t C`` are kept,
Adam runs on ``g_t = G_t C_I``; the part the projection drops, ``Xi = G_t - g_t C_I^T``, is
added to the next gradient (**error feedback**); at a refresh the moments are **rotated** into
the new coordinates, ``m <- m R``, ``v <- v (R * R)`` with ``R = C_prev^T C_cur`` (for DCT
columns ``R`` is a partial selection matrix, so this equals the paper's ``|v R|``). In
:class:`~subspaces.optim.SubspaceAdamW` that is ``projector="dct", dct_norm=1,
error_feedback=True, moment_transfer="rotate"``.

Protocol. A tiny Llama-style language model (hidden 64, 2 blocks, rank 16 = a quarter of the
width) is trained on byte-level Python source (the standard library, offline) for ``steps``
steps, from the same initialization and data order per seed, twice: with the DCT-AdamW recipe
and with GaLore's exact-SVD projector **given the same moment handling** (error feedback and
rotated moments), both refreshing every 10 steps. Seeds ``seed .. seed + n - 1``: 3 in fast mode
(50 steps), 5 in the full run (400 steps). Measured per seed: the held-out loss of both runs and
the paired relative gap ``L_dct / L_svd - 1``; along the SVD run, the gradient energy captured by
the top-``r`` SVD basis and the top-``r`` DCT basis chosen at the refresh steps (reported, not in
the verdict; the DCT columns are scored by l2 there, the energy-optimal DCT subset, so the ratio
is an upper bound for the l1 choice the optimizer makes); once, the refresh time of ``select``
for both projectors (``n x n`` Gaussian, ``n`` = 512 fast / 1024 full, rank ``n / 8``, one
thread, medians).

Criterion (changed for issue 18, fixed before the first full run; the refresh gap 10 was chosen
in a pilot on seeds 0-1 at 150 steps, where DCT-AdamW trailed the SVD run by 3.8-4.9 % at gap 10
and 8 % at gap 1, i.e. the gap that favours DCT): PASS iff (a) the upper end of the 95 %
bootstrap interval of the mean paired loss gap is at most +1 % (DCT matches SVD, the paper's
headline) and (b) the DCT refresh is at least 20x faster than the SVD refresh (the paper's
runtime claim). If the interval straddles +1 % the run is too short/noisy to decide, which the
summary says. The old criterion (one seed, GaLore defaults for both: l2 score, no error
feedback, moments kept; energy ratio >= 0.95, refresh >= 20x faster, loss gap <= 1 %) is run
on the first seed and kept in ``measured["old_criterion"]``; the energy threshold was dropped
from the verdict because the paper claims matching loss and runtime, not a captured-energy
level. Criterion fixed before the first full run.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from ._common import single_thread
from ._lm import LMData, build_lm, eval_loss, lm_data, lm_setting, train_lm
from ._stats import seed_summary
from .registry import ExperimentResult, register

ENERGY_MIN = 0.95
SPEEDUP_MIN = 20.0
LOSS_TOL = 0.01
GAP = 10
#: the published DCT-AdamW recipe, and what the SVD baseline shares with it
RECIPE: dict[str, dict[str, Any]] = {
    "dct": {"projector": "dct", "dct_norm": 1, "error_feedback": True, "moment_transfer": "rotate"},
    "svd": {"projector": "svd", "error_feedback": True, "moment_transfer": "rotate"},
}
#: the configuration of the old criterion (SubspaceAdamW's defaults)
OLD: dict[str, dict[str, Any]] = {"dct": {"projector": "dct"}, "svd": {"projector": "svd"}}


def _refresh_times(n: int, rank: int, reps: int, seed: int) -> dict[str, float]:
    from ..optim import get_projector

    G = torch.randn(n, n, generator=torch.Generator().manual_seed(seed))
    out = {}
    for name in ("svd", "dct"):
        proj = get_projector(name)
        proj.select(G, rank)  # warm-up
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            proj.select(G, rank)
            times.append(time.perf_counter() - t0)
        out[name] = statistics.median(times)
    return out


class _EnergyMeter:
    """Gradient energy captured by SVD and DCT bases chosen at the refresh steps."""

    def __init__(
        self,
        mats: list[torch.Tensor],
        rank: int,
        gap: int,
        energy: dict[str, float],
        dct_norm: int = 2,
    ) -> None:
        from ..optim import SVDProjector
        from ..optim.projectors import DCTProjector

        self.mats, self.rank, self.gap, self.energy = mats, rank, gap, energy
        self.projectors = {"svd": SVDProjector(), "dct": DCTProjector(dct_norm)}
        self.bases: dict[int, dict[str, torch.Tensor]] = {}

    def __call__(self, step: int) -> None:
        for i, p in enumerate(self.mats):
            assert p.grad is not None
            G = p.grad.reshape(p.shape[0], -1)
            if G.shape[0] < G.shape[1]:
                G = G.T
            if step % self.gap == 0:
                self.bases[i] = {
                    key: proj.basis(proj.select(G, self.rank)[0], G.shape[1], G.dtype)
                    for key, proj in self.projectors.items()
                }
            for key in ("svd", "dct"):
                e = float((G @ self.bases[i][key]).square().sum())
                self.energy[key] += e
                if step % self.gap == 0:
                    self.energy[key + "_at_refresh"] += e
            self.energy["total"] += float(G.square().sum())


def _train(
    data: LMData, cfg: Any, config: dict[str, Any], gap: int, steps: int, seed: int, meter: bool
) -> tuple[float, dict[str, float] | None]:
    """Train one run; the held-out loss and (along it, if asked) the captured energies."""
    from ..optim import SubspaceAdamW, projected_param_groups

    model = build_lm(data.vocab_size, cfg.hidden, cfg.layers, seed)
    options = dict(config)
    groups = projected_param_groups(
        model, cfg.rank, update_proj_gap=gap, projector=options.pop("projector"), scale=1.0
    )
    groups[-1].update(options)
    opt = SubspaceAdamW(groups, lr=3e-3, betas=(0.9, 0.95))
    energy = dict.fromkeys(("svd", "dct", "total", "svd_at_refresh", "dct_at_refresh"), 0.0)
    on_grad = None
    if meter:
        on_grad = _EnergyMeter(
            groups[-1]["params"], cfg.rank, gap, energy, dct_norm=config.get("dct_norm", 2)
        )
    train_lm(
        model,
        opt,
        data,
        steps=steps,
        batch_size=cfg.batch,
        seq_len=cfg.seq_len,
        seed=seed,
        on_grad=on_grad,
    )
    return eval_loss(model, data), energy if meter else None


@register(
    "P11",
    title="SVD-free low-rank projection with a DCT basis",
    paper="Modoranu, Safaryan, Schultheis, Ryabinin, Chumachenko, Alistarh 2025, SVD-Free "
    "Low-Rank Adaptive Gradient Optimization for Large Language Models (arXiv 2505.17967)",
    claim=(
        "Choosing r columns of a fixed DCT basis by their (l1) alignment with the gradient, with "
        "error feedback and rotated moments (DCT-AdamW), matches the SVD projector's training "
        "loss at a fraction of the refresh cost, storing only r indices per layer"
    ),
    criterion=(
        "tiny Llama on Python source, DCT-AdamW vs the SVD projector with the same error "
        "feedback and moment rotation, paired by seed (3 fast, 5 full): the 95% interval of the "
        "mean held-out loss gap L_dct/L_svd - 1 ends at or below +1%; DCT refresh >= 20x "
        "faster than the SVD refresh (n x n, rank n/8, one thread)"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train with the DCT-AdamW recipe and with SVD given the same moment handling, per seed.

    Args:
        fast: short runs and 3 seeds (for the test suite); else 5 seeds.
        seed: the first seed (seed ``i`` is ``seed + i``) of data, initialization and sampling.

    Returns:
        The measured numbers and the verdict.
    """
    cfg = lm_setting(True)  # hidden 64, 2 blocks: the full size costs ~8x per step
    steps = 50 if fast else 400
    n_seeds = 3 if fast else 5
    n_time = 512 if fast else 1024
    seeds = [seed + i for i in range(n_seeds)]
    losses: dict[str, list[float]] = {"dct": [], "svd": []}
    energy_ratio: list[float] = []
    old_gap = 25 if fast else 50
    with single_thread():
        for s in seeds:
            data = lm_data(cfg.num_bytes, cfg.seq_len, seed=s)
            loss_svd, energy = _train(data, cfg, RECIPE["svd"], GAP, steps, s, meter=True)
            loss_dct, _ = _train(data, cfg, RECIPE["dct"], GAP, steps, s, meter=False)
            assert energy is not None
            losses["svd"].append(loss_svd)
            losses["dct"].append(loss_dct)
            energy_ratio.append(energy["dct"] / energy["svd"])
            if s == seeds[0]:  # the old criterion: SubspaceAdamW's defaults, first seed only
                old_svd, old_energy = _train(data, cfg, OLD["svd"], old_gap, steps, s, meter=True)
                old_dct, _ = _train(data, cfg, OLD["dct"], old_gap, steps, s, meter=False)
        times = _refresh_times(n_time, n_time // 8, 3 if fast else 5, seed)
    gaps = [d / v - 1.0 for d, v in zip(losses["dct"], losses["svd"], strict=True)]
    gap_summary = seed_summary(gaps)
    low, high = gap_summary["ci95"]
    speedup = times["svd"] / times["dct"]
    loss_ok = high <= LOSS_TOL
    speed_ok = speedup >= SPEEDUP_MIN
    passed = loss_ok and speed_ok
    assert old_energy is not None
    old_ratio = old_energy["dct"] / old_energy["svd"]
    old_loss_gap = old_dct / old_svd - 1.0
    old = {
        "energy_ratio_dct_over_svd": old_ratio,
        "refresh_speedup": speedup,
        "eval_loss_svd": old_svd,
        "eval_loss_dct": old_dct,
        "relative_loss_gap": old_loss_gap,
        "gap": old_gap,
        "passed": old_ratio >= ENERGY_MIN and speed_ok and old_loss_gap <= LOSS_TOL,
    }
    measured = {
        "seeds": seeds,
        "loss_gap_dct_over_svd": gap_summary,
        "eval_loss_dct": seed_summary(losses["dct"]),
        "eval_loss_svd": seed_summary(losses["svd"]),
        "energy_ratio_dct_over_svd": seed_summary(energy_ratio),
        "refresh_seconds_svd": times["svd"],
        "refresh_seconds_dct": times["dct"],
        "refresh_speedup": speedup,
        "refresh_matrix": [n_time, n_time, n_time // 8],
        "checks": {"loss_within_1pct": loss_ok, "refresh_20x_faster": speed_ok},
        "decided": high <= LOSS_TOL or low > LOSS_TOL,
        "recipe": RECIPE,
        "model": {
            "hidden": cfg.hidden,
            "layers": cfg.layers,
            "rank": cfg.rank,
            "gap": GAP,
            "steps": steps,
        },
        "old_criterion": old,
    }
    if passed:
        verdict = "matches SVD within 1%"
    elif low > LOSS_TOL:
        verdict = "DCT-AdamW's loss is more than 1% above SVD's on every resample"
    elif not loss_ok:
        verdict = "the interval straddles +1%: too noisy to decide"
    else:
        verdict = "refresh not 20x faster"
    summary = (
        f"loss gap DCT-AdamW vs SVD (same error feedback and rotation) "
        f"{100 * gap_summary['mean']:+.2f}% [{100 * low:+.2f}, {100 * high:+.2f}]% over "
        f"{n_seeds} seeds ({verdict}); DCT refresh {speedup:.0f}x faster at {n_time}^2; DCT "
        f"captures {statistics.mean(energy_ratio):.2f}x the SVD basis's gradient energy "
        f"(old one-seed criterion: {'PASS' if old['passed'] else 'FAIL'})"
    )
    if not passed and not loss_ok:
        summary += (
            "; most likely reason: at width 64 the gradients are not close to DCT-sparse (the "
            "DCT basis keeps about half the energy the SVD basis keeps), so error feedback "
            "cannot make up for the weaker subspace in a short run"
        )
    return ExperimentResult(
        measured=measured,
        passed=passed,
        summary=summary,
        headline=("loss_gap_dct_over_svd",),
    )
