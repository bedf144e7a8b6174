"""P11: SVD-free low-rank gradient projection with a DCT basis (Modoranu et al. 2025).

A tiny Llama-style language model is trained on byte-level Python source (the standard library,
offline) with :class:`~subspaces.optim.SubspaceAdamW`, once with GaLore's exact-SVD projector and
once with the DCT projector at the same rank and refresh gap, from the same initialization and
data order. Three measurements:

1. **Captured gradient energy.** Along the SVD run, every projected weight's gradient ``G_t`` is
   measured against two bases that are both chosen at the refresh steps from the gradient of
   that step: the top-``r`` singular vectors and the top-``r`` DCT columns. The energy
   ``sum_t ||G_t Q||^2`` over all steps and layers (each basis in use until the next refresh)
   is compared; the ratio at the refresh steps alone (where SVD is optimal) is reported too.
2. **Refresh time** of ``select`` (DCT: one FFT-based DCT of the rows, a top-``r``; SVD: a full
   thin SVD) on an ``n x n`` Gaussian matrix at rank ``n / 8``, single-threaded, medians.
3. **Final held-out loss** of the two runs.
"""

from __future__ import annotations

import statistics
import time

import torch

from ._common import single_thread
from ._lm import build_lm, eval_loss, lm_data, lm_setting, train_lm
from .registry import ExperimentResult, register

ENERGY_MIN = 0.95
SPEEDUP_MIN = 20.0
LOSS_TOL = 0.01


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
        self, mats: list[torch.Tensor], rank: int, gap: int, energy: dict[str, float]
    ) -> None:
        from ..optim import get_projector

        self.mats, self.rank, self.gap, self.energy = mats, rank, gap, energy
        self.projectors = {"svd": get_projector("svd"), "dct": get_projector("dct")}
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


@register(
    "P11",
    title="SVD-free low-rank projection with a DCT basis",
    paper="Modoranu, Safaryan, Schultheis, Ryabinin, Chumachenko, Alistarh 2025, SVD-Free "
    "Low-Rank Adaptive Gradient Optimization for Large Language Models",
    claim=(
        "Choosing r columns of a fixed DCT basis by their alignment with the gradient "
        "approximates SVD-based projections: it matches the SVD projector's training loss at "
        "a fraction of the refresh cost, storing only r indices per layer"
    ),
    criterion=(
        "on a tiny Llama trained on Python source: DCT's captured gradient energy over the run "
        ">= 0.95 x the SVD basis's; DCT refresh >= 20x faster than the SVD refresh (n x n, "
        "rank n/8, one thread); final held-out loss of the DCT run within 1% of the SVD run's"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train with SVD and DCT projectors; measure energy, refresh time and loss.

    Args:
        fast: small model and short run (for the test suite).
        seed: seed of the data, initialization and sampling.

    Returns:
        The measured numbers and the verdict.
    """
    from ..optim import SubspaceAdamW, projected_param_groups

    cfg = lm_setting(fast)
    hidden, layers, seq_len, batch, rank = cfg.hidden, cfg.layers, cfg.seq_len, cfg.batch, cfg.rank
    steps = 150 if fast else 600
    gap = 25 if fast else 50
    n_time = 512 if fast else 1024
    with single_thread():
        data = lm_data(cfg.num_bytes, seq_len, seed=seed)
        losses: dict[str, float] = {}
        energy = {
            "svd": 0.0,
            "dct": 0.0,
            "total": 0.0,
            "svd_at_refresh": 0.0,
            "dct_at_refresh": 0.0,
        }
        for name in ("svd", "dct"):
            model = build_lm(data.vocab_size, hidden, layers, seed)
            groups = projected_param_groups(
                model, rank, update_proj_gap=gap, projector=name, scale=1.0
            )
            opt = SubspaceAdamW(groups, lr=3e-3, betas=(0.9, 0.95))
            mats = groups[-1]["params"]
            meter = _EnergyMeter(mats, rank, gap, energy) if name == "svd" else None
            train_lm(
                model,
                opt,
                data,
                steps=steps,
                batch_size=batch,
                seq_len=seq_len,
                seed=seed,
                on_grad=meter,
            )
            losses[name] = eval_loss(model, data)
        times = _refresh_times(n_time, n_time // 8, 3 if fast else 5, seed)
    ratio = energy["dct"] / energy["svd"]
    ratio_refresh = energy["dct_at_refresh"] / energy["svd_at_refresh"]
    speedup = times["svd"] / times["dct"]
    loss_gap = losses["dct"] / losses["svd"] - 1.0
    passed = ratio >= ENERGY_MIN and speedup >= SPEEDUP_MIN and loss_gap <= LOSS_TOL
    measured = {
        "energy_ratio_dct_over_svd": ratio,
        "energy_ratio_at_refresh_steps": ratio_refresh,
        "captured_fraction_svd": energy["svd"] / energy["total"],
        "captured_fraction_dct": energy["dct"] / energy["total"],
        "refresh_seconds_svd": times["svd"],
        "refresh_seconds_dct": times["dct"],
        "refresh_speedup": speedup,
        "refresh_matrix": [n_time, n_time, n_time // 8],
        "eval_loss_svd": losses["svd"],
        "eval_loss_dct": losses["dct"],
        "relative_loss_gap": loss_gap,
        "model": {"hidden": hidden, "layers": layers, "rank": rank, "gap": gap, "steps": steps},
    }
    summary = (
        f"DCT captures {ratio:.3f}x the SVD basis's gradient energy over the run "
        f"({ratio_refresh:.3f}x at refresh steps); refresh {speedup:.0f}x faster at "
        f"{n_time}^2; held-out loss {losses['dct']:.4f} vs {losses['svd']:.4f} "
        f"({100 * loss_gap:+.2f}%)"
    )
    return ExperimentResult(measured=measured, passed=passed, summary=summary)
