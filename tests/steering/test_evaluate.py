"""Tests of the steering evaluation helpers."""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from subspaces.steering import Intervention, find_sites, steer
from subspaces.steering.evaluate import (
    probe_accuracy,
    steering_report,
    strength_sweep,
    target_token_mass,
)
from subspaces.steering.probes import LinearProbe

pytest.importorskip("transformers")
from subspaces.testing.tiny_lm import tiny_causal_lm


@pytest.fixture(scope="module")
def model():
    return tiny_causal_lm("gpt2", vocab_size=12, hidden=16, layers=2, heads=2, seed=0)


def test_target_token_mass_matches_softmax_and_is_padding_invariant(model):
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5]), torch.tensor([6])]
    mass = target_token_mass(model, prompts, [3, 7], batch_size=2)
    for p, m in zip(prompts, mass, strict=True):
        with torch.no_grad():
            probs = torch.softmax(model(p[None]).logits[0, -1].double(), -1)
        assert float(m) == pytest.approx(float(probs[3] + probs[7]), abs=1e-6)
    # a batch dict (right padding with a mask) gives the same numbers
    ids = torch.tensor([[1, 2, 3], [4, 5, 0], [6, 0, 0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [1, 0, 0]])
    again = target_token_mass(model, {"input_ids": ids, "attention_mask": mask}, [3, 7])
    torch.testing.assert_close(again, mass, atol=1e-6, rtol=0)
    one = target_token_mass(model, [torch.tensor([1, 2, 3])], 3)
    assert one.shape == (1,)
    with pytest.raises(ValueError, match="target"):
        target_token_mass(model, prompts, [12])
    with pytest.raises(ValueError, match="empty"):
        target_token_mass(model, [], [1])


def test_strength_sweep_with_real_steering(model):
    site = find_sites(model, kind="block")[-1]
    prompts = [torch.tensor([1, 2, 3]), torch.tensor([4, 5])]
    direction = model.get_output_embeddings().weight[5].detach()  # writes token 5's logit

    def apply(alpha):
        return steer(model, Intervention(site, direction, alpha=alpha))

    rows = strength_sweep(
        apply, lambda: float(target_token_mass(model, prompts, 5).mean()), [0.0, 1.0, 4.0]
    )
    assert [r["alpha"] for r in rows] == [0.0, 1.0, 4.0]
    base = float(target_token_mass(model, prompts, 5).mean())
    assert rows[0]["metric"] == pytest.approx(base)
    assert rows[0]["metric"] < rows[1]["metric"] < rows[2]["metric"]
    named = strength_sweep(apply, lambda: {"a": 1.0, "b": 2}, [0.5])
    assert named == [{"alpha": 0.5, "a": 1.0, "b": 2.0}]
    with pytest.raises(ValueError):
        strength_sweep(apply, lambda: 0.0, [])


def test_probe_accuracy_and_report(tmp_path):
    X = torch.tensor([[-2.0], [-1.0], [1.0], [2.0]])
    p = LinearProbe().fit(X, [0, 0, 1, 1])
    assert probe_accuracy({"a": p}, {"a": X}, [0, 1, 1, 1]) == {"a": 0.75}

    @contextmanager
    def nothing(alpha):
        yield

    rows = strength_sweep(nothing, lambda: {"rate": 0.5}, [0.0, 2.0])
    text = steering_report(
        {"x": rows, "y": [{"alpha": 1.0, "rate": 0.9}]},
        metric="rate",
        extra={"note": "hi"},
        figure_path=tmp_path / "fig.png",
    )
    lines = text.splitlines()
    assert lines[2] == "| method | alpha=0 | alpha=1 | alpha=2 | best |"
    assert lines[4] == "| x | 0.500 | - | 0.500 | 0.500 (alpha=0) |"
    assert lines[5] == "| y | - | 0.900 | - | 0.900 (alpha=1) |"
    assert lines[-1] == "- note: hi"
    assert (tmp_path / "fig.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="missing"):
        steering_report({"x": rows}, metric="nope")
    with pytest.raises(ValueError, match="empty"):
        steering_report({})
