"""P18: Q-GaLore: lazy layer-adaptive refresh, INT4 projections, INT8 weights (Zhang et al. 2024).

A tiny Llama-style language model is trained on byte-level Python source with its decoder's
linear layers stored in INT8 (:class:`~subspaces.optim.quantization.Int8Linear`, stochastic
rounding of updates) and :class:`~subspaces.optim.SubspaceAdamW` holding 4-bit projection
matrices (SVD projector), from the same initialization and data order: with fixed refresh gaps
(a small sweep), and with the lazy layer-adaptive refresh (a layer's gap, starting at 10 (fast)
or 25 (full) steps, doubles once the mean overlap ``||Q_old^T Q_new||_F^2 / r`` of its last three
refreshes reaches 0.6). A float32 GaLore run with the same rank is the reference for the bytes.

Bytes are measured on the real tensors (storage sizes), not computed from a formula: the
projection matrices' bytes per value, the INT8 weights' bytes per value, and weights plus
optimizer state of the projected layers against float32 GaLore, at the training rank
(``hidden / 4``) and, after one step, at ranks ``hidden / 8`` and ``hidden / 2``.

Criterion (changed in issue 18, fixed before the first run with it). The old criterion compared
lazy refresh with a fixed gap of 10 steps (fast; 25 full) on one seed. Refreshing that often is
itself harmful (every refresh resets the subspace the moments live in), so "as good as fixed
refresh with 50 % fewer SVDs" was a comparison against a handicapped baseline. Now the baseline
is the best fixed gap of the sweep ``10, 50, 200`` (full: ``25, 50, 200``), chosen as the
one with the lowest mean held-out loss over seeds (which favours the baseline), and on 3 (fast)
or 5 (full) seeds paired by seed:

* comparable loss: the 95 % bootstrap interval of the mean per-seed relative loss gap
  ``loss_lazy / loss_best_fixed - 1`` lies below ``+1 %``;
* fewer refreshes: the mean per-seed fraction ``1 - refreshes_lazy / refreshes_best_fixed`` is
  at least 50 %;
* memory (first seed): projection storage <= 4.5 bits a value, INT8 weights <= 1.05 bytes a
  value, and weights + optimizer state of the projected layers <= 50 % of float32 GaLore's at
  the training rank (the ratios at the other ranks are reported, not part of the verdict: the
  paper's saving is stated for its own ranks, a quarter of the width for LLaMA-7B).

If the best fixed gap is the largest one (a single SVD per layer), lazy refresh cannot take
fewer refreshes and the reproduction fails: at this scale, refreshing rarely is then all the
benefit. The old criterion's verdict is kept in ``measured["old_criterion"]``.

Fast mode is a smoke setting (shrunk in issue 18 to fit the fast gallery's budget; the criterion,
the gap sweep and the 3 seeds are unchanged): one decoder layer of width 64 (seven projected
matrices), 8 windows of 32 tokens a step and 100 steps, instead of the shared fast LM setting
(two layers, 16 windows of 64 tokens, 200 steps), which took about 120 s of CPU.

Full setting (changed in the third session of 2026-12-07, before its first run; the criterion is
unchanged): the shared fast LM setting (two decoder layers of width 64, 16 windows of 64 tokens a
step) for 300 steps, 5 seeds, fixed gaps ``25, 50, 200``. The shared full LM setting it named
before (4 layers of width 128, 16 windows of 128 tokens, 800 steps, gaps ``10, 25, 50, 200``) was
never run: 27 training runs of 800 steps at 0.33 s a step are about 7,000 s of CPU, more than the
whole full gallery's 60-minute budget on 2 cores. Gap 10 left the full sweep because it is the
handicapped baseline the criterion change is about (measured: 0.093 s of CPU a step against
0.044 for lazy refresh at this width; the worst gap of the last fast gallery run, held-out loss
2.205 against 2.095 for gap 200, in the old fast setting); 300 steps leave lazy refresh room to
double its gap twice.
"""

from __future__ import annotations

import time
from typing import Any

from torch import nn

from ._common import single_thread
from ._lm import LMData, LMSetting, build_lm, eval_loss, lm_data, lm_setting, train_lm
from ._stats import paired_summary, seed_summary
from .registry import ExperimentResult, register

FEWER_MIN = 0.5
LOSS_TOL = 0.01
PROJ_BITS_MAX = 4.5  # 4 bits a value plus the per-group scale and zero point
WEIGHT_BYTES_MAX = 1.05  # 1 byte a value plus the per-group scale and zero point
SAVING_MIN = 0.5
FIXED_GAPS_FAST = (10, 50, 200)
FIXED_GAPS_FULL = (25, 50, 200)
LAZY_START_FAST = 10
LAZY_START_FULL = 25
SEEDS_FAST = 3
SEEDS_FULL = 5
MEMORY_RANK_DIVISORS = (8, 4, 2)
STEPS_FAST = 100
STEPS_FULL = 300
# the fast smoke setting: the width of the shared fast setting, one layer, shorter batches
FAST_SETTING = LMSetting(hidden=64, layers=1, seq_len=32, batch=8, num_bytes=400_000)


def _state_bytes(opt: Any, keys: tuple[str, ...], params: list[nn.Parameter]) -> int:
    from ..optim.memory import tensor_bytes

    return sum(
        tensor_bytes(v) for p in params for k, v in opt.state[p].items() if k.startswith(keys)
    )


def train_variant(
    name: str,
    cfg: LMSetting,
    data: LMData,
    *,
    rank: int,
    gap: int,
    steps: int,
    seed: int,
) -> dict[str, Any]:
    """Train one variant and measure its loss, refreshes and bytes.

    Args:
        name: ``"galore_fp32"`` (float32 weights and projections, fixed gap), ``"qgalore_fixed"``
            (INT8 weights, INT4 projections, fixed gap) or ``"qgalore_lazy"`` (the same with the
            lazy layer-adaptive refresh starting at ``gap``).
        cfg: the model setting.
        data: the token data.
        rank: projection rank.
        gap: the refresh gap (the starting gap for lazy refresh).
        steps: training steps (0 builds the optimizer state with one step and skips the loss).
        seed: initialization and data order.

    Returns:
        ``eval_loss``, ``refreshes``, ``final_gaps``, the byte counts (``weight_bytes``,
        ``weight_values``, ``proj_bytes``, ``proj_values``, ``moment_bytes``) and ``seconds``.

    Raises:
        ValueError: for an unknown ``name``.
    """
    from ..optim import SubspaceAdamW, projected_param_groups
    from ..optim.memory import tensor_bytes
    from ..optim.quantization import Int8Linear, quantize_linear_layers

    if name not in ("galore_fp32", "qgalore_fixed", "qgalore_lazy"):
        raise ValueError(
            f"name must be 'galore_fp32', 'qgalore_fixed' or 'qgalore_lazy', got {name!r}"
        )
    start = time.perf_counter()
    model = build_lm(data.vocab_size, cfg.hidden, cfg.layers, seed)
    quant = name != "galore_fp32"
    if quant:
        model = quantize_linear_layers(model, "model.layers.*", group_size=256, inplace=True)
    opts: dict[str, Any] = dict(update_proj_gap=gap, projector="svd")
    if quant:
        opts.update(proj_bits=4, proj_group_size=256)
    if name == "qgalore_lazy":
        opts.update(refresh="lazy", lazy_threshold=0.6, lazy_window=3, lazy_growth=2)
    groups = projected_param_groups(model, rank, include=("model.layers.*",), **opts)
    opt = SubspaceAdamW(groups, lr=3e-3, betas=(0.9, 0.95))
    train_lm(
        model, opt, data, steps=max(steps, 1), batch_size=cfg.batch, seq_len=cfg.seq_len, seed=seed
    )
    mats = groups[-1]["params"]
    modules = [m for m in model.modules() if isinstance(m, (nn.Linear, Int8Linear))]
    projected_modules = [m for m in modules if any(m.weight is p for p in mats)]
    weight_bytes = 0
    for m in projected_modules:
        weight_bytes += tensor_bytes(m.weight)  # an Int8Linear's: its 4-byte carrier
        if isinstance(m, Int8Linear):
            weight_bytes += (
                tensor_bytes(m.weight_codes)
                + tensor_bytes(m.weight_scale)
                + tensor_bytes(m.weight_zero)
            )
    numel = sum(int(m.weight.numel()) for m in projected_modules)
    basis_values = sum(
        int(opt.state[p]["proj.basis_shape"].prod())
        if quant
        else opt.state[p]["proj.basis"].numel()
        for p in mats
    )
    return {
        "eval_loss": eval_loss(model, data) if steps > 0 else float("nan"),
        "refreshes": sum(int(opt.state[p]["refresh_count"]) for p in mats),
        "final_gaps": [int(opt.state[p]["gap"]) for p in mats],
        "weight_bytes": weight_bytes,
        "weight_values": numel,
        "proj_bytes": _state_bytes(opt, ("proj.",), mats),
        "proj_values": basis_values,
        "moment_bytes": _state_bytes(opt, ("exp_avg",), mats),
        "seconds": time.perf_counter() - start,
    }


def _total_bytes(run: dict[str, Any]) -> int:
    return int(run["weight_bytes"] + run["proj_bytes"] + run["moment_bytes"])


def _ci(summary: dict[str, Any], scale: float = 1.0, fmt: str = ".2f") -> str:
    low, high = summary["ci95"]
    return f"{scale * summary['mean']:{fmt}} [{scale * low:{fmt}}, {scale * high:{fmt}}]"


@register(
    "P18",
    title="Q-GaLore: lazy refresh, INT4 projections, INT8 weights",
    paper="Zhang, Jaiswal, Yin, Liu, Zhao, Tian, Wang 2024, Q-GaLore: Quantized GaLore with "
    "INT4 Projection and Layer-Adaptive Low-Rank Gradients",
    claim=(
        "Layer-adaptive lazy subspace updates cut the number of SVDs at comparable loss; "
        "projection matrices in INT4 and weights in INT8 with stochastic rounding give a "
        "substantial memory saving over GaLore"
    ),
    criterion=(
        "on a tiny Llama trained on Python source in the Q-GaLore configuration, 3 (fast) / 5 "
        "(full) seeds paired by seed, against the fixed refresh gap of the sweep 10/50/200 "
        "(full 25/50/200) with the lowest mean held-out loss: 95% interval of the mean "
        "relative loss gap lazy/fixed - 1 below +1%, and mean fraction of refreshes saved >= "
        "50%; measured projection storage <= 4.5 bits a value, INT8 weights <= 1.05 bytes a "
        "value, and weights + optimizer state of the projected layers <= 50% of float32 "
        "GaLore's at rank hidden/4 (ranks hidden/8 and hidden/2 reported)"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train Q-GaLore with a sweep of fixed gaps and with lazy refresh; measure the bytes.

    Args:
        fast: one layer of width 64, 100 steps, 3 seeds (a smoke setting for the test suite);
            else the shared fast LM setting (2 layers of width 64), 300 steps, 5 seeds.
        seed: the first seed; seed ``i`` (data sample, initialization, data order) is
            ``seed + i``.

    Returns:
        The measured numbers and the verdict.
    """
    cfg = FAST_SETTING if fast else lm_setting(True)
    rank = cfg.rank
    steps = STEPS_FAST if fast else STEPS_FULL
    gaps = FIXED_GAPS_FAST if fast else FIXED_GAPS_FULL
    lazy_start = LAZY_START_FAST if fast else LAZY_START_FULL
    num_seeds = SEEDS_FAST if fast else SEEDS_FULL
    start = time.perf_counter()
    seeds = [seed + i for i in range(num_seeds)]
    per_seed: list[dict[str, Any]] = []
    with single_thread():
        for s in seeds:
            data = lm_data(cfg.num_bytes, cfg.seq_len, seed=s)
            row: dict[str, Any] = {"seed": s, "fixed": {}}
            for gap in gaps:
                row["fixed"][str(gap)] = train_variant(
                    "qgalore_fixed", cfg, data, rank=rank, gap=gap, steps=steps, seed=s
                )
            row["lazy"] = train_variant(
                "qgalore_lazy", cfg, data, rank=rank, gap=lazy_start, steps=steps, seed=s
            )
            if s == seeds[0]:
                row["galore_fp32"] = train_variant(
                    "galore_fp32", cfg, data, rank=rank, gap=lazy_start, steps=steps, seed=s
                )
                if str(lazy_start) not in row["fixed"]:  # the old baseline
                    row["fixed"][str(lazy_start)] = train_variant(
                        "qgalore_fixed", cfg, data, rank=rank, gap=lazy_start, steps=steps, seed=s
                    )
            per_seed.append(row)
        data0 = lm_data(cfg.num_bytes, cfg.seq_len, seed=seeds[0])
        memory: dict[str, Any] = {}
        for divisor in MEMORY_RANK_DIVISORS:
            r = cfg.hidden // divisor
            q = train_variant("qgalore_lazy", cfg, data0, rank=r, gap=10, steps=0, seed=seeds[0])
            f = train_variant("galore_fp32", cfg, data0, rank=r, gap=10, steps=0, seed=seeds[0])
            memory[str(r)] = {
                "qgalore_bytes": _total_bytes(q),
                "galore_fp32_bytes": _total_bytes(f),
                "ratio": _total_bytes(q) / _total_bytes(f),
            }

    mean_loss = {
        str(g): sum(row["fixed"][str(g)]["eval_loss"] for row in per_seed) / num_seeds for g in gaps
    }
    best = min(gaps, key=lambda g: mean_loss[str(g)])
    lazy_loss = [row["lazy"]["eval_loss"] for row in per_seed]
    best_loss = [row["fixed"][str(best)]["eval_loss"] for row in per_seed]
    loss_gap = seed_summary([a / b - 1.0 for a, b in zip(lazy_loss, best_loss, strict=True)])
    fewer = seed_summary(
        [1.0 - row["lazy"]["refreshes"] / row["fixed"][str(best)]["refreshes"] for row in per_seed]
    )
    first = per_seed[0]
    lazy0, ref = first["lazy"], first["galore_fp32"]
    proj_bits = 8 * lazy0["proj_bytes"] / lazy0["proj_values"]
    weight_bpv = lazy0["weight_bytes"] / lazy0["weight_values"]
    ratio = _total_bytes(lazy0) / _total_bytes(ref)
    checks = {
        "loss_within_1pct_of_best_fixed": loss_gap["ci95"][1] <= LOSS_TOL,
        "refreshes_halved_vs_best_fixed": fewer["mean"] >= FEWER_MIN,
        "projection_4_bits": proj_bits <= PROJ_BITS_MAX,
        "weights_1_byte": weight_bpv <= WEIGHT_BYTES_MAX,
        "memory_half_of_galore": ratio <= SAVING_MIN,
    }
    passed = all(checks.values())
    old_fixed = first["fixed"][str(lazy_start)]
    old_fewer = 1.0 - lazy0["refreshes"] / old_fixed["refreshes"]
    old_gap = lazy0["eval_loss"] / old_fixed["eval_loss"] - 1.0
    memory_ok = checks["projection_4_bits"] and checks["weights_1_byte"]
    measured = {
        "seeds": per_seed,
        "fixed_gaps": list(gaps),
        "mean_eval_loss_by_fixed_gap": mean_loss,
        "mean_eval_loss_lazy": sum(lazy_loss) / num_seeds,
        "best_fixed_gap": best,
        "relative_loss_gap_lazy_vs_best_fixed": loss_gap,
        "fewer_refreshes_fraction_vs_best_fixed": fewer,
        "paired_loss_lazy_minus_best_fixed": paired_summary(lazy_loss, best_loss),
        "relative_loss_gap_qgalore_vs_fp32_galore": lazy0["eval_loss"] / ref["eval_loss"] - 1.0,
        "projection_bits_per_value": proj_bits,
        "projection_bits_per_value_fp32": 8 * ref["proj_bytes"] / ref["proj_values"],
        "weight_bytes_per_value": weight_bpv,
        "projected_layers_bytes_ratio_vs_fp32_galore": ratio,
        "bytes_ratio_by_rank": memory,
        "checks": checks,
        "old_criterion": {
            "rule": (
                f"first seed: lazy vs fixed gap {lazy_start}: >= 50% fewer refreshes, loss "
                "within 1%, and the same byte conditions"
            ),
            "fewer_refreshes_fraction": old_fewer,
            "relative_loss_gap_lazy_vs_fixed": old_gap,
            "passed": bool(
                old_fewer >= FEWER_MIN and old_gap <= LOSS_TOL and memory_ok and ratio <= SAVING_MIN
            ),
        },
        "model": {
            "hidden": cfg.hidden,
            "layers": cfg.layers,
            "rank": rank,
            "lazy_start_gap": lazy_start,
            "steps": steps,
        },
        "seconds": time.perf_counter() - start,
    }
    ranks = ", ".join(f"r={r}: {100 * m['ratio']:.0f}%" for r, m in memory.items())
    summary = (
        f"{num_seeds} seeds; mean held-out loss by fixed gap "
        + ", ".join(f"{g}: {v:.4f}" for g, v in mean_loss.items())
        + f"; lazy {measured['mean_eval_loss_lazy']:.4f}; vs best fixed gap {best}: loss gap "
        f"{_ci(loss_gap, 100)}%, refreshes saved {_ci(fewer, 100, '.0f')}%; projections "
        f"{proj_bits:.2f} bits/value, weights {weight_bpv:.3f} B/value; projected layers need "
        f"{100 * ratio:.0f}% of float32 GaLore's bytes ({ranks}); failed: "
        f"{[k for k, ok in checks.items() if not ok] or 'none'} (old criterion vs gap "
        f"{lazy_start}: {'PASS' if measured['old_criterion']['passed'] else 'FAIL'})"
    )
    if not passed:
        reasons = []
        if best == max(gaps):
            reasons.append(
                f"a single SVD per layer (gap {best} over {steps} steps) is the best fixed "
                "schedule at this run length, so no refresh schedule can save refreshes"
            )
        if not checks["loss_within_1pct_of_best_fixed"]:
            reasons.append("lazy refresh's held-out loss is above the best fixed gap's")
        if not (memory_ok and checks["memory_half_of_galore"]):
            reasons.append("the measured bytes miss the claimed saving")
        summary += "; most likely reason: " + "; ".join(reasons or ["see checks"])
    return ExperimentResult(
        measured=measured,
        passed=passed,
        summary=summary,
        figures={},
        headline=("relative_loss_gap_lazy_vs_best_fixed", "fewer_refreshes_fraction_vs_best_fixed"),
    )
