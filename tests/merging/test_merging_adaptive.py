"""AdaMerging, the Concrete mask and the diagnostics."""

from __future__ import annotations

import pytest
import torch

from subspaces.merging import (
    ConcreteMask,
    adamerging,
    concrete_merging,
    cosine_matrix,
    entropy_loss,
    layer_ranks,
    mask_sparsity,
    merge,
    merged_parameters,
    rescale_by_mean,
    sign_conflict_rate,
)


def _setup(seed=0, k=3):
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 4))
    net = net.double()
    base = {n: v.detach().clone() for n, v in net.state_dict().items()}
    vectors = [
        {n: 0.5 * torch.randn(v.shape, generator=g, dtype=torch.float64) for n, v in base.items()}
        for _ in range(k)
    ]
    data = [[torch.randn(16, 5, generator=g, dtype=torch.float64)] for _ in range(k)]
    return net, base, vectors, data


def test_entropy_loss_reference():
    logits = torch.tensor([[0.0, 0.0], [10.0, -10.0]], dtype=torch.float64)
    p = torch.softmax(logits, -1)
    ref = -(p * p.log()).sum(-1).mean()
    assert abs(float(entropy_loss(logits) - ref)) < 1e-14


def test_merged_parameters_layer_wise_hand_case():
    base = {"a": torch.zeros(2), "b": torch.ones(1)}
    tvs = [
        {"a": torch.tensor([1.0, 2.0]), "b": torch.ones(1)},
        {"a": torch.ones(2), "b": torch.ones(1)},
    ]
    coeff = torch.tensor([[0.5, 2.0], [0.0, 1.0]])  # rows: tensors a, b; columns: tasks
    out = merged_parameters(base, tvs, coeff, ["a", "b"], clamp=(0.0, 1.0))
    assert out["a"].tolist() == [1.5, 2.0] and out["b"].tolist() == [2.0]


def test_adamerging_learns_without_touching_the_model():
    net, base, vectors, data = _setup()
    before = {n: v.clone() for n, v in net.state_dict().items()}
    for granularity, shape in (("task", (3,)), ("layer", (4, 3))):
        res = adamerging(net, base, vectors, data, granularity=granularity, steps=30, lr=0.05)
        assert res.coefficients.shape == shape
        assert res.losses[-1] < res.losses[0]
        assert bool((res.coefficients >= 0).all() and (res.coefficients <= 1).all())
        ref = merged_parameters(base, vectors, res.coefficients, res.names)
        assert all(torch.equal(res.state_dict[n], ref[n]) for n in base)
    assert all(torch.equal(before[n], v) for n, v in net.state_dict().items())
    # zero steps: task-wise AdaMerging is task arithmetic with lambda = init
    res0 = adamerging(net, base, vectors, data, granularity="task", steps=0, init=0.3)
    ta = merge(
        [{n: base[n] + tv[n] for n in base} for tv in vectors],
        method="task_arithmetic",
        base=base,
        lambda_=0.3,
    )
    assert all(torch.allclose(res0.state_dict[n], ta[n], atol=1e-13, rtol=0) for n in base)


def test_adamerging_bad_input():
    net, base, vectors, data = _setup()
    with pytest.raises(ValueError, match="non-empty list"):
        adamerging(net, base, [], data)
    bad = [vectors[0], {**vectors[1], "0.weight": torch.zeros(2, 2, dtype=torch.float64)}]
    with pytest.raises(ValueError, match=r"'0\.weight' has shape \(2, 2\) in task vector 1"):
        adamerging(net, base, bad, data)
    with pytest.raises(ValueError, match="granularity"):
        adamerging(net, base, vectors, data, granularity="row")  # type: ignore[arg-type]


def test_concrete_mask_sampling_and_rescaling():
    mask = ConcreteMask({"w": (50, 40)})
    g = torch.Generator().manual_seed(0)
    sample = mask.sample(0.5, generator=g)["w"]
    assert bool(((sample >= 0) & (sample <= 1)).all())  # float32 sigmoid may round to 0 or 1
    assert abs(float(sample.detach().mean()) - 0.5) < 0.05  # logits 0: keep probability 1/2
    sample.sum().backward()
    grad = mask.logits["w"].grad
    assert grad is not None and bool((grad >= 0).all()) and float((grad > 0).double().mean()) > 0.9
    cold = ConcreteMask({"w": (1000,)}).sample(0.01, generator=g)["w"]
    assert float(((cold < 0.01) | (cold > 0.99)).double().mean()) > 0.95  # T -> 0: near binary
    r = rescale_by_mean({"w": torch.tensor([0.2, 0.6, 0.0, 0.2])})["w"]
    assert torch.allclose(r, torch.tensor([0.8, 2.4, 0.0, 0.8])) and abs(float(r.mean()) - 1) < 1e-6
    assert mask.sparsity() == 0.0 and mask_sparsity(mask.binary(), 0.5) == 0.0


@pytest.mark.parametrize("inner", ["task_arithmetic", "adamerging"])
def test_concrete_merging_runs_and_limits(inner):
    net, base, vectors, data = _setup(1)
    res = concrete_merging(
        net,
        base,
        vectors,
        data,
        inner=inner,
        steps=15,
        lr=0.1,
        adamerging_steps=10,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(res.losses) == 15 and 0.0 <= res.sparsity <= 1.0
    assert set(res.state_dict) == set(base)
    moved = sum(float(x.detach().abs().sum()) for x in res.mask.logits.values())
    assert moved > 0  # the outer steps changed the mask
    if inner == "adamerging":
        assert res.adamerging is not None and res.coefficients.shape == (4, 3)
    # no outer step: the continuous mask is 1/2 everywhere, rescaled to 1: plain task arithmetic
    res0 = concrete_merging(net, base, vectors, data, inner="task_arithmetic", steps=0, scale=0.3)
    ref = merged_parameters(base, vectors, torch.full((3,), 0.3, dtype=torch.float64), res0.names)
    assert all(torch.allclose(res0.state_dict[n], ref[n], atol=1e-13, rtol=0) for n in base)


def test_diagnostics_hand_cases_and_references():
    a = {"w": torch.tensor([1.0, 2.0, 0.0, -1.0]), "b": torch.tensor([1.0])}
    b = {"w": torch.tensor([-1.0, 3.0, 5.0, -2.0]), "b": torch.tensor([-2.0])}
    assert sign_conflict_rate([a, b]) == pytest.approx(2 / 4)  # shared: w0, w1, w3, b0
    assert sign_conflict_rate([a, b], per_tensor=True) == pytest.approx({"w": 1 / 3, "b": 1.0})
    g = torch.Generator().manual_seed(0)
    tvs = [
        {"w": torch.randn(6, 4, generator=g), "v": torch.randn(3, generator=g)} for _ in range(4)
    ]
    flat = torch.stack([torch.cat([tv["w"].flatten(), tv["v"]]).double() for tv in tvs])
    ref = flat @ flat.T / flat.norm(dim=1)[:, None] / flat.norm(dim=1)[None, :]
    assert torch.allclose(cosine_matrix(tvs), ref, atol=1e-12, rtol=0)
    d = torch.randn(30, generator=g, dtype=torch.float64)
    ranks = layer_ranks([{"x": d}, {"x": -3 * d}, {"x": 0.5 * d}])["x"]
    assert ranks.rank == 1 and ranks.subspace is not None
    assert abs(float(ranks.subspace.basis[:, 0] @ d).__abs__() - float(d.norm())) < 1e-10
    assert ranks.effective_rank == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError, match="energy"):
        layer_ranks(tvs, energy=1.5)
