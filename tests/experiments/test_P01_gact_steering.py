"""P01 (G-ACT): helpers of the reproduction and its fast run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from subspaces.data import aligned_programs
from subspaces.experiments.P01_gact_steering import (
    HINTS,
    PATIENCE,
    _boundary_mask,
    _header,
    _ngram_features,
    _text,
)


def test_headers_texts_and_boundaries():
    prog = aligned_programs(1, seed=3)[0]
    h = _header(prog)
    assert h.startswith("@@ ") and h.endswith(")\n") and "def" not in h
    assert _header(prog, " c") == h[:-1] + " c\n"
    for lang in (0, 1):
        text = _text(prog, lang, hint=HINTS[lang])
        mask = _boundary_mask(prog, lang, len(text.encode()))
        ends = [i for i, b in enumerate(text.encode()) if mask[i]]
        assert len(ends) == len(prog) + 1  # header end and every chunk end
        assert all(text.encode()[i] == ord("\n") for i in ends)
        assert ends[-1] == len(text.encode()) - 1


def test_ngram_features_are_normalized_frequencies():
    X = _ngram_features(["abc", ""])
    # 3 unigrams + 2 bigrams + 1 trigram over 3 bytes
    assert float(X[0].sum()) == pytest.approx(6 / 3)
    assert float(X[1].sum()) == 0.0
    assert torch.equal(_ngram_features(["abc"]), X[:1])


@pytest.mark.slow
def test_p01_fast_run() -> None:
    from subspaces.experiments import get

    result = get("P01").run(True, 0)
    m = result.measured
    assert m["seeds"] == [0, 1, 2]
    for run in m["runs"]:
        assert run["classifier_heldout_accuracy"] > 0.95
        assert len(run["probe_accuracy_act"]) == len(run["layers"]) == 8
        assert len(run["gact_steered_layers"]) == 4
        for name in ("unsteered", "act", "gact", "static"):
            rates = run["test"][name]
            assert sum(rates[k] for k in ("python", "c", "other")) == pytest.approx(1.0)
        for h in run["refinement"].values():
            # a layer said to have converged had `PATIENCE` batches without a rise at the end
            tail = h["curve"][h["best_batch"] + 1 :]
            assert max(h["curve"]) == h["best"] == h["final"]
            assert h["converged"] == (len(tail) == PATIENCE and max(tail) <= h["best"])
    assert m["all_layers_converged"] == all(
        h["converged"] for run in m["runs"] for h in run["refinement"].values()
    )
    assert m["gact_minus_act_probe_accuracy"]["n"] == 3
    c = m["criteria"]
    assert result.passed == all(c.values())
    assert set(result.headline) <= set(m)
