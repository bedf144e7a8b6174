"""Every ```python block of README.md and docs/*.md runs as written.

The blocks of one page run in order in one namespace (a page may build on its earlier blocks), in
a temporary working directory, with matplotlib's non-interactive backend.
"""

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def _blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text(encoding="utf-8"))


@pytest.mark.parametrize("page", [p for p in PAGES if _blocks(p)], ids=lambda p: p.name)
def test_page_code_blocks_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MPLBACKEND", "Agg")
    namespace: dict = {"__name__": "__docs__"}
    for i, code in enumerate(_blocks(page)):
        try:
            exec(compile(code, f"{page.name}[block {i}]", "exec"), namespace)
        except Exception as err:  # name the page and block in the failure
            raise AssertionError(f"{page.name} block {i} failed: {err!r}\n{code}") from err


def test_pages_found():
    assert any(_blocks(p) for p in PAGES), os.fspath(ROOT)
