"""Safe runs of `subspaces analyze`: no silent overwrite, no silent fresh start, no silent resume
from a damaged or foreign checkpoint, and one-line errors (no traceback) for bad output folders,
devices and batch sizes."""

import io
import shutil

import pytest
import torch

from subspaces.analyze import AnalyzeConfig, run_analyze
from subspaces.cli import main


def tiny_data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(120, 6, generator=g)
    W = torch.randn(6, 3, generator=g)
    y = (X @ W).argmax(1)
    return X[:90], y[:90], X[90:], y[90:]


def tiny_model(in_dim, out_dim):
    return torch.nn.Sequential(
        torch.nn.Linear(in_dim, 8), torch.nn.Tanh(), torch.nn.Linear(8, out_dim)
    )


SETTINGS = dict(
    data="test_analyze_safety:tiny_data",
    model="test_analyze_safety:tiny_model",
    epochs=1,
    batch_size=30,
    every=3,
    k=2,
    final_k=4,
    density_runs=2,
    density_steps=8,
    lr=0.2,
)
CLI = [
    "--data", SETTINGS["data"], "--model", SETTINGS["model"], "--epochs", "1",
    "--batch-size", "30", "--every", "3", "--k", "2", "--lr", "0.2", "-q",
]  # fmt: skip


def config(**kw):
    return AnalyzeConfig(**{**SETTINGS, **kw})


def quiet_run(out, **kw):
    settings = kw.pop("settings", {})
    return run_analyze(config(**settings), out, quiet=True, log=lambda m: None, **kw)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished one-epoch run: checkpoint.pt, summary.json, report.html and figures."""
    out = tmp_path_factory.mktemp("finished") / "run"
    quiet_run(out)
    return out


@pytest.fixture
def run_copy(finished_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    return out


def one_line(message: str, *words: str) -> None:
    assert "\n" not in message.strip(), message
    for word in words:
        assert word in message, message


def cli_error(capsys, argv, *words):
    """Run the CLI; it must exit 2 with one `error:` line on stderr and no traceback."""
    code = main(["analyze", *argv])
    captured = capsys.readouterr()
    assert code == 2, captured
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and "error: " in lines[0], captured.err
    assert "Traceback" not in captured.err
    one_line(lines[0], *words)
    return lines[0]


# ----- refusing to overwrite ----------------------------------------------------------------------
@pytest.mark.parametrize("marker", ["checkpoint.pt", "summary.json", "report.html"])
def test_refuses_a_folder_that_holds_another_run(tmp_path, capsys, finished_run, marker):
    out = tmp_path / "previous"
    out.mkdir()
    shutil.copy(finished_run / marker, out / marker)
    before = (out / marker).read_bytes()
    with pytest.raises(ValueError) as info:
        quiet_run(out)
    one_line(str(info.value), str(out), marker, "--resume", "--force")
    cli_error(capsys, [*CLI, "--out", str(out)], str(out), "--resume", "--force")
    assert sorted(p.name for p in out.iterdir()) == [marker]
    assert (out / marker).read_bytes() == before


def test_force_starts_over_and_an_unrelated_folder_is_fine(run_copy, tmp_path, capsys):
    old = (run_copy / "checkpoint.pt").read_bytes()
    summary = quiet_run(run_copy, settings={"lr": 0.1}, force=True)
    assert summary["config"]["lr"] == 0.1
    assert (run_copy / "checkpoint.pt").read_bytes() != old
    with pytest.raises(ValueError, match="not both"):
        quiet_run(run_copy, resume=True, force=True)
    cli_error(capsys, [*CLI, "--out", str(run_copy), "--resume", "--force"], "not both")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "README.txt").write_text("my notes")
    quiet_run(notes)
    assert (notes / "README.txt").read_text() == "my notes"
    assert (notes / "report.html").exists()


# ----- resume -------------------------------------------------------------------------------------
def test_resume_without_a_checkpoint_says_so(tmp_path, capsys):
    for out in (tmp_path / "missing", tmp_path / "empty"):
        if out.name == "empty":
            out.mkdir()
        with pytest.raises(ValueError) as info:
            quiet_run(out, resume=True)
        one_line(str(info.value), "no checkpoint", str(out))
        cli_error(capsys, [*CLI, "--out", str(out), "--resume"], "no checkpoint", str(out))
    assert not (tmp_path / "empty" / "report.html").exists()


def _weight_offset(data: bytes) -> tuple[int, int]:
    """Offset and length of the first layer's weight tensor inside a checkpoint file."""
    start = data.index(b"PK\x03\x04")  # the torch.save zip, after any header
    state = torch.load(io.BytesIO(data[start:]), weights_only=True)
    weight = state["model"]["0.weight"].contiguous().numpy().tobytes()
    assert data.count(weight) == 1
    return data.index(weight), len(weight)


def _flip(position: float):
    def damage(data: bytes) -> bytes:
        i = min(int(position * len(data)), len(data) - 1)
        return data[:i] + bytes([data[i] ^ 0x10]) + data[i + 1 :]

    return damage


def _change_weight_bytes(data: bytes) -> bytes:
    offset, length = _weight_offset(data)
    assert length >= 128
    i = offset + 32
    return data[:i] + bytes(b ^ 0x5A for b in data[i : i + 64]) + data[i + 64 :]


DAMAGE = {
    "truncated_to_half": lambda d: d[: len(d) // 2],
    "last_byte_missing": lambda d: d[:-1],
    "empty": lambda d: b"",
    "bit_flip_first_byte": _flip(0.0),
    "bit_flip_at_1_percent": _flip(0.01),
    "bit_flip_in_the_middle": _flip(0.5),
    "bit_flip_last_byte": _flip(1.0),
    "64_bytes_changed_in_a_weight": _change_weight_bytes,
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_checkpoint_is_a_one_line_error(run_copy, capsys, damage):
    ckpt = run_copy / "checkpoint.pt"
    ckpt.write_bytes(DAMAGE[damage](ckpt.read_bytes()))
    report = (run_copy / "report.html").read_bytes()
    with pytest.raises(ValueError) as info:
        quiet_run(run_copy, resume=True)
    one_line(str(info.value), str(ckpt))
    assert "damaged" in str(info.value) or "truncated" in str(info.value)
    cli_error(capsys, [*CLI, "--out", str(run_copy), "--resume"], str(ckpt))
    assert (run_copy / "report.html").read_bytes() == report  # nothing was rewritten


def test_a_foreign_checkpoint_is_a_one_line_error(run_copy, tmp_path, capsys):
    ckpt = run_copy / "checkpoint.pt"
    # another run's checkpoint: other settings
    with pytest.raises(ValueError) as info:
        quiet_run(run_copy, resume=True, settings={"lr": 0.3})
    one_line(str(info.value), str(ckpt), "other settings", "lr")
    # a file another program wrote under the same name
    torch.save({"model": {"0.weight": torch.zeros(8, 6)}, "step": 3}, ckpt)
    with pytest.raises(ValueError) as info:
        quiet_run(run_copy, resume=True)
    one_line(str(info.value), str(ckpt), "not a subspaces checkpoint")
    cli_error(capsys, [*CLI, "--out", str(run_copy), "--resume"], str(ckpt))


def test_a_checkpoint_of_another_kind_or_unknown_version_is_refused(run_copy):
    from subspaces import _io

    ckpt = run_copy / "checkpoint.pt"
    good = _io.read_checkpoint(ckpt, kind="subspaces.analyze", version=1)
    for kind, version, word in (
        ("subspaces.other", 1, "subspaces.other"),
        ("subspaces.analyze", 2, "version 2"),
    ):
        _io.write_checkpoint(ckpt, good.payload, kind=kind, version=version, identity=good.identity)
        with pytest.raises(ValueError) as info:
            quiet_run(run_copy, resume=True)
        one_line(str(info.value), str(ckpt), word)


def test_resume_from_an_intact_checkpoint_still_works(run_copy):
    messages = []
    resumed = run_analyze(config(), run_copy, resume=True, quiet=True, log=messages.append)
    assert any("resuming" in m for m in messages)
    assert resumed["history"]["epoch"] == [1]


# ----- one-line errors for bad output folders, devices and batch sizes ---------------------------
def test_unwritable_out_is_a_one_line_error(tmp_path, capsys):
    a_file = tmp_path / "file.txt"
    a_file.write_text("x")
    for out in (a_file, a_file / "sub"):
        with pytest.raises(ValueError) as info:
            quiet_run(out)
        one_line(str(info.value), str(out), "--out")
        cli_error(capsys, [*CLI, "--out", str(out)], str(out))
    assert a_file.read_text() == "x"


def test_read_only_out_is_a_one_line_error(tmp_path, capsys):
    import os

    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.access(locked, os.W_OK):
            pytest.skip("running with permissions that ignore a read-only folder (root)")
        cli_error(capsys, [*CLI, "--out", str(locked / "run")], str(locked / "run"))
        cli_error(capsys, [*CLI, "--out", str(locked)], str(locked))
    finally:
        locked.chmod(0o700)


def test_cuda_without_cuda_and_unknown_devices_are_one_line_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device in ("cuda", "cuda:0"):
        with pytest.raises(ValueError) as info:
            quiet_run(tmp_path / "cuda", settings={"device": device})
        one_line(str(info.value), repr(device), "CUDA is not available")
        cli_error(capsys, [*CLI, "--out", str(tmp_path / "c"), "--device", device], "CUDA")
    for device in ("gpu", "cuda:x", "", "meta"):
        with pytest.raises(ValueError) as info:
            quiet_run(tmp_path / "bad", settings={"device": device})
        one_line(str(info.value), repr(device), "device")
        cli_error(capsys, [*CLI, "--out", str(tmp_path / "b"), "--device", device], "device")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ValueError) as info:
        quiet_run(tmp_path / "cuda", settings={"device": "cuda:3"})
    one_line(str(info.value), "'cuda:3'", "1 CUDA device")
    assert not any(tmp_path.iterdir())  # nothing created for a run that cannot start


def test_batch_larger_than_the_data_set_is_a_one_line_error(tmp_path, capsys):
    with pytest.raises(ValueError) as info:
        quiet_run(tmp_path / "big", settings={"batch_size": 91})
    one_line(str(info.value), "batch_size", "91", "90")
    argv = [*CLI, "--out", str(tmp_path / "big"), "--batch-size", "500"]
    cli_error(capsys, argv, "--batch-size", "500", "90")
    quiet_run(tmp_path / "exact", settings={"batch_size": 90})  # the whole set is allowed
