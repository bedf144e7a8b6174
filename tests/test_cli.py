"""The ``subspaces`` command line (subspaces.cli)."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from subspaces import __version__
from subspaces._progress import Heartbeat, Progress
from subspaces.cli import COMMANDS, main
from subspaces.experiments import ExperimentResult, registry, temporarily_registered

REQUIRED_KEYS = {
    "id", "title", "paper", "claim", "criterion", "measured", "passed", "status", "summary",
    "seed", "fast", "seconds", "subspaces_version", "torch_version", "date", "figures", "error",
}  # fmt: skip

PNG = b"\x89PNG\r\n\x1a\nfake"


def _pass(fast: bool, seed: int) -> ExperimentResult:
    return ExperimentResult({"x": 1.25, "seed": seed}, passed=True, figures={"plot": PNG})


def _fail(fast: bool, seed: int) -> ExperimentResult:
    return ExperimentResult({"error": float("nan")}, passed=False, summary="error too large")


def _raise(fast: bool, seed: int) -> ExperimentResult:
    raise RuntimeError("numerical blow-up in step 3")


def _wrong_type(fast: bool, seed: int) -> ExperimentResult:
    return {"passed": True}  # type: ignore[return-value]


def _read(path: Path) -> dict:
    return json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(f"bad JSON {c}"))


def test_help_lists_every_command(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: subspaces")
    for command in COMMANDS:
        assert command.name in out
    assert main(["reproduce", "--help"]) == 0
    assert "--fast" in capsys.readouterr().out


def test_version(capsys):
    assert main(["--version"]) == 0
    assert __version__ in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "a command is required"),
        (["frobnicate"], "invalid choice: 'frobnicate'"),
        (["reproduce"], "nothing to run"),
        (["reproduce", "--seed", "-1", "C01"], "expected an integer >= 0, got -1"),
        (["reproduce", "--list", "--all"], "not allowed with"),
        (["reproduce", "--list", "C01"], "--list takes no experiment ids"),
        (["reproduce", "--all", "C01"], "not both"),
        (["demo", "--n", "three"], "expected an integer, got 'three'"),
        (["demo", "--n", "3"], "expected an integer >= 50, got 3"),
    ],
)
def test_usage_errors_exit_2_and_say_what_was_expected(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_reproduce_list(capsys):
    assert main(["reproduce", "--list"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split() == ["id", "slow", "title", "paper"]
    assert "C01" in out and "Certified Krylov eigensolver vs power iteration" in out


def test_unknown_id_exits_2_names_it_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "runs"
    assert main(["reproduce", "C01", "Z99", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "unknown experiment id 'Z99'" in err and "known ids:" in err and "C01" in err
    assert not out.exists()


def test_out_must_be_a_directory(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    with temporarily_registered("X80", _pass):
        assert main(["reproduce", "X80", "--out", str(tmp_path / "file")]) == 2
    assert "--out must be a directory" in capsys.readouterr().err


def test_c01_fast_writes_its_verdict(tmp_path, capsys):
    assert main(["reproduce", "c01", "--fast", "--quiet", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("PASS  C01") and "Summary: 1 passed, 0 failed, 0 error(s)" in out
    record = _read(tmp_path / "C01.json")
    assert set(record) >= REQUIRED_KEYS
    assert record["passed"] is True and record["status"] == "passed" and record["error"] is None
    assert record["fast"] is True and record["seed"] == 0
    m = record["measured"]
    assert m["n"] == 2000 and m["lanczos_all_converged"] is True
    assert m["lanczos_max_eigenvalue_error"] <= 1e-8
    assert max(m["lanczos_relative_residuals"]) <= 1e-6
    assert m["matvec_ratio"] == pytest.approx(m["power_matvecs"] / m["lanczos_matvecs"])
    assert m["matvec_ratio"] >= 3
    summary = _read(tmp_path / "summary.json")
    assert summary["exit_status"] == 0 and [r["id"] for r in summary["results"]] == ["C01"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["C01.json", "summary.json"]


def test_passing_experiment_writes_figures_and_progress(tmp_path, capsys):
    with temporarily_registered("X81", _pass, title="Fake pass"):
        assert main(["reproduce", "X81", "--seed", "5", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    assert "[1/1] X81 Fake pass (full, seed 5)" in captured.err
    assert captured.out.startswith("PASS  X81") and "x=1.25" in captured.out
    record = _read(tmp_path / "X81.json")
    assert record["figures"] == ["X81_plot.png"] and record["measured"]["seed"] == 5
    assert (tmp_path / "X81_plot.png").read_bytes() == PNG


def test_failing_experiment_exits_1(tmp_path, capsys):
    with temporarily_registered("X82", _pass), temporarily_registered("X83", _fail):
        assert main(["reproduce", "X82", "X83", "-q", "--out", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "PASS  X82" in out and "FAIL  X83" in out and "error too large" in out
    record = _read(tmp_path / "X83.json")
    assert record["passed"] is False and record["status"] == "failed"
    assert record["measured"] == {"error": "NaN"}
    assert _read(tmp_path / "summary.json")["counts"] == {"passed": 1, "failed": 1, "error": 0}


def test_erroring_experiment_is_reported_the_others_still_run_and_exit_is_2(tmp_path, capsys):
    with (
        temporarily_registered("X84", _raise),
        temporarily_registered("X85", _fail),
        temporarily_registered("X86", _wrong_type),
        temporarily_registered("X87", _pass),
    ):
        status = main(["reproduce", "X84", "X85", "X86", "X87", "-q", "--out", str(tmp_path)])
    assert status == 2
    captured = capsys.readouterr()
    assert "ERROR X84" in captured.out and "RuntimeError: numerical blow-up" in captured.out
    assert "Traceback (last frames):" in captured.err and "_raise" in captured.err
    assert "ERROR X86" in captured.out and "expected ExperimentResult" in captured.out
    assert "FAIL  X85" in captured.out and "PASS  X87" in captured.out
    record = _read(tmp_path / "X84.json")
    assert record["status"] == "error" and record["passed"] is False
    assert "numerical blow-up in step 3" in record["error"]
    counts = _read(tmp_path / "summary.json")["counts"]
    assert counts == {"passed": 1, "failed": 1, "error": 2}


def test_all_runs_every_experiment_and_reports_broken_modules(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", {})
    monkeypatch.setattr(registry, "_IMPORT_ERRORS", {})
    with temporarily_registered("X88", _pass), temporarily_registered("X89", _pass):
        assert main(["reproduce", "--all", "--fast", "-q", "--out", str(tmp_path)]) == 0
        assert [r["id"] for r in _read(tmp_path / "summary.json")["results"]] == ["X88", "X89"]
        monkeypatch.setattr(registry, "_IMPORT_ERRORS", {"P99_broken": "ImportError: no xyz"})
        assert main(["reproduce", "--all", "--fast", "-q", "--out", str(tmp_path)]) == 2
    assert "ERROR P99_broken" in capsys.readouterr().out


def test_demo_prints_the_table_and_a_summary(capsys):
    assert main(["demo", "--n", "300", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "i          true       Lanczos  rel.resid         power  rel.resid" in out
    rows = re.findall(r"^ ?([1-5]) +([\d.]+) +([\d.]+) +([\d.e+-]+) +", out, flags=re.M)
    assert [r[0] for r in rows] == ["1", "2", "3", "4", "5"]
    for _, true, lanczos, residual in rows:
        assert abs(float(true) - float(lanczos)) < 1e-8 and float(residual) <= 1e-6
    assert "fewer matvecs" in out
    assert "Trace" in out  # estimates, or one line saying they were skipped
    assert out.rstrip().splitlines()[-1].startswith("Summary: Lanczos certified 5/5 eigenpairs")


def test_console_script_is_installed():
    script = Path(sys.executable).with_name("subspaces")
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and __version__ in done.stdout
    done = subprocess.run([str(script), "bogus"], capture_output=True, text=True, check=False)
    assert done.returncode == 2 and "invalid choice" in done.stderr


# ----- progress reporting (subspaces._progress, used by the commands) -----------------------------
class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_on_a_terminal_rewrites_one_line():
    term = _Terminal()
    with Progress(3, "fit", stream=term) as p:
        for _ in range(3):
            p.update(note="loss 1")
            time.sleep(0.11)
    text = term.getvalue()
    assert text.count("\n") == 1 and text.endswith("\n")
    assert text.count("\r") >= 3 and "fit 3/3 (100%)" in text and "loss 1" in text


def test_progress_in_a_log_prints_the_first_step_and_milestones_only():
    log = io.StringIO()
    with Progress(100, "steps", stream=log, interval=1e9) as p:
        for _ in range(100):
            p.update()
    lines = log.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == [
        f"steps {k}/100 ({k}%)" for k in (1, 25, 50, 75, 100)
    ]
    assert "\r" not in log.getvalue()


def test_progress_unknown_total_and_quiet():
    log = io.StringIO()
    with Progress(None, "batches", stream=log, interval=1e9) as p:
        p.update(7)
    assert log.getvalue().startswith("batches 7 [")
    quiet = io.StringIO()
    with Progress(3, "x", stream=quiet, quiet=True) as p:
        p.update(3)
        p.write("hello")
    with Heartbeat("y", stream=quiet, quiet=True, interval=0.01):
        time.sleep(0.05)
    assert quiet.getvalue() == ""
    with pytest.raises(ValueError, match="total"):
        Progress(-1)


def test_heartbeat_on_a_terminal_erases_its_line():
    term = _Terminal()
    with Heartbeat("solving", stream=term, period=0.02):
        time.sleep(0.1)
    text = term.getvalue()
    assert "solving ... " in text and "\n" not in text
    assert text.endswith("\r") and text.rsplit("\r", 2)[-2].strip() == ""


def _with_interval(fast: bool, seed: int) -> ExperimentResult:
    from subspaces.experiments._stats import paired_summary

    gap = paired_summary([0.93, 0.95, 0.96], [0.90, 0.91, 0.95])
    return ExperimentResult({"gap": gap}, passed=True, summary="A beats B", headline=("gap",))


def test_reproduce_prints_the_seed_interval_beside_the_verdict(tmp_path, capsys):
    with temporarily_registered("X87", _with_interval):
        assert main(["reproduce", "X87", "--quiet", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line.startswith("PASS  X87") and "A beats B" in line
    assert "| gap 0.02667 [" in line and "(95%, 3 seeds)" in line
    record = _read(tmp_path / "X87.json")
    assert record["headline"] == ["gap"] and record["measured"]["gap"]["n"] == 3


def test_headline_must_name_a_seed_summary():
    with pytest.raises(ValueError, match="headline key 'x'"):
        ExperimentResult({"x": 1.0}, passed=True, headline=("x",))
    with pytest.raises(ValueError, match="headline key 'missing'"):
        ExperimentResult({"x": 1.0}, passed=True, headline="missing")


_RUNS: list[int] = []


def _counted(fast: bool, seed: int) -> ExperimentResult:
    _RUNS.append(seed)
    return ExperimentResult({"seed": seed}, passed=True, summary="counted")


def test_reproduce_resume_keeps_finished_records(tmp_path, capsys):
    _RUNS.clear()
    with temporarily_registered("X86", _counted):
        assert main(["reproduce", "X86", "--quiet", "--out", str(tmp_path), "--seed", "4"]) == 0
        assert (
            main(["reproduce", "X86", "--quiet", "--out", str(tmp_path), "--seed", "4", "--resume"])
            == 0
        )
        assert _RUNS == [4]  # the second run reused the record
        assert (
            main(["reproduce", "X86", "--quiet", "--out", str(tmp_path), "--seed", "5", "--resume"])
            == 0
        )
        assert _RUNS == [4, 5]  # another seed is another setting
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("PASS  X86")]
    assert len(lines) == 3 and ", resumed]" in lines[1] and ", resumed]" not in lines[2]
    assert _read(tmp_path / "summary.json")["counts"]["passed"] == 1


@pytest.mark.skipif(
    __import__("importlib").util.find_spec("ray") is not None, reason="Ray is installed"
)
def test_reproduce_ray_backend_without_ray_is_one_clear_line(tmp_path, capsys):
    assert main(["reproduce", "C01", "--fast", "--backend", "ray", "--out", str(tmp_path)]) == 2
    assert "pip install ray" in capsys.readouterr().err
