"""``subspaces compare``: one report overlaying two or more analyze runs, and its errors."""

from __future__ import annotations

import base64
import json
import re

import pytest

pytest.importorskip("matplotlib")

from subspaces.analyze import AnalyzeConfig, run_analyze
from subspaces.cli import main
from subspaces.report.compare import config_differences, load_run, render_compare_html

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two tiny analyze runs that differ only in the learning rate."""
    root = tmp_path_factory.mktemp("runs")
    tiny = dict(epochs=1, every=1000, width=8, final_k=2, density_runs=2, density_steps=4)
    for name, lr in (("fast", 0.1), ("slow", 0.05)):
        run_analyze(AnalyzeConfig(lr=lr, **tiny), root / name, quiet=True)
    return root


def test_compare_writes_one_self_contained_report(runs, tmp_path, capsys):
    out = tmp_path / "cmp"
    code = main(["compare", str(runs / "fast"), str(runs / "slow"), "--out", str(out)])
    assert code == 0
    assert f"report: {out / 'compare.html'}" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["compare.html"]
    page = (out / "compare.html").read_text(encoding="utf-8")
    # self-contained: no scripts, nothing fetched from elsewhere
    assert "<script" not in page
    assert not re.search(r'(src|href)="(?!data:)', page)
    figures = re.findall(r'<figure id="fig-([a-z_]+)">', page)
    assert figures == ["compare_loss_accuracy", "compare_lambda_max", "compare_trace"]
    for data in re.findall(r'src="data:image/png;base64,([^"]+)"', page):
        assert base64.b64decode(data).startswith(PNG_MAGIC)
    # the table shows each run's final numbers, read from its summary.json
    for name in ("fast", "slow"):
        summary = json.loads((runs / name / "summary.json").read_text())
        assert f"<th>{name}</th>" in page
        acc = summary["history"]["test_acc"][-1]
        assert f"{100 * acc:.1f}%" in page
        assert f"{summary['stability']['gd_threshold']:.4g}" in page
    # the configuration differences are the learning rate only
    section = page[page.index('id="config-differences"') : page.index('id="figures"')]
    assert re.findall(r"<tr><th>([^<]+)</th>", section) == ["lr"]
    assert "0.05" in section and "0.1" in section


def test_compare_three_runs_and_same_folder_names(runs, tmp_path):
    out = runs / "slow"  # into one of the runs: its own files are left alone
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    code = main(["compare", *(str(runs / n) for n in ("fast", "slow", "fast")), "--out", str(out)])
    assert code == 0
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.name != "compare.html"} == before
    page = (out / "compare.html").read_text(encoding="utf-8")
    # two runs named "fast": labelled by their paths instead
    assert f"<th>{runs / 'fast'}</th>" in page


@pytest.mark.parametrize("case", ["missing", "no_summary", "bad_json", "file"])
def test_compare_bad_run_folder_is_one_line_error(case, runs, tmp_path, capsys):
    bad = tmp_path / "bad"
    if case == "no_summary":
        bad.mkdir()
    elif case == "bad_json":
        bad.mkdir()
        (bad / "summary.json").write_text("{not json")
    elif case == "file":
        bad.write_text("x")
    out = tmp_path / "cmp"
    code = main(["compare", str(runs / "fast"), str(bad), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("subspaces compare: error: ")
    assert str(bad) in err
    assert "Traceback" not in err
    assert not out.exists()  # nothing written


def test_compare_needs_two_runs_and_a_folder_out(runs, tmp_path, capsys):
    assert main(["compare", str(runs / "fast"), "--out", str(tmp_path / "o")]) == 2
    assert "at least two run folders" in capsys.readouterr().err
    blocker = tmp_path / "file"
    blocker.write_text("x")
    for out in (blocker, blocker / "sub"):
        code = main(["compare", str(runs / "fast"), str(runs / "slow"), "--out", str(out)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and str(blocker) in err
    assert main(["compare", str(runs / "fast"), str(runs / "slow")]) == 2  # --out is required


def test_load_run_and_differences(runs):
    summary = load_run(runs / "slow")
    assert summary["config"]["lr"] == 0.05
    diffs = config_differences([("a", load_run(runs / "fast")), ("b", summary)])
    assert diffs == {"lr": [0.1, 0.05]}
    with pytest.raises(ValueError, match="does not exist"):
        load_run(runs / "nothing")


def test_render_escapes_and_checks_input():
    page = render_compare_html([("<b>", {"config": {"model": "<i>"}}), ("c", {})], {})
    assert "<b>" not in page and "&lt;b&gt;" in page and "&lt;i&gt;" in page
    with pytest.raises(ValueError, match="non-empty"):
        render_compare_html([], {})
    with pytest.raises(TypeError, match="pair"):
        render_compare_html([{"config": {}}], {})  # type: ignore[list-item]
