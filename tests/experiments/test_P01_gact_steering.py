"""P01 (G-ACT): helpers of the reproduction and its fast run."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from subspaces.data import aligned_programs
from subspaces.experiments.P01_gact_steering import (
    HINTS,
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
    assert m["classifier_heldout_accuracy"] > 0.95
    assert len(m["probe_accuracy_act"]) == len(m["layers"]) == 4
    assert len(m["gact_steered_layers"]) == 2
    for name in ("unsteered", "act", "gact", "static"):
        rates = m["test"][name]
        assert sum(rates[k] for k in ("python", "c", "other")) == pytest.approx(1.0)
    c = m["criteria"]
    assert result.passed == (c["raise"] and c["probe_accuracy"] and c["beats_static"])
