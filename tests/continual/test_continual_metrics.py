"""ACC, BWT and forgetting against hand-computed matrices."""

from __future__ import annotations

import math

import pytest
import torch

from subspaces.continual import AccuracyMatrix, average_accuracy, backward_transfer, forgetting

NAN = math.nan
R = [
    [0.90, NAN, NAN, NAN],
    [0.85, 0.95, NAN, NAN],
    [0.88, 0.80, 0.70, NAN],
    [0.60, 0.90, 0.75, 0.99],
]


def test_hand_computed_matrix():
    # ACC = (0.60 + 0.90 + 0.75 + 0.99) / 4
    assert average_accuracy(R) == pytest.approx(3.24 / 4, abs=1e-15)
    # BWT = ((0.60-0.90) + (0.90-0.95) + (0.75-0.70)) / 3 = -0.30 / 3
    assert backward_transfer(R) == pytest.approx(-0.10, abs=1e-15)
    # forgetting: task0 max(0.90, 0.85, 0.88) - 0.60 = 0.30; task1 max(0.95, 0.80) - 0.90 = 0.05;
    # task2 0.70 - 0.75 = -0.05 -> mean 0.10
    assert forgetting(R) == pytest.approx(0.10, abs=1e-15)
    assert backward_transfer(torch.tensor(R)) == pytest.approx(-0.10, abs=1e-7)  # float32 in


def test_accuracy_matrix_filled_row_by_row_matches_functions():
    acc = AccuracyMatrix(4)
    for i, row in enumerate(R):
        acc.record(i, row[: i + 1])
    assert acc.acc == average_accuracy(R)
    assert acc.bwt == backward_transfer(R)
    assert acc.forgetting == forgetting(R)
    assert acc.tolist()[1] == [0.85, 0.95]


def test_partial_matrix_summaries():
    acc = AccuracyMatrix(3)
    acc.record(0, [0.9])
    acc.record(1, [0.7, 0.8])
    assert acc.bwt == pytest.approx(-0.2)
    assert acc.acc == pytest.approx(0.75)


def test_bad_input():
    with pytest.raises(ValueError, match="square"):
        average_accuracy([[0.1, 0.2]])
    with pytest.raises(ValueError, match=r"R\[1, 0\] = nan is not finite"):
        backward_transfer([[0.9, NAN], [NAN, 0.8]])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        backward_transfer([[0.9]])
    with pytest.raises(ValueError, match="at least 2 tasks"):
        forgetting([[0.9]])
    with pytest.raises(TypeError, match="real numbers"):
        average_accuracy(torch.ones(2, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match=">= 1"):
        AccuracyMatrix(0)
    with pytest.raises(TypeError, match="int"):
        AccuracyMatrix(2.0)
    acc = AccuracyMatrix(2)
    with pytest.raises(ValueError, match="in order: expected 0"):
        acc.record(1, [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        acc.record(0, [NAN])
    with pytest.raises(ValueError, match="entries"):
        acc.record(0, [])
    with pytest.raises(ValueError, match="no task recorded"):
        _ = acc.bwt
