"""Reports of a training run: figures and one self-contained HTML page from a summary dict.

``subspaces analyze`` collects everything it measured into a summary dict (schema in
:mod:`subspaces.report.html`); this package turns it into PNG figures
(:func:`all_figures`), an HTML report with the figures embedded (:func:`render_html`), the
files on disk (:func:`write_report`: ``report.html``, ``summary.json``, ``<figure>.png``) and
the few lines printed at the end (:func:`text_summary`); :mod:`subspaces.report.compare`
overlays several runs in one page (``subspaces compare``). Drawing needs matplotlib
(``pip install 'subspaces[report]'``).

Example:
    >>> from subspaces.report import render_html, text_summary
    >>> s = {"title": "demo", "final": {"num_outliers": 9, "bulk_edge": 0.8}}
    >>> print(text_summary(s))
    demo
      9 outlier eigenvalues above the bulk edge ≈ 0.8.
    >>> render_html(s, {}).startswith("<!DOCTYPE html>")
    True
"""

from .figures import all_figures
from .html import render_html, text_summary, write_report

__all__ = ["all_figures", "render_html", "text_summary", "write_report"]
