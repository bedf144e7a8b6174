"""Tests of the offline tiny causal LMs and their training loop."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from subspaces.testing.tiny_lm import FAMILIES, tiny_causal_lm, train_causal_lm


@pytest.mark.parametrize("family", FAMILIES)
def test_families_build_deterministically(family):
    state = torch.get_rng_state()
    m1 = tiny_causal_lm(family, vocab_size=40, hidden=16, layers=2, heads=2, seed=3)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched
    m2 = tiny_causal_lm(family, vocab_size=40, hidden=16, layers=2, heads=2, seed=3)
    m3 = tiny_causal_lm(family, vocab_size=40, hidden=16, layers=2, heads=2, seed=4)
    x = torch.tensor([[1, 5, 7, 2]])
    with torch.no_grad():
        y1, y2, y3 = (m(input_ids=x).logits for m in (m1, m2, m3))
    assert y1.shape == (1, 4, 40) and not m1.training
    assert torch.equal(y1, y2) and not torch.allclose(y1, y3)
    assert m1.config.num_hidden_layers == 2 and m1.config.vocab_size == 40
    # causal: a later token does not change earlier logits
    with torch.no_grad():
        y4 = m1(input_ids=torch.tensor([[1, 5, 7, 9]])).logits
    torch.testing.assert_close(y4[:, :3], y1[:, :3])


def test_bad_arguments():
    with pytest.raises(ValueError, match="family"):
        tiny_causal_lm("bert")
    with pytest.raises(ValueError, match="divisible"):
        tiny_causal_lm("llama", hidden=10, heads=4)
    with pytest.raises(TypeError):
        tiny_causal_lm("llama", hidden=16.0)  # type: ignore[arg-type]


def test_training_learns_a_periodic_stream_and_is_reproducible():
    stream = torch.arange(600) % 7
    runs = []
    for _ in range(2):
        m = tiny_causal_lm("gpt2", vocab_size=7, hidden=16, layers=1, heads=2, seed=0)
        runs.append((m, train_causal_lm(m, stream, steps=40, batch_size=8, seq_len=12, lr=1e-2)))
    (m, losses), (m2, losses2) = runs
    assert losses == losses2
    assert losses[0] > 1.6 and losses[-1] < 0.3
    assert not m.training
    for p, q in zip(m.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_training_with_a_given_optimizer_several_streams_and_progress():
    m = tiny_causal_lm("llama", vocab_size=10, hidden=16, layers=1, heads=2, seed=0)
    before = [p.detach().clone() for p in m.parameters()]
    opt = torch.optim.SGD(m.parameters(), lr=0.5)
    seen = []
    streams = [torch.zeros(30, dtype=torch.long), torch.ones(40, dtype=torch.long) * 3]
    losses = train_causal_lm(
        m,
        streams,
        steps=5,
        batch_size=4,
        seq_len=8,
        seed=1,
        optimizer=opt,
        warmup=2,
        progress=lambda step, loss: seen.append((step, loss)),
    )
    assert [s for s, _ in seen] == list(range(5)) and [v for _, v in seen] == losses
    assert opt.param_groups[0]["lr"] == 0.5  # warmup does not leave the lr changed
    assert any(not torch.equal(p, q) for p, q in zip(before, m.parameters(), strict=True))


def test_training_validation():
    m = tiny_causal_lm("gpt2", vocab_size=10, hidden=16, layers=1, heads=2)
    with pytest.raises(ValueError, match="at least"):
        train_causal_lm(m, torch.arange(5), steps=1, batch_size=1, seq_len=8)
    with pytest.raises(TypeError, match="integer"):
        train_causal_lm(m, torch.rand(50), steps=1, batch_size=1, seq_len=8)
    with pytest.raises(ValueError):
        train_causal_lm(m, torch.arange(50) % 10, steps=0, batch_size=1, seq_len=8)
