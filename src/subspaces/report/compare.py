"""Compare two or more ``subspaces analyze`` runs in one self-contained HTML report.

:func:`load_run` reads a run folder's ``summary.json``; :func:`compare_figures` overlays the
runs' curves (loss and accuracy, ``λ_max`` with each run's ``2/η`` line, the trace with its
standard-error bars); :func:`render_compare_html` puts them with a table of each run's final
numbers and the configuration keys that differ into one page; :func:`write_compare` writes it
(``compare.html``, atomically). ``subspaces compare RUN1 RUN2 ... --out DIR`` calls these.

Example:
    >>> from subspaces.report.compare import render_compare_html
    >>> runs = [("a", {"config": {"lr": 0.1}}), ("b", {"config": {"lr": 0.05}})]
    >>> page = render_compare_html(runs, {})
    >>> page.startswith("<!DOCTYPE html>"), "0.05" in page, "<script" in page
    (True, True, False)
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_text
from .figures import (
    _figure,
    _fmt,
    _log_y,
    _png,
    _section,
    _series,
    _threshold,
    _tracked_eigenvalues,
    _tracked_trace,
    _use_log_scale,
)
from .html import _esc, _figure_html, _last_finite, _num, page_head

__all__ = [
    "compare_figures",
    "config_differences",
    "load_run",
    "render_compare_html",
    "write_compare",
]

Run = tuple[str, Mapping[str, Any]]

COMPARE_CAPTIONS: dict[str, tuple[str, str]] = {
    "compare_loss_accuracy": (
        "Loss and accuracy",
        "Test (solid) and train (dashed) loss (left) and accuracy (right) of each run against "
        "the training step.",
    ),
    "compare_lambda_max": (
        "λ_max against each run's 2/η",
        "The top Hessian eigenvalue of each run (solid) and its GD stability line 2/η (dashed, "
        "same colour); the y axis is logarithmic when the values span more than a factor of 10.",
    ),
    "compare_trace": (
        "Hessian trace",
        "Stochastic trace estimate of each run with ±1 standard-error bars.",
    ),
}
"""Title and caption of each comparison figure, by name."""

_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]


def load_run(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Read the ``summary.json`` that ``subspaces analyze`` wrote into ``folder``.

    Args:
        folder: a run folder.

    Returns:
        The summary dict.

    Raises:
        ValueError: (one line, naming the folder) if it does not exist, is not a folder, has no
            ``summary.json``, or that file is not a JSON object.

    Example:
        >>> load_run("/nonexistent/run")
        Traceback (most recent call last):
        ...
        ValueError: run folder '/nonexistent/run' does not exist
    """
    path = Path(folder)
    if not path.exists():
        raise ValueError(f"run folder {os.fspath(folder)!r} does not exist")
    if not path.is_dir():
        raise ValueError(f"run folder {os.fspath(folder)!r} is not a folder")
    file = path / "summary.json"
    if not file.is_file():
        raise ValueError(
            f"run folder {os.fspath(folder)!r} has no summary.json (is it a finished "
            "'subspaces analyze' run?)"
        )
    try:
        summary = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{os.fspath(file)!r} is not readable JSON: {error}") from None
    if not isinstance(summary, dict):
        raise ValueError(
            f"{os.fspath(file)!r} must hold a JSON object, got {type(summary).__name__}"
        )
    return summary


def _check_runs(runs: Sequence[Run]) -> None:
    if not isinstance(runs, Sequence) or len(runs) == 0:
        raise ValueError(f"runs must be a non-empty sequence of (label, summary), got {runs!r}")
    for item in runs:
        if (
            not isinstance(item, tuple)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], Mapping)
        ):
            raise TypeError(f"each run must be a (label: str, summary: dict) pair, got {item!r}")


def _history_x(history: Mapping[str, Any], n: int) -> tuple[np.ndarray, str]:
    for key, label in (("step", "training step"), ("epoch", "epoch")):
        x = _series(history, key)
        if x is not None and len(x) == n:
            return x, label
    return np.arange(n, dtype=np.float64), "evaluation"


def _loss_accuracy(runs: Sequence[Run]) -> bytes | None:
    drawn_any = False
    with _figure(1, 2, height=3.9) as (fig, (ax_loss, ax_acc)):
        xlabel = "training step"
        loss_values: list[np.ndarray] = []
        for i, (label, summary) in enumerate(runs):
            history = _section(summary, "history")
            color = _COLORS[i % len(_COLORS)]
            for kind, ax in (("loss", ax_loss), ("acc", ax_acc)):
                for split, style in (("test", "-"), ("train", "--")):
                    y = _series(history, f"{split}_{kind}")
                    if history is None or y is None:
                        continue
                    x, xlabel = _history_x(history, len(y))
                    mask = np.isfinite(y)
                    ax.plot(
                        x[mask],
                        y[mask],
                        style,
                        color=color,
                        marker="o" if mask.sum() <= 30 else None,
                        markersize=3,
                        label=f"{label} ({split})",
                    )
                    drawn_any = True
                    if kind == "loss":
                        loss_values.append(y[mask])
        if not drawn_any:
            return None
        for ax, title in ((ax_loss, "Loss"), (ax_acc, "Accuracy")):
            ax.set_xlabel(xlabel)
            ax.set_title(title)
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
        log = bool(loss_values) and _use_log_scale(np.concatenate(loss_values), 10.0)
        if log:
            _log_y(ax_loss)
        ax_loss.set_ylabel("loss (log scale)" if log else "loss")
        ax_acc.set_ylabel("accuracy")
        return _png(fig)


def _lambda_max(runs: Sequence[Run]) -> bytes | None:
    values: list[np.ndarray] = []
    with _figure() as (fig, ax):
        for i, (label, summary) in enumerate(runs):
            tracked = _tracked_eigenvalues(summary)
            color = _COLORS[i % len(_COLORS)]
            if tracked is not None:
                x, eig, _ = tracked
                y = eig[:, 0]
                mask = np.isfinite(y)
                ax.plot(x[mask], y[mask], color=color, marker="o", markersize=3.5, label=label)
                values.append(y[mask])
            threshold = _threshold(summary, "gd_threshold")
            if math.isfinite(threshold):
                ax.axhline(
                    threshold,
                    color=color,
                    linestyle="--",
                    linewidth=1.3,
                    label=rf"{label}: $2/\eta$ = {_fmt(threshold)}",
                )
                values.append(np.array([threshold]))
        if not values:
            return None
        if _use_log_scale(np.concatenate(values), 10.0):
            _log_y(ax)
            ax.set_ylabel(r"$\lambda_{\max}$ (log scale)")
        else:
            ax.set_ylabel(r"$\lambda_{\max}$")
        ax.set_xlabel("training step")
        ax.set_title(r"Top Hessian eigenvalue $\lambda_{\max}$ against $2/\eta$")
        ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False, fontsize=8)
        return _png(fig)


def _trace(runs: Sequence[Run]) -> bytes | None:
    drawn = False
    with _figure() as (fig, ax):
        for i, (label, summary) in enumerate(runs):
            tracked = _tracked_trace(summary)
            if tracked is None:
                continue
            x, tr, err, _ = tracked
            if err is None:
                err = np.full(len(tr), np.nan)
            mask = np.isfinite(tr)
            yerr = np.where(np.isfinite(err), err, 0.0)[mask]
            ax.errorbar(
                x[mask],
                tr[mask],
                yerr=yerr,
                color=_COLORS[i % len(_COLORS)],
                marker="o",
                markersize=3.5,
                capsize=3,
                label=label,
            )
            drawn = True
        if not drawn:
            return None
        ax.set_xlabel("training step")
        ax.set_ylabel("trace of the Hessian")
        ax.set_title(r"Hessian trace $\mathrm{tr}\,H$ (±1 standard error)")
        ax.legend(loc="best", fontsize=8)
        return _png(fig)


def compare_figures(runs: Sequence[Run]) -> dict[str, bytes]:
    """Overlay the runs' curves: the figures of a comparison report that have data.

    Args:
        runs: ``(label, summary)`` pairs, summaries as written by ``subspaces analyze``.

    Returns:
        ``{name: png_bytes}`` for ``compare_loss_accuracy``, ``compare_lambda_max`` and
        ``compare_trace``, leaving out those no run has data for.

    Raises:
        ValueError: if ``runs`` is empty.
        TypeError: if a run is not a ``(str, mapping)`` pair.
        ImportError: if matplotlib is not installed.

    Example:
        >>> runs = [("a", {"stability": {"gd_threshold": 20.0}})]
        >>> list(compare_figures(runs))
        ['compare_lambda_max']
    """
    _check_runs(runs)
    out: dict[str, bytes] = {}
    for name, draw in (
        ("compare_loss_accuracy", _loss_accuracy),
        ("compare_lambda_max", _lambda_max),
        ("compare_trace", _trace),
    ):
        png = draw(runs)
        if png is not None:
            out[name] = png
    return out


def _final_rows(summary: Mapping[str, Any]) -> dict[str, str]:
    history = _section(summary, "history")
    stability = _section(summary, "stability") or {}
    final = _section(summary, "final") or {}
    timing = _section(summary, "timing") or {}
    acc = _last_finite(history, "test_acc")
    return {
        "final test accuracy": "—" if acc is None else f"{100 * acc:.1f}%",
        "final test loss": _num(_last_finite(history, "test_loss")),
        "final train loss": _num(_last_finite(history, "train_loss")),
        "final λ_max": _num(stability.get("final_lambda_max")),
        "2/η": _num(stability.get("gd_threshold")),
        "η·λ_max/2": _num(stability.get("eta_lambda_over_2")),
        "final trace": _num(stability.get("final_trace", final.get("trace"))),
        "trace standard error": _num(final.get("trace_stderr")),
        "outlier eigenvalues": _num(final.get("num_outliers"), "d"),
        "run time (s)": _num(timing.get("total_seconds"), ".3g"),
    }


def _table(labels: Sequence[str], rows: Mapping[str, Sequence[str]]) -> str:
    head = "<tr><th></th>" + "".join(f"<th>{_esc(label)}</th>" for label in labels) + "</tr>"
    body = [
        f"<tr><th>{_esc(name)}</th>"
        + "".join(f'<td class="num">{_esc(v)}</td>' for v in cells)
        + "</tr>"
        for name, cells in rows.items()
    ]
    return "\n".join(["<table>", head, *body, "</table>"])


def config_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """The configuration keys whose values differ between runs, with each run's value.

    Args:
        runs: ``(label, summary)`` pairs.

    Returns:
        ``{key: [value per run]}`` (``None`` where a run lacks the key), keys sorted.

    Example:
        >>> config_differences([("a", {"config": {"lr": 0.1, "k": 5}}),
        ...                     ("b", {"config": {"lr": 0.05, "k": 5}})])
        {'lr': [0.1, 0.05]}
    """
    _check_runs(runs)
    configs = [_section(summary, "config") or {} for _, summary in runs]
    keys = sorted({key for config in configs for key in config})
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [config.get(key) for config in configs]
        if any(v != values[0] for v in values[1:]):
            out[key] = values
    return out


def _compare_figure_html(name: str, png: bytes) -> str:
    if name not in COMPARE_CAPTIONS:
        return _figure_html(name, png)
    if not isinstance(png, (bytes, bytearray)):
        raise TypeError(f"figure {name!r} must be PNG bytes, got {type(png).__name__}")
    title, caption = COMPARE_CAPTIONS[name]
    data = base64.b64encode(bytes(png)).decode("ascii")
    return (
        f'<figure id="fig-{_esc(name)}">\n'
        f'<img alt="{_esc(title)}" src="data:image/png;base64,{data}">\n'
        f"<figcaption><strong>{_esc(title)}.</strong> {_esc(caption)}</figcaption>\n"
        "</figure>"
    )


def render_compare_html(runs: Sequence[Run], figures: Mapping[str, bytes]) -> str:
    """Render the comparison of runs as one self-contained HTML page (inline CSS, no scripts).

    Args:
        runs: ``(label, summary)`` pairs.
        figures: ``{name: png_bytes}``, e.g. from :func:`compare_figures`.

    Returns:
        The HTML document.

    Raises:
        ValueError: if ``runs`` is empty.
        TypeError: if a run is not a ``(str, mapping)`` pair or a figure is not bytes.

    Example:
        >>> page = render_compare_html([("<a>", {})], {})
        >>> "&lt;a&gt;" in page, "<a>" in page
        (True, False)
    """
    _check_runs(runs)
    labels = [label for label, _ in runs]
    title = "Comparison of " + ", ".join(labels)
    out = [*page_head(title), f"<header><h1>{_esc(title)}</h1></header>"]
    finals = [_final_rows(summary) for _, summary in runs]
    rows = {name: [f[name] for f in finals] for name in finals[0]}
    out += ['<section id="final">', "<h2>Final numbers</h2>", _table(labels, rows), "</section>"]
    diffs = config_differences(runs)
    out += ['<section id="config-differences">', "<h2>Configuration differences</h2>"]
    if diffs:
        cells = {
            key: ["—" if v is None else str(v) for v in values] for key, values in diffs.items()
        }
        out.append(_table(labels, cells))
    else:
        out.append("<p>The runs have the same configuration.</p>")
    out.append("</section>")
    if figures:
        out += ['<section id="figures">', "<h2>Figures</h2>"]
        out += [_compare_figure_html(str(name), png) for name, png in figures.items()]
        out.append("</section>")
    out += [
        "<footer>Generated by <code>subspaces compare</code> from each run's "
        "<code>summary.json</code>.</footer>",
        "</main>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(out)


def write_compare(
    folders: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> Path:
    """Read each run folder's ``summary.json`` and write ``compare.html`` into ``out_dir``.

    Runs are labelled by folder name (the path as given where two names coincide). The page is
    written atomically; other files in ``out_dir`` (a run's own ``report.html``) are left alone.

    Args:
        folders: the run folders, at least one.
        out_dir: the output folder (created if missing).

    Returns:
        The path of ``compare.html``.

    Raises:
        ValueError: if ``folders`` is empty, a folder is missing or has no ``summary.json``, or
            ``out_dir`` is a file.
        ImportError: if matplotlib is not installed.

    Example:
        >>> import tempfile
        >>> try:  # a folder that holds no run
        ...     write_compare([tempfile.mkdtemp()], tempfile.mkdtemp())
        ... except ValueError as err:
        ...     print("summary.json" in str(err))
        True
    """
    if isinstance(folders, (str, os.PathLike)) or len(folders) == 0:
        raise ValueError(f"folders must be a non-empty list of run folders, got {folders!r}")
    summaries = [load_run(folder) for folder in folders]
    names = [Path(folder).name or os.fspath(folder) for folder in folders]
    if len(set(names)) < len(names):
        names = [os.fspath(folder) for folder in folders]
    runs = list(zip(names, summaries, strict=True))
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"out_dir (--out) {os.fspath(out_dir)!r} is a file, expected a folder")
    page = render_compare_html(runs, compare_figures(runs))
    out.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(out / "compare.html", page)
