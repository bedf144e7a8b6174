"""The test tree's own rules (pytest's default import mode needs unique test module names)."""

from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def test_test_module_names_are_unique():
    # Two test files with one basename in different folders (no __init__.py) stop the collection
    # of the whole suite with "import file mismatch".
    names = Counter(p.name for p in ROOT.rglob("test_*.py"))
    assert [n for n, c in names.items() if c > 1] == []
