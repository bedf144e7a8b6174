"""Conformance suite: every optimizer of the package joins with one line in ``REGISTRY``.

Each entry builds an optimizer for a small model. The checks: ``state_dict`` round trip through
``torch.load(weights_only=True)``, bit-identical resume, parameter and state dtypes kept, a
printable repr, descent on a quadratic and on Rosenbrock.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import pytest
import torch
from torch import nn

from subspaces.optim import AdaGradNorm, NewtonGR, SubspaceAdamW


def _galore_groups(model: nn.Module, **kw: object) -> list[dict[str, object]]:
    mats = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    return [{"params": rest}, {"params": mats, **kw}]


Factory = Callable[[nn.Module], torch.optim.Optimizer]

# One line per optimizer configuration. Small gaps so every run crosses several refreshes.
REGISTRY: dict[str, Factory] = {
    "adamw-plain": lambda m: SubspaceAdamW(m.parameters(), lr=1e-2, weight_decay=0.1),
    "svd": lambda m: SubspaceAdamW(
        _galore_groups(m, rank=3, update_proj_gap=3, scale=0.5), lr=1e-2, weight_decay=0.1
    ),
    "rsvd-rotate": lambda m: SubspaceAdamW(
        _galore_groups(m, rank=3, update_proj_gap=3, projector="rsvd", moment_transfer="rotate"),
        lr=1e-2,
    ),
    "nystrom": lambda m: SubspaceAdamW(
        _galore_groups(m, rank=3, update_proj_gap=3, projector="nystrom"), lr=1e-2
    ),
    "dct-lazy": lambda m: SubspaceAdamW(
        _galore_groups(
            m, rank=3, update_proj_gap=2, projector="dct", refresh="lazy", lazy_threshold=0.0
        ),
        lr=1e-2,
    ),
    "random-reset": lambda m: SubspaceAdamW(
        _galore_groups(m, rank=3, update_proj_gap=3, projector="random", moment_transfer="reset"),
        lr=1e-2,
    ),
    "svd-int4-bf16state": lambda m: SubspaceAdamW(
        _galore_groups(
            m,
            rank=3,
            update_proj_gap=3,
            proj_bits=4,
            proj_group_size=8,
            state_dtype=torch.bfloat16,
        ),
        lr=1e-2,
    ),
    "coordinate-fullrank": lambda m: SubspaceAdamW(
        _galore_groups(m, rank=100, projector="coordinate", full_rank="project"), lr=1e-2
    ),
    "adagrad-norm": lambda m: AdaGradNorm(m.parameters(), lr=0.1, weight_decay=1e-3),
    # closure optimizer: _train/_descent pass the loss (without backward) as the closure
    "newton-gr-hessian": lambda m: NewtonGR(m.parameters(), lr=0.5, cg_max_iters=3),
}

# Optimizers whose lr is the length of the whole step (a normalized step, ||dx|| <= lr): the
# descent tests give them lr * sqrt(numel), the step length of a per-coordinate method.
WHOLE_STEP_LR = {"adagrad-norm"}


def _model(dtype: torch.dtype = torch.float32, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 10), nn.Tanh(), nn.Linear(10, 4)).to(dtype)


def _batches(n: int, dtype: torch.dtype = torch.float32) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [
        (torch.randn(8, 6, generator=g, dtype=dtype), torch.randn(8, 4, generator=g, dtype=dtype))
        for _ in range(n)
    ]


def _train(model: nn.Module, opt: torch.optim.Optimizer, batches: list) -> None:
    for x, y in batches:
        if isinstance(opt, NewtonGR):  # a closure optimizer: it differentiates the loss itself
            opt.step(lambda x=x, y=y: nn.functional.mse_loss(model(x), y))
            continue
        opt.zero_grad()
        nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _roundtrip(obj: object) -> object:
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_state_dict_roundtrip_weights_only(name: str) -> None:
    model = _model()
    opt = REGISTRY[name](model)
    _train(model, opt, _batches(7))
    sd = opt.state_dict()
    loaded = _roundtrip(sd)
    opt2 = REGISTRY[name](copy.deepcopy(model))
    opt2.load_state_dict(loaded)  # type: ignore[arg-type]
    for (i, s1), (j, s2) in zip(
        sorted(sd["state"].items()), sorted(opt2.state_dict()["state"].items()), strict=True
    ):
        assert i == j and s1.keys() == s2.keys()
        for k in s1:
            assert s1[k].dtype == s2[k].dtype, (name, k)
            assert torch.equal(s1[k], s2[k]), (name, k)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_bit_identical_resume(name: str) -> None:
    batches = _batches(12)
    ref = _model()
    ref_opt = REGISTRY[name](ref)
    _train(ref, ref_opt, batches)

    first = _model()
    opt = REGISTRY[name](first)
    _train(first, opt, batches[:5])
    ckpt = _roundtrip({"model": first.state_dict(), "opt": opt.state_dict()})
    resumed = _model(seed=123)  # different init, overwritten by the checkpoint
    resumed.load_state_dict(ckpt["model"])  # type: ignore[index]
    opt2 = REGISTRY[name](resumed)
    opt2.load_state_dict(ckpt["opt"])  # type: ignore[index]
    _train(resumed, opt2, batches[5:])
    for a, b in zip(ref.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("name", sorted(REGISTRY))
@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_dtype_kept(name: str, dtype: torch.dtype) -> None:
    model = _model(dtype)
    opt = REGISTRY[name](model)
    _train(model, opt, _batches(4, dtype))
    assert all(p.dtype == dtype for p in model.parameters())
    assert all(torch.isfinite(p.float()).all() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_printable(name: str) -> None:
    text = repr(REGISTRY[name](_model()))
    assert "Parameter Group" in text and "lr" in text


def _descent(
    name: str,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    init: torch.Tensor,
    steps: int,
    lr: float,
) -> tuple[float, float]:
    holder = nn.Module()
    holder.w = nn.Parameter(init.clone())
    opt = REGISTRY[name](holder)
    if name in WHOLE_STEP_LR:
        lr *= init.numel() ** 0.5
    for group in opt.param_groups:
        group["lr"] = lr
        group["weight_decay"] = 0.0  # decay moves the minimizer; descent is checked on f alone
    start = float(loss_fn(holder.w.detach()))
    for _ in range(steps):
        if isinstance(opt, NewtonGR):
            opt.step(lambda: loss_fn(holder.w))
            continue
        opt.zero_grad()
        loss_fn(holder.w).backward()
        opt.step()
    return start, float(loss_fn(holder.w.detach()))


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_descent_on_quadratic(name: str) -> None:
    g = torch.Generator().manual_seed(0)
    A = torch.randn(12, 12, generator=g)
    H = A @ A.T / 12 + 0.1 * torch.eye(12)
    target = torch.randn(12, 8, generator=g)

    def f(w: torch.Tensor) -> torch.Tensor:
        d = w - target
        return 0.5 * (d * (H @ d)).sum()

    start, end = _descent(name, f, torch.zeros(12, 8), 150, 0.05)
    assert end < 0.2 * start, (name, start, end)


@pytest.mark.parametrize("name", sorted(REGISTRY))
def test_descent_on_rosenbrock(name: str) -> None:
    def f(w: torch.Tensor) -> torch.Tensor:
        x = w.reshape(-1)
        return (100 * (x[1:] - x[:-1] ** 2) ** 2 + (1 - x[:-1]) ** 2).sum()

    init = torch.full((6, 4), -0.5)
    start, end = _descent(name, f, init, 300, 0.01)
    assert end < 0.5 * start, (name, start, end)
