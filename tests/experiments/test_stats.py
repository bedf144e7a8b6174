"""Seed statistics of the reproductions (subspaces.experiments._stats)."""

from __future__ import annotations

import numpy as np
import pytest

from subspaces.experiments._stats import paired_summary, seed_summary


def test_seed_summary_mean_and_interval_contain_the_truth_mostly() -> None:
    rng = np.random.default_rng(1)
    covered = 0
    trials = 200
    for _ in range(trials):
        values = rng.normal(1.0, 0.3, size=10)
        s = seed_summary(list(values))
        assert s["mean"] == pytest.approx(values.mean(), rel=1e-12)
        assert s["per_seed"] == [float(v) for v in values]
        low, high = s["ci95"]
        assert values.min() <= low <= s["mean"] <= high <= values.max()
        covered += low <= 1.0 <= high
    # The percentile bootstrap undercovers at n = 10 (about 0.90 for a normal mean); a broken
    # interval (zero width, or always everything) lands far from this band.
    assert 0.80 <= covered / trials <= 0.99


def test_seed_summary_single_value_and_constant() -> None:
    assert seed_summary([2.5])["ci95"] == [2.5, 2.5]
    s = seed_summary([1.0, 1.0, 1.0])
    assert s["ci95"] == [1.0, 1.0] and s["n"] == 3


def test_seed_summary_other_level_and_determinism() -> None:
    values = [0.1, 0.4, 0.2, 0.9, 0.5]
    s80 = seed_summary(values, level=0.8)
    s95 = seed_summary(values)
    assert s80["level"] == 0.8 and "ci95" not in s80
    assert s95["ci95"][0] <= s80["ci"][0] <= s80["ci"][1] <= s95["ci95"][1]
    assert seed_summary(values) == s95


def test_paired_summary_is_summary_of_differences() -> None:
    a = [0.91, 0.95, 0.93, 0.97]
    b = [0.90, 0.92, 0.93, 0.94]
    d = paired_summary(a, b)
    assert d == seed_summary([x - y for x, y in zip(a, b, strict=True)])


@pytest.mark.parametrize(
    ("values", "match"),
    [([], "empty"), ([1.0, float("nan")], r"values\[1\] is nan"), ([float("inf")], "inf")],
)
def test_seed_summary_bad_values(values: list[float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        seed_summary(values)


def test_bad_level_type_and_lengths() -> None:
    with pytest.raises(ValueError, match="level"):
        seed_summary([1.0, 2.0], level=1.0)
    with pytest.raises(TypeError, match="sequence"):
        seed_summary(3.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="3 and 2"):
        paired_summary([1.0, 2.0, 3.0], [1.0, 2.0])
