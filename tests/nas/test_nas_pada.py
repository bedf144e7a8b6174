"""PA&DA sampling probabilities against their definition."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from subspaces.nas.networks import digits_images
from subspaces.nas.pada import PADASampler, data_importance
from subspaces.nas.supernet import CellSupernet, train_supernet

GEN = torch.Generator().manual_seed(0)


def test_data_importance_is_the_norm_of_softmax_minus_onehot() -> None:
    z = torch.randn(7, 10, dtype=torch.float64, generator=GEN)
    y = torch.randint(10, (7,), generator=GEN)
    p = torch.exp(z) / torch.exp(z).sum(1, keepdim=True)
    p[torch.arange(7), y] -= 1
    torch.testing.assert_close(data_importance(z, y), p.norm(dim=1), rtol=1e-12, atol=0)
    # It is the norm of the gradient of the summed cross-entropy with respect to the logits.
    zz = z.clone().requires_grad_(True)
    F.cross_entropy(zz, y, reduction="sum").backward()
    torch.testing.assert_close(data_importance(z, y), zz.grad.norm(dim=1))


def test_probabilities_match_the_definition() -> None:
    s = PADASampler(6, num_ops=4, num_edges=3, tau=0.8, schedule="linear")
    s.begin_epoch(1, 4, GEN)  # tau_e = 0.8 * 1 / 4 = 0.2
    # Steps: op 2 on two edges (norm 6 -> 3 per edge), then op 2 once (norm 1) and op 3 (norm 4).
    s.observe_path((2, 2, 0), np.array([0.0, 0.0, 6.0, 0.0]))
    s.observe_path((2, 3, 1), np.array([0.0, 0.0, 1.0, 4.0]))
    # Running means: s_2 = ((0 + 3) / 2 + 1) / 2 = 1.25, s_3 = (0 + 4) / 2 = 2.
    np.testing.assert_allclose(s.op_importance, [0, 0, 1.25, 2.0])
    # Data: sample 1 drawn twice (0.5 then 0.3 -> mean 0.4), sample 4 once (0.2).
    s.observe_data(torch.tensor([1, 4]), torch.tensor([0.5, 0.2]))
    s.observe_data(torch.tensor([1]), torch.tensor([0.3]))
    s.end_epoch(GEN)
    tau = 0.2
    np.testing.assert_allclose(
        s.path_probs, tau * np.array([0, 0, 1.25, 2.0]) / 3.25 + (1 - tau) / 4, rtol=1e-12
    )
    g = np.array([0, 0.4, 0, 0, 0.2, 0])
    np.testing.assert_allclose(s.data_probs, tau * g / g.sum() + (1 - tau) / 6, rtol=1e-12)
    assert s.path_probs.sum() == pytest.approx(1) and s.data_probs.sum() == pytest.approx(1)
    # The next epoch's indices are drawn with replacement from data_probs.
    idx = s.begin_epoch(2, 4, GEN)
    assert idx.shape == (6,) and int(idx.max()) < 6 and s.tau_e == pytest.approx(0.4)


def test_draws_follow_the_probabilities() -> None:
    s = PADASampler(1000, num_ops=3, num_edges=4, tau=1.0, schedule="constant")
    s.begin_epoch(0, 1, GEN)
    s.observe_path((0, 0, 0, 0), np.array([4.0, 0.0, 0.0]))
    s.observe_data(torch.arange(100), torch.ones(100))  # only the first 100 samples seen
    s.end_epoch(GEN)
    np.testing.assert_allclose(s.path_probs, [1.0, 0.0, 0.0])
    assert set(s.sample_path(GEN)) == {0}
    idx = s.begin_epoch(1, 2, GEN)
    assert int(idx.max()) < 100 and len(set(idx.tolist())) < 1000  # with replacement


def test_tau_zero_is_uniform_and_training_runs() -> None:
    X, y = digits_images()[:2]
    torch.manual_seed(0)
    sn = CellSupernet()
    s = PADASampler(256, tau=0.0)
    h = train_supernet(sn, X[:256], y[:256], s, epochs=2)
    np.testing.assert_allclose(s.path_probs, 0.2)
    np.testing.assert_allclose(s.data_probs, 1 / 256)
    assert len(h.loss) == 2
    # With tau = 1 the conv operations (the only ones with parameters) gain probability.
    s1 = PADASampler(256, tau=1.0, schedule="constant")
    train_supernet(sn, X[:256], y[:256], s1, epochs=1)
    assert s1.path_probs[[0, 1, 4]].sum() == 0 and s1.path_probs[[2, 3]].sum() == pytest.approx(1)


@pytest.mark.parametrize("tau", [-0.1, 1.5, float("nan"), "0.5", True])
def test_tau_outside_unit_interval_is_refused(tau: object) -> None:
    with pytest.raises(ValueError, match=r"tau must be a number in \[0, 1\]"):
        PADASampler(10, tau=tau)  # type: ignore[arg-type]


def test_other_bad_input() -> None:
    with pytest.raises(ValueError, match="schedule must be"):
        PADASampler(10, schedule="cosine")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="num_samples must be"):
        PADASampler(0)
    s = PADASampler(4)
    with pytest.raises(FloatingPointError, match="non-finite"):
        s.observe_data(torch.tensor([0]), torch.tensor([float("nan")]))
