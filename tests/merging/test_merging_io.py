"""Files, recipes and ``subspaces merge``: sources, atomic output, kill -9, one-line errors."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from subspaces.cli import main
from subspaces.merging import (
    StateDictSource,
    load_recipe,
    load_state_dict,
    merge,
    parse_recipe,
    run_recipe,
    save_safetensors,
)


def _models(tmp_path, k=3, size=(8, 4), seed=0):
    g = torch.Generator().manual_seed(seed)
    base = {
        "0.weight": torch.randn(*size, generator=g),
        "1.bias": torch.randn(size[0], generator=g),
    }
    save_safetensors(base, tmp_path / "base.safetensors")
    models = []
    for i in range(k):
        m = {n: v + 0.1 * torch.randn(v.shape, generator=g) for n, v in base.items()}
        models.append(m)
        if i % 2:
            torch.save(m, tmp_path / f"m{i}.pt")
        else:
            save_safetensors(m, tmp_path / f"m{i}.safetensors")
    files = [tmp_path / (f"m{i}.pt" if i % 2 else f"m{i}.safetensors") for i in range(k)]
    return base, models, files


def test_file_sources_merge_like_in_memory(tmp_path):
    base, models, files = _models(tmp_path)
    in_memory = merge(models, method="ties", base=base, density=0.5)
    from_files = merge(files, method="ties", base=tmp_path / "base.safetensors", density=0.5)
    assert all(torch.equal(in_memory[n], from_files[n]) for n in base)
    net = torch.nn.Linear(3, 2)
    assert set(StateDictSource(net).names()) == {"weight", "bias"}
    with pytest.raises(ValueError, match="no such file"):
        StateDictSource(tmp_path / "missing.safetensors")
    (tmp_path / "bad.pt").write_bytes(b"not a pickle")
    with pytest.raises(ValueError, match=r"bad\.pt: cannot be read with torch\.load"):
        StateDictSource(tmp_path / "bad.pt")


def test_safetensors_reader_and_writer_agree_with_the_safetensors_package(tmp_path):
    st = pytest.importorskip("safetensors.torch")
    g = torch.Generator().manual_seed(0)
    state = {
        "a": torch.randn(3, 4, generator=g),
        "b": torch.randn(5, generator=g).to(torch.bfloat16),
        "c": torch.arange(6, dtype=torch.int64).view(2, 3),
        "empty": torch.zeros(0, 2),
        "d": torch.randn(2, generator=g, dtype=torch.float64),
    }
    ours = save_safetensors(state, tmp_path / "ours.safetensors", metadata={"k": "v"})
    theirs = st.load_file(str(ours))
    assert set(theirs) == set(state) and all(torch.equal(theirs[n], state[n]) for n in state)
    st.save_file(state, str(tmp_path / "theirs.safetensors"))
    back = load_state_dict(tmp_path / "theirs.safetensors")
    assert all(torch.equal(back[n], state[n]) and back[n].dtype == state[n].dtype for n in state)
    data = (tmp_path / "theirs.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[:-8])
    with pytest.raises(ValueError, match=r"cut\.safetensors: tensor '.*' lies outside the file"):
        StateDictSource(tmp_path / "cut.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\xff" * 16)
    with pytest.raises(ValueError, match="not a readable safetensors file"):
        StateDictSource(tmp_path / "junk.safetensors")


def test_recipe_json_yaml_and_errors(tmp_path):
    base, models, files = _models(tmp_path)
    recipe = {
        "method": "task_arithmetic",
        "base": "base.safetensors",
        "models": [f.name for f in files[:2]] + [{"path": files[2].name, "weight": 0.5}],
        "parameters": {"lambda": {"rules": [["*.bias", 0.0]], "default": 0.3}},
    }
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    out = run_recipe(load_recipe(tmp_path / "r.json"), tmp_path / "out.safetensors")
    merged = load_state_dict(out)
    expected = base["0.weight"] + 0.3 * sum(
        w * (m["0.weight"] - base["0.weight"]) for w, m in zip([1, 1, 0.5], models, strict=False)
    )
    assert torch.allclose(merged["0.weight"], expected, atol=1e-6, rtol=0)
    assert torch.equal(merged["1.bias"], base["1.bias"])
    yaml = pytest.importorskip("yaml")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert load_recipe(tmp_path / "r.yaml") == load_recipe(tmp_path / "r.json")
    with pytest.raises(ValueError, match="unknown recipe key 'model'"):
        parse_recipe({"method": "ties", "model": []})
    with pytest.raises(ValueError, match="method must be one of"):
        parse_recipe({"method": "magic", "models": ["a.pt"]})
    with pytest.raises(ValueError, match="unknown recipe parameter 'densty'"):
        parse_recipe({"method": "ties", "models": ["a.pt"], "parameters": {"densty": 0.2}})
    with pytest.raises(ValueError, match="either in 'weights' or per model"):
        parse_recipe({"method": "ties", "models": [{"path": "a", "weight": 1}], "weights": [1]})


def test_cli_merge_and_one_line_errors(tmp_path, capsys):
    base, models, files = _models(tmp_path)
    recipe = {
        "method": "ties",
        "base": "base.safetensors",
        "models": [f.name for f in files],
        "parameters": {"density": 0.5},
    }
    (tmp_path / "r.json").write_text(json.dumps(recipe))
    out = tmp_path / "merged.safetensors"
    assert main(["merge", str(tmp_path / "r.json"), "--out", str(out), "-q"]) == 0
    expected = merge(models, method="ties", base=base, density=0.5)
    merged = load_state_dict(out)
    assert all(torch.equal(merged[n], expected[n]) for n in base)
    assert "merged 3 models (ties)" in capsys.readouterr().out
    # a shape mismatch is one line naming the tensor, and no output file appears
    bad = dict(models[0])
    bad["0.weight"] = torch.zeros(4, 8)
    save_safetensors(bad, tmp_path / "m0.safetensors")
    out2 = tmp_path / "merged2.safetensors"
    assert main(["merge", str(tmp_path / "r.json"), "--out", str(out2), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'0.weight' has shape (4, 8)" in err
    assert not out2.exists()


_SLOW_MERGE = """
import sys, time
import subspaces.merging.methods as methods
original = methods.disjoint_merge
def slow(*args, **kwargs):
    print("merging", flush=True)
    time.sleep(0.5)
    return original(*args, **kwargs)
methods.disjoint_merge = slow
from subspaces.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_kill_9_leaves_no_output_file(tmp_path):
    _base, _unused, files = _models(tmp_path, size=(64, 64))
    (tmp_path / "r.json").write_text(
        json.dumps(
            {"method": "ties", "base": "base.safetensors", "models": [f.name for f in files]}
        )
    )
    out = tmp_path / "out.safetensors"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            _SLOW_MERGE,
            "merge",
            str(tmp_path / "r.json"),
            "--out",
            str(out),
            "-q",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "merging"  # the merge has started
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    time.sleep(0.05)
    assert not out.exists()
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".out")]
    if _anonymous_file_supported(tmp_path):  # Linux O_TMPFILE: not even a temporary file
        assert leftovers == []


def _anonymous_file_supported(directory):
    from subspaces.merging._state_dict import _anonymous_file

    fd = _anonymous_file(directory)
    if fd is None:
        return False
    os.close(fd)
    return True


def test_yaml_recipe_without_pyyaml_is_a_clear_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "r.yaml").write_text("method: ties\n")
    monkeypatch.setitem(sys.modules, "yaml", None)  # import yaml now raises ImportError
    with pytest.raises(ImportError, match="needs PyYAML: pip install pyyaml, or write the recipe"):
        load_recipe(tmp_path / "r.yaml")
    out = tmp_path / "o.safetensors"
    assert main(["merge", str(tmp_path / "r.yaml"), "--out", str(out)]) == 2
    assert "needs PyYAML" in capsys.readouterr().err
