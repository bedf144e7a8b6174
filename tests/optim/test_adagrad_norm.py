"""AdaGrad-Norm (P21): a hand-computed sequence, the shared scalar accumulator, bad input."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from subspaces.optim import AdaGradNorm, NonFiniteGradientError, adagrad_norm


def test_matches_hand_computed_sequence() -> None:
    # f(x) = 0.5 ||x||^2, g = x: b_1^2 = b0^2 + ||x0||^2, x1 = x0 (1 - lr / b_1), and so on
    x0 = [3.0, -4.0]
    w = nn.Parameter(torch.tensor(x0, dtype=torch.float64))
    lr, b2 = 0.7, 2.0
    opt = AdaGradNorm([w], lr=lr, initial_accumulator_value=b2, eps=0.0)
    x = list(x0)
    for _ in range(5):
        opt.zero_grad()
        (0.5 * (w**2).sum()).backward()
        opt.step()
        b2 += x[0] ** 2 + x[1] ** 2
        x = [xi * (1 - lr / math.sqrt(b2)) for xi in x]
        assert torch.allclose(w.detach(), torch.tensor(x, dtype=torch.float64), rtol=1e-14)
        assert float(opt.state[w]["sum"]) == pytest.approx(b2, rel=1e-14)


def test_one_accumulator_for_all_parameters_of_a_group() -> None:
    # two tensors in one group step exactly like their concatenation in one tensor
    g = torch.Generator().manual_seed(0)
    a0, c0 = (
        torch.randn(3, 2, generator=g, dtype=torch.float64),
        torch.randn(4, generator=g, dtype=torch.float64),
    )
    a, c = nn.Parameter(a0.clone()), nn.Parameter(c0.clone())
    both = nn.Parameter(torch.cat([a0.reshape(-1), c0]))
    target = torch.randn(10, generator=g, dtype=torch.float64)
    opt1, opt2 = AdaGradNorm([a, c], lr=0.3), AdaGradNorm([both], lr=0.3)
    for _ in range(4):
        for opt, vec in ((opt1, lambda: torch.cat([a.reshape(-1), c])), (opt2, lambda: both)):
            opt.zero_grad()
            ((vec() - target) ** 2 * torch.arange(1.0, 11.0, dtype=torch.float64)).sum().backward()
            opt.step()
    assert torch.allclose(
        torch.cat([a.detach().reshape(-1), c.detach()]), both.detach(), rtol=1e-13
    )
    assert float(opt1.state[a]["sum"]) == float(opt1.state[c]["sum"])
    assert float(opt1.state[a]["sum"]) == pytest.approx(float(opt2.state[both]["sum"]), rel=1e-13)


def test_parameter_without_gradient_still_accumulates() -> None:
    a, c = nn.Parameter(torch.ones(2)), nn.Parameter(torch.ones(2))
    opt = AdaGradNorm([a, c], lr=0.1)
    (a.sum()).backward()  # c gets no gradient
    opt.step()
    assert float(opt.state[c]["sum"]) == float(opt.state[a]["sum"]) == 2.0
    assert torch.equal(c.detach(), torch.ones(2))


def test_maximize_and_weight_decay() -> None:
    p = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g = torch.tensor([0.5, -0.5], dtype=torch.float64)
    s = torch.zeros((), dtype=torch.float64)
    adagrad_norm([p], [g], [s], lr=1.0, eps=0.0, weight_decay=0.1, maximize=True)
    d = -g + 0.1 * torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert torch.allclose(
        p, torch.tensor([1.0, 2.0], dtype=torch.float64) - d / d.norm(), rtol=1e-14
    )


def test_non_finite_gradient_raises_and_changes_nothing() -> None:
    w = nn.Parameter(torch.ones(3))
    opt = AdaGradNorm([w], lr=0.1)
    w.grad = torch.tensor([1.0, float("nan"), 0.0])
    with pytest.raises(NonFiniteGradientError, match="NaN or Inf"):
        opt.step()
    assert torch.equal(w.detach(), torch.ones(3)) and float(opt.state[w]["sum"]) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"initial_accumulator_value": -1.0}, "initial_accumulator_value"),
        ({"eps": -1e-3}, "eps"),
        ({"weight_decay": float("nan")}, "weight_decay"),
    ],
)
def test_bad_hyperparameters(kwargs: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        AdaGradNorm([nn.Parameter(torch.ones(1))], **kwargs)


def test_mismatched_kernel_lists() -> None:
    with pytest.raises(ValueError, match="equal lengths"):
        adagrad_norm([torch.ones(1)], [], [torch.zeros(())], lr=0.1)


def test_empty_parameter_list() -> None:
    with pytest.raises(ValueError, match="empty parameter list"):
        AdaGradNorm([], lr=0.1)
