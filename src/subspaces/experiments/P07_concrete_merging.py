r"""P07: Concrete subspace learning for multi-task model merging (Tang et al. 2023).

"Concrete Subspace Learning based Interference Elimination for Multi-task Model Fusion" (Tang,
Shen, Luo, Ding, Hu, Du & Tao; arXiv:2312.06173) learns one mask shared by all task vectors
(relaxed-Bernoulli samples of per-parameter logits, masked task vectors rescaled by the mask
mean) by a bi-level loop whose inner level merges (task arithmetic, or AdaMerging's entropy
minimisation on unlabeled test inputs) and whose outer level takes Adam steps on the mask logits
through the merge. On CLIP ViT-B/32 and 8 tasks it reports the ordering pretrained (48.1) <
weight averaging (66.0) < task arithmetic (70.2) < TIES (72.8) < layer-wise AdaMerging (80.9) <
Concrete layer-wise AdaMerging (83.4) < individual fine-tuned models (90.5), and Concrete task
arithmetic 77.3, i.e. +7.1 points over task arithmetic.

Protocol (CPU analogue, fixed before the first full run). Data: the bundled digits
(:func:`~subspaces.experiments._common.load_digits_tensors`, float32, standardized on the plain
training images, stratified split set by the seed); 20% of the training images are held out as a
labeled validation set. Task ``t`` (8 tasks) shows every image through one of the 8 dihedral
transforms of the 8x8 grid (4 rotations x optional transpose), i.e. a fixed permutation of the 64
inputs; the labels are the digits. Model: MLP ``64 -> 256 -> 256 -> 10`` (ReLU); the trunk is
the two hidden layers, the head the last layer. Pretraining: plain (untransformed) images, Adam
lr 1e-3, batch 32, 10 epochs. Fine-tuning: per task a copy of the pretrained model, trunk only
(head frozen, so all models share the pretrained head, as CLIP's zero-shot heads), Adam lr 1e-3,
batch 32, 5 epochs on the transformed training images. Merged trunks (head = pretrained head):

- pretrained; weight averaging (mean of the 8 fine-tuned trunks);
- task arithmetic (TA), ``lambda`` from {0.1, 0.2, ..., 1.0} by mean validation accuracy;
- TIES, density 0.2, ``consensus="sum"``, ``lambda`` chosen the same way;
- layer-wise AdaMerging: coefficients per task and tensor, init 0.3, clamped to [0, 1], Adam
  lr 1e-2 (fast 150 / full 400 steps), one batch of 64 unlabeled test inputs per task and step;
- Concrete TA: mask logits init 0, temperature 0.5, Adam lr 1e-2 (fast 150 / full 400 steps),
  inner TA with TA's validated ``lambda``; Concrete layer-wise AdaMerging: the same mask loop with
  AdaMerging's one-step inner update (lr 1e-2), then layer-wise AdaMerging (as above) with the
  learned mask; both evaluated with the continuous mask ``sigmoid(x)`` rescaled by its mean (the
  binary mask ``x >= 0`` is measured too, not judged);
- individual: each fine-tuned model on its own task.

Metric: test accuracy averaged over the 8 tasks, per seed; seeds: 3 (fast) or 5 (full).

Criterion (means over seeds of the per-seed mean test accuracy): pretrained < averaging < TA <
TIES < layer-wise AdaMerging <= Concrete layer-wise AdaMerging < individual (strict except where
written ``<=``), and Concrete TA >= TA + 0.03 (3 points). Measured also: per-seed values, bootstrap
intervals (:mod:`subspaces.experiments._stats`), the validated ``lambda``, the sign-conflict rate
and task-vector cosines, and the learned masks' sparsity.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from ..merging import (
    adamerging,
    concrete_merging,
    cosine_matrix,
    merge,
    sign_conflict_rate,
    task_vectors,
)
from ._common import load_digits_tensors, mlp, single_thread
from ._stats import paired_summary, seed_summary
from .registry import ExperimentResult, register

WIDTH = 256
TRUNK = ("0.weight", "0.bias", "2.weight", "2.bias")
LAMBDAS = tuple(round(0.1 * i, 1) for i in range(1, 11))
TIES_DENSITY = 0.2
PRETRAIN_EPOCHS = 10
FINETUNE_EPOCHS = 5
LR = 1e-3
BATCH = 32
ADA_INIT = 0.3
ADA_LR = 1e-2
MASK_LR = 1e-2
TEMPERATURE = 0.5
UNLABELED_BATCH = 64
METHODS = (
    "pretrained",
    "averaging",
    "task_arithmetic",
    "ties",
    "adamerging_layer",
    "concrete_adamerging_layer",
    "individual",
)


def dihedral_permutations(size: int = 8) -> list[Tensor]:
    """The 8 dihedral transforms of a ``size x size`` grid as permutations of its flat pixels.

    Args:
        size: side of the square image.

    Returns:
        Eight index tensors ``p`` with ``x_transformed = x[:, p]`` (the first is the identity).

    Example:
        >>> perms = dihedral_permutations(8)
        >>> len({tuple(p.tolist()) for p in perms}), perms[0].tolist() == list(range(64))
        (8, True)
    """
    grid = torch.arange(size * size).view(size, size)
    out = []
    for transpose in (False, True):
        g = grid.T if transpose else grid
        for k in range(4):
            out.append(torch.rot90(g, k, (0, 1)).reshape(-1).clone())
    return out


def _seeded(seed: int, *keys: int) -> int:
    value = seed
    for k in keys:
        value = value * 1_000_003 + k
    return value % (2**62)


def _train(
    model: nn.Module,
    X: Tensor,
    y: Tensor,
    *,
    epochs: int,
    seed: int,
    trunk_only: bool,
    lr: float = LR,
) -> None:
    params = [p for n, p in model.named_parameters() if not trunk_only or n in TRUNK]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = X.shape[0]
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for b in range(n // BATCH):
            idx = order[b * BATCH : (b + 1) * BATCH]
            opt.zero_grad(set_to_none=True)
            nn.functional.cross_entropy(model(X[idx]), y[idx]).backward()
            opt.step()
    model.eval()


@torch.no_grad()
def _accuracy(model: nn.Module, params: Mapping[str, Tensor], X: Tensor, y: Tensor) -> float:
    logits = functional_call(model, dict(params), (X,))
    return float((logits.argmax(-1) == y).double().mean())


def _mean_accuracy(
    model: nn.Module, params: Mapping[str, Tensor], data: list[tuple[Tensor, Tensor]]
) -> float:
    return sum(_accuracy(model, params, X, y) for X, y in data) / len(data)


class RandomBatches:
    """Endless random batches (without replacement inside a batch) of unlabeled inputs.

    Args:
        X: inputs.
        batch: batch size.
        seed: seeds the draws.

    Example:
        >>> it = iter(RandomBatches(torch.arange(10.0)[:, None], 4, seed=0))
        >>> next(it).shape
        torch.Size([4, 1])
    """

    def __init__(self, X: Tensor, batch: int, seed: int) -> None:
        self.X = X
        self.batch = min(batch, X.shape[0])
        self.gen = torch.Generator().manual_seed(seed)

    def __iter__(self) -> Iterator[Tensor]:
        while True:
            yield self.X[torch.randperm(self.X.shape[0], generator=self.gen)[: self.batch]]


def run_seed(s_seed: int, *, steps: int, **overrides: Any) -> dict[str, Any]:
    """One seed of the protocol (see the module docstring).

    Args:
        s_seed: the seed (data split, initialisation, shuffling, mask noise).
        steps: AdaMerging and Concrete mask steps.
        **overrides: protocol constants to change (``finetune_lr``, ``finetune_epochs``,
            ``ada_lr``, ``mask_lr``, ``ada_init``), for studies outside the registered run.

    Returns:
        Mean test accuracy per method (and Concrete TA variants), the validated lambdas, and
        diagnostics.

    Raises:
        ValueError: for an unknown override.
    """
    cfg = {
        "finetune_lr": LR,
        "finetune_epochs": FINETUNE_EPOCHS,
        "ada_lr": ADA_LR,
        "mask_lr": MASK_LR,
        "ada_init": ADA_INIT,
    }
    unknown = set(overrides) - set(cfg)
    if unknown:
        raise ValueError(f"unknown override {sorted(unknown)[0]!r}; expected some of {sorted(cfg)}")
    cfg.update(overrides)
    Xtr_all, ytr_all, Xte, yte = load_digits_tensors(dtype=torch.float32, seed=s_seed)
    gen = torch.Generator().manual_seed(_seeded(s_seed, 1))
    order = torch.randperm(Xtr_all.shape[0], generator=gen)
    n_val = Xtr_all.shape[0] // 5
    val_idx, fit_idx = order[:n_val], order[n_val:]
    Xfit, yfit, Xval, yval = Xtr_all[fit_idx], ytr_all[fit_idx], Xtr_all[val_idx], ytr_all[val_idx]
    perms = dihedral_permutations()

    model = mlp(64, WIDTH, 10, depth=2, seed=_seeded(s_seed, 2))
    _train(model, Xfit, yfit, epochs=PRETRAIN_EPOCHS, seed=_seeded(s_seed, 3), trunk_only=False)
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    finetuned = []
    for t, p in enumerate(perms):
        m = mlp(64, WIDTH, 10, depth=2)
        m.load_state_dict(base)
        _train(
            m,
            Xfit[:, p],
            yfit,
            epochs=int(cfg["finetune_epochs"]),
            seed=_seeded(s_seed, 4, t),
            trunk_only=True,
            lr=cfg["finetune_lr"],
        )
        finetuned.append({k: v.detach().clone() for k, v in m.state_dict().items()})
    test = [(Xte[:, p], yte) for p in perms]
    val = [(Xval[:, p], yval) for p in perms]
    vectors = task_vectors(finetuned, base, names=list(TRUNK))

    acc: dict[str, float] = {}
    acc["pretrained"] = _mean_accuracy(model, base, test)
    acc["individual"] = sum(
        _accuracy(model, ft, X, y) for ft, (X, y) in zip(finetuned, test, strict=True)
    ) / len(test)
    acc["averaging"] = _mean_accuracy(model, merge(finetuned, method="linear"), test)

    def validated(method: str, **kw: Any) -> tuple[float, float]:
        best_lam, best_val, best_state = LAMBDAS[0], -1.0, None
        for lam in LAMBDAS:
            state = merge(finetuned, method=method, base=base, lambda_=lam, **kw)  # type: ignore[arg-type]
            v = _mean_accuracy(model, state, val)
            if v > best_val:
                best_lam, best_val, best_state = lam, v, state
        assert best_state is not None
        return best_lam, _mean_accuracy(model, best_state, test)

    ta_lambda, acc["task_arithmetic"] = validated("task_arithmetic")
    ties_lambda, acc["ties"] = validated("ties", density=TIES_DENSITY, consensus="sum")

    unlabeled = [
        RandomBatches(X, UNLABELED_BATCH, _seeded(s_seed, 5, t)) for t, (X, _) in enumerate(test)
    ]
    am = adamerging(
        model,
        base,
        vectors,
        unlabeled,
        granularity="layer",
        init=cfg["ada_init"],
        steps=steps,
        lr=cfg["ada_lr"],
    )
    acc["adamerging_layer"] = _mean_accuracy(model, am.state_dict, test)

    common = dict(steps=steps, lr=cfg["mask_lr"], temperature=TEMPERATURE)
    cta = concrete_merging(
        model,
        base,
        vectors,
        unlabeled,
        inner="task_arithmetic",
        scale=ta_lambda,
        generator=torch.Generator().manual_seed(_seeded(s_seed, 6)),
        **common,  # type: ignore[arg-type]
    )
    acc["concrete_task_arithmetic"] = _mean_accuracy(model, cta.state_dict, test)
    binary = {k: v.detach() for k, v in base.items()}
    bmask = cta.mask.evaluation_mask("binary")
    for n in TRUNK:
        binary[n] = base[n] + ta_lambda * sum(bmask[n] * tv[n] for tv in vectors)
    acc["concrete_task_arithmetic_binary"] = _mean_accuracy(model, binary, test)

    cam = concrete_merging(
        model,
        base,
        vectors,
        unlabeled,
        inner="adamerging",
        granularity="layer",
        scale=cfg["ada_init"],
        inner_lr=cfg["ada_lr"],
        adamerging_steps=steps,
        generator=torch.Generator().manual_seed(_seeded(s_seed, 7)),
        **common,  # type: ignore[arg-type]
    )
    acc["concrete_adamerging_layer"] = _mean_accuracy(model, cam.state_dict, test)
    return {
        "accuracy": acc,
        "ta_lambda": ta_lambda,
        "ties_lambda": ties_lambda,
        "sign_conflict_rate": sign_conflict_rate(vectors),
        "mean_offdiag_cosine": float(
            (cosine_matrix(vectors).sum() - len(vectors)) / (len(vectors) * (len(vectors) - 1))
        ),
        "concrete_ta_mask_sparsity": cta.sparsity,
        "concrete_am_mask_sparsity": cam.sparsity,
    }


def ordering_checks(means: Mapping[str, float]) -> dict[str, bool]:
    """The criterion's comparisons on mean accuracies.

    Args:
        means: mean accuracy per method (the keys of :data:`METHODS` and
            ``"concrete_task_arithmetic"``).

    Returns:
        One boolean per comparison.

    Example:
        >>> m = dict(zip(METHODS, [0.1, 0.2, 0.3, 0.4, 0.5, 0.5, 0.9]))
        >>> all(ordering_checks({**m, "concrete_task_arithmetic": 0.33}).values())
        True
    """
    m = means
    return {
        "pretrained < averaging": m["pretrained"] < m["averaging"],
        "averaging < TA": m["averaging"] < m["task_arithmetic"],
        "TA < TIES": m["task_arithmetic"] < m["ties"],
        "TIES < AdaMerging(layer)": m["ties"] < m["adamerging_layer"],
        "AdaMerging(layer) <= Concrete AdaMerging(layer)": m["adamerging_layer"]
        <= m["concrete_adamerging_layer"],
        "Concrete AdaMerging(layer) < individual": m["concrete_adamerging_layer"] < m["individual"],
        "Concrete TA >= TA + 0.03": m["concrete_task_arithmetic"]
        >= m["task_arithmetic"] + 0.03 - 1e-12,
    }


@register(
    "P07",
    title="Concrete subspace merging",
    paper="Tang, Shen, Luo, Ding, Hu, Du & Tao 2023, Concrete subspace learning based "
    "interference elimination for multi-task model fusion (arXiv:2312.06173)",
    claim=(
        "A shared Concrete mask learned by bi-level entropy minimisation removes interference "
        "between task vectors: pretrained < averaging < task arithmetic < TIES < layer-wise "
        "AdaMerging <= Concrete layer-wise AdaMerging < individual models, and Concrete task "
        "arithmetic beats task arithmetic by several points"
    ),
    criterion=(
        "digits under the 8 dihedral transforms as 8 tasks, MLP 64-256-256-10 pretrained on "
        "plain digits, trunk fine-tuned per task (fast: 3 seeds, full: 5 seeds): on the means "
        "over seeds of the 8-task mean test accuracy, pretrained < averaging < TA < TIES < "
        "layer-wise AdaMerging <= Concrete layer-wise AdaMerging < individual, and Concrete TA "
        ">= TA + 0.03"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Merge eight digit-transform experts with every method and check the ordering.

    Args:
        fast: 3 seeds and 150 mask/AdaMerging steps if true, else 5 seeds and 400 steps.
        seed: base seed.

    Returns:
        The result (per-seed and mean accuracies, intervals, the verdict).
    """
    start = time.perf_counter()
    n_seeds, steps = (3, 150) if fast else (5, 400)
    per_seed: list[dict[str, Any]] = []
    with single_thread():
        for i in range(n_seeds):
            per_seed.append(run_seed(_seeded(seed, 100 + i), steps=steps))
    keys = list(per_seed[0]["accuracy"])
    values = {k: [r["accuracy"][k] for r in per_seed] for k in keys}
    summaries = {k: seed_summary(v) for k, v in values.items()}
    means = {k: s["mean"] for k, s in summaries.items()}
    checks = ordering_checks(means)
    passed = all(checks.values())
    measured: dict[str, Any] = {
        "accuracy": summaries,
        "mean_accuracy": means,
        "concrete_ta_minus_ta": paired_summary(
            values["concrete_task_arithmetic"], values["task_arithmetic"]
        ),
        "concrete_am_minus_am": paired_summary(
            values["concrete_adamerging_layer"], values["adamerging_layer"]
        ),
        "ta_lambda": [r["ta_lambda"] for r in per_seed],
        "ties_lambda": [r["ties_lambda"] for r in per_seed],
        "sign_conflict_rate": [r["sign_conflict_rate"] for r in per_seed],
        "mean_offdiag_cosine": [r["mean_offdiag_cosine"] for r in per_seed],
        "concrete_ta_mask_sparsity": [r["concrete_ta_mask_sparsity"] for r in per_seed],
        "concrete_am_mask_sparsity": [r["concrete_am_mask_sparsity"] for r in per_seed],
        "checks": checks,
        "n_seeds": n_seeds,
        "steps": steps,
        "seconds": time.perf_counter() - start,
    }
    order = " | ".join(f"{k} {means[k]:.3f}" for k in (*METHODS, "concrete_task_arithmetic"))
    failed = [k for k, v in checks.items() if not v]
    summary = f"mean 8-task test accuracy over {n_seeds} seeds: {order}; " + (
        "all comparisons hold"
        if passed
        else "failed: "
        + ", ".join(failed)
        + _reason(failed, means, sum(measured["sign_conflict_rate"]) / n_seeds)
    )
    return ExperimentResult(
        measured,
        passed,
        summary,
        headline=("concrete_ta_minus_ta", "concrete_am_minus_am"),
    )


def _reason(failed: list[str], means: Mapping[str, float], conflict: float) -> str:
    """The most likely reason for the failed comparisons, from the measured numbers.

    Args:
        failed: the names of the failed comparisons.
        means: mean accuracy per method.
        conflict: mean sign-conflict rate of the task vectors.

    Returns:
        A parenthesised explanation, or ``""`` when nothing failed.
    """
    notes = []
    entropy_failed = any("AdaMerging" in f or "Concrete" in f for f in failed)
    if entropy_failed and means["adamerging_layer"] < means["task_arithmetic"]:
        notes.append(
            "entropy minimisation, the objective of AdaMerging and of the mask, lowers accuracy "
            f"here (layer-wise AdaMerging {means['adamerging_layer']:.3f} vs TA "
            f"{means['task_arithmetic']:.3f}, Concrete TA {means['concrete_task_arithmetic']:.3f}):"
            " the merged trunks classify only about half of the transformed digits correctly, so "
            "sharpening their predictions on unlabeled inputs sharpens wrong ones too; the "
            "paper's CLIP merges start near 70% accuracy, where low entropy tracks accuracy"
        )
    elif entropy_failed:
        notes.append("the entropy-trained coefficients or mask do not add accuracy over TA here")
    if any(f.startswith("TA < TIES") for f in failed):
        notes.append(
            f"TIES (density {TIES_DENSITY}) is below TA: the task vectors disagree in sign on "
            f"{100 * conflict:.0f}% of the entries two or more of them change (each task "
            "permutes the inputs, so the first-layer updates conflict), and trimming plus sign "
            "election discards most of each task's update"
        )
    if any(f.startswith("pretrained") or f.startswith("averaging") for f in failed):
        notes.append("merging does not beat the pretrained trunk or averaging here")
    return (" (" + "; ".join(notes) + ")") if notes else ""
