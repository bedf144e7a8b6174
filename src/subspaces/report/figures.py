"""Figures of a training-dynamics report, one function per figure, each ``(summary) -> PNG bytes``.

Every function reads the summary dict described in :mod:`subspaces.report.html` and returns
the PNG bytes of one figure, or ``None`` when the summary lacks the data it needs (a missing
section, an empty series, a series that is entirely ``null``). Values may be plain numbers or
the strings ``"NaN"``, ``"Infinity"``, ``"-Infinity"`` that :func:`subspaces._io.write_json`
writes for non-finite floats, so a summary read back from ``summary.json`` renders the same.

The figures are drawn on :class:`matplotlib.figure.Figure` objects with the Agg canvas directly
(no :mod:`matplotlib.pyplot`, so no window, no global figure registry and nothing to leak); style
settings apply inside :func:`matplotlib.rc_context` only. matplotlib is an optional dependency
(``pip install 'subspaces[report]'``) imported inside the functions.

Figures: :func:`loss_accuracy`, :func:`top_eigenvalues`, :func:`trace`, :func:`density`,
:func:`grad_fraction`, :func:`overlap`, :func:`batch_vs_full`; :func:`all_figures` returns
those that apply.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "FIGURES",
    "all_figures",
    "batch_vs_full",
    "density",
    "grad_fraction",
    "loss_accuracy",
    "overlap",
    "top_eigenvalues",
    "trace",
]

_INSTALL_HINT = (
    "the report figures need matplotlib, an optional dependency: "
    "install it with `pip install 'subspaces[report]'` (or `pip install matplotlib`)"
)

_WIDTH_IN = 8.0  # figure width in inches; at _DPI this is 960 px, shown at about 800 px
_DPI = 120

_STYLE: dict[str, Any] = {
    "font.size": 10.5,
    "axes.titlesize": 12,
    "axes.labelsize": 10.5,
    "legend.fontsize": 9,
    "xtick.labelsize": 9.5,
    "ytick.labelsize": 9.5,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.8,
    "savefig.facecolor": "white",
    "figure.facecolor": "white",
}

_TRAIN_COLOR = "#1f77b4"
_TEST_COLOR = "#d62728"
_THRESHOLD_COLOR = "#444444"
_OUTLIER_COLOR = "#d62728"


# --------------------------------------------------------------------------------------------
# Values


def _to_float(value: Any) -> float:
    """Convert a summary value to a float: ``None`` and unparsable values become NaN.

    Accepts numbers, booleans, numeric strings and the strings ``"NaN"``, ``"Infinity"`` and
    ``"-Infinity"`` that strict JSON output uses for non-finite floats.

    Returns:
        The float value (NaN when there is none).

    Example:
        >>> _to_float(2), _to_float("Infinity"), math.isnan(_to_float(None))
        (2.0, inf, True)
    """
    if value is None:
        return math.nan
    if isinstance(value, (int, float, np.integer, np.floating)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return math.nan
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _section(summary: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    """Return ``summary[name]`` if it is a non-empty mapping, else ``None``."""
    value = summary.get(name) if isinstance(summary, Mapping) else None
    if isinstance(value, Mapping) and value:
        return value
    return None


def _series(section: Mapping[str, Any] | None, key: str) -> np.ndarray | None:
    """Return ``section[key]`` as a float array (NaN for nulls), or ``None`` if absent/empty.

    A series that is entirely NaN counts as absent.
    """
    if section is None:
        return None
    raw = section.get(key)
    if raw is None or isinstance(raw, (str, bytes)) or not isinstance(raw, Sequence):
        return None
    if len(raw) == 0:
        return None
    values = np.array([_to_float(v) for v in raw], dtype=np.float64)
    if not np.any(np.isfinite(values)):
        return None
    return values


def _matrix(section: Mapping[str, Any] | None, key: str) -> np.ndarray | None:
    """Return ``section[key]`` (a list of equal-length rows) as a 2-D float array, or ``None``.

    Raises:
        ValueError: if the rows have different lengths.
    """
    if section is None:
        return None
    raw = section.get(key)
    if not isinstance(raw, Sequence) or isinstance(raw, (str, bytes)) or len(raw) == 0:
        return None
    rows = [r if isinstance(r, Sequence) and not isinstance(r, str) else [r] for r in raw]
    widths = {len(r) for r in rows}
    if len(widths) != 1:
        raise ValueError(f"{key!r} must be a list of equal-length rows, got row lengths {widths}")
    values = np.array([[_to_float(v) for v in r] for r in rows], dtype=np.float64)
    if values.size == 0 or not np.any(np.isfinite(values)):
        return None
    return values


def _x_axis(section: Mapping[str, Any], key: str, n: int, what: str) -> tuple[np.ndarray, bool]:
    """Return the x values ``section[key]`` checked to have length ``n`` (else ``0..n-1``).

    Returns:
        The x values and whether they came from the summary.

    Raises:
        ValueError: if ``section[key]`` exists with a length other than ``n``.
    """
    x = _series(section, key)
    if x is None:
        return np.arange(n, dtype=np.float64), False
    if len(x) != n:
        raise ValueError(f"{what} has {n} entries but {key!r} has {len(x)}")
    return x, True


def _check_length(values: np.ndarray, n: int, name: str) -> None:
    """Raise a ValueError if ``values`` does not have ``n`` entries.

    Raises:
        ValueError: on a length mismatch.
    """
    if len(values) != n:
        raise ValueError(f"{name!r} has {len(values)} entries but 'step' has {n}")


def _threshold(summary: Mapping[str, Any], key: str) -> float:
    """``stability[key]``, else ``2 / config.lr`` (NaN if neither is known)."""
    stability = _section(summary, "stability")
    value = _to_float(stability.get(key)) if stability else math.nan
    if math.isfinite(value):
        return value
    lr = _lr(summary)
    return 2.0 / lr if math.isfinite(lr) and lr > 0 else math.nan


def _lr(summary: Mapping[str, Any]) -> float:
    """The learning rate from ``stability.lr`` or ``config.lr`` (NaN if unknown)."""
    for name in ("stability", "config"):
        sec = _section(summary, name)
        if sec is not None:
            lr = _to_float(sec.get("lr"))
            if math.isfinite(lr):
                return lr
    return math.nan


def _last_train_step(summary: Mapping[str, Any]) -> float:
    """The last training step of the run (``history.step``), NaN if unknown."""
    steps = _series(_section(summary, "history"), "step")
    if steps is None:
        return math.nan
    return float(np.nanmax(steps))


def _append_final(summary: Mapping[str, Any], x: np.ndarray, has_step: bool) -> float | None:
    """The step to append the final measurement at, or ``None``.

    The tracked curvature is measured every ``every`` steps, so the last training step is often
    not among them; the final spectrum and trace are measured after training, at that step.

    Returns:
        The last training step when it lies after every tracked step, else ``None``.
    """
    last = _last_train_step(summary)
    if not has_step or not math.isfinite(last) or not np.any(np.isfinite(x)):
        return None
    return last if last > float(np.nanmax(x)) else None


def _tracked_eigenvalues(
    summary: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, bool] | None:
    """Steps and top-k eigenvalues, the final spectrum appended at the last training step.

    Returns:
        ``(x, eigenvalues, has_step)`` (rows are steps), or ``None`` without tracked eigenvalues.
        The final row is ``final.eigenvalues[:k]`` (else ``stability.final_lambda_max`` as
        ``λ_1``, NaN for the others) when the run trained past the last checkpoint.

    Raises:
        ValueError: if the eigenvalue rows have different lengths or do not match ``step``.
    """
    curvature = _section(summary, "curvature")
    eig = _matrix(curvature, "eigenvalues")
    if curvature is None or eig is None:
        return None
    x, has_step = _x_axis(curvature, "step", eig.shape[0], "curvature.eigenvalues")
    at = _append_final(summary, x, has_step)
    if at is None:
        return x, eig, has_step
    row = _series(_section(summary, "final"), "eigenvalues")
    if row is None:
        stability = _section(summary, "stability")
        lam = _to_float(stability.get("final_lambda_max")) if stability else math.nan
        row = np.array([lam]) if math.isfinite(lam) else None
    if row is None:
        return x, eig, has_step
    new = np.full(eig.shape[1], np.nan)
    m = min(len(row), eig.shape[1])
    new[:m] = row[:m]
    return np.append(x, at), np.vstack([eig, new]), has_step


def _tracked_trace(
    summary: Mapping[str, Any],
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, bool] | None:
    """Steps, trace and its standard error, the final trace appended at the last step.

    Returns:
        ``(x, trace, stderr or None, has_step)``, or ``None`` without a trace series.

    Raises:
        ValueError: if the series do not match ``step`` in length.
    """
    curvature = _section(summary, "curvature")
    tr = _series(curvature, "trace")
    if curvature is None or tr is None:
        return None
    x, has_step = _x_axis(curvature, "step", len(tr), "curvature.trace")
    stderr = _series(curvature, "trace_stderr")
    if stderr is not None:
        _check_length(stderr, len(tr), "trace_stderr")
    at = _append_final(summary, x, has_step)
    final = _section(summary, "final")
    value = _to_float(final.get("trace")) if final else math.nan
    if at is None or not math.isfinite(value):
        return x, tr, stderr, has_step
    if stderr is not None:
        stderr = np.append(stderr, _to_float(final.get("trace_stderr")) if final else math.nan)
    return np.append(x, at), np.append(tr, value), stderr, has_step


def _note_far_threshold(ax: Axes, values: np.ndarray, threshold: float) -> None:
    """Say on the axes that ``2/η`` is far above the curves when a log axis is impossible."""
    finite = values[np.isfinite(values)]
    if not math.isfinite(threshold) or finite.size == 0:
        return
    top = float(np.max(np.abs(finite)))
    if top > 0 and threshold > 10.0 * top:
        ax.text(
            0.02,
            0.55,
            f"2/η = {_fmt(threshold)} is far above (×{threshold / top:.0f} the largest value);\n"
            "linear axis: some values are not positive",
            transform=ax.transAxes,
            fontsize=9,
            color=_THRESHOLD_COLOR,
        )


def _fmt(value: float) -> str:
    """Compact number for labels: 4 significant digits."""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.4g}"


# --------------------------------------------------------------------------------------------
# Drawing helpers


def _require_matplotlib() -> Any:
    """Import matplotlib or raise an ImportError that says how to install it.

    Returns:
        The ``matplotlib`` module.

    Raises:
        ImportError: if matplotlib is not installed.
    """
    try:
        import matplotlib
        from matplotlib.backends import backend_agg  # noqa: F401  (checks the Agg backend)
    except ImportError as exc:
        raise ImportError(_INSTALL_HINT) from exc
    return matplotlib


@contextmanager
def _figure(nrows: int = 1, ncols: int = 1, height: float = 4.4) -> Iterator[tuple[Figure, Any]]:
    """Yield a new Agg figure and its axes inside a temporary style context."""
    matplotlib = _require_matplotlib()
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with matplotlib.rc_context(_STYLE):
        fig = Figure(figsize=(_WIDTH_IN, height), dpi=_DPI, layout="constrained")
        FigureCanvasAgg(fig)
        axes = fig.subplots(nrows, ncols, squeeze=True)
        try:
            yield fig, axes
        finally:
            fig.clear()


def _png(fig: Figure) -> bytes:
    """Render ``fig`` to PNG bytes (no timestamp or software metadata, so output is stable)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, metadata={"Software": None})
    return buf.getvalue()


def _use_log_scale(values: np.ndarray, ratio: float = 30.0) -> bool:
    """Log scale helps when all finite values are positive and span more than ``ratio``."""
    finite = values[np.isfinite(values)]
    if finite.size == 0 or np.any(finite <= 0):
        return False
    return bool(finite.max() / finite.min() > ratio)


def _log_y(ax: Axes) -> None:
    """Put the y axis on a log scale with plain-number tick labels at 1, 2, 5 × 10^k."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_yscale("log")
    ax.yaxis.set_major_locator(LogLocator(base=10.0, subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:g}"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def _hline(ax: Axes, y: float, label: str, style: str = "--") -> None:
    """Draw a labelled horizontal threshold line if ``y`` is finite."""
    if math.isfinite(y):
        ax.axhline(y, color=_THRESHOLD_COLOR, linestyle=style, linewidth=1.5, label=label)


def _step_label(from_summary: bool) -> str:
    return "training step" if from_summary else "checkpoint"


# --------------------------------------------------------------------------------------------
# Figures


def loss_accuracy(summary: Mapping[str, Any]) -> bytes | None:
    """Train/test loss (left) and accuracy (right) against the epoch.

    Loss uses a log scale when it spans more than a factor of 10. Accuracy is a fraction in
    ``[0, 1]``. Series that are missing or entirely null are left out; ``None`` is returned when
    neither loss nor accuracy is available.

    Args:
        summary: the report summary (see :mod:`subspaces.report.html`).

    Returns:
        PNG bytes, or ``None`` if the summary has no history.

    Raises:
        ValueError: if a series has a different length from the x axis.

    Example:
        >>> history = {"epoch": [1, 2, 3], "train_loss": [1, 0.5, 0.2], "train_acc": [0.5, 0.8, 1]}
        >>> png = loss_accuracy({"history": history})
        >>> png[1:4] == b"PNG", loss_accuracy({}) is None
        (True, True)
    """
    history = _section(summary, "history")
    if history is None:
        return None
    series = {k: _series(history, k) for k in ("train_loss", "test_loss", "train_acc", "test_acc")}
    present = [v for v in series.values() if v is not None]
    if not present:
        return None
    n = max(len(v) for v in present)
    x, has_epoch = _x_axis(history, "epoch", n, "history")
    if not has_epoch:
        x, has_step = _x_axis(history, "step", n, "history")
        xlabel = "training step" if has_step else "evaluation"
    else:
        xlabel = "epoch"
    for key, values in series.items():
        if values is not None:
            _check_length(values, n, key)

    with _figure(1, 2, height=3.9) as (fig, (ax_loss, ax_acc)):
        for ax, kind, title in ((ax_loss, "loss", "Loss"), (ax_acc, "acc", "Accuracy")):
            drawn = []
            for split, color in (("train", _TRAIN_COLOR), ("test", _TEST_COLOR)):
                values = series[f"{split}_{kind}"]
                if values is None:
                    continue
                mask = np.isfinite(values)
                ax.plot(
                    x[mask],
                    values[mask],
                    color=color,
                    marker="o" if mask.sum() <= 30 else None,
                    markersize=3.5,
                    label=split,
                )
                drawn.append(values[mask])
            ax.set_xlabel(xlabel)
            ax.set_title(title)
            if not drawn:
                ax.text(0.5, 0.5, "not recorded", ha="center", va="center", transform=ax.transAxes)
                continue
            ax.legend(loc="best")
            values = np.concatenate(drawn)
            if kind == "loss":
                log = _use_log_scale(values, 10.0)
                if log:
                    _log_y(ax)
                ax.set_ylabel("loss (log scale)" if log else "loss")
            else:
                ax.set_ylabel("accuracy")
                ax.set_ylim(min(0.0, float(values.min())), max(1.0, float(values.max())) * 1.02)
        return _png(fig)


def top_eigenvalues(summary: Mapping[str, Any]) -> bytes | None:
    """The k tracked top Hessian eigenvalues against the step, with the GD threshold ``2/η``.

    ``λ_1`` is drawn thick, the others thinner in a sequential palette; a dashed line marks
    ``2/η``, the largest sharpness at which gradient descent on a quadratic is stable (Cohen et
    al. 2021, *Gradient descent on neural networks typically occurs at the edge of stability*).
    The y axis is logarithmic when the values (and ``2/η``) are positive and span more than a
    factor of 10; when some are not positive and ``2/η`` is more than 10 times above them, the
    figure says so. The final spectrum is drawn at the last training step when the run trained
    past its last checkpoint.

    Args:
        summary: the report summary (see :mod:`subspaces.report.html`).

    Returns:
        PNG bytes, or ``None`` if the summary has no tracked eigenvalues.

    Raises:
        ValueError: if the eigenvalue rows have different lengths or do not match ``step``.

    Example:
        >>> curvature = {"step": [0, 10, 20], "eigenvalues": [[5.0, 2.0], [8.0, 3.0], [9.0, 3.5]]}
        >>> png = top_eigenvalues({"curvature": curvature, "stability": {"gd_threshold": 20.0}})
        >>> png[1:4] == b"PNG", top_eigenvalues({}) is None
        (True, True)
    """
    tracked = _tracked_eigenvalues(summary)
    if tracked is None:
        return None
    x, eig, has_step = tracked
    threshold = _threshold(summary, "gd_threshold")
    matplotlib = _require_matplotlib()
    with _figure() as (fig, ax):
        k = eig.shape[1]
        cmap = matplotlib.colormaps["viridis"]
        for i in range(k - 1, -1, -1):
            col = eig[:, i]
            mask = np.isfinite(col)
            ax.plot(
                x[mask],
                col[mask],
                color="#111111" if i == 0 else cmap(0.15 + 0.75 * i / max(k - 1, 1)),
                linewidth=2.4 if i == 0 else 1.4,
                marker="o" if mask.sum() <= 40 else None,
                markersize=4 if i == 0 else 3,
                label=rf"$\lambda_{{{i + 1}}}$",
                zorder=3 if i == 0 else 2,
            )
        _hline(ax, threshold, rf"$2/\eta$ (GD stability) = {_fmt(threshold)}")
        values = np.concatenate([eig.ravel(), [threshold]])
        if _use_log_scale(values, 10.0):
            _log_y(ax)
            ax.set_ylabel("eigenvalue (log scale)")
        else:
            ax.set_ylabel("eigenvalue")
            _note_far_threshold(ax, eig.ravel(), threshold)
        ax.set_xlabel(_step_label(has_step))
        ax.set_title(f"Top-{k} Hessian eigenvalues during training")
        handles, labels = ax.get_legend_handles_labels()
        # the eigenvalues were drawn λ_k first (so λ_1 is on top); list them λ_1 first
        ax.legend(
            handles[:k][::-1] + handles[k:],
            labels[:k][::-1] + labels[k:],
            loc="center left",
            bbox_to_anchor=(1.01, 0.5),
            frameon=False,
            ncols=1 if k <= 12 else 2,
        )
        return _png(fig)


def trace(summary: Mapping[str, Any]) -> bytes | None:
    """The Hessian trace with a ±1 standard-error band against the step, and the SGD threshold.

    The dashed line is ``stability.sgd_trace_threshold`` (``2/η``, or ``2B/η`` for batch size
    ``B``): linear stability of SGD constrains the trace of the Hessian, not only its top
    eigenvalue (Wu & Su 2023, *The implicit regularization of dynamical stability in SGD*).

    Args:
        summary: the report summary (see :mod:`subspaces.report.html`).

    Returns:
        PNG bytes, or ``None`` if the summary has no trace series.

    Raises:
        ValueError: if the series do not match ``step`` in length.

    Example:
        >>> curvature = {"step": [0, 10, 20], "trace": [20, 30, 31], "trace_stderr": [1, 1, 2]}
        >>> png = trace({"curvature": curvature, "stability": {"sgd_trace_threshold": 40.0}})
        >>> png[1:4] == b"PNG", trace({}) is None
        (True, True)
    """
    tracked = _tracked_trace(summary)
    if tracked is None:
        return None
    x, tr, stderr, has_step = tracked
    threshold = _threshold(summary, "sgd_trace_threshold")
    with _figure() as (fig, ax):
        mask = np.isfinite(tr)
        ax.plot(
            x[mask],
            tr[mask],
            color=_TRAIN_COLOR,
            marker="o" if mask.sum() <= 40 else None,
            markersize=4,
            label=r"$\mathrm{tr}\,H$ (stochastic estimate)",
        )
        if stderr is not None:
            band = mask & np.isfinite(stderr)
            ax.fill_between(
                x[band],
                (tr - stderr)[band],
                (tr + stderr)[band],
                color=_TRAIN_COLOR,
                alpha=0.2,
                linewidth=0,
                label="±1 standard error",
            )
        _hline(ax, threshold, f"SGD threshold: {_trace_threshold_name(summary, threshold)}")
        values = np.concatenate([tr, [threshold]])
        if _use_log_scale(values, 100.0):
            _log_y(ax)
            ax.set_ylabel("trace of the Hessian (log scale)")
        else:
            ax.set_ylabel("trace of the Hessian")
        ax.set_xlabel(_step_label(has_step))
        ax.set_title("Hessian trace during training")
        ax.legend(loc="best")
        return _png(fig)


def _trace_threshold_name(summary: Mapping[str, Any], threshold: float) -> str:
    """Name the SGD trace threshold: ``2/η = …``, ``2B/η = …`` or just the number."""
    lr = _lr(summary)
    config = _section(summary, "config")
    batch = _to_float(config.get("batch_size")) if config else math.nan
    if math.isfinite(lr) and lr > 0 and math.isfinite(threshold):
        if math.isclose(threshold, 2.0 / lr, rel_tol=1e-6):
            return rf"$2/\eta$ = {_fmt(threshold)}"
        if math.isfinite(batch) and math.isclose(threshold, 2.0 * batch / lr, rel_tol=1e-6):
            return rf"$2B/\eta$ = {_fmt(threshold)}"
    return _fmt(threshold)


def density(summary: Mapping[str, Any], *, log_y: bool = True) -> bytes | None:
    """The SLQ spectral density of the final Hessian, with the outliers and the bulk edge marked.

    Red dashed vertical lines mark the outlier eigenvalues ``final.eigenvalues[:num_outliers]``;
    the grey band covers the bulk up to ``final.bulk_edge`` (dashed line). The bulk-plus-outliers
    shape is the one described by Sagun et al. (2017), Ghorbani et al. (2019) and Papyan (2019).

    Args:
        summary: the report summary (see :mod:`subspaces.report.html`).
        log_y: draw the density on a log scale (the outliers carry weight ``~1/n`` each and are
            invisible on a linear scale); values are floored at ``1e-10`` times the peak.

    Returns:
        PNG bytes, or ``None`` if the summary has no density.

    Raises:
        ValueError: if ``grid`` and ``density`` differ in length.

    Example:
        >>> final = {"eigenvalues": [9.0, 3.5], "num_outliers": 2, "bulk_edge": 1.0,
        ...          "density": {"grid": [0.0, 0.5, 1.0, 1.5], "density": [0.1, 1.0, 0.5, 0.0]}}
        >>> png = density({"final": final})
        >>> png[1:4] == b"PNG", density({}) is None
        (True, True)
    """
    final = _section(summary, "final")
    dens_section = final.get("density") if final else None
    if final is None or not isinstance(dens_section, Mapping):
        return None
    grid = _series(dens_section, "grid")
    dens = _series(dens_section, "density")
    if grid is None or dens is None:
        return None
    if len(grid) != len(dens):
        raise ValueError(
            f"final.density: 'grid' has {len(grid)} points but 'density' has {len(dens)}"
        )
    eigenvalues = _series(final, "eigenvalues")
    count = _to_float(final.get("num_outliers"))
    num_outliers = int(count) if math.isfinite(count) and count > 0 else 0
    outliers = (
        eigenvalues[:num_outliers][np.isfinite(eigenvalues[:num_outliers])]
        if eigenvalues is not None
        else np.empty(0)
    )
    bulk_edge = _to_float(final.get("bulk_edge"))

    with _figure() as (fig, ax):
        mask = np.isfinite(grid) & np.isfinite(dens)
        g, d = grid[mask], dens[mask]
        if log_y:
            peak = float(d.max()) if d.size and d.max() > 0 else 1.0
            floor = peak * 1e-6
            if outliers.size and g.size > 1:
                # room for the outlier bumps (weight ~1/n each): three decades below the lowest
                heights = np.interp(outliers, g, d)
                heights = heights[heights > 0]
                if heights.size:
                    floor = min(floor, float(heights.min()) * 1e-3)
            floor = max(floor, peak * 1e-14)
            d = np.maximum(d, floor)
            ax.set_yscale("log")
            ax.set_ylim(floor, peak * 3.0)
        ax.plot(g, d, color=_TRAIN_COLOR, linewidth=1.6, label="SLQ density")
        ax.fill_between(g, d, d.min() if d.size else 0.0, color=_TRAIN_COLOR, alpha=0.12)
        if math.isfinite(bulk_edge):
            left = float(min(g.min(), bulk_edge)) if g.size else bulk_edge
            ax.axvspan(left, bulk_edge, color="#888888", alpha=0.12, linewidth=0)
            ax.axvline(
                bulk_edge,
                color=_THRESHOLD_COLOR,
                linestyle="--",
                linewidth=1.4,
                label=f"bulk edge ≈ {_fmt(bulk_edge)}",
            )
        for i, lam in enumerate(outliers):
            ax.axvline(
                float(lam),
                color=_OUTLIER_COLOR,
                linestyle=":",
                linewidth=1.4,
                alpha=0.85,
                label=f"outliers ({len(outliers)})" if i == 0 else None,
            )
        ax.set_xlabel("eigenvalue")
        ax.set_ylabel("density (log scale)" if log_y else "density")
        ax.set_title("Spectral density of the final Hessian (SLQ)")
        ax.legend(loc="upper right")
        return _png(fig)


def _fraction_figure(
    x: np.ndarray,
    y: np.ndarray,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    label: str,
    reference: tuple[float, str] | None = None,
) -> bytes:
    """A line plot of a quantity in ``[0, 1]`` against the step."""
    with _figure(height=3.9) as (fig, ax):
        mask = np.isfinite(y)
        ax.plot(
            x[mask],
            y[mask],
            color=_TRAIN_COLOR,
            marker="o" if mask.sum() <= 40 else None,
            markersize=4,
            label=label,
        )
        if reference is not None and math.isfinite(reference[0]):
            _hline(ax, reference[0], reference[1], style=":")
        ax.set_ylim(-0.03, 1.03)
        finite_x = x[np.isfinite(x)]
        if finite_x.size > 1 and finite_x.max() > finite_x.min():
            pad = 0.04 * float(finite_x.max() - finite_x.min())
            ax.set_xlim(float(finite_x.min()) - pad, float(finite_x.max()) + pad)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.legend(loc="lower right")
        return _png(fig)


def grad_fraction(summary: Mapping[str, Any]) -> bytes | None:
    """Fraction ``‖P_k g‖² / ‖g‖²`` of the gradient inside the top-k eigenspace, per step.

    Gur-Ari, Roberts & Dyer (2018), *Gradient descent happens in a tiny subspace*: after a short
    transient this fraction is close to 1.

    Args:
        summary: the report summary (see :mod:`subspaces.report.html`).

    Returns:
        PNG bytes, or ``None`` if the summary has no gradient fractions.

    Raises:
        ValueError: if the series does not match ``step`` in length.

    Example:
        >>> png = grad_fraction({"curvature": {"step": [0, 10], "grad_fraction": [0.5, 0.9]}})
        >>> png[1:4] == b"PNG", grad_fraction({}) is None
        (True, True)
    """
    curvature = _section(summary, "curvature")
    y = _series(curvature, "grad_fraction")
    if curvature is None or y is None:
        return None
    x, has_step = _x_axis(curvature, "step", len(y), "curvature.grad_fraction")
    k = _num_tracked(curvature)
    return _fraction_figure(
        x,
        y,
        xlabel=_step_label(has_step),
        ylabel=r"$\|P_k g\|^2 \,/\, \|g\|^2$",
        title=f"Fraction of the gradient in the top-{k or 'k'} Hessian eigenspace",
        label="gradient fraction",
    )


def overlap(summary: Mapping[str, Any]) -> bytes | None:
    """Overlap ``‖Q_prevᵀ Q‖²_F / k`` of the top-k eigenspace between consecutive checkpoints.

    The first entry is ``null`` (no previous checkpoint). A dotted line marks ``k/n``, the
    expected overlap of two random k-dimensional subspaces of ``R^n`` (``n`` =
    ``config.num_params``), when known.

    Args:
        summary: the report summary (see :mod:`subspaces.report.html`).

    Returns:
        PNG bytes, or ``None`` if the summary has no overlaps.

    Raises:
        ValueError: if the series does not match ``step`` in length.

    Example:
        >>> png = overlap({"curvature": {"step": [0, 10, 20], "overlap_prev": [None, 0.8, 0.97]}})
        >>> png[1:4] == b"PNG", overlap({}) is None
        (True, True)
    """
    curvature = _section(summary, "curvature")
    y = _series(curvature, "overlap_prev")
    if curvature is None or y is None:
        return None
    x, has_step = _x_axis(curvature, "step", len(y), "curvature.overlap_prev")
    k = _num_tracked(curvature)
    config = _section(summary, "config")
    n = _to_float(config.get("num_params")) if config else math.nan
    reference = None
    if k and math.isfinite(n) and n > 0:
        reference = (k / n, f"random subspaces: k/n = {k / n:.2g}")
    return _fraction_figure(
        x,
        y,
        xlabel=_step_label(has_step),
        ylabel="overlap with previous checkpoint",
        title=f"Stability of the top-{k or 'k'} Hessian eigenspace",
        label=r"overlap $\|Q_{t-1}^{\top} Q_t\|_F^2 \,/\, k$",
        reference=reference,
    )


def _num_tracked(curvature: Mapping[str, Any]) -> int:
    """k, the number of tracked eigenvalues (0 if unknown)."""
    eig = _matrix(curvature, "eigenvalues")
    return 0 if eig is None else int(eig.shape[1])


def batch_vs_full(summary: Mapping[str, Any]) -> bytes | None:
    """λ_max of a mini-batch Hessian against λ_max of the full-data Hessian, per step.

    Args:
        summary: the report summary (see :mod:`subspaces.report.html`).

    Returns:
        PNG bytes, or ``None`` if the summary has no mini-batch λ_max (or no full λ_max).

    Raises:
        ValueError: if the series do not match ``step`` in length.

    Example:
        >>> curvature = {"step": [0, 10], "eigenvalues": [[5.0], [8.0]], "batch_lambda_max": [6, 9]}
        >>> png = batch_vs_full({"curvature": curvature})
        >>> png[1:4] == b"PNG", batch_vs_full({}) is None
        (True, True)
    """
    curvature = _section(summary, "curvature")
    batch = _series(curvature, "batch_lambda_max")
    eig = _matrix(curvature, "eigenvalues")
    if curvature is None or batch is None or eig is None:
        return None
    _check_length(batch, eig.shape[0], "batch_lambda_max")
    tracked = _tracked_eigenvalues(summary)
    if tracked is None:
        return None
    x_full, full_eig, has_step = tracked
    full = full_eig[:, 0]
    x_batch = x_full[: len(batch)]
    threshold = _threshold(summary, "gd_threshold")
    with _figure(height=3.9) as (fig, ax):
        for x, values, color, label in (
            (x_full, full, "#111111", r"full data $\lambda_{\max}$"),
            (x_batch, batch, "#ff7f0e", r"mini-batch $\lambda_{\max}$"),
        ):
            mask = np.isfinite(values)
            ax.plot(
                x[mask],
                values[mask],
                color=color,
                marker="o" if mask.sum() <= 40 else None,
                markersize=4,
                label=label,
            )
        _hline(ax, threshold, rf"$2/\eta$ (GD stability) = {_fmt(threshold)}")
        if _use_log_scale(np.concatenate([full, batch, [threshold]]), 10.0):
            _log_y(ax)
            ax.set_ylabel(r"$\lambda_{\max}$ (log scale)")
        else:
            ax.set_ylabel(r"$\lambda_{\max}$")
            _note_far_threshold(ax, np.concatenate([full, batch]), threshold)
        ax.set_xlabel(_step_label(has_step))
        ax.set_title("Top eigenvalue: one mini-batch vs the full data")
        ax.legend(loc="best")
        return _png(fig)


FIGURES: dict[str, Callable[[Mapping[str, Any]], bytes | None]] = {
    "loss_accuracy": loss_accuracy,
    "top_eigenvalues": top_eigenvalues,
    "trace": trace,
    "density": density,
    "grad_fraction": grad_fraction,
    "overlap": overlap,
    "batch_vs_full": batch_vs_full,
}
"""Every figure by name, in report order."""


def all_figures(summary: Mapping[str, Any]) -> dict[str, bytes]:
    r"""Draw every figure that the summary has data for.

    Args:
        summary: the report summary (see :mod:`subspaces.report.html`).

    Returns:
        ``{name: png_bytes}`` in report order (names as in :data:`FIGURES`), leaving out the
        figures whose data is missing.

    Raises:
        ImportError: if matplotlib is not installed.
        TypeError: if ``summary`` is not a mapping.

    Example:
        >>> figs = all_figures({"history": {"epoch": [1, 2], "train_loss": [1.0, 0.5]}})
        >>> list(figs), figs["loss_accuracy"][:8] == b"\x89PNG\r\n\x1a\n"
        (['loss_accuracy'], True)
    """
    if not isinstance(summary, Mapping):
        raise TypeError(f"summary must be a mapping (dict), got {type(summary).__name__}")
    _require_matplotlib()
    out: dict[str, bytes] = {}
    for name, draw in FIGURES.items():
        png = draw(summary)
        if png is not None:
            out[name] = png
    return out
