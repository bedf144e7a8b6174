"""GACT.refine_until_stable: per-layer early stopping of the online probe refinement."""

from __future__ import annotations

import pytest
import torch

from subspaces.steering.act import GACT

DT = torch.float64


def _pairs(n, seed, drift=0.0):
    """Paired activations: pos = neg + one of two shifts; the cluster shows in neg[:, 2]."""
    g = torch.Generator().manual_seed(seed)
    neg = torch.randn(n, 6, generator=g, dtype=DT)
    which = torch.arange(n) % 2
    shift = torch.zeros(n, 6, dtype=DT)
    shift[which == 0, 0] = 3.0
    shift[which == 1, 1] = 3.0
    neg[:, 2] += torch.where(which == 0, -2.0, 2.0).to(DT)
    neg[:, 3] += drift
    return neg + shift, neg


def _fitted(seed=0):
    pos, neg = _pairs(12, seed)
    gact = GACT(2, refine_lr=0.5, refine_steps=5, generator=torch.Generator().manual_seed(0))
    return gact.fit_activations({"a": pos, "b": pos * 0.2}, {"a": neg, "b": neg * 0.2})


def _batch(i, swap=False):
    pos, neg = _pairs(40, 100 + i, drift=2.0)
    if swap:  # wrong labels: refining on these degrades the probes
        pos, neg = neg, pos
    return {"a": pos, "b": pos * 0.2}, {"a": neg, "b": neg * 0.2}


def _val():
    pos, neg = _pairs(200, 7, drift=2.0)
    return {"a": pos, "b": pos * 0.2}, {"a": neg, "b": neg * 0.2}


def test_stops_by_patience_keeps_the_best_probe_and_reads_lazily():
    gact = _fitted()
    val_pos, val_neg = _val()
    before = gact.probe_accuracy(val_pos, val_neg)
    taken = []

    def stream():  # 3 useful batches, then a long stream of label-swapped batches
        for i in range(40):
            taken.append(i)
            yield _batch(i, swap=i >= 3)

    hist = gact.refine_until_stable(stream(), val_pos, val_neg, patience=2)
    assert len(taken) < 40  # stopped long before the stream ended
    recomputed = gact.probe_accuracy(val_pos, val_neg)
    for key, h in hist.items():
        curve = h["curve"]
        assert curve[0] == before[key]
        assert h["converged"] and h["batches"] == len(curve) - 1
        # converged means: the last `patience` scores never beat the best
        assert len(curve) - 1 - h["best_batch"] == 2
        assert max(curve[h["best_batch"] + 1 :]) <= h["best"] == max(curve)
        assert curve[h["best_batch"]] == h["best"]
        # the kept probe is the best one, checked by scoring it again
        assert recomputed[key] == h["final"] == h["best"]
    # the refinement helped, the swapped batches hurt, and the best probe was put back
    for h in hist.values():
        assert h["best"] > h["curve"][0] + 0.1 and h["best_batch"] == 3
        assert h["final"] > h["curve"][-1] + 0.1
    assert gact.refine_history_ is hist


def test_stream_ending_first_is_not_converged():
    gact = _fitted()
    val_pos, val_neg = _val()
    hist = gact.refine_until_stable(iter([_batch(0), _batch(1)]), val_pos, val_neg, patience=5)
    for h in hist.values():
        assert not h["converged"] and h["batches"] == 2 and len(h["curve"]) == 3


def test_min_delta_counts_small_rises_as_flat():
    gact = _fitted()
    val_pos, val_neg = _val()
    hist = gact.refine_until_stable(
        (_batch(i) for i in range(30)), val_pos, val_neg, patience=1, min_delta=1.0
    )
    for h in hist.values():  # no accuracy can rise by more than 1: stop after one batch
        assert h["converged"] and h["best_batch"] == 0 and h["batches"] == 1
        assert h["final"] == h["curve"][0]


def test_refine_until_stable_errors():
    gact = _fitted()
    val_pos, val_neg = _val()
    with pytest.raises(ValueError, match="patience"):
        gact.refine_until_stable(iter([_batch(0)]), val_pos, val_neg, patience=0)
    with pytest.raises(ValueError, match="min_delta"):
        gact.refine_until_stable(iter([_batch(0)]), val_pos, val_neg, min_delta=-0.1)
    with pytest.raises(ValueError, match="batches is empty"):
        gact.refine_until_stable(iter([]), val_pos, val_neg)
    with pytest.raises(ValueError, match="'b'"):
        gact.refine_until_stable(iter([_batch(0)]), {"a": val_pos["a"]}, {"a": val_neg["a"]})
    with pytest.raises(RuntimeError, match="not fitted"):
        GACT(2).refine_until_stable(iter([_batch(0)]), val_pos, val_neg)
