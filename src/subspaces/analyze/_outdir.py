"""The output folder: never overwrite another run silently, fail early when unwritable."""

from __future__ import annotations

import tempfile
from pathlib import Path

from ._checkpoint import CHECKPOINT

RUN_FILES = (CHECKPOINT, "summary.json", "report.html")
"""Files that mark a folder as holding a run (``force=True`` replaces them)."""


def _previous_run_files(out: Path) -> list[str]:
    """The files of :data:`RUN_FILES` that ``out`` holds."""
    return [name for name in RUN_FILES if (out / name).exists()]


def _check_out_dir(out: Path) -> None:
    """Raise unless ``out`` is, or can be created as, a folder (no side effects)."""
    existing = out
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing.exists() and not existing.is_dir():
        what = "is a file" if existing == out else f"is under {existing}, which is a file"
        raise ValueError(f"out_dir (--out) {out} {what}, not a folder; give a folder")


def _make_out_dir(out: Path) -> None:
    """Create ``out`` and check that files can be written in it.

    Raises:
        ValueError: naming ``out`` and the reason when it cannot be created or written.
    """
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out, prefix=".subspaces-write-test-"):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ValueError(f"out_dir (--out) {out} is not a writable folder: {reason}") from None
