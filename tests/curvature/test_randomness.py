"""A random forward (dropout, functional or module) is detected and refused (issue 22)."""

import pytest
import torch
import torch.nn.functional as F
from cases import gen
from torch import nn

from subspaces.curvature import FisherOperator, GGNOperator, HessianOperator
from subspaces.testing import assert_matches_dense, dense_hessian

F64 = torch.float64


class FunctionalDropoutMLP(nn.Module):
    """Dropout through ``F.dropout(..., training=self.training)``, as many HF models do."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(5, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.dropout(torch.tanh(self.fc1(x)), 0.3, training=self.training))


class NoisyMLP(nn.Module):
    """Random in every mode (noise injection that ignores ``self.training``)."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(5, 3)

    def forward(self, x):
        return self.fc(x + 0.1 * torch.randn_like(x))


def _data():
    X = torch.randn(12, 5, generator=gen(20), dtype=F64)
    y = torch.randint(0, 3, (12,), generator=gen(21))
    return [(X[:7], y[:7]), (X[7:], y[7:])]


OPERATORS = {
    "hessian_vmap": lambda m, d, **kw: HessianOperator(m, "cross_entropy", d, method="vmap", **kw),
    "hessian_double_backward": lambda m, d, **kw: HessianOperator(
        m, "cross_entropy", d[:1], method="double_backward", **kw
    ),
    "ggn": lambda m, d, **kw: GGNOperator(m, "cross_entropy", d, **kw),
    "fisher": lambda m, d, **kw: FisherOperator(
        m, "cross_entropy", d, generator=torch.Generator().manual_seed(0), **kw
    ),
}


@pytest.mark.parametrize("op", sorted(OPERATORS))
@pytest.mark.parametrize("width", [1, 3])
def test_functional_dropout_in_train_mode_is_refused(op, width):
    torch.manual_seed(0)
    model = FunctionalDropoutMLP().double().train()
    A = OPERATORS[op](model, _data())
    with pytest.raises(ValueError, match=r"random.*mode_policy='eval'"):
        A @ torch.ones(A.shape[0], width, dtype=F64)
    assert model.training


@pytest.mark.parametrize("op", sorted(OPERATORS))
def test_functional_dropout_with_eval_policy_is_the_eval_mode_operator(op):
    torch.manual_seed(0)
    model = FunctionalDropoutMLP().double().train()
    data = _data()
    A = OPERATORS[op](model, data, mode_policy="eval")
    assert model.training
    model.eval()
    ref = OPERATORS[op](model, data).to_dense()
    model.train()
    assert_matches_dense(A, ref, rtol=1e-10, atol=1e-12)
    assert model.training and model.fc1.training  # modes restored


def test_eval_policy_hessian_equals_the_dense_eval_hessian():
    torch.manual_seed(0)
    model = FunctionalDropoutMLP().double().train()
    data = _data()
    H = HessianOperator(model, "cross_entropy", data, mode_policy="eval").to_dense()
    model.eval()
    torch.testing.assert_close(H, dense_hessian(model, "cross_entropy", data))


def test_module_dropout_is_refused_by_default():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 8), nn.Dropout(0.3), nn.Linear(8, 3)).double().train()
    H = HessianOperator(model, "cross_entropy", _data())
    with pytest.raises(ValueError, match="mode_policy='eval'"):
        H @ torch.ones(H.shape[0], dtype=F64)


@pytest.mark.parametrize("policy", ["error", "eval"])
def test_a_forward_random_in_every_mode_is_refused(policy):
    torch.manual_seed(0)
    model = NoisyMLP().double().eval()
    H = HessianOperator(model, "cross_entropy", _data(), mode_policy=policy)
    with pytest.raises(ValueError, match="random"):
        H @ torch.ones(H.shape[0], dtype=F64)
