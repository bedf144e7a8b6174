"""`subspaces analyze --model/--data` on the user's own files: `pkg.module:factory` from the
current directory (no PYTHONPATH), `path/to/file.py:factory`, regression targets, and the
curvature subset recorded in the summary."""

import json
import math
import sys
import textwrap

import pytest

from subspaces.cli import main

MODEL = textwrap.dedent(
    """
    import torch

    def make(in_dim, out_dim):
        torch.manual_seed(0)
        return torch.nn.Sequential(
            torch.nn.Linear(in_dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, out_dim)
        )
    """
)

DATA = textwrap.dedent(
    """
    import torch

    def classes():
        g = torch.Generator().manual_seed(0)
        X = torch.randn(100, 5, generator=g)
        y = (X[:, 0] > 0).long() + (X[:, 1] > 0).long()
        return X[:80], y[:80], X[80:], y[80:]

    def regression():
        g = torch.Generator().manual_seed(1)
        X = torch.randn(100, 5, generator=g)
        y = X @ torch.arange(1.0, 6.0) / 5 + 0.1 * torch.randn(100, generator=g)
        return X[:80], y[:80], X[80:], y[80:]
    """
)

FAST = ["--epochs", "1", "--batch-size", "20", "--every", "2", "--k", "2", "-q"]


@pytest.fixture
def user_project(tmp_path, monkeypatch):
    """A folder with a package `myproj` (model + data), made the current directory."""
    pkg = tmp_path / "myproj"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "nets.py").write_text(MODEL)
    (pkg / "datasets.py").write_text(DATA)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    for name in [m for m in sys.modules if m == "myproj" or m.startswith("myproj.")]:
        monkeypatch.delitem(sys.modules, name)
    return tmp_path


def test_module_factories_import_from_the_current_directory(user_project, capsys):
    path_before = list(sys.path)
    code = main(
        [
            "analyze",
            "--model",
            "myproj.nets:make",
            "--data",
            "myproj.datasets:classes",
            "--out",
            "run",
            *FAST,
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((user_project / "run" / "summary.json").read_text())
    assert summary["config"]["num_train"] == 80
    assert summary["config"]["num_params"] == 5 * 8 + 8 + 8 * 3 + 3
    assert sys.path == path_before  # the current directory was on the path for the import only


def test_file_path_factories_and_regression(user_project, capsys):
    code = main(
        [
            "analyze",
            "--model",
            "myproj/nets.py:make",
            "--data",
            str(user_project / "myproj" / "datasets.py") + ":regression",
            "--loss",
            "mse",
            "--curvature-samples",
            "50",
            "--curvature-batch-size",
            "16",
            "--seed",
            "3",
            "--out",
            "reg",
            *FAST,
        ]
    )
    assert code == 0, capsys.readouterr().err
    summary = json.loads((user_project / "reg" / "summary.json").read_text())
    assert summary["config"]["num_params"] == 5 * 8 + 8 + 8 * 1 + 1  # one output
    assert summary["config"]["curvature_samples"] == 50
    assert summary["config"]["curvature_seed"] == 3
    assert summary["config"]["curvature_batches"] == 4  # 16 + 16 + 16 + 2
    assert summary["curvature"]["num_samples"] == 50
    assert summary["final"]["num_samples"] == 50
    assert all(math.isnan(float(a)) for a in summary["history"]["train_acc"])  # no accuracy
    assert summary["history"]["train_loss"][-1] < 2.0
    assert any("50 of the 80" in n and "seed 3" in n for n in summary["notes"])


def test_regression_with_cross_entropy_is_a_one_line_error(user_project, capsys):
    code = main(
        [
            "analyze",
            "--model",
            "myproj/nets.py:make",
            "--data",
            "myproj/datasets.py:regression",
            "--out",
            "bad",
            *FAST,
        ]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert "--loss mse" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("myproj/missing.py:make", "no file"),
        ("myproj/nets.py:absent", "no callable 'absent'"),
        ("myproj.nowhere:make", "cannot import module"),
    ],
)
def test_bad_factories_are_one_line_errors(user_project, capsys, spec, match):
    code = main(
        ["analyze", "--model", spec, "--data", "myproj.datasets:classes", "--out", "x", *FAST]
    )
    err = capsys.readouterr().err
    assert code == 2 and match in err and len(err.strip().splitlines()) == 1


def test_predicted_costs_are_printed_before_each_phase(user_project, capsys):
    code = main(
        [
            "analyze",
            "--model",
            "myproj.nets:make",
            "--data",
            "myproj.datasets:classes",
            "--out",
            "loud",
            *[a for a in FAST if a != "-q"],
        ]
    )
    err = capsys.readouterr().err
    assert code == 0
    lines = err.splitlines()
    tracking = next(i for i, line in enumerate(lines) if line.startswith("tracking: up to"))
    final = next(i for i, line in enumerate(lines) if line.startswith("final spectrum on"))
    assert tracking < final
    assert "ms per product (measured)" in lines[tracking] and "products" in lines[final]
