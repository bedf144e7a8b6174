"""A Markdown table of reproduction verdicts from a ``subspaces reproduce`` output folder.

``subspaces reproduce`` writes one ``ID.json`` per experiment (and ``summary.json``) into its
``--out`` folder. This module turns such a folder into the page ``docs/reproductions.md``: one row
per experiment with its id, title, verdict, the seed intervals its result names as headline
(mean and bootstrap 95 % interval, see :mod:`subspaces.experiments._stats`), the wall time, and
the setting (fast or full, seed). Regenerate the page with::

    subspaces reproduce --all --workers 2 --out runs/repro
    python -m subspaces.experiments.table runs/repro > docs/reproductions.md

Example:
    >>> import json, tempfile
    >>> from pathlib import Path
    >>> folder = Path(tempfile.mkdtemp())
    >>> record = {"id": "P99", "title": "A claim", "status": "passed", "passed": True,
    ...           "seconds": 75.0, "fast": False, "seed": 0, "headline": ["gap"],
    ...           "measured": {"gap": {"mean": 0.5, "ci95": [0.25, 0.75], "n": 5}}}
    >>> _ = (folder / "P99.json").write_text(json.dumps(record))
    >>> print(markdown_table(load_records(folder)))
    | ID | Title | Verdict | Headline (mean [95% interval], seeds) | Wall time (CPU) | Setting |
    |---|---|---|---|---|---|
    | P99 | A claim | PASS | gap 0.5 [0.25, 0.75] (95%, 5 seeds) | 1m15s | full, seed 0 |
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._progress import format_seconds
from .registry import format_interval

__all__ = ["load_records", "main", "markdown_page", "markdown_table", "merge_records"]

_VERDICTS = {"passed": "PASS", "failed": "FAIL", "error": "ERROR"}
_HEADER = (
    "| ID | Title | Verdict | Headline (mean [95% interval], seeds) | Wall time (CPU) | Setting |\n"
    "|---|---|---|---|---|---|"
)


def load_records(folder: str | Path) -> list[dict[str, Any]]:
    """The ``ID.json`` records of a ``subspaces reproduce`` output folder, sorted by id.

    Args:
        folder: the ``--out`` folder of ``subspaces reproduce``.

    Returns:
        One record (the parsed JSON) per experiment; ``summary.json`` is not a record.

    Raises:
        ValueError: if ``folder`` is not a directory, holds no ``ID.json`` record, or a record
            is not valid JSON or lacks ``id``.

    Example:
        >>> import json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> for id in ("P08", "C01"):
        ...     _ = (folder / f"{id}.json").write_text(json.dumps({"id": id, "passed": True}))
        >>> _ = (folder / "summary.json").write_text("{}")
        >>> [r["id"] for r in load_records(folder)]
        ['C01', 'P08']
    """
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(
            f"folder must be a subspaces reproduce output directory, got {str(path)!r}"
        )
    records = []
    for file in sorted(path.glob("*.json")):
        if file.name == "summary.json":
            continue
        try:
            record = json.loads(file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as error:
            raise ValueError(f"{file} is not valid JSON: {error}") from None
        if not isinstance(record, dict) or "id" not in record:
            raise ValueError(f"{file} is not an experiment record (no 'id')")
        records.append(record)
    if not records:
        raise ValueError(
            f"no ID.json records in {str(path)!r}: run 'subspaces reproduce --out {path}' first"
        )
    return sorted(records, key=lambda r: str(r["id"]))


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _headline(record: Mapping[str, Any]) -> str:
    measured = record.get("measured") or {}
    parts = []
    for key in record.get("headline") or []:
        summary = measured.get(key)
        if isinstance(summary, Mapping) and "mean" in summary and "n" in summary:
            try:
                parts.append(format_interval(key, summary))
            except (KeyError, TypeError, ValueError):
                parts.append(f"{key}: (unreadable)")
    return "; ".join(parts) if parts else "-"


def _verdict(record: Mapping[str, Any]) -> str:
    status = record.get("status")
    if status in _VERDICTS:
        return _VERDICTS[status]
    return "PASS" if record.get("passed") else "FAIL"


def _setting(record: Mapping[str, Any]) -> str:
    fast = record.get("fast")
    mode = "fast" if fast else "full" if fast is not None else "?"
    return f"{mode}, seed {record.get('seed', '?')}"


def markdown_table(records: Sequence[Mapping[str, Any]]) -> str:
    """The verdict table, one row per record.

    Args:
        records: records as :func:`load_records` returns them.

    Returns:
        A Markdown table (no trailing newline).

    Example:
        >>> record = {"id": "P99", "title": "t", "status": "passed", "seconds": 3.0,
        ...           "fast": True, "seed": 0, "measured": {}, "headline": []}
        >>> print(markdown_table([record]).splitlines()[-1])
        | P99 | t | PASS | - | 3.00 s | fast, seed 0 |
    """
    rows = [_HEADER]
    for r in records:
        seconds, cpu = r.get("seconds"), r.get("cpu_seconds")
        wall = format_seconds(float(seconds)) if isinstance(seconds, (int, float)) else "-"
        if isinstance(cpu, (int, float)):
            wall += f" (CPU {format_seconds(float(cpu))})"
        rows.append(
            "| "
            + " | ".join(
                _cell(x)
                for x in (
                    r.get("id", "?"),
                    r.get("title", ""),
                    _verdict(r),
                    _headline(r),
                    wall,
                    _setting(r),
                )
            )
            + " |"
        )
    return "\n".join(rows)


def _run_line(folder: Path, count: int) -> str:
    summary_file = folder / "summary.json"
    if not summary_file.is_file():
        return ""
    try:
        summary = json.loads(summary_file.read_text(encoding="utf-8"))
        return (
            f"Run of {summary.get('date', '?')}: {count} experiments in "
            f"{format_seconds(float(summary.get('seconds', 0.0)))}"
            f" (subspaces {summary.get('subspaces_version', '?')}, "
            f"torch {summary.get('torch_version', '?')}).\n\n"
        )
    except (json.JSONDecodeError, TypeError, ValueError):
        return ""


def merge_records(folders: Sequence[str | Path]) -> list[dict[str, Any]]:
    """The records of several output folders; a later folder's record of an id wins.

    Args:
        folders: ``--out`` folders of ``subspaces reproduce``, oldest first (e.g. a fast gallery,
            then folders of full runs).

    Returns:
        One record per id, sorted by id.

    Raises:
        ValueError: as :func:`load_records`, for any folder.

    Example:
        >>> import json, tempfile
        >>> fast, full = Path(tempfile.mkdtemp()), Path(tempfile.mkdtemp())
        >>> for folder, setting in ((fast, True), (full, False)):
        ...     _ = (folder / "P08.json").write_text(json.dumps({"id": "P08", "fast": setting}))
        >>> _ = (fast / "C01.json").write_text(json.dumps({"id": "C01", "fast": True}))
        >>> [(r["id"], r["fast"]) for r in merge_records([fast, full])]
        [('C01', True), ('P08', False)]
    """
    merged: dict[str, dict[str, Any]] = {}
    for folder in folders:
        for record in load_records(folder):
            merged[str(record["id"])] = record
    return [merged[k] for k in sorted(merged)]


def markdown_page(folder: str | Path | Sequence[str | Path]) -> str:
    """The whole ``docs/reproductions.md`` page for one or several output folders.

    Args:
        folder: the ``--out`` folder of ``subspaces reproduce``, or several (a later folder's
            record of an id wins, see :func:`merge_records`).

    Returns:
        The page: a title, how it was made, the table, and the totals.

    Example:
        >>> import json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "P08.json").write_text(json.dumps(
        ...     {"id": "P08", "title": "Hessian outliers", "status": "passed", "seconds": 61.0}))
        >>> page = markdown_page(folder)
        >>> page.splitlines()[0], "| P08 | Hessian outliers | PASS |" in page
        ('# Reproductions', True)
    """
    folders = [Path(folder)] if isinstance(folder, (str, Path)) else [Path(f) for f in folder]
    records = merge_records(folders)
    if len(folders) == 1:
        total = _run_line(folders[0], len(records))
    else:
        total = (
            f"Records of {len(folders)} runs (for an id present in several, the last one listed "
            "in the command wins): see each row's setting.\n\n"
        )
    counts = {v: sum(_verdict(r) == v for r in records) for v in ("PASS", "FAIL", "ERROR")}
    return (
        "# Reproductions\n\n"
        "Each reproduction states a paper's claim, a pass criterion fixed before its run, and "
        "what it measured; a FAIL means the claim did not hold at this scale with the method as "
        "implemented. The headline column gives the mean over seeds and its bootstrap 95 % "
        "interval for the quantities the verdict rests on; per-seed values are in each `ID.json`."
        "\n\nThis page is generated; regenerate it with\n\n"
        "```bash\n"
        "subspaces reproduce --all --workers 2 --out runs/repro\n"
        "python -m subspaces.experiments.table runs/repro > docs/reproductions.md\n"
        "```\n\n"
        f"{total}"
        f"{markdown_table(records)}\n\n"
        f"{counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['ERROR']} ERROR.\n"
    )


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m subspaces.experiments.table FOLDER [FOLDER ...]``: print the page.

    Args:
        argv: the arguments (default ``sys.argv[1:]``).

    Returns:
        The exit status: 0, or 2 for a usage error (with a message on stderr).

    Example:
        >>> import contextlib, io, json, tempfile
        >>> folder = Path(tempfile.mkdtemp())
        >>> _ = (folder / "C01.json").write_text(json.dumps({"id": "C01", "status": "passed"}))
        >>> out = io.StringIO()
        >>> with contextlib.redirect_stdout(out):
        ...     status = main([str(folder)])
        >>> status, out.getvalue().splitlines()[0]
        (0, '# Reproductions')
    """
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(
            "usage: python -m subspaces.experiments.table FOLDER [FOLDER ...]\n"
            "print docs/reproductions.md for 'subspaces reproduce --out FOLDER' folders (a later "
            "folder's record of an id wins)",
            file=sys.stderr,
        )
        return 0 if args and args[0] in ("-h", "--help") else 2
    try:
        sys.stdout.write(markdown_page(args if len(args) > 1 else args[0]))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
