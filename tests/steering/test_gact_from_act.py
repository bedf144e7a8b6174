"""GACT.from_act: the G-ACT built from a fitted ACT equals a G-ACT fitted from scratch."""

import pytest
import torch

from subspaces.steering.act import ACT, GACT

DT = torch.float64


def _data(seed: int, n: int = 60) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    pos, neg = {}, {}
    for key in ("l0", "l1"):
        base = torch.randn(n, 5, generator=g, dtype=DT)
        # two kinds of differences, so that k-means (k = 2) and its generator matter
        shift = (
            torch.where(torch.arange(n)[:, None] % 2 == 0, 3.0, -1.0) * torch.eye(5, dtype=DT)[0]
        )
        noise = 0.3 * torch.randn(n, 5, generator=g, dtype=DT)
        pos[key], neg[key] = base + shift + noise, base
    return pos, neg


def _same(a: GACT, b: GACT) -> None:
    assert a.site_keys_ == b.site_keys_ and a.steered_ == b.steered_
    for key in a.site_keys_:
        assert torch.equal(a.probes_[key].coef_, b.probes_[key].coef_)
        assert torch.equal(a.probes_[key].intercept_, b.probes_[key].intercept_)
        assert torch.equal(a.clusters_[key].centroids_, b.clusters_[key].centroids_)
        assert torch.equal(a._centroids[key], b._centroids[key])


def test_from_act_equals_a_gact_fitted_from_scratch_before_and_after_refinement() -> None:
    pos, neg = _data(0)
    act = ACT(2, generator=torch.Generator().manual_seed(5)).fit_activations(pos, neg)
    act_coef = {k: act.probes_[k].coef_.clone() for k in act.site_keys_}
    ref = GACT(2, refine_steps=3, generator=torch.Generator().manual_seed(5))
    ref.fit_activations(pos, neg)
    got = GACT.from_act(act, refine_steps=3)
    assert isinstance(got, GACT) and got.refine_steps == 3 and got.refine_lr == ref.refine_lr
    _same(got, ref)
    new_pos, new_neg = _data(1, 30)
    ref.refine(new_pos, new_neg)
    got.refine(new_pos, new_neg)
    _same(got, ref)
    h = torch.randn(4, 5, dtype=DT, generator=torch.Generator().manual_seed(2))
    assert torch.equal(got.steering_vector("l0", h), ref.steering_vector("l0", h))
    # the ACT's probes were copied, not shared: refining the G-ACT did not move them
    for key, coef in act_coef.items():
        assert torch.equal(act.probes_[key].coef_, coef)
        assert not torch.equal(got.probes_[key].coef_, coef)


def test_from_act_rejects_a_non_act_and_an_unfitted_act() -> None:
    with pytest.raises(TypeError, match="act must be an ACT"):
        GACT.from_act("act")  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="not fitted"):
        GACT.from_act(ACT(2))
