"""P30: neural operators evaluate at a new resolution; parts and the fast run."""

from __future__ import annotations

import pytest
import torch

from subspaces.experiments import get
from subspaces.experiments.P30_neural_operators import PlainCNN, evaluate_errors, train_model
from subspaces.operators import FNO, darcy_flow


def test_training_cuts_the_test_error_of_the_untrained_model(tmp_path):
    data = darcy_flow(80, (8,), fine_grid=8, seed=0, cache_dir=tmp_path)[8]
    a, u = data[0][:64], data[1][:64]
    test = {8: (data[0][64:], data[1][64:])}
    torch.manual_seed(0)
    model = FNO((4, 4), 1, 1, 8, 2)
    before = evaluate_errors(train_model(model, a, u, epochs=0, seed=0)[0], test)[8]
    trained, seconds = train_model(model, a, u, epochs=12, seed=0, batch_size=16)
    after = evaluate_errors(trained, test)[8]
    assert after < 0.6 * before  # measured 0.50
    assert seconds > 0


def test_plain_cnn_keeps_the_grid():
    assert PlainCNN(1, 1, 4, 2)(torch.randn(3, 1, 10, 10)).shape == (3, 1, 10, 10)


def test_training_rejects_a_diverging_loss():
    a, u = torch.rand(4, 1, 8, 8) + 1, torch.rand(4, 1, 8, 8) + 1
    # a diverging run stops with a clear error (the loss refuses a non-finite prediction)
    with pytest.raises((FloatingPointError, ValueError), match=r"non-finite|training loss became"):
        train_model(PlainCNN(1, 1, 4, 1), a, u, epochs=3, seed=0, lr=1e30)


@pytest.mark.slow
def test_p30_fast_run():
    result = get("P30").run(True, 0)
    m = result.measured
    assert m["seeds"] == 3 and m["epochs"] == 4
    assert len(m["fno_l2_16"]["per_seed"]) == 3
    assert set(m["checks"]) == {
        "fno_l2_16_le_0.10",
        "fno_l2_32_le_0.12",
        "fno_training_le_120s_cpu",
        "cnn_degrades_more",
    }
