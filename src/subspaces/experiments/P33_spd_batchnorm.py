r"""P33: SPD batch normalization under generalized Bures-Wasserstein geometry (Wang et al. 2025).

Wang, Jin, Chen, Luo and Wu (CVPR 2025, "Learning to normalize on the SPD manifold under
Bures-Wasserstein geometry", arXiv:2504.00660) normalize SPD features by centering them under the
(generalized, power-deformed) Bures-Wasserstein metric and report gains over affine-invariant
Riemannian batch normalization (Brooks et al. 2019), notably for ill-conditioned matrices.

Synthetic task (stated in advance). ``C = 3`` classes of ``n = 12``-dimensional covariance
matrices. A shared orthogonal basis ``U_0`` and spectrum ``lambda_j`` log-spaced from ``1e-3``
to ``10`` (condition number ``1e4``) define the base covariance; class ``c`` rotates it by
``U_c = U_0 exp(delta K_c)`` (``K_c`` a fixed random skew matrix, ``delta = 0.02``). Each sample
draws a per-sample spectrum jitter ``lambda_j exp(0.5 xi_j)``, then ``T = 3 n`` Gaussian vectors
with that covariance, and returns their sample covariance plus ``1e-6 I``; a random global scale
``exp(N(0, 0.5^2))`` multiplies each matrix (a nuisance). Train and test sets are drawn
independently (``N_train`` = 300, ``N_test`` = 600 in the fast run).

Network: BiMap(12 -> 6) -> ReEig(1e-4) -> [SPDBatchNorm] -> LogEig -> Linear(21 -> 3), float64,
Adam (lr 0.02), batches of 30, the same initialization seed for all three variants: no batch norm,
affine-invariant batch norm (``"ai"``) and generalized-BW batch norm (``"gbw"``, ``theta = 0.5``).
Centering only (no dispersion normalization), a learned SPD bias, running mean in evaluation.

The verdict requires GBW to win on the test accuracy after the last epoch AND on the mean over
the last three epochs. Single epochs are noisy (an evaluation with a lagging running mean
occasionally collapses one seed's accuracy): the first version judged the last epoch alone, and its
fast run passed at seed 0 only because one affine-invariant run collapsed at its last epoch
(last-three-epoch means: AI 0.939, none 0.897, GBW 0.878). Requiring both is stricter, not looser;
with it the claim does not reproduce at this scale (the implementation centres but does not
normalize dispersion, and lacks the paper's SPD congruence parameter).
"""

from __future__ import annotations

import time
from typing import Any

import torch
from torch import Tensor, nn

from ..geometry import BiMap, LogEig, ReEig, SPDBatchNorm
from ._common import figure_png, single_thread
from .registry import ExperimentResult, register

N = 12
N_OUT = 6
CLASSES = 3
DELTA = 0.02
JITTER = 0.5
SCALE_STD = 0.5
COND_LOW, COND_HIGH = -3.0, 1.0  # log10 of the smallest and largest eigenvalue
THETA = 0.5
LR = 0.02
BATCH = 30
VARIANTS = ("none", "ai", "gbw")


def _seeded(seed: int, *keys: int) -> int:
    value = seed
    for k in keys:
        value = value * 1_000_003 + k
    return value % (2**62)


def make_covariances(
    num: int, seed: int, *, task_seed: int = 0, n: int = N
) -> tuple[Tensor, Tensor]:
    """Draw the ill-conditioned covariance classification task of this module.

    Args:
        num: number of matrices (class ``i % C`` for matrix ``i``).
        seed: seeds the samples.
        task_seed: seeds the class generators (shared basis and class rotations).
        n: matrix size.

    Returns:
        ``(X, y)``: float64 SPD matrices ``(num, n, n)`` and long labels.

    Example:
        >>> X, y = make_covariances(6, seed=0)
        >>> X.shape, y.tolist()
        (torch.Size([6, 12, 12]), [0, 1, 2, 0, 1, 2])
    """
    g_task = torch.Generator().manual_seed(_seeded(task_seed, 33))
    U0 = torch.linalg.qr(torch.randn(n, n, generator=g_task, dtype=torch.float64))[0]
    rots = []
    for _ in range(CLASSES):
        K = torch.randn(n, n, generator=g_task, dtype=torch.float64)
        rots.append(U0 @ torch.linalg.matrix_exp(DELTA * (K - K.T) / 2))
    U = torch.stack(rots)
    lam = torch.logspace(COND_LOW, COND_HIGH, n, dtype=torch.float64)
    g = torch.Generator().manual_seed(_seeded(seed, 34))
    y = torch.arange(num) % CLASSES
    spec = lam * torch.exp(JITTER * torch.randn(num, n, generator=g, dtype=torch.float64))
    A = U[y] * spec.sqrt().unsqueeze(-2)  # Sigma = A A^T
    T = 3 * n
    Z = A @ torch.randn(num, n, T, generator=g, dtype=torch.float64)
    X = Z @ Z.mT / T + 1e-6 * torch.eye(n, dtype=torch.float64)
    scale = torch.exp(SCALE_STD * torch.randn(num, generator=g, dtype=torch.float64))
    return X * scale[:, None, None], y


class SPDNet(nn.Module):
    """BiMap -> ReEig -> [SPDBatchNorm] -> LogEig -> Linear.

    Args:
        variant: ``"none"``, ``"ai"`` or ``"gbw"``.
        seed: initialization seed (the same for all variants).
        n: input size.
        n_out: BiMap output size.
        theta: GBW power.

    Example:
        >>> net = SPDNet("gbw", seed=0)
        >>> X, _ = make_covariances(6, seed=0)
        >>> net(X).shape
        torch.Size([6, 3])
    """

    def __init__(
        self, variant: str, seed: int, n: int = N, n_out: int = N_OUT, theta: float = THETA
    ) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.bimap = BiMap(n, n_out, seed=seed)
        self.reeig = ReEig(1e-4)
        self.bn: nn.Module = (
            nn.Identity() if variant == "none" else SPDBatchNorm(n_out, metric=variant, theta=theta)
        )
        self.logeig = LogEig(n_out)
        gen = torch.Generator().manual_seed(_seeded(seed, 5))
        self.linear = nn.Linear(n_out * (n_out + 1) // 2, CLASSES)
        with torch.no_grad():
            self.linear.weight.copy_(0.1 * torch.randn(self.linear.weight.shape, generator=gen))
            self.linear.bias.zero_()
        self.double()

    def forward(self, X: Tensor) -> Tensor:
        """Class logits.

        Args:
            X: ``(k, n, n)`` SPD.

        Returns:
            ``(k, C)`` logits.
        """
        return self.linear(self.logeig(self.bn(self.reeig(self.bimap(X)))))


def train_variant(
    variant: str,
    data: tuple[Tensor, Tensor, Tensor, Tensor],
    seed: int,
    epochs: int,
) -> dict[str, Any]:
    """Train one variant and measure its accuracies.

    Args:
        variant: ``"none"``, ``"ai"`` or ``"gbw"``.
        data: ``(X_train, y_train, X_test, y_test)``.
        seed: initialization and shuffling seed.
        epochs: training epochs.

    Returns:
        ``variant``, ``seed``, ``train_accuracy``, ``test_accuracy``, ``final_loss``, ``curve``
        (test accuracy per epoch) and ``seconds``.
    """
    start = time.perf_counter()
    Xtr, ytr, Xte, yte = data
    net = SPDNet(variant, seed)
    opt = torch.optim.Adam(net.parameters(), lr=LR)
    gen = torch.Generator().manual_seed(_seeded(seed, 6))
    curve = []
    loss = torch.tensor(float("nan"))
    for _ in range(epochs):
        net.train()
        perm = torch.randperm(Xtr.shape[0], generator=gen)
        for i in range(0, Xtr.shape[0] - BATCH + 1, BATCH):
            idx = perm[i : i + BATCH]
            loss = nn.functional.cross_entropy(net(Xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        curve.append(_accuracy(net, Xte, yte))
    return {
        "variant": variant,
        "seed": seed,
        "train_accuracy": _accuracy(net, Xtr, ytr),
        "test_accuracy": curve[-1],
        "final_loss": float(loss.detach()),
        "curve": curve,
        "seconds": time.perf_counter() - start,
    }


def _accuracy(net: nn.Module, X: Tensor, y: Tensor) -> float:
    net.eval()
    with torch.no_grad():
        return float((net(X).argmax(-1) == y).double().mean())


def _plot(runs: list[dict[str, Any]]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.0, 3.8))
    colors = {"none": "C7", "ai": "C0", "gbw": "C3"}
    for i, r in enumerate(runs):
        first = all(q["variant"] != r["variant"] for q in runs[:i])
        ax.plot(
            range(1, len(r["curve"]) + 1),
            r["curve"],
            color=colors[r["variant"]],
            alpha=0.8,
            lw=1.2,
            label=r["variant"] if first else None,
        )
    ax.set_xlabel("epoch")
    ax.set_ylabel("test accuracy")
    ax.set_title("Ill-conditioned covariance classification: SPD batch norm")
    ax.legend()
    fig.tight_layout()
    return figure_png(fig)


@register(
    "P33",
    title="SPD batch norm under (generalized) Bures-Wasserstein geometry",
    paper="Wang, Jin, Chen, Luo & Wu 2025, Learning to normalize on the SPD manifold under "
    "Bures-Wasserstein geometry (CVPR 2025, arXiv:2504.00660)",
    claim=(
        "On ill-conditioned covariance classification, generalized-BW SPD batch normalization "
        "beats affine-invariant batch normalization and no normalization"
    ),
    criterion=(
        "on the synthetic task of P33_spd_batchnorm (3 classes of 12x12 covariances, condition "
        "number ~1e4), an SPDNet BiMap(12->6)-ReEig-[BN]-LogEig-Linear trained with the same "
        "seeds (fast: 3 seeds on one task draw; full: 5 seeds on each of two task draws): mean "
        "test accuracy of GBW BN (theta=0.5) > AI BN and > no BN, both at the final epoch and "
        "averaged over the last three epochs"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train the three variants over several seeds and compare their test accuracies.

    Args:
        fast: one draw of the task, 3 seeds, 300 training matrices and 15 epochs if true; else
            two draws of the task (task seeds ``seed`` and ``seed + 1``) with 5 seeds each, 600
            training matrices and 20 epochs.
        seed: seeds the data and the initializations.

    Returns:
        The result (accuracies per variant and seed, means, the verdict and a figure).
    """
    start = time.perf_counter()
    n_seeds, n_train, epochs = (3, 300, 15) if fast else (5, 600, 20)
    tasks = (seed,) if fast else (seed, seed + 1)
    runs: list[dict[str, Any]] = []
    conds = []
    with single_thread():
        for task in tasks:
            Xtr, ytr = make_covariances(n_train, _seeded(task, 1), task_seed=task)
            Xte, yte = make_covariances(600, _seeded(task, 2), task_seed=task)
            data = (Xtr, ytr, Xte, yte)
            conds.append(torch.linalg.eigvalsh(Xtr))
            for s in range(n_seeds):
                for v in VARIANTS:
                    runs.append(
                        {"task": task, **train_variant(v, data, _seeded(task, 10 + s), epochs)}
                    )
    cond = torch.cat(conds)
    n_seeds *= len(tasks)  # runs per variant
    mean = {
        v: sum(r["test_accuracy"] for r in runs if r["variant"] == v) / n_seeds for v in VARIANTS
    }
    last3 = {  # robust to a single collapsed evaluation epoch
        v: sum(sum(r["curve"][-3:]) / 3 for r in runs if r["variant"] == v) / n_seeds
        for v in VARIANTS
    }
    passed = all(m["gbw"] > m["ai"] and m["gbw"] > m["none"] for m in (mean, last3))
    measured: dict[str, Any] = {
        "mean_test_accuracy": mean,
        "test_accuracy": {
            v: [r["test_accuracy"] for r in runs if r["variant"] == v] for v in VARIANTS
        },
        "mean_train_accuracy": {
            v: sum(r["train_accuracy"] for r in runs if r["variant"] == v) / n_seeds
            for v in VARIANTS
        },
        "mean_test_accuracy_last3_epochs": last3,
        "median_condition_number": float((cond[:, -1] / cond[:, 0]).median()),
        "runs": runs,
        "n_train": n_train,
        "epochs": epochs,
        "seconds": time.perf_counter() - start,
    }
    summary = (
        f"mean test accuracy over {n_seeds} runs ({len(tasks)} task draw(s)): "
        f"GBW BN {mean['gbw']:.3f}, AI BN "
        f"{mean['ai']:.3f}, no BN {mean['none']:.3f} (median condition number "
        f"{measured['median_condition_number']:.2g}); "
        + ("GBW wins" if passed else "GBW does not beat both baselines at this scale")
        + "; per seed: "
        + ", ".join(
            f"{v} " + "/".join(f"{a:.2f}" for a in measured["test_accuracy"][v]) for v in VARIANTS
        )
        + "; mean over the last 3 epochs (also required): "
        + ", ".join(f"{v} {last3[v]:.3f}" for v in VARIANTS)
    )
    return ExperimentResult(measured, passed, summary, {"test_accuracy": _plot(runs)})
