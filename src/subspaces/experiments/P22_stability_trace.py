r"""P22: dynamical stability bounds the Hessian trace at SGD minima (Wu & Su, ICML 2023).

Claim (Wu & Su 2023, arXiv:2305.17490): at a global minimum of an interpolating model trained
with the square loss, linear stability for SGD forces ``tr(H) <= 2/eta``, whereas stability for
gradient descent (GD) only forces ``lambda_max(H) <= 2/eta``; GD minima can therefore be much
sharper in trace than any minimum SGD can stay at, and a larger learning rate gives a flatter
(smaller-trace) SGD minimum.

Threshold, for the loss actually trained here
---------------------------------------------
Both optimizers minimize the paper's loss

.. math:: L(\theta) = \frac{1}{2n}\sum_{i=1}^n (f_i(\theta) - y_i)^2
          = \frac1n \sum_i \ell_i, \qquad \ell_i = \tfrac12 (f_i - y_i)^2,

and every Hessian below is the Hessian of this same ``L`` (``HessianOperator`` with the
half-mean-square loss; the library's ``"mse"`` is ``mean (f - y)^2``, whose Hessian is twice as
large, and would move every threshold by a factor 2). At an interpolating minimum ``f_i = y_i``
the residual term vanishes and, with ``g_i = grad f_i``,

.. math:: H = G = \frac1n \sum_i g_i g_i^T, \qquad \operatorname{tr} H = \frac1n\sum_i \|g_i\|^2 .

*GD* with step ``eta`` linearized at the minimum is ``delta <- (I - eta H) delta``: stable iff
``eta * lambda_max(H) <= 2``.

*SGD* with batch ``B`` drawn uniformly with replacement is ``delta <- (I - eta H_xi) delta`` with
``H_xi = (1/B) sum_{k<=B} g_{i_k} g_{i_k}^T`` and ``E H_xi = H``. Mean-square stability means
``E ||delta_t||^2`` stays bounded for every start, i.e. the map
``T(M) = E[(I - eta H_xi) M (I - eta H_xi)]`` has spectral radius ``<= 1``. ``T`` is self-adjoint
for the Frobenius inner product, so its spectral radius is at least any Rayleigh quotient; with
``M = I``:

.. math:: p - 2\eta \operatorname{tr} H + \eta^2\, E \operatorname{tr} H_\xi^2 \le p
          \iff \eta\, E \operatorname{tr} H_\xi^2 \le 2 \operatorname{tr} H .

With replacement, ``E tr H_xi^2 = (1/B) E||g_i||^4 + (1 - 1/B) ||H||_F^2 >= (tr H)^2 / B`` (Jensen:
``E||g_i||^4 >= (E||g_i||^2)^2 = (tr H)^2``), hence the necessary condition

.. math:: \operatorname{tr} H \le \frac{2B}{\eta}\quad\text{and, sharper for } B = 1,\quad
          \frac{\eta\, E_i \|g_i\|^4}{2 \operatorname{tr} H} \le 1 .

For ``B = 1`` (used here) this is the paper's headline ``tr(H) <= 2/eta``. (The derivation is
ours: only the paper's abstract was available to us, which states ``tr(H) <= 2/eta`` without a
batch size; its exact stability definition and batch-``B`` statement are not verified here. The
derivation itself is checked numerically in the tests, on the exact ``T`` of a linear model.)
The reported stability ratios
are ``eta * lambda_max / 2`` (GD bound) and ``eta * tr(H) / 2`` (SGD bound); each must be
``<= 1`` at a minimum that the corresponding optimizer can stay at.

Protocol
--------
Data: ``n`` inputs uniform on the sphere of radius ``sqrt(d)`` in ``d = 10`` dimensions, labels
from a random 4-neuron ReLU teacher, standardized. Model: ``Linear(d, m) -> ReLU -> Linear(m, 1)``
with PyTorch's default initialization (one seeded initialization shared by every run).
Training: full-batch GD and SGD with batch size 1 (indices drawn with replacement, as in the
derivation), each for every ``eta`` of the grid, from the same initialization, with the step
ramped linearly from 0 to ``eta`` over the first 10 epochs (10 GD steps, ``10 n`` SGD steps) and
constant afterwards, until ``L <= 2e-5`` (near interpolation; initial ``L ~ 0.5``). Fast:
``n = m = 100``, ``eta in {0.04, 0.08, 0.12}``, one repeat; full: ``n = m = 200``,
``eta in {0.04, 0.06, 0.08, 0.10, 0.12}``, three repeats (seeds ``seed``, ``seed + 1000``,
``seed + 2000``: new data, initialization and SGD index stream each).

Pilot runs fixed three choices before the criterion was frozen: with Gaussian inputs and no
warm-up, SGD(B=1) blew up in its first steps at ``eta >= 0.15-0.2`` (large initial residuals, a
wide spread of ``||g_i||^2``), so inputs are put on the sphere and the step is warmed up; even so
SGD diverges at ``eta = 0.15-0.16`` for some seeds instead of finding a flatter minimum, so the
grid stops at 0.12, and "larger eta, flatter SGD minimum" is claimed only where SGD converges.

Measured at each final iterate (float64): ``lambda_max(H)`` by the certified Lanczos solver
(``top_eigen``, relative residual ``1e-6``) on ``HessianOperator``, and ``tr(H)`` exactly: for a
two-layer ReLU network every diagonal entry of ``grad^2 f_i`` is zero (``f`` is affine in each
single parameter, ReLU'' = 0), so ``tr H = (1/n) sum_i ||g_i||^2`` holds exactly at every
``theta``, computed from per-sample gradients; the identity is checked in every run (first
repeat, last GD minimum) against the diagonal of the Hessian from ``P`` unit-vector products.

Criterion, in every repeat: every run converges (``L <= 2e-5``); every GD minimum has
``eta * lambda_max / 2 <= 1.05``; every SGD minimum has ``eta * tr(H) / 2 <= 1.05`` (5 % slack for
the finite, non-zero final loss); at least one GD minimum has ``eta * tr(H) / 2 > 1.05`` (it
violates the SGD bound); ``tr(H)`` at the SGD minima strictly decreases along the ``eta`` grid;
and the trace identity holds to ``1e-8``.

Observed (seed 0; full repeats agree): fast ``eta*tr/2`` at the SGD minima 0.57/0.78/0.75, at the
GD minima 0.60/1.21/1.81 with ``eta*lambda_max/2`` 0.19/0.38/0.57; full: SGD 0.74-0.83 at every
``eta``, GD up to 3.1, and GD at ``eta = 0.12`` sits at its own edge (``eta*lambda_max/2``
0.95-1.00). Runtimes on the shared 2-core machine: fast ~5 s, full ~45 s.
"""

from __future__ import annotations

import io
import itertools
import math
import time
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from .._parallel import grid_settings, map_tasks
from ._common import single_thread
from .registry import ExperimentResult, register

INPUT_DIM = 10
TEACHER_WIDTH = 4
WARMUP_EPOCHS = 10
LOSS_TOL = 2e-5
DIVERGED_LOSS = 1e3
SLACK = 0.05
EIG_RTOL = 1e-6
BATCH_SIZE = 1
MAX_TRACE_IDENTITY_ERROR = 1e-8


@dataclass(frozen=True)
class _Setting:
    n: int
    width: int
    etas: tuple[float, ...]
    max_gd_steps: int
    max_sgd_epochs: int
    repeats: int


FAST = _Setting(
    n=100, width=100, etas=(0.04, 0.08, 0.12), max_gd_steps=20000, max_sgd_epochs=800, repeats=1
)
FULL = _Setting(
    n=200,
    width=200,
    etas=(0.04, 0.06, 0.08, 0.10, 0.12),
    max_gd_steps=40000,
    max_sgd_epochs=1000,
    repeats=3,
)


def half_mse(outputs: Tensor, targets: Tensor) -> Tensor:
    """The paper's loss ``(1/2n) sum_i (f_i - y_i)^2`` (half the library's ``"mse"``).

    Returns:
        The scalar loss.

    Example:
        >>> half_mse(torch.tensor([1.0, 3.0]), torch.tensor([0.0, 0.0])).item()
        2.5
    """
    return 0.5 * ((outputs - targets.to(outputs.dtype).reshape(outputs.shape)) ** 2).mean()


def sgd_trace_threshold(eta: float, batch_size: int = 1) -> float:
    """The largest ``tr(H)`` of a minimum that is mean-square stable for SGD: ``2 B / eta``.

    For the loss :func:`half_mse` (see the module docstring for the derivation).

    Args:
        eta: learning rate.
        batch_size: SGD batch size ``B`` (sampled with replacement).

    Returns:
        ``2 * batch_size / eta``.

    Raises:
        ValueError: for a non-positive ``eta`` or ``batch_size``.

    Example:
        >>> sgd_trace_threshold(0.1), sgd_trace_threshold(0.1, batch_size=4)
        (20.0, 80.0)
    """
    if not eta > 0:
        raise ValueError(f"eta must be positive, got {eta}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    return 2.0 * batch_size / eta


def stability_ratios(
    eta: float, lambda_max: float, trace: float, batch_size: int = 1
) -> dict[str, float]:
    """The GD and SGD stability ratios; each must be ``<= 1`` at a minimum the optimizer keeps.

    Args:
        eta: learning rate.
        lambda_max: top Hessian eigenvalue of :func:`half_mse`'s Hessian.
        trace: its trace.
        batch_size: SGD batch size.

    Returns:
        ``{"gd": eta * lambda_max / 2, "sgd": trace / sgd_trace_threshold(eta, batch_size)}``.

    Example:
        >>> stability_ratios(0.1, lambda_max=10.0, trace=30.0)
        {'gd': 0.5, 'sgd': 1.5}
    """
    return {"gd": eta * lambda_max / 2.0, "sgd": trace / sgd_trace_threshold(eta, batch_size)}


def stability_quantities(
    model: nn.Module, X: Tensor, y: Tensor, *, generator: torch.Generator | None = None
) -> dict[str, float]:
    """Curvature of ``half_mse(model(X), y)`` that decides GD and SGD stability.

    ``lambda_max`` comes from the certified Lanczos solver on :class:`HessianOperator`. The trace
    is returned as ``trace_ggn = (1/n) sum_i ||grad f_i||^2`` (exact per-sample gradients), which
    equals ``tr(H)`` exactly for models whose outputs have a zero-diagonal parameter Hessian
    (linear models, two-layer ReLU networks) and at any interpolating minimum.

    Args:
        model: a model with scalar (or ``(n, 1)``) outputs.
        X: inputs ``(n, d)``.
        y: targets ``(n,)`` or ``(n, 1)``.
        generator: randomness of the Lanczos start vector.

    Returns:
        ``loss``, ``lambda_max``, ``trace_ggn``, ``grad_norm4_mean`` (``E_i ||grad f_i||^4``) and
        ``lanczos_matvecs``.

    Example:
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> model = nn.Linear(2, 1, bias=False).double()
        >>> q = stability_quantities(model, X, torch.zeros(2, dtype=torch.float64),
        ...                          generator=torch.Generator().manual_seed(0))
        >>> round(q["lambda_max"], 8), round(q["trace_ggn"], 8)  # H = X^T X / n = diag(0.5, 2)
        (2.0, 2.5)
    """
    from torch.func import functional_call, grad, vmap

    from ..curvature import HessianOperator, top_eigen

    X = X.to(torch.float64)
    y = y.to(torch.float64).reshape(X.shape[0], 1)
    H = HessianOperator(model, half_mse, [(X, y)], dtype=torch.float64)
    eig = top_eigen(H, k=1, rtol=EIG_RTOL, generator=generator)
    params = {k: v.detach().to(torch.float64) for k, v in model.named_parameters()}

    def output(p: dict[str, Tensor], x: Tensor) -> Tensor:
        return functional_call(model, p, (x.unsqueeze(0),)).reshape(())

    per_sample = vmap(grad(output), in_dims=(None, 0))(params, X)
    sq = sum((g.reshape(X.shape[0], -1) ** 2).sum(1) for g in per_sample.values())
    assert isinstance(sq, Tensor)
    with torch.no_grad():
        loss = half_mse(functional_call(model, params, (X,)), y).item()
    return {
        "loss": loss,
        "lambda_max": float(eig.eigenvalues[0]),
        "trace_ggn": float(sq.mean()),
        "grad_norm4_mean": float((sq**2).mean()),
        "lanczos_matvecs": int(eig.num_matvecs),
    }


def hessian_trace_exact(model: nn.Module, X: Tensor, y: Tensor, block: int = 256) -> float:
    """``tr(H)`` of ``half_mse`` from the diagonal of ``H`` (``P`` unit-vector products, exact).

    Args:
        model: the model.
        X: inputs.
        y: targets.
        block: unit vectors per product block.

    Returns:
        The trace, exact up to rounding.

    Example:
        >>> X = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
        >>> model = nn.Linear(2, 1, bias=False).double()
        >>> hessian_trace_exact(model, X, torch.zeros(2, dtype=torch.float64))
        2.5
    """
    from ..curvature import HessianOperator

    X = X.to(torch.float64)
    y = y.to(torch.float64).reshape(X.shape[0], 1)
    H = HessianOperator(model, half_mse, [(X, y)], dtype=torch.float64)
    p = H.shape[0]
    total = 0.0
    for start in range(0, p, block):
        stop = min(p, start + block)
        cols = torch.arange(start, stop)
        E = torch.zeros(p, stop - start, dtype=torch.float64)
        E[cols, cols - start] = 1.0
        total += float(torch.diagonal(H.matmat(E)[start:stop]).sum())
    return total


# ----- data, model and the two optimizers --------------------------------------------------------


def make_data(n: int, seed: int, d: int = INPUT_DIM) -> tuple[Tensor, Tensor]:
    """Inputs on the sphere of radius ``sqrt(d)``, standardized labels of a random ReLU teacher."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    X = X / X.norm(dim=1, keepdim=True) * math.sqrt(d)
    W = torch.randn(TEACHER_WIDTH, d, generator=g, dtype=torch.float64) / math.sqrt(d)
    a = torch.randn(TEACHER_WIDTH, generator=g, dtype=torch.float64)
    y = torch.relu(X @ W.T) @ a
    return X, (y - y.mean()) / y.std()


def make_model(width: int, seed: int, d: int = INPUT_DIM) -> nn.Sequential:
    """``Linear(d, width) -> ReLU -> Linear(width, 1)`` in float64, PyTorch's default init."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, width), nn.ReLU(), nn.Linear(width, 1)).double()


def _layers(model: nn.Sequential) -> tuple[nn.Linear, nn.Linear]:
    first, last = model[0], model[2]
    assert isinstance(first, nn.Linear) and isinstance(last, nn.Linear)
    return first, last


def _stacked(model: nn.Sequential, copies: int) -> list[Tensor]:
    first, last = _layers(model)
    parts = (first.weight, first.bias, last.weight.reshape(-1), last.bias.reshape(()))
    return [p.detach().unsqueeze(0).repeat(copies, *([1] * p.ndim)).clone() for p in parts]


def _to_model(params: list[Tensor], index: int, width: int) -> nn.Sequential:
    model = make_model(width, 0)
    first, last = _layers(model)
    W, b, a, c = (p[index] for p in params)
    with torch.no_grad():
        first.weight.copy_(W)
        first.bias.copy_(b)
        last.weight.copy_(a.reshape(1, -1))
        last.bias.copy_(c.reshape(1))
    return model


def _sgd_step(params: list[Tensor], X: Tensor, y: Tensor, lr: Tensor) -> Tensor:
    """One step on ``half_mse`` over the batch ``(X, y)`` for ``E`` stacked networks in place.

    ``params = [W (E, m, d), b (E, m), a (E, m), c (E,)]``; ``lr`` has shape ``(E,)``. Gradients
    are written out (checked against autograd in the tests): for ``f = a . relu(W x + b) + c``,
    ``dL/da = mean r h``, ``dL/dc = mean r``, ``dL/dW = mean (r a * 1[z > 0]) x^T``.

    Returns:
        The residuals ``f - y`` before the step, shape ``(E, batch)``.
    """
    W, b, a, c = params
    Xe = X.expand(W.shape[0], -1, -1)
    z = torch.baddbmm(b.unsqueeze(1), Xe, W.transpose(1, 2))
    h = z.clamp(min=0)
    r = torch.bmm(h, a.unsqueeze(2)).squeeze(2) + c.unsqueeze(1) - y
    dz = (r.unsqueeze(2) * a.unsqueeze(1)) * (z > 0)
    s = lr / X.shape[0]
    W.sub_(s[:, None, None] * torch.bmm(dz.transpose(1, 2), Xe))
    b.sub_(s[:, None] * dz.sum(1))
    a.sub_(s[:, None] * torch.bmm(r.unsqueeze(1), h).squeeze(1))
    c.sub_(s * r.sum(1))
    return r


def _losses(params: list[Tensor], X: Tensor, y: Tensor) -> Tensor:
    W, b, a, c = params
    h = torch.baddbmm(b.unsqueeze(1), X.expand(W.shape[0], -1, -1), W.transpose(1, 2)).clamp(min=0)
    f = torch.bmm(h, a.unsqueeze(2)).squeeze(2) + c.unsqueeze(1)
    return 0.5 * ((f - y) ** 2).mean(1)


@dataclass
class _Run:
    model: nn.Sequential | None
    status: str  # "converged", "diverged", "budget"
    loss: float
    steps: int


def _train_gd(
    model: nn.Sequential, X: Tensor, y: Tensor, etas: tuple[float, ...], max_steps: int
) -> list[_Run]:
    """Full-batch GD from ``model``'s weights, one run per ``eta`` (warm-up over 10 steps)."""
    width = _layers(model)[0].out_features
    runs = []
    for eta in etas:
        params = _stacked(model, 1)
        status, loss, steps = "budget", math.nan, max_steps
        for t in range(max_steps):
            lr = torch.full((1,), eta * min(1.0, (t + 1) / WARMUP_EPOCHS), dtype=torch.float64)
            r = _sgd_step(params, X, y, lr)
            loss = 0.5 * float((r**2).mean())
            if not math.isfinite(loss) or loss > DIVERGED_LOSS:
                status, steps = "diverged", t
                break
            if loss <= LOSS_TOL:  # the loss before this step, which the final check repeats
                status, steps = "converged", t
                break
        final = float(_losses(params, X, y)[0])
        if status == "converged" and not final <= LOSS_TOL:
            status = "budget"
        runs.append(
            _Run(
                _to_model(params, 0, width) if status != "diverged" else None, status, final, steps
            )
        )
    return runs


def _train_sgd(
    model: nn.Sequential,
    X: Tensor,
    y: Tensor,
    etas: tuple[float, ...],
    max_epochs: int,
    generator: torch.Generator,
) -> list[_Run]:
    """SGD with batch size 1 (with replacement), all ``eta`` at once on one index stream."""
    n, width, E = X.shape[0], _layers(model)[0].out_features, len(etas)
    params = _stacked(model, E)
    eta = torch.tensor(etas, dtype=torch.float64)
    active = torch.ones(E, dtype=torch.float64)
    status = ["budget"] * E
    epochs = [max_epochs] * E
    for epoch in range(max_epochs):
        for k, i in enumerate(torch.randint(0, n, (n,), generator=generator).tolist()):
            ramp = min(1.0, (epoch * n + k + 1) / (WARMUP_EPOCHS * n))
            _sgd_step(params, X[i : i + 1], y[i : i + 1], eta * ramp * active)
        loss = _losses(params, X, y)
        for e in range(E):
            if status[e] != "budget":
                continue
            value = float(loss[e])
            if not math.isfinite(value) or value > DIVERGED_LOSS:
                status[e], epochs[e] = "diverged", epoch + 1
                for p in params:
                    p[e] = 0.0  # stop the overflow; the run is reported as diverged
                active[e] = 0.0
            elif value <= LOSS_TOL:
                status[e], epochs[e] = "converged", epoch + 1
                active[e] = 0.0
        if not bool(active.any()):
            break
    final = _losses(params, X, y)
    return [
        _Run(
            _to_model(params, e, width) if status[e] != "diverged" else None,
            status[e],
            float(final[e]) if status[e] != "diverged" else math.inf,
            epochs[e],
        )
        for e in range(E)
    ]


# ----- figure ------------------------------------------------------------------------------------


def _plot(etas: list[float], repeats: list[dict[str, Any]], n: int, width: int) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, bx) = plt.subplots(1, 2, figsize=(10.5, 4.2))
    styles = {"gd": ("C3", "GD"), "sgd": ("C0", "SGD (B=1)")}
    for k, rep in enumerate(repeats):
        alpha = 1.0 if k == 0 else 0.35
        for opt, (color, name) in styles.items():
            rows = rep[opt]

            def label(text: str, first: bool = k == 0) -> str | None:
                return text if first else None

            ax.plot(
                etas,
                [r["ratio_sgd_bound"] for r in rows],
                "o-",
                color=color,
                alpha=alpha,
                label=label(f"{name}: η·tr(H)/2"),
            )
            ax.plot(
                etas,
                [r["ratio_gd_bound"] for r in rows],
                "s--",
                color=color,
                mfc="none",
                alpha=alpha,
                label=label(f"{name}: η·λmax/2"),
            )
            bx.plot(
                etas,
                [r["trace"] for r in rows],
                "o-",
                color=color,
                alpha=alpha,
                label=label(f"{name}: tr(H)"),
            )
    ax.axhline(1.0, color="0.3", lw=1, ls=":", label="threshold 1")
    ax.set_xlabel("learning rate η")
    ax.set_ylabel("stability ratio")
    ax.set_title("Stability ratios at the minima reached")
    ax.legend(fontsize=7)
    dense = torch.linspace(min(etas) * 0.9, max(etas) * 1.05, 100).tolist()
    bx.plot(dense, [2.0 / e for e in dense], color="0.3", lw=1, ls=":", label="SGD bound 2/η")
    bx.set_xlabel("learning rate η")
    bx.set_ylabel("tr(H) of the loss (1/2n)Σ(f-y)²")
    extra = f", {len(repeats)} repeats (faint: repeats 2+)" if len(repeats) > 1 else ""
    bx.set_title(f"Two-layer ReLU, n={n}, width {width}{extra}", fontsize=9)
    bx.legend(fontsize=7)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    plt.close(fig)
    return buffer.getvalue()


# ----- the reproduction --------------------------------------------------------------------------


def _measure_row(
    opt: str, eta: float, r: _Run, generator: torch.Generator, X: Tensor, y: Tensor
) -> dict[str, Any]:
    row: dict[str, Any] = {"eta": eta, "status": r.status, "loss": r.loss}
    row["steps" if opt == "gd" else "epochs"] = r.steps
    if r.model is None:
        nan = math.nan
        row.update(
            lambda_max=nan,
            trace=nan,
            ratio_gd_bound=nan,
            ratio_sgd_bound=nan,
            ratio_sgd_fourth_moment=nan,
        )
        return row
    q = stability_quantities(r.model, X, y, generator=generator)
    ratios = stability_ratios(eta, q["lambda_max"], q["trace_ggn"], BATCH_SIZE)
    row.update(
        lambda_max=q["lambda_max"],
        trace=q["trace_ggn"],
        ratio_gd_bound=ratios["gd"],
        ratio_sgd_bound=ratios["sgd"],
        ratio_sgd_fourth_moment=eta * q["grad_norm4_mean"] / (2.0 * q["trace_ggn"]),
        lanczos_matvecs=q["lanczos_matvecs"],
    )
    return row


def _gd_cell(setting: _Setting, seed: int, k: int, check_identity: bool) -> dict[str, Any]:
    """Grid task: GD at ``etas[k]`` of one repeat, its curvature, and optionally the identity."""
    with single_thread():
        X, y = make_data(setting.n, seed)
        init = make_model(setting.width, seed + 1)
        eta = setting.etas[k]
        t0 = time.perf_counter()
        run = _train_gd(init, X, y, (eta,), setting.max_gd_steps)[0]
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        out: dict[str, Any] = {
            "row": _measure_row("gd", eta, run, torch.Generator().manual_seed(seed + 10 + k), X, y)
        }
        if check_identity:  # tr(H) == (1/n) sum ||grad f_i||^2, on the GD minimum (or the init)
            model = run.model if run.model is not None else init
            exact = hessian_trace_exact(model, X, y)
            ggn = stability_quantities(model, X, y)["trace_ggn"]
            out["trace_identity"] = {
                "hessian_diagonal_trace": exact,
                "per_sample_gradient_trace": ggn,
                "relative_error": abs(exact - ggn) / abs(exact),
            }
        out.update(train_seconds=train_seconds, measure_seconds=time.perf_counter() - t0)
        return out


def _sgd_cell(setting: _Setting, seed: int) -> dict[str, Any]:
    """Grid task: SGD at every eta of one repeat (one index stream), curvature of the minima."""
    with single_thread():
        X, y = make_data(setting.n, seed)
        init = make_model(setting.width, seed + 1)
        t0 = time.perf_counter()
        runs = _train_sgd(
            init,
            X,
            y,
            setting.etas,
            setting.max_sgd_epochs,
            torch.Generator().manual_seed(seed + 2),
        )
        train_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        init_q = stability_quantities(init, X, y, generator=torch.Generator().manual_seed(seed + 3))
        rows = [
            _measure_row("sgd", eta, r, torch.Generator().manual_seed(seed + 10 + k), X, y)
            for k, (eta, r) in enumerate(zip(setting.etas, runs, strict=True))
        ]
        return {
            "rows": rows,
            "init": {k: init_q[k] for k in ("loss", "lambda_max", "trace_ggn")},
            "train_seconds": train_seconds,
            "measure_seconds": time.perf_counter() - t0,
        }


def stability_grid(
    setting: _Setting, seeds: list[int], *, backend: str = "serial", workers: int = 1
) -> list[dict[str, Any]]:
    """Train and measure every repeat's GD and SGD runs over the ``eta`` grid, as parallel tasks.

    The tasks are, per repeat, one GD run per ``eta`` and one SGD run over all ``eta`` at once
    (they share one index stream, as in Wu & Su, "The implicit regularization of dynamical
    stability in stochastic gradient descent", ICML 2023, arXiv:2305.17490). Each task rebuilds
    its data and initialization from the repeat's seed and the results are assembled in grid
    order, so every number is identical, bit for bit, whatever the backend.

    Args:
        setting: the grid (:data:`FAST` or :data:`FULL`).
        seeds: one seed per repeat; the first repeat also checks the trace identity.
        backend: ``"serial"``, ``"process"`` or ``"ray"`` (:func:`subspaces._parallel.map_tasks`).
        workers: local processes or Ray tasks in flight.

    Returns:
        One dict per repeat with its per-``eta`` rows (``"gd"``, ``"sgd"``), the initialization's
        curvature, the timings and (first repeat) ``"trace_identity"``.

    Raises:
        ValueError: for no seeds, or a bad backend/workers.
        TaskFailedError: if a grid task failed (its label names it).

    Example:
        >>> tiny = _Setting(n=8, width=4, etas=(0.01,), max_gd_steps=3, max_sgd_epochs=1, repeats=1)
        >>> rep = stability_grid(tiny, [0])[0]
        >>> [r["eta"] for r in rep["gd"] + rep["sgd"]], sorted(rep["trace_identity"])[-1]
        ([0.01, 0.01], 'relative_error')
    """
    if not seeds:
        raise ValueError("seeds must hold at least one seed, got an empty list")
    E = len(setting.etas)
    tasks: list[tuple[Any, ...]] = []
    labels: list[str] = []
    for r, seed in enumerate(seeds):
        tasks += [(setting, seed, k, r == 0 and k == E - 1) for k in range(E)] + [(setting, seed)]
        labels += [f"repeat {r} (seed {seed}) GD eta={eta}" for eta in setting.etas]
        labels.append(f"repeat {r} (seed {seed}) SGD eta={list(setting.etas)}")

    results = map_tasks(_cell, tasks, backend=backend, workers=workers, labels=labels)
    repeats = []
    for r, seed in enumerate(seeds):
        gd, sgd = results[r * (E + 1) : r * (E + 1) + E], results[r * (E + 1) + E]
        rep: dict[str, Any] = {"seed": seed, "gd": [g["row"] for g in gd], "sgd": sgd["rows"]}
        if r == 0:
            rep["trace_identity"] = gd[-1]["trace_identity"]
        rep.update(
            init=sgd["init"],
            gd_seconds=sum(g["train_seconds"] for g in gd),
            sgd_seconds=sgd["train_seconds"],
            measure_seconds=sum(g["measure_seconds"] for g in gd) + sgd["measure_seconds"],
        )
        repeats.append(rep)
    return repeats


def _cell(*args: Any) -> dict[str, Any]:
    """A grid task: ``(setting, seed, k, check_identity)`` is GD, ``(setting, seed)`` SGD."""
    return _gd_cell(*args) if len(args) == 4 else _sgd_cell(*args)


def _verdict(rep: dict[str, Any]) -> dict[str, Any]:
    """The per-repeat checks, added to ``rep`` (keys in the order the records always had)."""
    gd, sgd = rep["gd"], rep["sgd"]
    sgd_traces = [r["trace"] for r in sgd]
    seconds = {k: rep.pop(k) for k in ("gd_seconds", "sgd_seconds", "measure_seconds")}
    rep.update(
        all_converged=all(r["status"] == "converged" for r in gd + sgd),
        gd_max_ratio_gd_bound=max(r["ratio_gd_bound"] for r in gd),
        sgd_max_ratio_sgd_bound=max(r["ratio_sgd_bound"] for r in sgd),
        gd_etas_violating_sgd_bound=[r["eta"] for r in gd if r["ratio_sgd_bound"] > 1 + SLACK],
        sgd_trace_strictly_decreasing=all(b < a for a, b in itertools.pairwise(sgd_traces)),
        **seconds,
    )
    rep["passed"] = bool(
        rep["all_converged"]
        and rep["gd_max_ratio_gd_bound"] <= 1 + SLACK
        and rep["sgd_max_ratio_sgd_bound"] <= 1 + SLACK
        and rep["gd_etas_violating_sgd_bound"]
        and rep["sgd_trace_strictly_decreasing"]
    )
    return rep


def _fmt(values: list[float]) -> str:
    return "/".join(f"{v:.2f}" for v in values)


@register(
    "P22",
    title="Dynamical stability: tr(H) <= 2/eta at SGD minima, only lambda_max <= 2/eta for GD",
    paper="Wu & Su 2023, The implicit regularization of dynamical stability in stochastic "
    "gradient descent (ICML 2023; arXiv:2305.17490)",
    claim=(
        "For the square loss (1/2n) sum (f - y)^2, the minima SGD with batch size 1 converges to "
        "satisfy tr(H) <= 2/eta, while GD minima only satisfy lambda_max(H) <= 2/eta and can "
        "violate the trace bound; a larger learning rate gives SGD minima of smaller trace"
    ),
    criterion=(
        "two-layer ReLU net on a teacher regression task, GD and SGD(B=1) at each eta of a grid "
        "trained to (1/2n) sum (f - y)^2 <= 2e-5, in every repeat (1 fast, 3 full): every run "
        "converges; every GD minimum has eta*lambda_max/2 <= 1.05; every SGD minimum has "
        "eta*tr(H)/2 <= 1.05; at least one GD minimum has eta*tr(H)/2 > 1.05; tr(H) at the SGD "
        "minima strictly decreases with eta; and the exact trace identity "
        "tr(H) = mean ||grad f_i||^2 used for tr(H) holds to 1e-8"
    ),
)
def run(fast: bool, seed: int) -> ExperimentResult:
    """Train GD and SGD(B=1) at each learning rate and measure the curvature of the minima.

    Args:
        fast: ``n = width = 100``, 3 learning rates, 1 repeat if true; else ``n = width = 200``,
            5 learning rates, 3 repeats.
        seed: repeat ``r`` uses ``seed + 1000 r`` for the data, the shared initialization, the
            SGD index stream and Lanczos.

    Returns:
        Per repeat, optimizer and learning rate: final loss, steps/epochs, ``lambda_max``, exact
        ``tr(H)``, the stability ratios; the trace-identity check; the verdict; one figure.
    """
    with single_thread():  # tiny sequential steps: one thread is fastest, and immune to load
        return _run(fast, seed)


def _run(fast: bool, seed: int) -> ExperimentResult:
    start = time.perf_counter()
    setting = FAST if fast else FULL
    backend, workers = grid_settings()
    seeds = [seed + 1000 * r for r in range(setting.repeats)]
    repeats = [
        _verdict(rep) for rep in stability_grid(setting, seeds, backend=backend, workers=workers)
    ]
    identity = repeats[0]["trace_identity"]
    identity_ok = identity["relative_error"] <= MAX_TRACE_IDENTITY_ERROR
    passed = identity_ok and all(rep["passed"] for rep in repeats)

    first = repeats[0]
    gd, sgd = first["gd"], first["sgd"]
    measured: dict[str, Any] = {
        "n": setting.n,
        "width": setting.width,
        "input_dim": INPUT_DIM,
        "num_params": setting.width * (INPUT_DIM + 2) + 1,
        "etas": list(setting.etas),
        "batch_size_sgd": BATCH_SIZE,
        "loss": "(1/2n) sum (f - y)^2",
        "loss_tol": LOSS_TOL,
        "slack": SLACK,
        "repeats": repeats,
        "repeats_passed": sum(rep["passed"] for rep in repeats),
        "trace_identity": identity,
        "max_sgd_ratio_sgd_bound": max(rep["sgd_max_ratio_sgd_bound"] for rep in repeats),
        "max_gd_ratio_gd_bound": max(rep["gd_max_ratio_gd_bound"] for rep in repeats),
        "min_gd_ratio_sgd_bound_at_largest_eta": min(
            rep["gd"][-1]["ratio_sgd_bound"] for rep in repeats
        ),
        "seconds": time.perf_counter() - start,
    }
    failures = [
        f"seed {rep['seed']}: {opt.upper()} eta={r['eta']} {r['status']}"
        for rep in repeats
        for opt in ("gd", "sgd")
        for r in rep[opt]
        if r["status"] != "converged"
    ]
    summary = (
        f"n={setting.n}, width {setting.width}, eta={_fmt(list(setting.etas))} (seed {seed}): "
        f"SGD(B=1) eta*tr/2 = {_fmt([r['ratio_sgd_bound'] for r in sgd])} "
        f"(tr {_fmt([r['trace'] for r in sgd])}); GD eta*lambda_max/2 = "
        f"{_fmt([r['ratio_gd_bound'] for r in gd])} but eta*tr/2 = "
        f"{_fmt([r['ratio_sgd_bound'] for r in gd])} (tr {_fmt([r['trace'] for r in gd])}); "
        + (
            f"criterion held in {measured['repeats_passed']}/{len(repeats)} repeats (max SGD "
            f"eta*tr/2 {measured['max_sgd_ratio_sgd_bound']:.2f}, max GD eta*lambda_max/2 "
            f"{measured['max_gd_ratio_gd_bound']:.2f}); "
            if len(repeats) > 1
            else ""
        )
        + ("all runs converged" if not failures else "not converged: " + ", ".join(failures))
        + f"; trace identity error {identity['relative_error']:.1e}"
    )
    figures = {"stability": _plot(list(setting.etas), repeats, setting.n, setting.width)}
    return ExperimentResult(measured=measured, passed=passed, summary=summary, figures=figures)
