"""Randomness in curvature: a random forward is refused (issue 22); the MC Fisher's labels are
fixed per sample, counter-based, and converge to the true Fisher."""

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


# ----- the Monte-Carlo Fisher's labels: counter-based, per sample, any batching, any device ------
def _splitmix64_reference(state):
    """The published splitmix64 (Steele, Lea & Flood 2014) in Python integers."""
    mask = 2**64 - 1
    z = (state + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_splitmix64_in_int64_tensor_ops_matches_the_reference():
    from subspaces.curvature._model import splitmix64

    states = [0, 1, 2**63 - 1, 2**63, 2**64 - 1, 0x0123456789ABCDEF]
    states += torch.randint(-(2**63), 2**63 - 1, (200,), generator=gen(5)).tolist()
    states = [s % 2**64 for s in states]
    signed = [s - 2**64 if s >= 2**63 else s for s in states]
    got = splitmix64(torch.tensor(signed, dtype=torch.int64)).tolist()
    assert [g % 2**64 for g in got] == [_splitmix64_reference(s) for s in states]


def _mc_case(loss="cross_entropy", n=12):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    X = torch.randn(n, 5, generator=gen(30), dtype=F64)
    if loss == "cross_entropy":
        y = torch.randint(0, 3, (n,), generator=gen(31))
    else:
        y = torch.randn(n, 3, generator=gen(31), dtype=F64)
    return model, X, y


def _draws(F, X, y):
    """The operator's sampled output gradients for the batch (X, y), shape (m, n, k)."""
    from subspaces.curvature._model import sample_keys, split_batch

    batch = split_batch((X, y), X.device, None)
    batch.keys = sample_keys((X, y), len(X))
    with torch.no_grad():
        out = F.model(X)
    return F._sample(out, batch)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_mc_labels_are_fixed_per_sample_whatever_the_batch(loss):
    model, X, y = _mc_case(loss)
    F = FisherOperator(model, loss, [(X, y)], mc_samples=5, generator=gen(7))
    whole = _draws(F, X, y)
    again = _draws(F, X, y)
    assert torch.equal(whole, again)  # the same labels on every pass
    perm = torch.randperm(len(X), generator=gen(8))
    part = _draws(F, X[perm[:5]], y[perm[:5]])  # another batch, in another order
    # the same labels; the probabilities may differ in the last bits (another batch's forward)
    tol = 64 * torch.finfo(F64).eps
    torch.testing.assert_close(part, whole[:, perm[:5]], rtol=0, atol=tol)
    # draw j does not depend on mc_samples (more samples add draws) ...
    F2 = FisherOperator(model, loss, [(X, y)], mc_samples=2, generator=gen(7))
    torch.testing.assert_close(_draws(F2, X, y), whole[:2], rtol=0, atol=tol)
    # ... and the draws of a sample are not copies of one another (more distinct rows than samples)
    flat = whole.reshape(5 * len(X), -1)
    assert len({tuple(r.tolist()) for r in flat}) > 2 * len(X)
    other_seed = FisherOperator(model, loss, [(X, y)], mc_samples=5, generator=gen(9))
    assert not torch.equal(_draws(other_seed, X, y), whole)


@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_mc_fisher_converges_to_the_true_fisher_at_the_monte_carlo_rate(loss):
    """||F_m - F|| shrinks like the Monte-Carlo standard error sigma / sqrt(m), without bias.

    The true Fisher of these likelihoods is the GGN. ``sigma^2 = E ||F_1 - F||_F^2`` is estimated
    from 24 independent one-draw operators (other seeds); ``F_m`` averages ``m`` independent draws,
    so ``E ||F_m - F||_F^2 = sigma^2 / m``. A biased sampler (a wrong label distribution) would
    leave ``||F_m - F||`` at its bias as ``m`` grows and fail at ``m = 1024``.
    """
    model, X, y = _mc_case(loss)
    data = [(X[:7], y[:7]), (X[7:], y[7:])]
    G = GGNOperator(model, loss, data).to_dense()
    ones = [
        FisherOperator(model, loss, data, mc_samples=1, generator=gen(100 + r)).to_dense()
        for r in range(24)
    ]
    sigma2 = float(torch.stack([(F1 - G).square().sum() for F1 in ones]).mean())
    for m in (16, 1024):
        Fm = FisherOperator(model, loss, data, mc_samples=m, generator=gen(m)).to_dense()
        torch.testing.assert_close(Fm, Fm.T, rtol=0, atol=1e-12)
        ratio = float((Fm - G).norm()) / (sigma2 / m) ** 0.5
        # ||F_m - F||^2 m / sigma^2 is a sum of many squared errors: close to 1 (chi-square-like
        # spread; 0.25 and 3 are far in its tails for 2 * 10^3 matrix entries)
        assert 0.25 < ratio < 3.0, (m, ratio)


def test_sample_keys_are_cached_but_follow_in_place_changes():
    from subspaces.curvature._model import sample_key_tensor

    X = torch.randn(6, 4, generator=gen(1))
    keys = sample_key_tensor(X, 6)
    assert torch.equal(sample_key_tensor(X.clone(), 6), keys)  # the data, not the object
    X[2, 1] += 1.0  # an in-place change bumps the version: hashed again
    changed = sample_key_tensor(X, 6)
    assert torch.equal(changed != keys, torch.arange(6) == 2)
    # dtype and row shape are part of the key; bfloat16 and bool hash too
    assert not torch.equal(sample_key_tensor(X.double(), 6), changed)
    assert not torch.equal(sample_key_tensor(X.reshape(6, 2, 2), 6), changed)
    assert len(set(sample_key_tensor(X.bfloat16(), 6).tolist())) == 6
    assert len(set(sample_key_tensor(torch.eye(6, dtype=torch.bool), 6).tolist())) == 6
    with torch.inference_mode():  # no version counter: hashed, not cached
        frozen = X.clone()
    assert torch.equal(sample_key_tensor(frozen, 6), changed)
    assert torch.equal(sample_key_tensor(frozen, 6), changed)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("loss", ["cross_entropy", "mse"])
def test_mc_labels_and_keys_are_the_same_on_cuda(loss):
    from subspaces.curvature._model import sample_key_tensor

    model, X, y = _mc_case(loss)
    F = FisherOperator(model, loss, [(X, y)], mc_samples=3, generator=gen(7))
    cpu = _draws(F, X, y)
    Fc = FisherOperator(model.cuda(), loss, [(X.cuda(), y.cuda())], mc_samples=3, generator=gen(7))
    assert torch.equal(
        sample_key_tensor((X.cuda(), y.cuda()), len(X)).cpu(), sample_key_tensor((X, y), len(X))
    )
    torch.testing.assert_close(_draws(Fc, X.cuda(), y.cuda()).cpu(), cpu, rtol=1e-12, atol=1e-12)


def test_mc_fisher_products_make_no_generator_per_sample(monkeypatch):
    """The labels are a hash of (seed, sample, draw): no torch.Generator per sample and pass."""
    model, X, y = _mc_case()
    F = FisherOperator(model, "cross_entropy", [(X, y)], mc_samples=2, generator=gen(7))
    F @ torch.ones(F.shape[0], dtype=F64)  # the first product draws the operator's seed
    made = []

    class Counting(torch.Generator):
        def __init__(self, *args, **kwargs):
            made.append(1)
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(torch, "Generator", Counting)
    F @ torch.ones(F.shape[0], 3, dtype=F64)
    assert made == []
