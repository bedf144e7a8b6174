"""Progress with a sane ETA in every phase of `analyze`, the phase after a resume included."""

import io
import re

import pytest
import torch

import subspaces._progress as progress_mod
from subspaces._progress import Progress
from subspaces.analyze._costs import _TrainingEta
from subspaces.analyze._final import _final_spectrum


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = Clock()
    monkeypatch.setattr(progress_mod.time, "monotonic", fake)
    return fake


def _eta_seconds(line):
    match = re.search(r"~([\d.]+) s left", line)
    assert match, line
    return float(match.group(1))


def test_eta_after_a_resume_counts_only_the_remaining_steps_and_the_time_since(clock):
    """Resumed at 60 of 100 steps, 10 steps in 5 s: 30 steps left at 0.5 s each is 15 s.

    Counting the 60 steps done before the resume as done in these 5 s (what the bar did) gave
    5 * 30 / 70 = 2.1 s.
    """
    buf = io.StringIO()
    bar = Progress(100, "training", stream=buf, interval=0.0, initial=60)
    for _ in range(10):
        clock.now += 0.5
        bar.update()
    line = bar._line()
    assert line.startswith("training 70/100 (70%)")
    assert _eta_seconds(line) == pytest.approx(15.0, rel=1e-3)
    # no resume: the same pace gives the same ETA for the same remaining work
    fresh = Progress(40, "training", stream=io.StringIO(), interval=0.0)
    for _ in range(10):
        clock.now += 0.5
        fresh.update()
    assert _eta_seconds(fresh._line()) == pytest.approx(15.0, rel=1e-3)


def test_initial_is_validated_and_no_eta_before_the_first_new_step(clock):
    with pytest.raises(ValueError, match="initial must be a non-negative int, got -1"):
        Progress(10, initial=-1)
    bar = Progress(10, "training", stream=io.StringIO(), initial=4)
    clock.now += 3.0
    assert "left" not in bar._line()  # nothing done since the start: no rate yet


@pytest.mark.filterwarnings("ignore:hutchpp_trace")
def test_final_spectrum_progress_counts_products_against_the_printed_prediction(
    clock, capsys, monkeypatch
):
    """The final phase's bar starts at the predicted products (the printed cost line), follows
    the products as they run and ends at those done; its ETA is the rest at the measured pace."""
    torch.manual_seed(0)
    X = torch.randn(40, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (40,))
    model = torch.nn.Sequential(
        torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)
    ).double()
    messages = []
    seen = []
    real_update = Progress.update

    def update(self, n=1, *, note=None):
        clock.now += 0.01 * max(n, 0)  # 10 ms per product
        real_update(self, n, note=note)
        seen.append((self.count, self.total, self.note, self._line()))

    monkeypatch.setattr(Progress, "update", update)
    final = _final_spectrum(
        model,
        "cross_entropy",
        [(X[:20], y[:20]), (X[20:], y[20:])],
        final_k=3,
        density_runs=2,
        density_steps=8,
        generator=torch.Generator().manual_seed(0),
        quiet=False,
        log=messages.append,
        what="40 samples",
        trace_budget=30,
    )
    predicted = 3 * (3 + 2) + 10 + 30 + 2 * 8
    (cost,) = messages
    assert f"up to {predicted} products" in cost
    assert seen[0][1] == predicted  # the bar starts at the printed prediction
    done = final.top.num_matvecs + final.tr.num_matvecs + final.dens.num_matvecs
    assert seen[-1][0] == seen[-1][1] == done  # and ends at the products actually done
    counts = [count for count, _, _, _ in seen]
    assert counts == sorted(counts) and len(seen) > 10  # live: many updates, not one per part
    notes = [note for _, _, note, _ in seen]
    assert any(n.startswith("top-3") for n in notes) and any(n.startswith("density") for n in notes)
    # the ETA is the remaining products at the measured pace (10 ms per product), in every part
    for count, total, _, line in seen:
        if 0 < count < total:
            assert _eta_seconds(line) == pytest.approx(0.01 * (total - count), rel=1e-2, abs=6e-3)
    assert final.k == 3
    assert "final spectrum (products)" in capsys.readouterr().err


def test_training_eta_prices_steps_and_checkpoints_separately(clock):
    """A 10 s checkpoint at step 0, then 5 steps of 0.1 s; 95 steps and 2 checkpoints (one at the
    last step) left: 95 x 0.1 + 2 x 10 = 29.5 s. The average pace (10.5 s / 5 steps) said 200 s."""
    bar = Progress(100, "training", stream=io.StringIO())
    bar.eta = eta = _TrainingEta(checkpoints=3)
    clock.now += 10.0
    eta.checkpoint(10.0)
    for _ in range(5):
        clock.now += 0.1
        eta.steps += 1
        bar.update()
    assert _eta_seconds(bar._line()) == pytest.approx(29.5, rel=1e-3)
    assert Progress(10, "x", stream=io.StringIO())._line().count("left") == 0
