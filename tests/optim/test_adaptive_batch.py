"""AdAdaGrad's batch-size tests (P21) against direct per-sample loops, the controller's rule on
gradients of known variance, the sampler's coverage and resume, DDP pooling, and bad input."""

from __future__ import annotations

import io
import math
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from subspaces.optim import (
    AdaptiveBatchSampler,
    BatchSizeController,
    gradient_statistics,
    per_sample_gradients,
    per_sample_moments,
    pool_moments,
    required_batch_size,
)
from subspaces.testing import free_port, init_gloo

F64 = torch.float64
TOL = 1e-10  # float64 sums over <= 100 terms of O(1) values: rounding ~1e-14, far below this


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(F64)


def _data(n: int = 12, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g, dtype=F64), torch.randint(0, 3, (n,), generator=g)


def _loop_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    rows = []
    for i in range(x.shape[0]):
        loss = nn.functional.cross_entropy(model(x[i : i + 1]), y[i : i + 1])
        grads = torch.autograd.grad(loss, list(model.parameters()))
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return rows


def _loop_required(rows: list[torch.Tensor], eta: float, theta: float, nu: float) -> dict:
    """Every test written out sample by sample, with Python sums."""
    n, d = len(rows), rows[0].numel()
    mean = sum(rows) / n
    var = [sum(float((r[j] - mean[j]) ** 2) for r in rows) / (n - 1) for j in range(d)]
    nsq = float(mean @ mean)
    ips = [float(r @ mean) for r in rows]
    ip_mean = sum(ips) / n
    ip_var = sum((v - ip_mean) ** 2 for v in ips) / (n - 1)
    orth = [r - (float(r @ mean) / nsq) * mean for r in rows]
    o_mean = sum(orth) / n
    o_var = sum(float(((o - o_mean) ** 2).sum()) for o in orth) / (n - 1)
    coord = max(var[j] / (eta**2 * float(mean[j]) ** 2) for j in range(d))
    return {
        "norm": sum(var) / (eta**2 * nsq),
        "inner_product": ip_var / (theta**2 * nsq**2),
        "orthogonality": o_var / (nu**2 * nsq),
        "augmented": max(ip_var / (theta**2 * nsq**2), o_var / (nu**2 * nsq)),
        "coordinate": coord,
    }


def test_per_sample_gradients_match_a_loop() -> None:
    model, (x, y) = _mlp(), _data()
    G = per_sample_gradients(model, nn.functional.cross_entropy, x, y)
    assert torch.allclose(G, torch.stack(_loop_gradients(model, x, y)), rtol=0, atol=TOL)


def test_linear_path_equals_vmap_path() -> None:
    model, (x, y) = _mlp(), _data()
    model[0].bias.requires_grad_(False)  # a frozen bias is skipped by both paths
    loss = nn.functional.cross_entropy
    n1, mean1, m21, inner1 = per_sample_moments(model, loss, x, y, method="linear")
    n2, mean2, m22, inner2 = per_sample_moments(model, loss, x, y, method="vmap")
    v = torch.randn(mean1.numel(), dtype=F64, generator=torch.Generator().manual_seed(4))
    assert n1 == n2 == 12 and mean1.shape == mean2.shape == (5 * 7 + 7 * 3 + 3,)
    assert torch.allclose(mean1, mean2, rtol=0, atol=TOL)
    assert torch.allclose(m21, m22, rtol=0, atol=TOL)
    assert torch.allclose(inner1(v), inner2(v), rtol=0, atol=TOL)


def test_models_outside_the_linear_path_fall_back_to_vmap() -> None:
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(6, 3)).to(F64)
    x, y = torch.randn(6, 1, 5, dtype=F64), torch.randint(0, 3, (6,))
    loss = nn.functional.cross_entropy
    with pytest.raises(ValueError, match="method='linear' needs"):
        per_sample_moments(conv, loss, x, y, method="linear")
    n, _, m2, _ = per_sample_moments(conv, loss, x, y)
    G = per_sample_gradients(conv, loss, x, y)
    assert torch.allclose(m2 / (n - 1), G.var(0), rtol=0, atol=TOL)
    seq = nn.Linear(4, 2).to(F64)  # called on (n, T, 4): per-sample gradients sum over T
    xs, ys = torch.randn(5, 3, 4, dtype=F64), torch.randn(5, 3, 2, dtype=F64)
    n, _, m2, _ = per_sample_moments(seq, nn.functional.mse_loss, xs, ys)
    G = per_sample_gradients(seq, nn.functional.mse_loss, xs, ys)
    assert torch.allclose(m2 / (n - 1), G.var(0), rtol=0, atol=TOL)
    with pytest.raises(ValueError, match="method must be"):
        per_sample_moments(seq, nn.functional.mse_loss, xs, ys, method="fast")  # type: ignore[arg-type]


def test_frozen_parameters_are_left_out() -> None:
    model, (x, y) = _mlp(), _data()
    model[0].weight.requires_grad_(False)
    G = per_sample_gradients(model, nn.functional.cross_entropy, x, y)
    assert G.shape == (12, 7 + 7 * 3 + 3)


@pytest.mark.parametrize(
    "test", ["norm", "inner_product", "orthogonality", "augmented", "coordinate"]
)
def test_every_statistic_matches_a_direct_loop(test: str) -> None:
    model, (x, y) = _mlp(), _data()
    eta, theta, nu = 0.3, 0.7, 2.0
    G = per_sample_gradients(model, nn.functional.cross_entropy, x, y)
    ours = required_batch_size(gradient_statistics(G), test, eta=eta, theta=theta, nu=nu)  # type: ignore[arg-type]
    ref = _loop_required(_loop_gradients(model, x, y), eta, theta, nu)[test]
    assert ours == pytest.approx(ref, rel=TOL)
    assert ours > 0


def test_known_spread_and_degenerate_cases() -> None:
    # rows mu + s and mu - s: mean mu, per-coordinate variance 2 s_j^2 (divisor n - 1 = 1)
    mu, s = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.5], dtype=F64)
    stats = gradient_statistics(torch.stack([mu + s, mu - s]))
    assert torch.equal(stats.variance, 2 * s**2)
    assert required_batch_size(stats, "norm", eta=0.5) == pytest.approx(2 * 2.25 / 0.25)
    # <g_i, mu> = 1 for both rows: the inner-product test asks for nothing
    assert required_batch_size(stats, "inner_product") == 0.0
    # orthogonal parts are +-s: variance 2 ||s||^2
    assert required_batch_size(stats, "orthogonality", nu=1.5) == pytest.approx(4.5 / 2.25)
    # coordinate 2 has zero mean and positive variance: infinitely many samples needed
    assert required_batch_size(stats, "coordinate") == math.inf
    # all samples equal: every test holds with any batch
    same = gradient_statistics(torch.ones(3, 4, dtype=F64))
    assert all(required_batch_size(same, t) == 0.0 for t in ("norm", "augmented", "coordinate"))
    zero_mean = gradient_statistics(torch.tensor([[1.0], [-1.0]], dtype=F64))
    assert required_batch_size(zero_mean, "norm") == math.inf


def _linear_controller(**kw: object) -> BatchSizeController:
    # loss = <w, x>: the per-sample gradient is x itself, so the gradients are set by the data;
    # summed, not averaged: every test is invariant to scaling all gradients by the batch size
    model = nn.Linear(2, 1, bias=False).to(F64)
    kw = {"initial_batch_size": 4, "max_batch_size": 100, "eta": 0.5, "test_interval": 3, **kw}
    return BatchSizeController(model, lambda out, y: out.sum(), **kw)  # type: ignore[arg-type]


def test_controller_rule_on_gradients_of_known_variance() -> None:
    ctrl = _linear_controller()
    mu, s = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.5], dtype=F64)
    x, y = torch.stack([mu + s, mu - s]), torch.zeros(2, 1, dtype=F64)
    assert ctrl.observe(x, y) == 18  # ceil(2 * 2.25 / (0.25 * 1))
    quiet = torch.stack([mu, mu, mu])
    noisy = torch.stack([mu + 10 * s, mu - 10 * s])
    assert ctrl.observe(noisy, y) == 18 and ctrl.observe(noisy, y) == 18  # steps 1, 2: no test
    assert ctrl.observe(quiet, torch.zeros(3, 1, dtype=F64)) == 18  # step 3: never shrinks
    for _ in range(3):
        last = ctrl.observe(noisy, y)
    assert last == 100  # step 6: 1800 requested, capped
    assert [(r.step, r.batch_size) for r in ctrl.history] == [(0, 18), (3, 18), (6, 100)]
    assert ctrl.history[0].required == pytest.approx(18.0) and ctrl.history[0].test_samples == 2


def test_one_sample_batch_postpones_the_test() -> None:
    ctrl = _linear_controller()  # tests at steps 0, 3, 6, ...
    mu, s = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.5], dtype=F64)
    assert ctrl.observe(mu[None], torch.zeros(1, 1, dtype=F64)) == 4 and ctrl.history == []
    assert ctrl.state_dict()["pending"] is True
    assert ctrl.observe(torch.stack([mu + s, mu - s]), torch.zeros(2, 1, dtype=F64)) == 18
    assert [(r.step, r.batch_size) for r in ctrl.history] == [(1, 18)] and not ctrl.pending


def test_controller_uses_at_most_max_test_samples() -> None:
    ctrl = _linear_controller(max_test_samples=3, test_interval=1)
    x = torch.tensor([[1.0, 1.0], [1.0, -1.0], [1.0, 1.0], [100.0, 100.0]], dtype=F64)
    ctrl.observe(x, torch.zeros(4, 1, dtype=F64))
    stats = gradient_statistics(x[:3])
    assert ctrl.history[0].test_samples == 3
    assert ctrl.history[0].required == pytest.approx(required_batch_size(stats, eta=0.5), rel=TOL)


def test_controller_state_dict_round_trip() -> None:
    ctrl = _linear_controller(test_interval=1)
    mu, s = torch.tensor([1.0, 0.0], dtype=F64), torch.tensor([0.0, 1.5], dtype=F64)
    for _ in range(2):
        ctrl.observe(torch.stack([mu + s, mu - s]), torch.zeros(2, 1, dtype=F64))
    buf = io.BytesIO()
    torch.save(ctrl.state_dict(), buf)
    buf.seek(0)
    other = _linear_controller(test_interval=1)
    other.load_state_dict(torch.load(buf, weights_only=True))
    assert (other.batch_size, other.steps, other.history) == (18, 2, ctrl.history)
    with pytest.raises(ValueError, match="outside"):
        other.load_state_dict({**ctrl.state_dict(), "batch_size": 1000})


def test_pool_moments_equals_pooled_computation() -> None:
    g = torch.Generator().manual_seed(3)
    x = torch.randn(23, 4, generator=g, dtype=F64) * torch.tensor([1.0, 10.0, 0.1, 3.0], dtype=F64)
    parts = [x[:5], x[5:5], x[5:17], x[17:]]  # one empty rank
    n, mean, m2 = pool_moments(
        [p.shape[0] for p in parts],
        [p.mean(0) if len(p) else torch.full((4,), float("nan"), dtype=F64) for p in parts],
        [((p - p.mean(0)) ** 2).sum(0) if len(p) else torch.zeros(4, dtype=F64) for p in parts],
    )
    assert n == 23
    assert torch.allclose(mean, x.mean(0), rtol=TOL, atol=0)
    assert torch.allclose(m2 / (n - 1), x.var(0), rtol=TOL, atol=0)


def test_sampler_covers_each_epoch_once_while_the_size_changes() -> None:
    class Source:
        batch_size = 3

    src = Source()
    sampler = AdaptiveBatchSampler(20, src, seed=5)
    seen, sizes = [], []
    for i, batch in enumerate(sampler):
        seen += batch
        sizes.append(len(batch))
        if i == 1:
            src.batch_size = 7  # grows mid-epoch
    assert sorted(seen) == list(range(20)) and seen != list(range(20))
    assert sizes == [3, 3, 7, 7] and sampler.epoch == 1
    second = [i for b in sampler for i in b]
    assert sorted(second) == list(range(20)) and second != seen  # a fresh permutation
    assert [len(b) for b in AdaptiveBatchSampler(20, 7, drop_last=True)] == [7, 7]


def test_sampler_resume_and_replicas() -> None:
    full = AdaptiveBatchSampler(30, 4, seed=1)
    it = iter(full)
    head = [next(it) for _ in range(3)]
    state = full.state_dict()
    assert state == {"epoch": 0, "position": 12}
    rest_ref = list(it)
    resumed = AdaptiveBatchSampler(30, 4, seed=1)
    resumed.load_state_dict(state)
    assert list(resumed) == rest_ref and sorted(i for b in head + rest_ref for i in b) == list(
        range(30)
    )
    assert resumed.state_dict() == full.state_dict() == {"epoch": 1, "position": 0}
    shares = [list(AdaptiveBatchSampler(10, 4, seed=2, num_replicas=2, rank=r)) for r in (0, 1)]
    merged = [a + b for a, b in zip(*shares, strict=True)]
    assert merged == list(AdaptiveBatchSampler(10, 4, seed=2))
    assert [len(b) for b in shares[0]] == [2, 2, 2]


def test_dataloader_integration_grows_batches() -> None:
    x = torch.randn(64, 2, dtype=F64)
    ctrl = _linear_controller(test_interval=1, max_batch_size=64)
    loader = DataLoader(
        TensorDataset(x, torch.zeros(64, 1, dtype=F64)),
        batch_sampler=AdaptiveBatchSampler(64, ctrl),
    )
    sizes = []
    for xb, yb in loader:
        sizes.append(xb.shape[0])
        ctrl.observe(xb, yb)
    assert sizes[0] == 4 and max(sizes) > 4 and sum(sizes) == 64


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"max_batch_size": 2}, ValueError, r"max_batch_size \(2\) must be >= initial_batch_size"),
        ({"eta": 1.0}, ValueError, "eta must be in"),
        ({"eta": 0.0}, ValueError, "eta"),
        ({"theta": 1.5}, ValueError, "theta must be in"),
        ({"nu": -1.0}, ValueError, "nu"),
        ({"test": "variance"}, ValueError, "test must be one of"),
        ({"test_interval": 0}, ValueError, "test_interval"),
        ({"max_test_samples": 1}, ValueError, "max_test_samples"),
        ({"initial_batch_size": 2.5}, TypeError, "initial_batch_size"),
    ],
)
def test_bad_controller_arguments(kwargs: dict, exc: type, match: str) -> None:
    with pytest.raises(exc, match=match):
        _linear_controller(**kwargs)


def test_model_without_parameters() -> None:
    with pytest.raises(ValueError, match="no trainable parameters"):
        BatchSizeController(
            nn.ReLU(), nn.functional.mse_loss, initial_batch_size=1, max_batch_size=2
        )
    with pytest.raises(ValueError, match="no trainable parameters"):
        per_sample_gradients(nn.ReLU(), nn.functional.mse_loss, torch.ones(2, 1), torch.ones(2, 1))


def test_non_finite_gradients_and_bad_batches() -> None:
    ctrl = _linear_controller()
    bad = torch.tensor([[1.0, float("inf")], [1.0, 0.0]], dtype=F64)
    with pytest.raises(ValueError, match="non-finite"):
        ctrl.observe(bad, torch.zeros(2, 1, dtype=F64))
    with pytest.raises(ValueError, match="at least 2"):
        ctrl.required(torch.ones(1, 2, dtype=F64), torch.zeros(1, 1, dtype=F64))
    with pytest.raises(ValueError, match="same number of samples"):
        per_sample_gradients(ctrl.model, ctrl.loss_fn, torch.ones(3, 2), torch.ones(2, 1))
    with pytest.raises(ValueError, match="test must be one of"):
        required_batch_size(gradient_statistics(torch.eye(2)), "median")  # type: ignore[arg-type]


def test_bad_sampler_arguments() -> None:
    with pytest.raises(ValueError, match="empty"):
        AdaptiveBatchSampler(TensorDataset(torch.ones(0, 1)), 4)
    with pytest.raises(ValueError, match="rank"):
        AdaptiveBatchSampler(10, 4, num_replicas=2, rank=2)
    with pytest.raises(TypeError, match="batch_size"):
        AdaptiveBatchSampler(10, "4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="counts that sum to 0"):
        pool_moments([0], [torch.zeros(1)], [torch.zeros(1)])


# ---------------------------------------------------------------- two gloo processes


def _worker(rank: int, world: int, port: int, out: str) -> None:
    init_gloo(rank, world, port)
    try:
        x, y = _data(n=11, seed=7)
        mine = slice(0, 4) if rank == 0 else slice(4, 11)  # unequal shares
        results = []
        for test in ("norm", "augmented", "coordinate"):
            ctrl = BatchSizeController(
                _mlp(),
                nn.functional.cross_entropy,
                initial_batch_size=2,
                max_batch_size=10**9,
                test=test,
                eta=0.5,
                distributed=True,
                max_test_samples=64,  # type: ignore[arg-type]
            )
            req, used = ctrl.required(x[mine], y[mine])
            results.append([req, float(used)])
        if rank == 0:
            torch.save(torch.tensor(results, dtype=F64), out)
        dist.barrier()
    finally:
        dist.destroy_process_group()


@pytest.mark.slow  # two spawned interpreters importing torch: ~25 s wall on 2 busy cores
@pytest.mark.skipif(sys.platform == "win32", reason="gloo over TCP on localhost")
def test_distributed_statistics_equal_single_process(tmp_path) -> None:
    if not dist.is_available():
        pytest.skip("torch.distributed is not available")
    out = str(tmp_path / "req.pt")
    mp.spawn(_worker, args=(2, free_port(), out), nprocs=2, join=True)
    got = torch.load(out, weights_only=True)
    model, (x, y) = _mlp(), _data(n=11, seed=7)
    stats = gradient_statistics(per_sample_gradients(model, nn.functional.cross_entropy, x, y))
    for row, test in zip(got, ("norm", "augmented", "coordinate"), strict=True):
        assert float(row[1]) == 11
        assert float(row[0]) == pytest.approx(required_batch_size(stats, test, eta=0.5), rel=TOL)  # type: ignore[arg-type]
