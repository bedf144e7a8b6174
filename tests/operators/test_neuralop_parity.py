"""Our FNO with neuraloperator's weights computes neuraloperator's function (optional oracle)."""

from __future__ import annotations

import pytest
import torch

from subspaces.operators import FNO, load_neuralop_state_dict


def test_same_weights_same_outputs_as_neuralop():
    neuralop_models = pytest.importorskip("neuralop.models")
    torch.manual_seed(0)
    theirs = neuralop_models.FNO(
        n_modes=(8, 8), in_channels=1, out_channels=1, hidden_channels=12, n_layers=2
    )
    ours = load_neuralop_state_dict(FNO((8, 8), 1, 1, 12, n_layers=2), theirs.state_dict())
    with torch.no_grad():
        for n in (16, 24):
            x = torch.randn(2, 1, n, n)
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-6)


def test_conversion_errors_name_the_weight():
    model = FNO((4, 4), 1, 1, 4, n_layers=1)
    with pytest.raises(
        ValueError,
        match=r"state_dict has no 'lifting\.fcs\.0\.weight' \(needed for 'lifting\.fc1\.weight'",
    ):
        load_neuralop_state_dict(model, {})
    with pytest.raises(TypeError, match="subspaces FNO, got Linear"):
        load_neuralop_state_dict(torch.nn.Linear(1, 1), {})
