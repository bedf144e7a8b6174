"""Tests of subspace rerouting (GCG toward an activation-space target) and output-loss search."""

from __future__ import annotations

import pytest
import torch

from subspaces.linalg import Subspace
from subspaces.steering import collect_activations, find_sites
from subspaces.steering.probes import LinearProbe
from subspaces.steering.reroute import OutputTokenSearch, RerouteTarget, SubspaceRerouting

pytest.importorskip("transformers")
from subspaces.testing.tiny_lm import tiny_causal_lm

DT = torch.float64


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm("llama", vocab_size=16, hidden=16, layers=3, heads=2, seed=0)


def test_target_losses_closed_forms():
    g = torch.Generator().manual_seed(0)
    h = torch.randn(5, 4, generator=g, dtype=DT)
    d = torch.randn(4, generator=g, dtype=DT)
    t = RerouteTarget("x", direction=d, target_cos=0.3)
    cos = (h @ d) / (h.norm(dim=1) * d.norm())
    torch.testing.assert_close(t.loss(h), (0.3 - cos) ** 2)
    assert torch.equal(t.satisfied(h), (0.3 - cos).abs() < 0.05)
    Q = torch.linalg.qr(torch.randn(4, 2, generator=g, dtype=DT)).Q
    center = torch.randn(4, generator=g, dtype=DT)
    into = RerouteTarget("x", subspace=Subspace.from_vectors(Q), center=center)
    away = RerouteTarget("x", subspace=Q, into=False, center=center)
    x = h - center
    frac = ((x @ Q) ** 2).sum(1) / (x**2).sum(1)
    torch.testing.assert_close(into.loss(h), 1 - frac)
    torch.testing.assert_close(away.loss(h), frac)
    y = torch.arange(40) % 2
    X = torch.randn(40, 4, generator=g, dtype=DT) + 2.0 * y[:, None]
    probe = LinearProbe().fit(X, y)
    pt = RerouteTarget("x", probe=probe, target_class=1)
    ref = -torch.log_softmax(probe.logits(h), dim=1)[:, 1]
    torch.testing.assert_close(pt.loss(h), ref)
    assert torch.equal(pt.satisfied(h), probe.predict(h) == 1)
    with pytest.raises(ValueError, match="exactly one"):
        RerouteTarget("x")
    with pytest.raises(ValueError, match="exactly one"):
        RerouteTarget("x", probe=probe, direction=d, target_class=1)
    with pytest.raises(ValueError, match="target_class"):
        RerouteTarget("x", probe=probe)
    with pytest.raises(ValueError, match="not among"):
        RerouteTarget("x", probe=probe, target_class=3)


def test_forward_stops_at_the_last_targeted_layer(model):
    sites = find_sites(model, kind="block")
    ran = []
    hook = dict(model.named_modules())[sites[2].name].register_forward_hook(
        lambda m, a, o: ran.append(1)
    )
    d = torch.ones(16)
    ssr = SubspaceRerouting(model, RerouteTarget(sites[0], direction=d))
    ids = torch.tensor([[1, 2, 3, 4]])
    acts = ssr.activations(ids, None)
    assert not ran  # the last block never ran
    ref = collect_activations(model, [ids[0]], sites[0], token="last", stop_early=False)
    torch.testing.assert_close(acts[0], ref[sites[0].key])
    # embeddings and ids give the same loss (the one-hot path is exact)
    emb = model.get_input_embeddings()(ids)
    torch.testing.assert_close(ssr._forward_loss(None, emb), ssr._forward_loss(ids, None))
    hook.remove()


def test_rerouting_reaches_a_direction_target(model):
    site = find_sites(model, kind="block")[1]
    prefix, init = torch.tensor([1, 2]), torch.tensor([3, 3, 3, 3])
    base = collect_activations(model, [torch.cat([prefix, init])], site)[site.key][0]
    # target: the direction of an activation reachable with other tokens
    other = collect_activations(model, [torch.tensor([1, 2, 9, 12, 5, 7])], site)[site.key][0]
    target = RerouteTarget(site, direction=other, target_cos=1.0, tol=0.1)
    allowed = torch.arange(16) < 14
    ssr = SubspaceRerouting(
        model,
        target,
        n_steps=40,
        top_k=8,
        search_width=48,
        allowed_tokens=allowed,
        generator=torch.Generator().manual_seed(0),
    )
    start = ssr.loss(torch.cat([prefix, init]))
    res = ssr.run(prefix, init)
    assert res.steps == len(res.losses) == len(res.history) == len(res.times)
    assert all(b >= a for a, b in zip(res.times, res.times[1:], strict=False))
    assert res.loss < start and res.loss == pytest.approx(ssr.loss(res.input_ids))
    assert torch.equal(res.input_ids, torch.cat([prefix, res.tokens]))
    assert bool(allowed[res.tokens].all())
    if res.success:
        assert res.success_step is not None and ssr._default_success(res.input_ids[None])[0]
    cos = torch.nn.functional.cosine_similarity(
        collect_activations(model, [res.input_ids], site)[site.key][0], other, dim=0
    )
    cos0 = torch.nn.functional.cosine_similarity(base, other, dim=0)
    assert cos > cos0
    # each recorded loss is the exact loss of the recorded tokens
    for tokens, loss in list(zip(res.history, res.losses, strict=True))[:3]:
        assert ssr.loss(torch.cat([prefix, tokens])) == pytest.approx(loss, rel=1e-6, abs=1e-9)


def test_output_search_and_stop_when(model):
    prefix, init, suffix = torch.tensor([5]), torch.tensor([1, 1, 1]), torch.tensor([2])
    calls = []

    def stop(ids):
        calls.append(ids.clone())
        return len(calls) >= 4

    ots = OutputTokenSearch(
        model, 7, n_steps=10, top_k=8, search_width=16, generator=torch.Generator().manual_seed(1)
    )
    start = ots.loss(torch.cat([prefix, init, suffix]))
    res = ots.run(prefix, init, suffix, stop_when=stop)
    assert res.success and res.success_step == 3 and res.steps == 3  # step 0 is checked too
    assert calls[0].tolist() == [5, 1, 1, 1, 2] and calls[-1][-1] == 2
    # on success the tokens of the successful step are returned, with their loss
    assert torch.equal(res.tokens, res.history[-1])
    assert res.loss == pytest.approx(ots.loss(res.input_ids))
    full = OutputTokenSearch(
        model, 7, n_steps=25, top_k=16, search_width=64, generator=torch.Generator().manual_seed(1)
    ).run(prefix, init, suffix, early_stop=False)
    assert full.steps == 25
    # GCG always moves to a new candidate; the best one seen is returned
    assert all(not torch.equal(a, b) for a, b in zip(full.history, full.history[1:], strict=False))
    assert full.loss == pytest.approx(min([start, *full.losses]))
    if full.success:
        logits = model(full.input_ids[None]).logits[0, -1]
        assert int(logits.argmax()) == 7


def test_search_errors(model):
    with pytest.raises(ValueError, match="allowed"):
        OutputTokenSearch(model, 3, allowed_tokens=torch.tensor([1]))
    ots = OutputTokenSearch(model, 3, allowed_tokens=torch.tensor([1, 2, 3]))
    with pytest.raises(ValueError, match="outside"):
        ots.run(torch.tensor([1]), torch.tensor([9]))
    with pytest.raises(ValueError, match="at least one"):
        ots.run(torch.tensor([1]), torch.tensor([], dtype=torch.long))
    with pytest.raises(ValueError, match="target_id"):
        OutputTokenSearch(model, 99)
    with pytest.raises(TypeError):
        SubspaceRerouting(model, ["not a target"])
