r"""A self-contained HTML report (plus ``summary.json`` and PNG figures) from a summary dict.

The report is one HTML file with inline CSS, no scripts and no external resources (a
Content-Security-Policy forbids loading any); the figures are embedded as base64 PNG ``data:``
URIs. Every string from the summary is HTML-escaped, and every number the page shows comes from
the summary (``summary.json`` next to the report holds them all).

Summary schema
--------------
Every section is optional except where stated; a missing section (or key, or an all-``null``
series) is skipped: no figure, no table row. Series under ``history`` and ``curvature`` are
parallel lists, one entry per evaluation/checkpoint; ``null`` marks a value that was not
measured. Non-finite floats may appear as the strings ``"NaN"``, ``"Infinity"``,
``"-Infinity"`` (as :func:`subspaces._io.write_json` writes them), so a summary read back from
``summary.json`` renders identically. Accuracies are fractions in ``[0, 1]``.

.. code-block:: text

    {
     "title": str, "created": ISO-8601 date str, "version": str,       # library version
     "config": {"model": str, "data": str, "loss": str, "optimizer": str, "lr": float,
                "epochs": int, "batch_size": int, "every": int,         # curvature every N steps
                "k": int, "seed": int, "dtype": str, "device": str,
                "num_params": int, "num_train": int, "num_test": int},  # extra keys are shown too
     "history": {"step": [int], "epoch": [float],
                 "train_loss": [float], "train_acc": [float],
                 "test_loss": [float], "test_acc": [float]},
     "curvature": {"step": [int],
                   "eigenvalues": [[float] * k],      # top-k Hessian eigenvalues per checkpoint
                   "residuals": [[float] * k],
                   "trace": [float], "trace_stderr": [float],
                   "grad_fraction": [float],          # ||P_k g||^2 / ||g||^2
                   "overlap_prev": [float | null],    # ||Q_prev^T Q||_F^2 / k; first is null
                   "batch_lambda_max": [float | null],# lambda_max of one mini-batch Hessian
                   "matvecs": [int],                  # Hessian-vector products per checkpoint
                   "num_samples": int},               # training samples the curvature used
     "stability": {"lr": float, "gd_threshold": float,          # 2 / lr
                   "sgd_trace_threshold": float,                # 2 / lr or 2 B / lr
                   "final_lambda_max": float, "final_trace": float,
                   "eta_lambda_over_2": float,                  # lr * lambda_max / 2
                   "eta_trace_over_2": float},                  # lr * trace / 2
     "final": {"eigenvalues": [float], "residuals": [float], "converged": [bool],
               "num_outliers": int, "bulk_edge": float, "gap_ratio": float,
               "trace": float, "trace_stderr": float, "num_samples": int, "matvecs": int,
               "density": {"grid": [float], "density": [float],      # SLQ density on a grid
                           "nodes": [[float]], "weights": [[float]]}},  # quadrature per probe
     "timing": {"total_seconds": float, "curvature_seconds": float, "train_seconds": float},
     "notes": [str]
    }

Functions: :func:`render_html` (summary + figures -> HTML string), :func:`text_summary` (the
few lines a command prints at the end) and :func:`write_report` (writes ``report.html``,
``summary.json`` and ``<figure>.png`` into a folder, each file atomically).
"""

from __future__ import annotations

import base64
import html
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._io import atomic_write_bytes, atomic_write_text, write_json
from .._progress import format_seconds
from .figures import FIGURES, _section, _series, _to_float, all_figures

__all__ = ["CAPTIONS", "render_html", "text_summary", "write_report"]

CAPTIONS: dict[str, tuple[str, str]] = {
    "loss_accuracy": (
        "Loss and accuracy",
        "Training and test loss (left) and accuracy (right) per epoch; a widening gap between "
        "the train and test curves means the model is starting to overfit.",
    ),
    "top_eigenvalues": (
        "Top Hessian eigenvalues against 2/η",
        "The k largest Hessian eigenvalues at each checkpoint (Lanczos). GD is stable while "
        "λ_max < 2/η (Cohen et al. 2021; Wu & Su 2023): under full-batch GD λ_max typically "
        "rises until it hovers at 2/η (the edge of stability), while SGD tends to stay below it. "
        "The y axis is logarithmic when 2/η is far above the eigenvalues (a span over a factor "
        "of 10); the point at the last training step is the final spectrum.",
    ),
    "trace": (
        "Hessian trace against the SGD threshold",
        "Stochastic trace estimate with a ±1 standard-error band. Linear stability of SGD "
        "constrains the trace of the Hessian, not only λ_max (Wu & Su 2023): look for the trace "
        "to level off below the dashed threshold.",
    ),
    "density": (
        "Spectral density with the outliers marked",
        "Eigenvalue density of the final Hessian by stochastic Lanczos quadrature (log scale): a "
        "bulk near zero (grey, up to the dashed bulk edge) and a few outliers (red), about one "
        "per class (Sagun et al. 2017; Ghorbani et al. 2019; Papyan 2019).",
    ),
    "grad_fraction": (
        "Gradient in the top eigenspace",
        "Fraction ‖P_k g‖²/‖g‖² of the full-batch gradient that lies in the top-k Hessian "
        "eigenspace. Gur-Ari et al. (2018) report that, after a short transient, most of the "
        "gradient lies in the top-C eigenspace (C classes); a random direction would put only "
        "k/P of its energy there, so compare the curve with that baseline rather than with 1.",
    ),
    "overlap": (
        "Eigenspace overlap between checkpoints",
        "Overlap ‖Q_prevᵀQ‖²_F/k of the top-k eigenspaces at consecutive checkpoints (1 = the "
        "same subspace, dotted line = two random subspaces); values near 1 mean the top "
        "subspace has stopped moving (Gur-Ari et al. 2018).",
    ),
    "batch_vs_full": (
        "Mini-batch vs full-data λ_max",
        "λ_max of one mini-batch's Hessian against that of the full data: mini-batch curvature "
        "is larger and noisier, so sharpness measured on one batch overstates the full-data "
        "value compared with 2/η.",
    ),
}
"""Title and one-sentence caption of each figure, by name."""

_CONFIG_LABELS: dict[str, str] = {
    "model": "model",
    "data": "data",
    "loss": "loss",
    "optimizer": "optimizer",
    "lr": "learning rate η",
    "epochs": "epochs",
    "batch_size": "batch size",
    "every": "curvature every (steps)",
    "k": "tracked eigenvalues k",
    "seed": "seed",
    "dtype": "dtype",
    "device": "device",
    "num_params": "parameters",
    "num_train": "training samples",
    "num_test": "test samples",
}

_TIMING_LABELS = {
    "total_seconds": "total",
    "train_seconds": "training",
    "curvature_seconds": "curvature",
}

_CSS = """
:root { color-scheme: light; }
body { margin: 0; background: #f6f7f9; color: #1d2330;
  font: 15px/1.5 -apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue",
  Arial, sans-serif; }
main { max-width: 920px; margin: 0 auto; padding: 24px 28px 40px; background: #fff;
  box-shadow: 0 0 12px rgba(0,0,0,.06); }
h1 { font-size: 1.7em; margin: 0 0 4px; }
h2 { font-size: 1.25em; margin: 32px 0 10px; padding-bottom: 4px;
  border-bottom: 1px solid #e3e6eb; }
.meta { color: #5b6475; margin: 0; }
.summary { background: #f0f5ff; border: 1px solid #cfdcf5; border-radius: 6px;
  padding: 10px 16px 10px 30px; }
.summary li { margin: 3px 0; }
table { border-collapse: collapse; margin: 8px 0; font-size: 0.93em; }
th, td { border-bottom: 1px solid #e3e6eb; padding: 4px 12px; text-align: left; }
th { background: #f3f4f7; font-weight: 600; }
td.num { text-align: right; font-variant-numeric: tabular-nums;
  font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, monospace; }
tr:nth-child(even) td { background: #fafbfc; }
.kv th { width: 14em; background: none; font-weight: 500; color: #5b6475; }
.no { color: #b42318; font-weight: 600; }
.yes { color: #067647; }
figure { margin: 18px 0 26px; }
figure img { display: block; width: 100%; max-width: 880px; height: auto;
  border: 1px solid #e3e6eb; border-radius: 4px; }
figcaption { color: #3d4656; font-size: 0.93em; margin-top: 6px; }
footer { color: #5b6475; font-size: 0.85em; margin-top: 36px; }
"""


# --------------------------------------------------------------------------------------------
# Number formatting and lookups


def _esc(value: Any) -> str:
    """HTML-escape ``str(value)`` (quotes included)."""
    return html.escape(str(value), quote=True)


def _num(value: Any, spec: str = ".4g") -> str:
    """Format a number for display; ``—`` for missing, ``NaN``/``∞`` for non-finite values."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    x = _to_float(value)
    if math.isnan(x):
        is_nan = isinstance(value, float) or (isinstance(value, str) and value.lower() == "nan")
        return "NaN" if is_nan else "—"
    if math.isinf(x):
        return "∞" if x > 0 else "-∞"
    return format(x, spec)


def _pct(value: float) -> str:
    """Format a fraction in ``[0, 1]`` as a percentage."""
    return f"{100.0 * value:.1f}%"


def _finite(value: Any) -> float | None:
    """``value`` as a finite float, else ``None``."""
    x = _to_float(value)
    return x if math.isfinite(x) else None


def _last_finite(section: Mapping[str, Any] | None, key: str) -> float | None:
    """The last finite entry of the series ``section[key]`` (``None`` if there is none)."""
    values = _series(section, key)
    if values is None:
        return None
    for x in values[::-1]:
        if math.isfinite(x):
            return float(x)
    return None


def _first(*candidates: Any) -> float | None:
    """The first candidate that is a finite number."""
    for c in candidates:
        x = _finite(c)
        if x is not None:
            return x
    return None


def _get(section: Mapping[str, Any] | None, key: str) -> Any:
    return section.get(key) if section is not None else None


def _count(value: Any) -> int | None:
    """A non-negative integer count, or ``None``."""
    x = _finite(value)
    return int(x) if x is not None and x >= 0 else None


def _final_lambda_max(summary: Mapping[str, Any]) -> float | None:
    stability, final, curvature = (
        _section(summary, s) for s in ("stability", "final", "curvature")
    )
    final_eigs = _series(final, "eigenvalues")
    tracked = _get(curvature, "eigenvalues")
    last_tracked = None
    if isinstance(tracked, Sequence) and tracked and isinstance(tracked[-1], Sequence):
        last_tracked = tracked[-1][0] if tracked[-1] else None
    return _first(
        _get(stability, "final_lambda_max"),
        final_eigs[0] if final_eigs is not None else None,
        last_tracked,
    )


def _gd_threshold(summary: Mapping[str, Any]) -> float | None:
    stability, config = _section(summary, "stability"), _section(summary, "config")
    lr = _first(_get(stability, "lr"), _get(config, "lr"))
    return _first(_get(stability, "gd_threshold"), 2.0 / lr if lr else None)


def _samples_sentence(summary: Mapping[str, Any]) -> str | None:
    """The explicit statement of how many samples the curvature numbers used."""
    curvature, final, config = (_section(summary, s) for s in ("curvature", "final", "config"))
    tracked = _count(_get(curvature, "num_samples"))
    at_end = _count(_get(final, "num_samples"))
    num_train = _count(_get(config, "num_train"))
    if tracked is None and at_end is None:
        return None
    n = tracked if tracked is not None else at_end
    if num_train is None:
        of = " training samples"
    elif n == num_train and (at_end is None or at_end == num_train):
        of = " training samples (all of them)"
    else:
        of = f" of the {num_train:,} training samples"
    if tracked is not None and at_end is not None and tracked != at_end:
        return (
            f"The curvature tracked during training used {tracked:,} samples per checkpoint; "
            f"the final spectrum used {at_end:,}{of}."
        )
    return f"All curvature numbers (eigenvalues, trace, density) were computed on {n:,}{of}."


def _stability_verdict(ratio: float) -> str:
    if ratio < 0.9:
        return "below the GD stability threshold"
    if ratio <= 1.1:
        return "at the edge of stability (λ_max ≈ 2/η)"
    return "above 2/η, beyond the stability limit of full-batch GD on a quadratic"


def _summary_lines(summary: Mapping[str, Any]) -> list[str]:
    """The key findings as plain-text sentences (escaped later for HTML)."""
    history, curvature, stability, final, timing = (
        _section(summary, s) for s in ("history", "curvature", "stability", "final", "timing")
    )
    lines: list[str] = []

    test_acc, train_acc = _last_finite(history, "test_acc"), _last_finite(history, "train_acc")
    test_loss = _last_finite(history, "test_loss")
    if test_acc is not None or train_acc is not None:
        parts = []
        if test_acc is not None:
            parts.append(f"Final test accuracy {_pct(test_acc)}")
            if train_acc is not None:
                parts[-1] += f" (train {_pct(train_acc)})"
        else:
            parts.append(f"Final train accuracy {_pct(train_acc or 0.0)}")
        if test_loss is not None:
            parts.append(f"test loss {_num(test_loss)}")
        lines.append("; ".join(parts) + ".")

    lam, threshold = _final_lambda_max(summary), _gd_threshold(summary)
    if lam is not None:
        line = f"λ_max = {_num(lam)}"
        if threshold is not None:
            line += f" vs 2/η = {_num(threshold)}"
            lr = _first(_get(stability, "lr"), 2.0 / threshold if threshold else None)
            ratio = _first(_get(stability, "eta_lambda_over_2"), lr * lam / 2.0 if lr else None)
            if ratio is not None:
                line += f" (η·λ_max/2 = {ratio:.3g}): {_stability_verdict(ratio)}"
        lines.append(line + ".")

    tr = _first(_get(stability, "final_trace"), _get(final, "trace"))
    if tr is None:
        tr = _last_finite(curvature, "trace")
    if tr is not None:
        line = f"tr H = {_num(tr)}"
        stderr = _finite(_get(final, "trace_stderr"))
        if stderr is not None:
            line += f" ± {_num(stderr, '.2g')}"
        sgd = _finite(_get(stability, "sgd_trace_threshold"))
        if sgd is not None:
            line += f", {'above' if tr > sgd else 'below'} the SGD threshold {_num(sgd)}"
        eta_tr = _finite(_get(stability, "eta_trace_over_2"))
        if eta_tr is not None:
            line += f" (η·tr H/2 = {eta_tr:.3g})"
        lines.append(line + ".")

    num_outliers, edge = _count(_get(final, "num_outliers")), _finite(_get(final, "bulk_edge"))
    if num_outliers is not None:
        line = f"{num_outliers} outlier eigenvalue{'s' if num_outliers != 1 else ''}"
        if edge is not None:
            line += f" above the bulk edge ≈ {_num(edge)}"
        gap = _finite(_get(final, "gap_ratio"))
        if gap is not None:
            line += f" (gap ratio {_num(gap, '.3g')})"
        lines.append(line + ".")

    final_mv = _count(_get(final, "matvecs"))
    tracked_mv = _series(curvature, "matvecs")
    mv_parts = []
    if tracked_mv is not None:
        total = int(sum(x for x in tracked_mv if math.isfinite(x)))
        mv_parts.append(f"{total:,} Hessian-vector products over {len(tracked_mv)} checkpoints")
    if final_mv is not None:
        mv_parts.append(f"{final_mv:,} for the final spectrum")
    if mv_parts:
        lines.append("Curvature cost: " + "; ".join(mv_parts) + ".")

    samples = _samples_sentence(summary)
    if samples is not None:
        lines.append(samples)

    total_s = _finite(_get(timing, "total_seconds"))
    if total_s is not None:
        line = f"Run time {format_seconds(total_s)}"
        parts = [
            f"{name} {format_seconds(sec)}"
            for name, key in (("training", "train_seconds"), ("curvature", "curvature_seconds"))
            if (sec := _finite(_get(timing, key))) is not None
        ]
        if parts:
            line += f" ({', '.join(parts)})"
        lines.append(line + ".")
    return lines


# --------------------------------------------------------------------------------------------
# HTML pieces


def _config_table(config: Mapping[str, Any]) -> str:
    keys = [k for k in _CONFIG_LABELS if k in config]
    keys += sorted((k for k in config if k not in _CONFIG_LABELS), key=str)
    rows = []
    for key in keys:
        value = config[key]
        label = _CONFIG_LABELS.get(str(key), str(key))
        if isinstance(value, (bool, int, float)) and not isinstance(value, bool):
            cell = f'<td class="num">{_esc(_num(value, ".6g"))}</td>'
        else:
            cell = f"<td>{_esc(value)}</td>"
        rows.append(f"<tr><th>{_esc(label)}</th>{cell}</tr>")
    return '<table class="kv">\n' + "\n".join(rows) + "\n</table>"


def _stability_table(stability: Mapping[str, Any]) -> str:
    labels = {
        "lr": "learning rate η",
        "gd_threshold": "GD threshold 2/η",
        "final_lambda_max": "final λ_max",
        "eta_lambda_over_2": "η·λ_max/2 (1 = edge of stability)",
        "sgd_trace_threshold": "SGD trace threshold",
        "final_trace": "final tr H",
        "eta_trace_over_2": "η·tr H/2",
    }
    keys = [k for k in labels if k in stability]
    keys += sorted((k for k in stability if k not in labels), key=str)
    rows = [
        f'<tr><th>{_esc(labels.get(str(k), str(k)))}</th><td class="num">'
        f"{_esc(_num(stability[k], '.6g'))}</td></tr>"
        for k in keys
    ]
    return '<table class="kv">\n' + "\n".join(rows) + "\n</table>"


def _timing_table(timing: Mapping[str, Any]) -> str:
    rows = []
    for key, value in timing.items():
        label = _TIMING_LABELS.get(str(key), str(key).replace("_", " "))
        seconds = _finite(value)
        shown = format_seconds(seconds) if seconds is not None else _num(value)
        rows.append(f'<tr><th>{_esc(label)}</th><td class="num">{_esc(shown)}</td></tr>')
    return '<table class="kv">\n' + "\n".join(rows) + "\n</table>"


def _eigenvalue_table(final: Mapping[str, Any]) -> str | None:
    eigenvalues = final.get("eigenvalues")
    if not isinstance(eigenvalues, Sequence) or isinstance(eigenvalues, str) or not eigenvalues:
        return None
    residuals = final.get("residuals")
    converged = final.get("converged")
    num_outliers = _count(final.get("num_outliers"))

    def _at(seq: Any, i: int) -> Any:
        if isinstance(seq, Sequence) and not isinstance(seq, str) and i < len(seq):
            return seq[i]
        return None

    head = ["i", "eigenvalue λ_i", "residual ‖Hv − λv‖", "converged"]
    if num_outliers is not None:
        head.append("spectrum")
    rows = ["<tr>" + "".join(f"<th>{_esc(h)}</th>" for h in head) + "</tr>"]
    for i, lam in enumerate(eigenvalues):
        conv = _at(converged, i)
        if conv is None:
            conv_cell = "<td>—</td>"
        else:
            conv_cell = f'<td class="{"yes" if conv else "no"}">{"yes" if conv else "no"}</td>'
        cells = [
            f'<td class="num">{i + 1}</td>',
            f'<td class="num">{_esc(_num(lam, ".6g"))}</td>',
            f'<td class="num">{_esc(_num(_at(residuals, i), ".2e"))}</td>',
            conv_cell,
        ]
        if num_outliers is not None:
            cells.append(f"<td>{'outlier' if i < num_outliers else 'bulk'}</td>")
        rows.append("<tr>" + "".join(cells) + "</tr>")
    return "<table>\n" + "\n".join(rows) + "\n</table>"


def _figure_html(name: str, png: bytes) -> str:
    if not isinstance(png, (bytes, bytearray)):
        raise TypeError(f"figure {name!r} must be PNG bytes, got {type(png).__name__}")
    title, caption = CAPTIONS.get(name, (name.replace("_", " ").capitalize(), ""))
    data = base64.b64encode(bytes(png)).decode("ascii")
    return (
        f'<figure id="fig-{_esc(name)}">\n'
        f'<img alt="{_esc(title)}" src="data:image/png;base64,{data}">\n'
        f"<figcaption><strong>{_esc(title)}.</strong> {_esc(caption)}</figcaption>\n"
        "</figure>"
    )


def page_head(title: str) -> list[str]:
    """The opening lines of a self-contained report page, up to ``<main>``.

    The page allows no external resources (a Content-Security-Policy that permits only inline
    styles and ``data:`` images), so it can be opened and mailed as one file.

    Returns:
        HTML lines; ``title`` is escaped.

    Example:
        >>> head = page_head("a < b")
        >>> "<title>a &lt; b</title>" in head, head[-1]
        (True, '<main>')
    """
    return [
        "<!DOCTYPE html>",
        '<html lang="en">',
        "<head>",
        '<meta charset="utf-8">',
        '<meta http-equiv="Content-Security-Policy" '
        "content=\"default-src 'none'; img-src data:; style-src 'unsafe-inline'\">",
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        f"<title>{_esc(title)}</title>",
        f"<style>{_CSS}</style>",
        "</head>",
        "<body>",
        "<main>",
    ]


def render_html(summary: Mapping[str, Any], figures: Mapping[str, bytes]) -> str:
    """Render the report as one self-contained HTML page.

    The page has a header (title, date, version), a short text summary of the key numbers
    (final test accuracy, λ_max against ``2/η`` with ``η·λ_max/2``, the trace against its SGD
    threshold, outliers and bulk edge, matvecs, and how many samples the curvature used), the
    configuration, each figure with a caption saying what to look for, the stability numbers, a
    table of the final top eigenvalues (residuals, converged flags), timings and notes. It uses
    inline CSS only, no scripts, and no external resources.

    Args:
        summary: the report summary (schema in this module's docstring).
        figures: ``{name: png_bytes}``, e.g. from :func:`~subspaces.report.all_figures`; known
            names are shown in report order with their captions, others after them.

    Returns:
        The HTML document.

    Raises:
        TypeError: if ``summary`` is not a mapping or a figure is not bytes.

    Example:
        >>> page = render_html({"title": "a <b> test", "final": {"num_outliers": 3}}, {})
        >>> "a &lt;b&gt; test" in page, "3 outlier eigenvalues" in page, "<script" in page
        (True, True, False)
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping (dict), got {type(summary).__name__}")
    if not isinstance(figures, Mapping):
        raise TypeError(f"figures must be a mapping of name to PNG bytes, got {type(figures)}")
    title = str(summary.get("title") or "subspaces report")
    meta_parts = []
    if summary.get("created"):
        meta_parts.append(f"created {summary['created']}")
    if summary.get("version"):
        meta_parts.append(f"subspaces {summary['version']}")

    out: list[str] = [*page_head(title), "<header>", f"<h1>{_esc(title)}</h1>"]
    if meta_parts:
        out.append(f'<p class="meta">{_esc(" · ".join(meta_parts))}</p>')
    out.append("</header>")

    lines = _summary_lines(summary)
    if lines:
        out += ['<section id="summary">', "<h2>Summary</h2>", '<ul class="summary">']
        out += [f"<li>{_esc(line)}</li>" for line in lines]
        out += ["</ul>", "</section>"]

    config = _section(summary, "config")
    if config is not None:
        out += ['<section id="config">', "<h2>Configuration</h2>", _config_table(config)]
        out.append("</section>")

    names = [n for n in FIGURES if n in figures] + [n for n in figures if n not in FIGURES]
    if names:
        out += ['<section id="figures">', "<h2>Figures</h2>"]
        out += [_figure_html(str(n), figures[n]) for n in names]
        out.append("</section>")

    stability = _section(summary, "stability")
    if stability is not None:
        out += ['<section id="stability">', "<h2>Stability</h2>", _stability_table(stability)]
        out.append("</section>")

    final = _section(summary, "final")
    table = _eigenvalue_table(final) if final is not None else None
    if table is not None:
        out += [
            '<section id="eigenvalues">',
            "<h2>Final top eigenvalues</h2>",
            "<p>Lanczos Ritz values of the final Hessian with their residual norms; a value is "
            "trusted when it converged.</p>",
            table,
            "</section>",
        ]

    timing = _section(summary, "timing")
    if timing is not None:
        out += ['<section id="timing">', "<h2>Timing</h2>", _timing_table(timing), "</section>"]

    notes = summary.get("notes")
    if isinstance(notes, str):
        notes = [notes]
    if isinstance(notes, Sequence) and notes:
        out += ['<section id="notes">', "<h2>Notes</h2>", "<ul>"]
        out += [f"<li>{_esc(note)}</li>" for note in notes]
        out += ["</ul>", "</section>"]

    out += [
        "<footer>Generated by subspaces. Every number in this report is in "
        "<code>summary.json</code> next to it; the figures are also saved as PNG files.</footer>",
        "</main>",
        "</body>",
        "</html>",
        "",
    ]
    return "\n".join(out)


def text_summary(
    summary: Mapping[str, Any], report_path: str | os.PathLike[str] | None = None
) -> str:
    """The few lines a command prints when it is done: the key numbers and the report's path.

    Args:
        summary: the report summary (schema in this module's docstring).
        report_path: where the report was written; adds a final ``report: <path>`` line.

    Returns:
        Plain text, one finding per line, no trailing newline.

    Raises:
        TypeError: if ``summary`` is not a mapping.

    Example:
        >>> s = {"title": "demo", "history": {"test_acc": [0.5, 0.9]},
        ...      "stability": {"lr": 0.1, "gd_threshold": 20.0, "final_lambda_max": 19.0,
        ...                    "eta_lambda_over_2": 0.95}}
        >>> print(text_summary(s, "out/report.html"))
        demo
          Final test accuracy 90.0%.
          λ_max = 19 vs 2/η = 20 (η·λ_max/2 = 0.95): at the edge of stability (λ_max ≈ 2/η).
        report: out/report.html
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping (dict), got {type(summary).__name__}")
    out = [str(summary.get("title") or "subspaces report")]
    out += [f"  {line}" for line in _summary_lines(summary)]
    if report_path is not None:
        out.append(f"report: {os.fspath(report_path)}")
    return "\n".join(out)


def write_report(
    summary: Mapping[str, Any],
    out_dir: str | os.PathLike[str],
    *,
    figures: Mapping[str, bytes] | None = None,
) -> dict[str, Path]:
    """Write ``<name>.png`` for each figure, ``summary.json`` and ``report.html`` into ``out_dir``.

    Each file is written atomically (a temporary file renamed over the target), ``report.html``
    last, so a reader never sees a partial file and a report on disk always has its figures.
    ``summary.json`` is strict JSON (sorted keys; non-finite floats as ``"NaN"``/``"Infinity"``
    strings). Other files in ``out_dir`` are left alone.

    Args:
        summary: the report summary (schema in this module's docstring).
        out_dir: the output folder (created if missing).
        figures: precomputed ``{name: png_bytes}``; default :func:`all_figures(summary)`.

    Returns:
        ``{"report": report.html, "summary": summary.json, <figure name>: <name>.png, ...}``.

    Raises:
        TypeError: if ``summary`` is not a mapping.
        ValueError: if a figure name is not a plain file stem.
        ImportError: if figures must be drawn and matplotlib is missing.

    Example:
        >>> import tempfile
        >>> summary = {"title": "demo", "history": {"epoch": [1, 2], "train_loss": [1.0, 0.5]}}
        >>> paths = write_report(summary, tempfile.mkdtemp())
        >>> sorted(paths), paths["report"].read_text().startswith("<!DOCTYPE html>")
        (['loss_accuracy', 'report', 'summary'], True)
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping (dict), got {type(summary).__name__}")
    figs = all_figures(summary) if figures is None else dict(figures)
    for name in figs:
        if not name or name in {"report", "summary"} or Path(name).name != name or name[0] == ".":
            raise ValueError(f"figure name {name!r} is not a usable file stem")
    html_text = render_html(summary, figs)
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    for name, png in figs.items():
        paths[name] = atomic_write_bytes(folder / f"{name}.png", png)
    paths["summary"] = write_json(folder / "summary.json", summary)
    paths["report"] = atomic_write_text(folder / "report.html", html_text)
    return {"report": paths.pop("report"), "summary": paths.pop("summary"), **paths}
