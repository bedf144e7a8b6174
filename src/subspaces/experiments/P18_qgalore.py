"""P18: Q-GaLore: lazy layer-adaptive refresh, INT4 projections, INT8 weights (Zhang et al. 2024).

A tiny Llama-style language model is trained on byte-level Python source with its decoder's
linear layers stored in INT8 (:class:`~subspaces.optim.quantization.Int8Linear`, stochastic
rounding of updates) and :class:`~subspaces.optim.SubspaceAdamW` holding 4-bit projection
matrices (SVD projector), twice from the same initialization and data order: with a fixed
refresh gap, and with the lazy layer-adaptive refresh (a layer's gap doubles once the mean
overlap ``||Q_old^T Q_new||_F^2 / r`` of its last refreshes reaches a threshold). A float32
GaLore run with the same rank and gap is the reference for the loss.

Bytes are measured on the real tensors (storage sizes), not computed from a formula: the
projection matrices' bytes per value, the INT8 weights' bytes per value, and weights plus
optimizer state of the projected layers against float32 GaLore.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ._common import single_thread
from ._lm import build_lm, eval_loss, lm_data, lm_setting, train_lm
from .registry import ExperimentResult, register

FEWER_MIN = 0.5
LOSS_TOL = 0.01
PROJ_BITS_MAX = 4.5  # 4 bits a value plus the per-group scale and zero point
WEIGHT_BYTES_MAX = 1.05  # 1 byte a value plus the per-group scale and zero point
SAVING_MIN = 0.5


def _state_bytes(opt: Any, keys: tuple[str, ...], params: list[nn.Parameter]) -> int:
    from ..optim.memory import tensor_bytes

    return sum(
        tensor_bytes(v) for p in params for k, v in opt.state[p].items() if k.startswith(keys)
    )


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
        "on a tiny Llama trained on Python source in the Q-GaLore configuration: lazy refresh "
        "takes >= 50% fewer refreshes than fixed refresh with held-out loss within 1%; "
        "measured projection storage <= 4.5 bits a value, INT8 weights <= 1.05 bytes a value, "
        "and weights + optimizer state of the projected layers <= 50% of float32 GaLore's"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train Q-GaLore with fixed and lazy refresh and a float GaLore reference; measure bytes.

    Args:
        fast: small model and short run (for the test suite).
        seed: seed of the data, initialization and sampling.

    Returns:
        The measured numbers and the verdict.
    """
    from ..optim import SubspaceAdamW, projected_param_groups
    from ..optim.memory import tensor_bytes
    from ..optim.quantization import Int8Linear, quantize_linear_layers

    cfg = lm_setting(fast)
    hidden, layers, seq_len, batch, rank = cfg.hidden, cfg.layers, cfg.seq_len, cfg.batch, cfg.rank
    steps = 200 if fast else 800
    gap = 10 if fast else 25
    with single_thread():
        data = lm_data(cfg.num_bytes, seq_len, seed=seed)
        runs: dict[str, dict[str, Any]] = {}
        for name in ("galore_fp32", "qgalore_fixed", "qgalore_lazy"):
            model = build_lm(data.vocab_size, hidden, layers, seed)
            quant = name != "galore_fp32"
            if quant:
                model = quantize_linear_layers(
                    model, "model.layers.*", group_size=256, inplace=True
                )
            opts: dict[str, Any] = dict(update_proj_gap=gap, projector="svd")
            if quant:
                opts.update(proj_bits=4, proj_group_size=256)
            if name == "qgalore_lazy":
                opts.update(refresh="lazy", lazy_threshold=0.6, lazy_window=3, lazy_growth=2)
            groups = projected_param_groups(model, rank, include=("model.layers.*",), **opts)
            opt = SubspaceAdamW(groups, lr=3e-3, betas=(0.9, 0.95))
            train_lm(model, opt, data, steps=steps, batch_size=batch, seq_len=seq_len, seed=seed)
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
            runs[name] = {
                "eval_loss": eval_loss(model, data),
                "refreshes": sum(int(opt.state[p]["refresh_count"]) for p in mats),
                "final_gaps": [int(opt.state[p]["gap"]) for p in mats],
                "weight_bytes": weight_bytes,
                "weight_values": numel,
                "proj_bytes": _state_bytes(opt, ("proj.",), mats),
                "proj_values": basis_values,
                "moment_bytes": _state_bytes(opt, ("exp_avg",), mats),
            }
    fixed, lazy, ref = runs["qgalore_fixed"], runs["qgalore_lazy"], runs["galore_fp32"]
    fewer = 1.0 - lazy["refreshes"] / fixed["refreshes"]
    loss_gap = lazy["eval_loss"] / fixed["eval_loss"] - 1.0
    proj_bits = 8 * lazy["proj_bytes"] / lazy["proj_values"]
    weight_bpv = lazy["weight_bytes"] / lazy["weight_values"]
    total_q = lazy["weight_bytes"] + lazy["proj_bytes"] + lazy["moment_bytes"]
    total_ref = ref["weight_bytes"] + ref["proj_bytes"] + ref["moment_bytes"]
    ratio = total_q / total_ref
    passed = (
        fewer >= FEWER_MIN
        and loss_gap <= LOSS_TOL
        and proj_bits <= PROJ_BITS_MAX
        and weight_bpv <= WEIGHT_BYTES_MAX
        and ratio <= SAVING_MIN
    )
    measured = {
        "runs": runs,
        "fewer_refreshes_fraction": fewer,
        "relative_loss_gap_lazy_vs_fixed": loss_gap,
        "relative_loss_gap_qgalore_vs_fp32_galore": lazy["eval_loss"] / ref["eval_loss"] - 1.0,
        "projection_bits_per_value": proj_bits,
        "projection_bits_per_value_fp32": 8 * ref["proj_bytes"] / ref["proj_values"],
        "weight_bytes_per_value": weight_bpv,
        "projected_layers_bytes_ratio_vs_fp32_galore": ratio,
        "model": {"hidden": hidden, "layers": layers, "rank": rank, "gap": gap, "steps": steps},
    }
    summary = (
        f"lazy refresh: {lazy['refreshes']} vs {fixed['refreshes']} refreshes "
        f"({100 * fewer:.0f}% fewer), held-out loss {lazy['eval_loss']:.4f} vs "
        f"{fixed['eval_loss']:.4f} ({100 * loss_gap:+.2f}%); projections {proj_bits:.2f} "
        f"bits/value, weights {weight_bpv:.3f} B/value; projected layers need "
        f"{100 * ratio:.0f}% of float32 GaLore's bytes"
    )
    return ExperimentResult(measured=measured, passed=passed, summary=summary)
