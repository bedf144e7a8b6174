"""The eigenvalue and trace figures: log scale when 2/η is far above, and the last step drawn."""

from __future__ import annotations

import pytest

pytest.importorskip("matplotlib")

from matplotlib.axes import Axes

from subspaces.report import figures as F


def _summary(lr: float = 0.1) -> dict:
    """Like a 2-epoch demo run: tracked every 25 steps (0..75), training ends at step 90."""
    return {
        "config": {"lr": lr, "batch_size": 32},
        "history": {"step": [45, 90], "epoch": [1, 2], "test_acc": [0.7, 0.8]},
        "curvature": {
            "step": [0, 25, 50, 75],
            "eigenvalues": [[0.48, 0.44], [0.57, 0.54], [1.7, 1.1], [3.1, 2.4]],
            "trace": [10.0, 15.0, 30.0, 38.0],
            "trace_stderr": [0.6, 0.8, 1.0, 0.6],
            "batch_lambda_max": [0.8, 1.3, 2.0, 3.9],
        },
        "stability": {"lr": lr, "gd_threshold": 2 / lr, "final_lambda_max": 3.2},
        "final": {"eigenvalues": [3.2, 2.8, 2.6], "trace": 39.3, "trace_stderr": 0.57},
    }


class _Recorder:
    def __init__(self, monkeypatch):
        self.xs: list[list[float]] = []
        self.yscales: list[str] = []
        plot, set_yscale = Axes.plot, Axes.set_yscale

        def rec_plot(ax, *args, **kwargs):
            self.xs.append([float(v) for v in args[0]])
            return plot(ax, *args, **kwargs)

        def rec_yscale(ax, value, **kwargs):
            self.yscales.append(value)
            return set_yscale(ax, value, **kwargs)

        monkeypatch.setattr(Axes, "plot", rec_plot)
        monkeypatch.setattr(Axes, "set_yscale", rec_yscale)


@pytest.mark.parametrize("figure", [F.top_eigenvalues, F.trace, F.batch_vs_full])
def test_series_reach_the_last_training_step(figure, monkeypatch):
    rec = _Recorder(monkeypatch)
    assert figure(_summary()) is not None
    assert rec.xs
    # the full-data series (first drawn for trace and batch_vs_full; every λ_i for top_eigenvalues)
    full = rec.xs if figure is F.top_eigenvalues else rec.xs[:1]
    for x in full:
        assert max(x) == 90.0


@pytest.mark.parametrize("figure", [F.top_eigenvalues, F.batch_vs_full])
def test_log_scale_when_threshold_far_above(figure, monkeypatch):
    rec = _Recorder(monkeypatch)
    figure(_summary(lr=0.1))  # 2/η = 20 against eigenvalues 0.44 .. 3.9: a factor 45
    assert "log" in rec.yscales


def test_linear_scale_when_threshold_near(monkeypatch):
    rec = _Recorder(monkeypatch)
    F.top_eigenvalues(_summary(lr=0.5))  # 2/η = 4 against eigenvalues 0.44 .. 3.2: a factor 9
    assert "log" not in rec.yscales


def test_nonpositive_eigenvalues_far_below_threshold_say_so(monkeypatch):
    s = _summary(lr=0.01)  # 2/η = 200
    s["curvature"]["eigenvalues"][0][1] = -0.1  # log scale impossible
    texts: list[str] = []
    text = Axes.text

    def rec_text(ax, x, y, s_, *args, **kwargs):
        texts.append(str(s_))
        return text(ax, x, y, s_, *args, **kwargs)

    monkeypatch.setattr(Axes, "text", rec_text)
    assert F.top_eigenvalues(s) is not None
    assert any("far above" in t for t in texts)


def test_no_final_point_without_later_history():
    s = _summary()
    s["history"]["step"] = [45, 75]
    x, eig, has_step = F._tracked_eigenvalues(s)
    assert has_step
    assert list(x) == [0.0, 25.0, 50.0, 75.0] and eig.shape == (4, 2)
