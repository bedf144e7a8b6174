"""The reproduction table generator (``python -m subspaces.experiments.table``)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from subspaces.experiments.table import load_records, main, markdown_page, markdown_table


def _write(folder: Path, record: dict) -> None:
    (folder / f"{record['id']}.json").write_text(json.dumps(record), encoding="utf-8")


def _folder(tmp_path: Path) -> Path:
    _write(
        tmp_path,
        {
            "id": "P24",
            "title": "Batch size | learning rate",
            "status": "failed",
            "passed": False,
            "seconds": 125.0,
            "fast": True,
            "seed": 0,
            "headline": ["d"],
            "measured": {"d": {"mean": 0.2, "ci95": [-0.1, 0.6], "n": 3}},
        },
    )
    _write(
        tmp_path,
        {"id": "C01", "title": "Core", "status": "error", "passed": False, "seconds": 1.5},
    )
    (tmp_path / "summary.json").write_text(
        json.dumps({"date": "2025-01-01T00:00:00+00:00", "seconds": 130.0, "torch_version": "2"}),
        encoding="utf-8",
    )
    return tmp_path


def test_table_rows_verdicts_intervals_and_escaping(tmp_path: Path) -> None:
    records = load_records(_folder(tmp_path))
    assert [r["id"] for r in records] == ["C01", "P24"]  # summary.json is not a record
    lines = markdown_table(records).splitlines()
    assert len(lines) == 4 and lines[0].startswith("| ID | Title | Verdict |")
    assert lines[2] == "| C01 | Core | ERROR | - | 1.50 s | ?, seed ? |"
    assert lines[3] == (
        "| P24 | Batch size \\| learning rate | FAIL | d 0.2 [-0.1, 0.6] (95%, 3 seeds) | 2m05s "
        "| fast, seed 0 |"
    )


def test_page_and_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = _folder(tmp_path)
    page = markdown_page(folder)
    assert page.startswith("# Reproductions\n") and "python -m subspaces.experiments.table" in page
    assert "0 PASS, 1 FAIL, 1 ERROR." in page and "2 experiments in 2m10s" in page
    assert main([str(folder)]) == 0
    assert capsys.readouterr().out == page
    assert main([]) == 2 and "usage" in capsys.readouterr().err
    assert main([str(folder / "missing")]) == 2
    assert "must be a subspaces reproduce output directory" in capsys.readouterr().err


def test_bad_folders_raise(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no ID\.json records"):
        load_records(tmp_path)
    (tmp_path / "X01.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_records(tmp_path)
    (tmp_path / "X01.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ValueError, match="not an experiment record"):
        load_records(tmp_path)


def test_several_folders_later_wins(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fast, full = tmp_path / "fast", tmp_path / "full"
    fast.mkdir()
    full.mkdir()
    _write(fast, {"id": "P08", "title": "t", "status": "failed", "fast": True, "seed": 0})
    _write(fast, {"id": "C01", "title": "c", "status": "passed", "fast": True, "seed": 0})
    _write(full, {"id": "P08", "title": "t", "status": "passed", "fast": False, "seed": 0})
    assert main([str(fast), str(full)]) == 0
    page = capsys.readouterr().out
    assert "| P08 | t | PASS | - | - | full, seed 0 |" in page
    assert "| C01 | c | PASS | - | - | fast, seed 0 |" in page and "2 PASS, 0 FAIL" in page
    assert main([]) == 2
