"""Tests of subspaces.report: figures, the self-contained HTML page and the files on disk."""

from __future__ import annotations

import base64
import copy
import io
import json
import math
import sys
from html.parser import HTMLParser

import numpy as np
import pytest

pytest.importorskip("matplotlib")

import matplotlib
import matplotlib.image

from subspaces._io import to_jsonable
from subspaces.report import all_figures, render_html, text_summary, write_report
from subspaces.report import figures as F

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ALL_NAMES = [
    "loss_accuracy",
    "top_eigenvalues",
    "trace",
    "density",
    "grad_fraction",
    "overlap",
    "batch_vs_full",
]


def fake_summary() -> dict:
    """A realistic fake run: MLP on digits, 5 checkpoints, k = 5, a bulk and 9 outliers."""
    lr, k, n_params = 0.05, 5, 2410
    steps = [0, 50, 100, 150, 200]
    lam1 = [4.2, 17.9, 31.5, 37.8, 38.5]
    eigenvalues = [[l1 * f for f in (1.0, 0.62, 0.45, 0.31, 0.22)] for l1 in lam1]
    rng = np.random.default_rng(0)
    outliers = [38.5, 24.7, 18.1, 12.4, 8.9, 6.2, 4.4, 3.1, 2.2]
    grid = np.linspace(-1.0, 42.0, 400)
    sigma = 0.43
    bulk = (
        (1 - 9 / n_params) * np.exp(-0.5 * ((grid - 0.1) / 0.25) ** 2) / (0.25 * np.sqrt(2 * np.pi))
    )
    spikes = sum(np.exp(-0.5 * ((grid - o) / sigma) ** 2) for o in outliers) / (
        n_params * sigma * np.sqrt(2 * np.pi)
    )
    epochs = [0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.0]
    return {
        "title": "Curvature during training: MLP on digits",
        "created": "2025-01-31T12:00:00+00:00",
        "version": "0.1.0",
        "config": {
            "model": "mlp(64-32-10, tanh)",
            "data": "sklearn digits",
            "loss": "cross_entropy",
            "optimizer": "sgd",
            "lr": lr,
            "epochs": 4,
            "batch_size": 64,
            "every": 50,
            "k": k,
            "seed": 0,
            "dtype": "float64",
            "device": "cpu",
            "num_params": n_params,
            "num_train": 1437,
            "num_test": 360,
        },
        "history": {
            "step": [int(e * 45) for e in epochs],
            "epoch": epochs,
            "train_loss": [2.31, 1.2, 0.52, 0.3, 0.2, 0.14, 0.1, 0.08, 0.061],
            "train_acc": [0.09, 0.71, 0.88, 0.93, 0.95, 0.97, 0.98, 0.985, 0.991],
            "test_loss": [2.3, 1.25, 0.58, 0.36, 0.27, 0.2, 0.16, 0.14, 0.12],
            "test_acc": [0.1, 0.69, 0.86, 0.91, 0.94, 0.95, 0.96, 0.968, 0.9722],
        },
        "curvature": {
            "step": steps,
            "eigenvalues": eigenvalues,
            "residuals": [[float(r) for r in rng.uniform(1e-8, 1e-5, k)] for _ in steps],
            "trace": [21.0, 64.0, 92.5, 110.2, 114.8],
            "trace_stderr": [1.5, 3.2, 4.0, 4.4, 4.1],
            "grad_fraction": [0.31, 0.82, 0.9, 0.93, 0.95],
            "overlap_prev": [None, 0.41, 0.77, 0.88, 0.93],
            "batch_lambda_max": [6.0, 25.1, 44.3, 51.0, 49.9],
            "matvecs": [120, 120, 120, 120, 120],
            "num_samples": 1437,
        },
        "stability": {
            "lr": lr,
            "gd_threshold": 2 / lr,
            "sgd_trace_threshold": 2 / lr,
            "final_lambda_max": 38.5,
            "final_trace": 114.8,
            "eta_lambda_over_2": lr * 38.5 / 2,
            "eta_trace_over_2": lr * 114.8 / 2,
        },
        "final": {
            "eigenvalues": [*outliers, 0.71],
            "residuals": [3e-9, 5e-9, 2e-8, 4e-8, 1e-7, 3e-7, 8e-7, 2e-6, 9e-6, 4e-3],
            "converged": [True] * 9 + [False],
            "num_outliers": 9,
            "bulk_edge": 0.95,
            "gap_ratio": 2.3,
            "trace": 114.8,
            "trace_stderr": 4.1,
            "num_samples": 1437,
            "matvecs": 1234,
            "density": {
                "grid": grid.tolist(),
                "density": (bulk + spikes).tolist(),
                "nodes": [sorted(rng.uniform(-0.5, 39, 20).tolist()) for _ in range(4)],
                "weights": [(np.ones(20) / 20).tolist() for _ in range(4)],
            },
        },
        "timing": {"total_seconds": 12.5, "curvature_seconds": 8.25, "train_seconds": 4.0},
        "notes": ["Curvature on the full training set in float64.", "Seeds fixed."],
    }


@pytest.fixture(scope="module")
def summary() -> dict:
    return fake_summary()


@pytest.fixture(scope="module")
def figures(summary) -> dict[str, bytes]:
    return all_figures(summary)


@pytest.fixture
def stub_png(monkeypatch):
    """Skip the (slow) rasterization where a test only checks which figures are drawn."""
    monkeypatch.setattr(F, "_png", lambda fig: PNG_MAGIC + b"stub")


class StrictParser(HTMLParser):
    """Collects tags and attributes and checks that non-void elements are balanced."""

    VOID = frozenset(
        {"meta", "img", "br", "hr", "link", "input", "source", "col", "area", "base", "wbr"}
    )

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.errors: list[str] = []
        self.attrs: list[tuple[str, str, str | None]] = []
        self.tags: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [(tag, k, v) for k, v in attrs]
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def parse(page: str) -> StrictParser:
    p = StrictParser()
    p.feed(page)
    p.close()
    assert not p.errors, p.errors
    assert not p.stack, f"unclosed tags: {p.stack}"
    return p


# ----------------------------------------------------------------------------- figures


def test_every_figure_is_a_legible_png(figures):
    assert list(figures) == ALL_NAMES
    for name, png in figures.items():
        assert isinstance(png, bytes) and png[:8] == PNG_MAGIC, name
        image = matplotlib.image.imread(io.BytesIO(png), format="png")
        height, width = image.shape[:2]
        assert 800 <= width <= 1600, (name, width)
        assert 300 <= height <= 900, (name, height)
        # not blank: a plot has many distinct colours
        rgb = (image[..., :3] * 255).astype(np.int64)
        colours = np.unique(rgb[..., 0] * 65536 + rgb[..., 1] * 256 + rgb[..., 2])
        assert colours.size > 50, name


def test_figures_leave_no_global_state(summary):
    import matplotlib.pyplot as plt

    rc_before = dict(matplotlib.rcParams)
    open_before = plt.get_fignums()
    F.top_eigenvalues(summary)
    F.density(summary, log_y=False)
    assert plt.get_fignums() == open_before
    assert dict(matplotlib.rcParams) == rc_before


def test_density_linear_scale_and_no_outliers(summary):
    s = copy.deepcopy(summary)
    s["final"]["num_outliers"] = 0
    del s["final"]["bulk_edge"]
    assert F.density(s, log_y=False)[:8] == PNG_MAGIC


def test_figures_skip_missing_data(summary, stub_png):
    s = copy.deepcopy(summary)
    s["curvature"]["batch_lambda_max"] = [None] * 5
    del s["curvature"]["grad_fraction"]
    del s["final"]["density"]
    assert set(all_figures(s)) == set(ALL_NAMES) - {"batch_vs_full", "grad_fraction", "density"}
    assert all_figures({"title": "nothing"}) == {}
    assert F.trace({"curvature": {}}) is None


@pytest.mark.parametrize(
    ("section", "gone"),
    [
        ("history", {"loss_accuracy"}),
        ("curvature", {"top_eigenvalues", "trace", "grad_fraction", "overlap", "batch_vs_full"}),
        ("final", {"density"}),
        ("stability", set()),
        ("config", set()),
        ("timing", set()),
        ("notes", set()),
    ],
)
def test_missing_optional_section_is_skipped(summary, section, gone, tmp_path, stub_png):
    s = copy.deepcopy(summary)
    del s[section]
    figs = all_figures(s)
    assert set(figs) == set(ALL_NAMES) - gone
    page = render_html(s, figs)
    parse(page)
    section_id = {"final": "eigenvalues", "history": "history"}.get(section, section)
    assert f'id="{section_id}"' not in page
    paths = write_report(s, tmp_path, figures=figs)
    assert paths["report"].exists()


def test_length_mismatch_is_an_error(summary):
    s = copy.deepcopy(summary)
    s["curvature"]["trace"] = s["curvature"]["trace"][:-1]
    with pytest.raises(ValueError, match="trace"):
        F.trace(s)
    s = copy.deepcopy(summary)
    s["final"]["density"]["grid"] = s["final"]["density"]["grid"][:10]
    with pytest.raises(ValueError, match="grid"):
        F.density(s)


def test_missing_matplotlib_raises_with_install_hint(summary, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    with pytest.raises(ImportError, match=r"subspaces\[report\]"):
        F.trace(summary)
    with pytest.raises(ImportError, match=r"pip install"):
        all_figures(summary)


# ----------------------------------------------------------------------------- HTML


def test_html_is_self_contained(summary, figures):
    page = render_html(summary, figures)
    p = parse(page)
    assert p.tags[0] == "html"
    assert "script" not in p.tags and "link" not in p.tags and "iframe" not in p.tags
    for _tag, key, value in p.attrs:
        if key in {"src", "href"}:
            assert value is not None and not value.lower().startswith(("http:", "https:", "//"))
    assert "http://" not in page and "https://" not in page
    srcs = [v for tag, k, v in p.attrs if tag == "img" and k == "src"]
    assert len(srcs) == len(figures)
    embedded = [base64.b64decode(v.split(",", 1)[1]) for v in srcs]
    assert embedded == list(figures.values())
    assert all(v.startswith("data:image/png;base64,") for v in srcs)


def test_html_escapes_summary_strings(summary):
    s = copy.deepcopy(summary)
    evil = "<script>alert('x')</script>"
    s["config"]["model"] = evil
    s["config"]["extra <b>key</b>"] = "a & b"
    s["title"] = "Run <img src=x onerror=alert(1)>"
    s["notes"] = [evil, 'say "hi"']
    s["created"] = "<i>today</i>"
    page = render_html(s, {'odd"name': b"\x89PNG\r\n\x1a\nfake"})
    p = parse(page)
    assert "<script" not in page and "<img src=x" not in page
    assert "script" not in p.tags
    assert all(tag != "img" or k in {"src", "alt"} for tag, k, _ in p.attrs)
    assert "&lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;" in page
    assert "extra &lt;b&gt;key&lt;/b&gt;" in page and "a &amp; b" in page
    assert "&lt;i&gt;today&lt;/i&gt;" in page
    assert 'id="fig-odd&quot;name"' in page
    text = "".join(p.text)
    assert evil in text  # shown as text, not run


def test_html_shows_key_numbers(summary, figures):
    page = render_html(summary, figures)
    text = " ".join("".join(parse(page).text).split())
    for expected in [
        "Curvature during training: MLP on digits",
        "2025-01-31",
        "subspaces 0.1.0",
        "Final test accuracy 97.2% (train 99.1%)",
        "λ_max = 38.5 vs 2/η = 40 (η·λ_max/2 = 0.963): at the edge of stability",
        "tr H = 114.8 ± 4.1, above the SGD threshold 40 (η·tr H/2 = 2.87)",
        "9 outlier eigenvalues above the bulk edge ≈ 0.95 (gap ratio 2.3)",
        "600 Hessian-vector products over 5 checkpoints; 1,234 for the final spectrum",
        "computed on 1,437 training samples (all of them)",
        "Run time 12.5 s (training 4.00 s, curvature 8.25 s)",
        "Cohen et al. 2021",
        "Wu & Su 2023",
        "Seeds fixed.",
        "mlp(64-32-10, tanh)",
        "2,410",
    ]:
        assert expected in text, expected
    # every figure has a caption, and the eigenvalue table has one row per eigenvalue
    assert page.count("<figcaption>") == len(figures)
    table = page[page.index('id="eigenvalues"') :]
    assert table.count('class="yes"') == 9 and table.count('class="no"') == 1
    assert "4.00e-03" in table and table.count("<td>outlier</td>") == 9


def test_samples_statement_when_tracking_used_fewer(summary):
    s = copy.deepcopy(summary)
    s["curvature"]["num_samples"] = 512
    text = text_summary(s)
    assert "512 samples per checkpoint" in text and "final spectrum used 1,437" in text
    s["curvature"]["num_samples"] = s["final"]["num_samples"] = 1000
    assert "computed on 1,000 of the 1,437 training samples" in text_summary(s)


def test_stability_verdicts(summary):
    for lam, verdict in [(20.0, "below the GD stability threshold"), (60.0, "above 2/η")]:
        s = copy.deepcopy(summary)
        s["stability"]["final_lambda_max"] = lam
        s["stability"]["eta_lambda_over_2"] = 0.05 * lam / 2
        assert verdict in text_summary(s)


def test_minimal_summary_renders():
    page = render_html({}, {})
    parse(page)
    assert "subspaces report" in page
    assert text_summary({}) == "subspaces report"
    with pytest.raises(TypeError, match="mapping"):
        render_html([], {})  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="PNG bytes"):
        render_html({}, {"x": "not bytes"})  # type: ignore[dict-item]


def test_text_summary(summary):
    text = text_summary(summary, report_path="out/report.html")
    lines = text.splitlines()
    assert lines[0] == summary["title"] and lines[-1] == "report: out/report.html"
    assert 5 <= len(lines) <= 10
    assert "Final test accuracy 97.2%" in text and "η·λ_max/2 = 0.963" in text


# ----------------------------------------------------------------------------- files


def test_write_report_writes_files_atomically(summary, figures, tmp_path):
    out = tmp_path / "run" / "report"
    paths = write_report(summary, out, figures=figures)
    assert list(paths)[:2] == ["report", "summary"]
    assert paths["report"] == out / "report.html" and paths["summary"] == out / "summary.json"
    expected = {"report.html", "summary.json", *(f"{n}.png" for n in figures)}
    assert {p.name for p in out.iterdir()} == expected  # no temporary or hidden files left
    for name, png in figures.items():
        assert paths[name].read_bytes() == png
    page = paths["report"].read_text(encoding="utf-8")
    parse(page)
    assert page == render_html(summary, figures)
    assert json.loads(paths["summary"].read_text()) == to_jsonable(summary)

    # rewriting over an existing report works and still leaves no temporary files
    write_report(summary, out, figures={"trace": figures["trace"]})
    assert {p.name for p in out.iterdir()} == expected


def test_write_report_draws_figures_by_default(summary, tmp_path):
    s = copy.deepcopy(summary)
    del s["curvature"]
    paths = write_report(s, tmp_path)
    assert set(paths) == {"report", "summary", "loss_accuracy", "density"}
    assert paths["density"].read_bytes()[:8] == PNG_MAGIC


def test_summary_json_round_trip_with_non_finite_values(summary, tmp_path):
    s = copy.deepcopy(summary)
    s["curvature"]["trace"][1] = math.nan
    s["final"]["gap_ratio"] = math.inf
    s["history"]["test_acc"][-1] = None
    paths = write_report(s, tmp_path, figures={})
    loaded = json.loads(paths["summary"].read_text())
    assert loaded["curvature"]["trace"][1] == "NaN" and loaded["final"]["gap_ratio"] == "Infinity"
    assert json.loads(json.dumps(loaded)) == loaded
    # the loaded summary renders the same numbers (non-finite strings handled)
    figs = all_figures(loaded)
    assert set(figs) == set(ALL_NAMES)
    page = render_html(loaded, figs)
    parse(page)
    assert "gap ratio" not in text_summary(loaded)  # inf gap ratio is not a finding
    assert "Final test accuracy 96.8%" in text_summary(loaded)


def test_write_report_rejects_bad_figure_names(summary, tmp_path):
    for bad in ["../evil", "report", ".hidden", ""]:
        with pytest.raises(ValueError, match="file stem"):
            write_report(summary, tmp_path, figures={bad: PNG_MAGIC})
    assert list(tmp_path.iterdir()) == []


def test_figures_are_deterministic(summary):
    assert F.overlap(summary) == F.overlap(copy.deepcopy(summary))
