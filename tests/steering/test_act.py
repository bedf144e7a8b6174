"""Tests of ACT / G-ACT (probe-gated clustered steering) and the static neuron baseline."""

from __future__ import annotations

import pytest
import torch

from subspaces.steering import find_sites
from subspaces.steering.act import ACT, GACT
from subspaces.steering.attribution import NeuronAttributionSteering, mlp_output_projections

transformers = pytest.importorskip("transformers")
from subspaces.testing.tiny_lm import tiny_causal_lm  # noqa: E402

DT = torch.float64


def _two_cluster_pairs(n=80, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    neg = torch.randn(n, d, generator=g, dtype=DT)
    a = torch.zeros(d, dtype=DT)
    a[0] = 6.0
    b = torch.zeros(d, dtype=DT)
    b[1] = 6.0
    which = torch.arange(n) % 2
    shift = torch.where(which[:, None] == 0, a, b)
    # the cluster is visible in neg itself (coordinate 2), so a probe can pick it
    neg[:, 2] += torch.where(which == 0, -4.0, 4.0).to(DT)
    return neg + shift, neg, which, (a, b)


def test_clusters_probes_and_gated_vectors():
    pos, neg, _, (a, b) = _two_cluster_pairs()
    act = ACT(2, generator=torch.Generator().manual_seed(0)).fit_activations({"s": pos}, {"s": neg})
    C = act.clusters_["s"].centroids_
    # the two centroids are the two shifts (in some order)
    got = sorted([C[0], C[1]], key=lambda v: -float(v[0]))
    torch.testing.assert_close(got[0], a, atol=1e-12, rtol=0)
    torch.testing.assert_close(got[1], b, atol=1e-12, rtol=0)
    probe = act.probes_["s"]
    assert probe.classes_.tolist() == [0, 1, 2]
    acc = act.probe_accuracy({"s": pos}, {"s": neg})["s"]
    assert acc > 0.95
    # a source activation gets (1 - p_target) * its own cluster's centroid
    v = act.steering_vector("s", neg, alpha=2.0)
    p = probe.predict_proba(neg)
    j = p[:, 1:].argmax(1)
    torch.testing.assert_close(v, 2.0 * (1 - p[:, :1]) * C[j])
    own = act.clusters_["s"].labels_
    assert torch.equal(j, own)
    # target activations are barely steered; without the gate they get the full vector
    assert float(act.steering_vector("s", pos).norm(dim=1).max()) < 1.0
    ungated = ACT(2, adaptive=False, generator=torch.Generator().manual_seed(0))
    ungated.fit_activations({"s": pos}, {"s": neg})
    norms = ungated.steering_vector("s", pos).norm(dim=1)
    torch.testing.assert_close(norms, torch.full_like(norms, 6.0))


def test_apply_on_a_model_adds_exactly_the_gated_vector_and_cleans_up():
    model = tiny_causal_lm("llama", vocab_size=30, hidden=16, layers=3, heads=2, seed=0)
    sites = find_sites(model, kind="block")
    g = torch.Generator().manual_seed(0)
    pos = [torch.randint(0, 15, (6,), generator=g) for _ in range(12)]
    neg = [torch.randint(15, 30, (6,), generator=g) for _ in range(12)]
    act = ACT(2, sites=[sites[1]], generator=torch.Generator().manual_seed(0))
    act.fit(model, pos, neg)
    key = sites[1].key
    assert act.site_keys_ == [key] and act.steered_ == [key]
    block = dict(model.named_modules())[key]
    seen = {}
    pre = block.register_forward_hook(lambda m, a, o: seen.__setitem__("before", o[0].clone()))
    x = torch.randint(0, 30, (2, 7), generator=g)
    with torch.no_grad():
        base = model(x).logits
        with act.apply(model, alpha=1.5) as steered:
            post = block.register_forward_hook(
                lambda m, a, o: seen.__setitem__("after", o[0].clone())
            )
            out = model(x).logits
            post.remove()
        assert steered == [key]
    pre.remove()
    expected = seen["before"] + act.steering_vector(key, seen["before"], 1.5)
    torch.testing.assert_close(seen["after"], expected)
    assert not torch.allclose(out, base)
    # hooks gone, alpha = 0 is an exact no-op, exceptions clean up too
    assert all(not m._forward_hooks for m in model.modules())
    with torch.no_grad(), act.apply(model, alpha=0.0):
        assert torch.equal(model(x).logits, base)
    with pytest.raises(RuntimeError, match="boom"), act.apply(model, alpha=1.0):
        raise RuntimeError("boom")
    assert all(not m._forward_hooks for m in model.modules())
    with pytest.raises(ValueError, match="not fitted"), act.apply(model, sites=["nope"]):
        pass


def test_gact_refinement_and_layer_selection():
    pos, neg, _, _ = _two_cluster_pairs(n=400, seed=1)
    # few initial pairs, and a later stream from a shifted distribution (as in use)
    drift = torch.zeros(6, dtype=DT)
    drift[3] = 3.0
    gact = GACT(2, refine_lr=0.05, refine_steps=2, generator=torch.Generator().manual_seed(0))
    acts_pos = {"early": pos[:20] * 0.3, "late": pos[:20]}
    acts_neg = {"early": neg[:20] * 0.3, "late": neg[:20]}
    gact.fit_activations(acts_pos, acts_neg)
    act = ACT(2, generator=torch.Generator().manual_seed(0)).fit_activations(acts_pos, acts_neg)
    test_pos = {"early": pos[300:] * 0.3 + drift, "late": pos[300:] + drift}
    test_neg = {"early": neg[300:] * 0.3 + drift, "late": neg[300:] + drift}
    before = gact.probe_accuracy(test_pos, test_neg)
    assert before == act.probe_accuracy(test_pos, test_neg)
    for i in range(20, 300, 20):
        gact.refine(
            {"early": pos[i : i + 20] * 0.3 + drift, "late": pos[i : i + 20] + drift},
            {"early": neg[i : i + 20] * 0.3 + drift, "late": neg[i : i + 20] + drift},
        )
    after = gact.probe_accuracy(test_pos, test_neg)
    assert gact.n_refined_ == 14
    assert sum(after.values()) > sum(before.values())
    # the clusters are unchanged by the refinement
    torch.testing.assert_close(gact.clusters_["late"].centroids_, act.clusters_["late"].centroids_)
    kept = gact.select_layers(test_pos, test_neg, n_layers=1)
    best = max(after, key=after.get)
    assert kept == [best] == gact.steered_


def test_act_errors():
    pos, neg, _, _ = _two_cluster_pairs()
    with pytest.raises(ValueError, match="paired"):
        ACT().fit_activations({"s": pos}, {"s": neg[:-1]})
    with pytest.raises(ValueError, match="missing"):
        ACT().fit_activations({"s": pos}, {"t": neg})
    with pytest.raises(RuntimeError, match="not fitted"):
        ACT().steering_vector("s", pos)
    with pytest.raises(ValueError, match="not fitted"):
        ACT(2).fit_activations({"s": pos}, {"s": neg}).steering_vector("t", pos)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "opt"])
def test_neuron_attribution_static_boost(family):
    model = tiny_causal_lm(family, vocab_size=20, hidden=16, layers=2, heads=2, seed=1)
    names = mlp_output_projections(model)
    assert len(names) == 2 and all("attn" not in n for n in names)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6, 7])]
    for method in ("grad_x_act", "logit_lens"):
        nas = NeuronAttributionSteering(n_neurons=3, method=method).fit(model, prompts, [9])
        assert len(nas.neurons_) == 3 and nas.scale_.shape == (3,)
        assert bool((nas.scores_[:-1] >= nas.scores_[1:]).all())
        with torch.no_grad():
            base = model(torch.tensor([[1, 2, 3]])).logits
            with nas.apply(model, alpha=0.0):
                assert torch.equal(model(torch.tensor([[1, 2, 3]])).logits, base)
            with nas.apply(model, alpha=2.0):
                steered = model(torch.tensor([[1, 2, 3]])).logits
        assert not torch.equal(steered, base)
        assert all(not m._forward_pre_hooks for m in model.modules())


def test_grad_x_act_matches_a_manual_computation():
    model = tiny_causal_lm("llama", vocab_size=20, hidden=16, layers=2, heads=2, seed=2)
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    nas = NeuronAttributionSteering(n_neurons=5, layers=[1]).fit(model, prompts, [7])
    down = model.model.layers[1].mlp.down_proj
    total = torch.zeros(down.in_features, dtype=DT)
    store = {}
    for p in prompts:
        h = down.register_forward_pre_hook(lambda m, a: store.__setitem__("a", a[0]))
        logits = model(p[None]).logits
        h.remove()
        logp = torch.log_softmax(logits[0, -1].float(), -1)[7]
        (grad,) = torch.autograd.grad(logp, store["a"])
        total += (store["a"][0, -1] * grad[0, -1]).double()
    ref = (total / 2).topk(5)
    assert [i for _, i in nas.neurons_] == ref.indices.tolist()
    torch.testing.assert_close(nas.scores_.double(), ref.values, atol=1e-5, rtol=1e-4)
