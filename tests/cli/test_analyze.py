"""`subspaces analyze` end to end on a tiny setting: files, JSON, resume, errors."""

import json
import math

import pytest
import torch

import subspaces.analyze._train as analyze_train
from subspaces._io import read_checkpoint
from subspaces.analyze import AnalyzeConfig, run_analyze
from subspaces.cli import main


def tiny_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 6, generator=g)
    W = torch.randn(6, 3, generator=g)
    y = (X @ W).argmax(1)
    return X[:90], y[:90], X[90:], y[90:]


def tiny_model(in_dim, out_dim):
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, out_dim)
    )


def config(**kw):
    base = dict(
        data="test_analyze:tiny_data",
        model="test_analyze:tiny_model",
        epochs=3,
        batch_size=30,
        every=3,
        k=2,
        final_k=8,
        density_runs=2,
        density_steps=10,
        lr=0.2,
    )
    base.update(kw)
    return AnalyzeConfig(**base)


def test_end_to_end_writes_report_and_json(tmp_path):
    summary = run_analyze(config(), tmp_path, quiet=True, log=lambda m: None)
    for name in (
        "report.html",
        "summary.json",
        "top_eigenvalues.png",
        "density.png",
        "loss_accuracy.png",
    ):
        assert (tmp_path / name).stat().st_size > 0, name
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["history"]["epoch"] == [1, 2, 3]
    # every curvature series ends at the last training step, like the losses (steps 0-8 train,
    # the model after step 8 is the one at step 9)
    curvature = on_disk["curvature"]
    assert curvature["step"] == [0, 3, 6, 9] and on_disk["history"]["step"][-1] == 9
    for name in ("eigenvalues", "trace", "grad_fraction", "overlap_prev", "matvecs"):
        assert len(curvature[name]) == 4, name
    assert all(math.isfinite(v) for v in curvature["grad_fraction"] + curvature["overlap_prev"][1:])
    assert on_disk["curvature"]["num_samples"] == 90
    assert on_disk["final"]["num_samples"] == 90
    assert len(on_disk["final"]["eigenvalues"]) == 8
    assert on_disk["stability"]["gd_threshold"] == pytest.approx(2 / 0.2)
    html = (tmp_path / "report.html").read_text()
    assert "data:image/png;base64," in html and "<script" not in html
    assert summary["config"]["num_params"] == 6 * 8 + 8 + 8 * 3 + 3


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path, monkeypatch):
    full = run_analyze(config(), tmp_path / "full", quiet=True, log=lambda m: None)

    calls = {"n": 0}
    real = analyze_train._evaluate

    def interrupt_in_epoch_2(*args, **kw):
        calls["n"] += 1
        if calls["n"] == 3:  # two evaluations per epoch: the 2nd epoch's first one
            raise KeyboardInterrupt
        return real(*args, **kw)

    monkeypatch.setattr(analyze_train, "_evaluate", interrupt_in_epoch_2)
    with pytest.raises(KeyboardInterrupt):
        run_analyze(config(), tmp_path / "resumed", quiet=True, log=lambda m: None)
    state = read_checkpoint(
        tmp_path / "resumed" / "checkpoint.pt", kind="subspaces.analyze", version=1
    ).payload
    assert state["run"]["epoch"] == 1
    monkeypatch.setattr(analyze_train, "_evaluate", real)
    bars = []

    class Recorded(analyze_train.Progress):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(analyze_train, "Progress", Recorded)
    messages = []
    resumed = run_analyze(
        config(), tmp_path / "resumed", resume=True, quiet=True, log=messages.append
    )
    assert any("resuming" in m for m in messages)
    # the resumed training bar starts at the finished steps: its ETA counts only the rest
    (bar,) = bars
    assert bar.initial == state["run"]["step"] == 3 and bar.count == bar.total == 9
    assert resumed["history"] == full["history"]
    assert resumed["curvature"]["eigenvalues"] == full["curvature"]["eigenvalues"]
    with pytest.raises(ValueError, match="other settings"):
        run_analyze(
            config(lr=0.3), tmp_path / "resumed", resume=True, quiet=True, log=lambda m: None
        )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"loss": "hinge"}, "loss must be one of"),
        ({"epochs": 0}, "epochs must be a positive integer"),
        ({"lr": -1.0}, "lr must be > 0"),
        ({"model": "nocolon"}, "package.module:factory"),
        ({"data": "no_such_module_xyz:f"}, "cannot import"),
        ({"data": "test_analyze:config"}, "must return"),
    ],
)
def test_bad_settings(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        run_analyze(config(**kw), tmp_path, quiet=True, log=lambda m: None)


def test_cli_analyze(tmp_path, capsys):
    code = main(
        [
            "analyze",
            "--data",
            "test_analyze:tiny_data",
            "--model",
            "test_analyze:tiny_model",
            "--epochs",
            "1",
            "--batch-size",
            "45",
            "--every",
            "1",
            "--k",
            "2",
            "--out",
            str(tmp_path),
            "-q",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "report:" in out and (tmp_path / "report.html").exists()
    assert main(["analyze", "--resume"]) == 2
    assert main(["analyze", "--lr", "-1", "--out", str(tmp_path / "x"), "-q"]) == 2
