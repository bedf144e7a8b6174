"""Tests for activation capture, streaming layer similarity, unit matching and P17."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from subspaces.representations.capture import (
    capture_activations,
    collect_activations,
    layer_similarity_matrix,
)
from subspaces.representations.convergent import (
    cluster_units,
    match_units,
    sparse_prediction,
    unit_correlation,
)
from subspaces.representations.similarity import linear_cka

F64 = torch.float64


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(5, 12), nn.ReLU(), nn.Linear(12, 7), nn.Tanh(), nn.Linear(7, 3)
    ).double()


def _conv_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 4)
    ).double()


def _num_hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


# ----- capture -------------------------------------------------------------------------------
def test_hooks_removed_after_context_and_after_exception() -> None:
    net = _net(0)
    foreign = net[0].register_forward_hook(lambda m, i, o: None)  # someone else's hook stays
    x = _randn(4, 5, seed=1)
    with capture_activations(net, ["0", "3"]) as acts:
        assert _num_hooks(net) == 3
        net(x)
        assert acts["0"].shape == (4, 12) and acts["3"].shape == (4, 7)
    assert _num_hooks(net) == 1
    with pytest.raises(RuntimeError, match="boom"), capture_activations(net, ["0", "1"]):
        net(x)
        raise RuntimeError("boom")
    assert _num_hooks(net) == 1
    foreign.remove()
    assert _num_hooks(net) == 0


def test_outputs_identical_and_model_not_mutated() -> None:
    net = _conv_net(0)
    net.train()
    x = _randn(6, 2, 4, 4, seed=2)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    net.eval()
    with torch.no_grad():
        ref = net(x)
    net.train()
    acts = collect_activations(net, ["0", "2"], x, batch_size=4)
    assert net.training and all(m.training for m in net.modules())
    for k, v in net.state_dict().items():  # batch-norm statistics untouched
        assert torch.equal(v, state[k]), k
    assert acts["0"].shape == (6, 3 * 4 * 4)  # conv maps flattened per sample
    net.eval()
    with capture_activations(net, ["4"]) as captured, torch.no_grad():
        out = net(x)
    assert torch.equal(out, ref)
    assert torch.equal(captured["4"], ref)


def test_collect_accepts_loader_of_pairs() -> None:
    net = _net(0)
    X = _randn(10, 5, seed=3)
    loader = [(X[:6], torch.zeros(6)), (X[6:], torch.zeros(4))]
    a = collect_activations(net, ["2"], loader)["2"]
    b = collect_activations(net, ["2"], X, batch_size=3)["2"]
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("unbiased", [False, True])
def test_streaming_layer_similarity_matches_concatenated_cka(unbiased: bool) -> None:
    a, b = _net(0), _net(1)
    X = _randn(90, 5, seed=4)
    layers_a, layers_b = ["0", "1", "3"], ["2", "4"]
    S = layer_similarity_matrix(a, b, layers_a, layers_b, X, unbiased=unbiased, batch_size=16)
    acts_a = collect_activations(a, layers_a, X)
    acts_b = collect_activations(b, layers_b, X)
    for i, la in enumerate(layers_a):
        for j, lb in enumerate(layers_b):
            ref = linear_cka(acts_a[la], acts_b[lb], unbiased=unbiased)
            assert abs(float(S[i, j]) - ref) < 1e-10
    S_self = layer_similarity_matrix(a, a, layers_a, layers_a, X, batch_size=32)
    torch.testing.assert_close(S_self.diagonal(), torch.ones(3, dtype=F64))
    assert _num_hooks(a) == 0 and _num_hooks(b) == 0


def test_capture_bad_inputs() -> None:
    net = _net(0)
    with pytest.raises(ValueError, match="unknown module name"), capture_activations(net, ["9"]):
        pass
    assert _num_hooks(net) == 0
    with pytest.raises(ValueError, match="non-empty list"):
        collect_activations(net, "0", _randn(3, 5, seed=0))
    with pytest.raises(ValueError, match="repeated"):
        collect_activations(net, ["0", "0"], _randn(3, 5, seed=0))
    with pytest.raises(ValueError, match="measure"):
        layer_similarity_matrix(net, net, ["0"], ["0"], _randn(3, 5, seed=0), measure="svcca")
    with pytest.raises(ValueError, match="unknown module name"):
        layer_similarity_matrix(net, net, ["0"], ["nope"], _randn(3, 5, seed=0))
    with pytest.raises(ValueError, match="no batches"):
        collect_activations(net, ["0"], [])
    with pytest.raises(TypeError, match="batch"):
        collect_activations(net, ["0"], [["a"]])


def test_layer_with_wrong_sample_count_raises() -> None:
    class Flat(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x.reshape(1, -1)

    class Dict(nn.Module):
        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"x": x}

    net = nn.Sequential(nn.Linear(5, 4), Flat()).double()
    with pytest.raises(ValueError, match="sample counts must match"):
        collect_activations(net, ["1"], _randn(3, 5, seed=0))
    assert _num_hooks(net) == 0
    net = nn.Sequential(nn.Linear(5, 4), Dict()).double()
    with pytest.raises(TypeError, match="only tensor outputs"):  # raised inside the hook
        collect_activations(net, ["1"], _randn(3, 5, seed=0))
    assert _num_hooks(net) == 0


# ----- convergent ----------------------------------------------------------------------------
def test_matching_recovers_known_permutation() -> None:
    A = torch.relu(_randn(400, 20, seed=5) @ _randn(20, 30, seed=6))
    perm = torch.randperm(30, generator=torch.Generator().manual_seed(7))
    B = 3.0 * A[:, perm] + 1.0  # net B = permuted (rescaled, shifted) copy of net A
    C = unit_correlation(A, B)
    for method in ("bipartite", "semi"):
        m = match_units(C, method)
        assert torch.equal(perm[m.cols], m.rows)  # unit i of A is unit cols[i] of B
        assert abs(m.mean - 1.0) < 1e-12 and m.fraction_above(0.99) == 1.0


def test_unit_correlation_reference_and_dead_units() -> None:
    X, Y = _randn(50, 4, seed=8), _randn(50, 3, seed=9)
    Y[:, 1] = 2.0  # a dead unit
    C = unit_correlation(X, Y)
    ref = torch.corrcoef(torch.cat([X, Y], 1).T)[:4, 4:]
    torch.testing.assert_close(C[:, [0, 2]], ref[:, [0, 2]])
    assert torch.equal(C[:, 1], torch.zeros(4, dtype=F64))


def test_bipartite_beats_semi_matching_on_rectangular_input() -> None:
    C = torch.tensor([[0.9, 0.8], [0.85, 0.1], [0.2, 0.3]], dtype=F64)
    bip, semi = match_units(C), match_units(C, "semi")
    assert bip.rows.tolist() == [0, 1] and bip.cols.tolist() == [1, 0]
    assert semi.cols.tolist() == [0, 0, 1]


def test_lasso_finds_the_three_units_of_a_linear_combination() -> None:
    X = _randn(300, 12, seed=10)
    y = (1.5 * X[:, 2] - 0.7 * X[:, 5] + 0.4 * X[:, 9])[:, None]
    res = sparse_prediction(X, torch.cat([y, X[:, [4]]], 1), target_r2=0.999)
    assert res.num_units.tolist() == [3, 1]
    assert res.supports[0].tolist() == [2, 5, 9] and res.supports[1].tolist() == [4]
    assert float(res.r2[0]) >= 0.999 and res.fraction_reached == 1.0
    assert float(res.r2_by_units[0, 3]) > 0.999 > float(res.r2_by_units[0, 2])
    assert bool((res.r2_by_units.diff(dim=1) >= 0).all())


def test_cluster_units_groups_shared_subspaces() -> None:
    Z = _randn(500, 3, seed=11)
    noise = 0.05 * _randn(500, 12, seed=12)
    X = Z[:, [0, 0, 1, 1, 2, 2]] + noise[:, :6]
    Y = Z[:, [2, 1, 0, 2, 1, 0]] + noise[:, 6:]
    res = cluster_units(X, Y, 3, seed=0)
    assert sorted(res.composition.tolist()) == [[2, 2], [2, 2], [2, 2]]
    for k in range(3):  # units of the same latent land together
        assert res.labels_a[2 * k] == res.labels_a[2 * k + 1]
    assert res.fraction_mixed == 1.0
    assert bool((res.mean_cross_correlation > 0.9).all())
    with pytest.raises(ValueError, match="num_clusters"):
        cluster_units(X, Y, 13)


def test_convergent_bad_inputs() -> None:
    X = _randn(10, 3, seed=0)
    with pytest.raises(ValueError, match="same number of rows"):
        unit_correlation(X, _randn(9, 3, seed=1))
    with pytest.raises(ValueError, match="same number of rows"):
        sparse_prediction(X, _randn(11, 2, seed=1))
    with pytest.raises(ValueError, match="same number of rows"):
        cluster_units(X, _randn(11, 2, seed=1), 2)
    with pytest.raises(ValueError, match="method"):
        match_units(torch.eye(3, dtype=F64), "greedy")
    with pytest.raises(ValueError, match="corr"):
        match_units(torch.ones(3, dtype=F64))
    with pytest.raises(ValueError, match="target_r2"):
        sparse_prediction(X, X, target_r2=1.5)
    with pytest.raises(TypeError):
        unit_correlation(X.long(), X)


# ----- reproduction --------------------------------------------------------------------------
@pytest.mark.slow
def test_p17_fast_run_pairs_like_for_like() -> None:
    from subspaces.experiments import registry
    from subspaces.experiments.P17_convergent_learning import run

    result = run(True, 0)
    assert registry.get("P17").run is run
    measured = result.measured
    assert list(measured["pairs"]) == ["0-1", "2-3", "4-5"]  # independent pairs
    m = measured["pairs"]["0-1"]
    assert 0.0 < m["matched_fraction_above_0.9"] < 1.0
    assert set(result.headline) == {"svcca_minus_units_k10", "svcca_k10", "units_k10"}
    assert measured["svcca_minus_units_k10"]["n"] == 3
    assert result.passed == all(measured["checks"].values()), result.summary
    assert {"passed_pair_0", "passed_all_pairs"} <= set(measured["old_criterion"])
    assert "correlation_matching" in result.figures


def test_p17_like_for_like_units_and_subspaces_over_k_dimensions() -> None:
    from subspaces.experiments.P17_convergent_learning import like_for_like
    from subspaces.representations.similarity import svcca

    g = torch.Generator().manual_seed(0)
    Z = torch.randn(400, 3, generator=g, dtype=F64)
    eps = torch.finfo(F64).eps
    # the same units, permuted and rescaled: both levels see a perfect match
    A = Z @ _randn(3, 6, seed=1) + 0.01 * _randn(400, 6, seed=2)
    B = A[:, torch.randperm(6, generator=g)] * 3.0
    same = like_for_like(A, B, 3)
    assert abs(same["units"] - 1.0) <= 1e3 * eps and abs(same["subspace"] - 1.0) <= 1e3 * eps
    # a shared 3-dim span in another basis: the subspace matches, single units do not
    C = Z @ _randn(3, 6, seed=3) + 0.01 * _randn(400, 6, seed=4)
    mixed = like_for_like(A, C, 3)
    assert mixed["subspace"] > 0.99 and mixed["units"] < 0.95
    assert mixed["units"] <= mixed["units_best_k"] + 1e3 * eps

    # the subspace side is SVCCA with exactly k directions kept per side: CCA of the top-k
    # principal component scores (svcca with keep=1 on those k-column representations)
    def scores(X: torch.Tensor, k: int) -> torch.Tensor:
        U, S, _ = torch.linalg.svd(X - X.mean(0), full_matrices=False)
        return U[:, :k] * S[:k]

    D = A + 0.5 * _randn(400, 6, seed=5)  # a noisier net: principal angles well away from 0
    ref = svcca(scores(A, 4), scores(D, 4), keep=1.0)
    assert ref.dims == (4, 4)
    assert abs(like_for_like(A, D, 4)["subspace"] - ref.mean) <= 1e3 * eps
    with pytest.raises(ValueError, match="k must be"):
        like_for_like(A, C, 7)
