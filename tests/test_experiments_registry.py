"""The experiment registry (subspaces.experiments)."""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import torch

from subspaces import experiments
from subspaces.experiments import (
    ExperimentResult,
    all_experiments,
    get,
    import_errors,
    register,
    temporarily_registered,
    unregister,
)


def _ok(fast: bool, seed: int) -> ExperimentResult:
    return ExperimentResult({"seed": seed}, passed=True)


def test_every_reproduction_module_imports():
    assert import_errors() == {}


def test_core_check_is_discovered():
    assert "C01" in [e.id for e in all_experiments()]


@pytest.mark.parametrize("experiment", all_experiments(), ids=lambda e: e.id)
def test_registered_experiments_follow_the_conventions(experiment):
    assert re.fullmatch(r"[A-Z]\d\d", experiment.id)
    module = experiment.run.__module__.rsplit(".", 1)[-1]
    assert module.startswith(experiment.id + "_"), f"{experiment.id} is registered by {module}"
    for field in ("title", "paper", "claim", "criterion"):
        assert getattr(experiment, field).strip(), field
    assert isinstance(experiment.slow, bool)


def test_all_experiments_is_sorted():
    ids = [e.id for e in all_experiments()]
    assert ids == sorted(ids)


def test_register_get_unregister_roundtrip():
    register("X90", "t", "core", "claim", "criterion", slow=True)(_ok)
    try:
        exp = get("X90")
        assert (exp.title, exp.slow, exp.run) == ("t", True, _ok)
        assert exp.run(True, 7).measured == {"seed": 7}
    finally:
        assert unregister("X90").id == "X90"
    with pytest.raises(KeyError):
        get("X90")


def test_duplicate_id_is_rejected_and_names_the_owner():
    with temporarily_registered("X91", _ok), pytest.raises(ValueError, match=r"X91.*_ok"):
        register("X91", "t", "core", "c", "c")(_ok)


@pytest.mark.parametrize("bad", ["p08", "P8", "P008", "PP1", "", 8])
def test_malformed_id_is_rejected(bad):
    with pytest.raises(ValueError, match="capital letter and two digits"):
        register(bad, "t", "core", "c", "c")


def test_empty_text_field_is_rejected():
    with pytest.raises(ValueError, match="claim"):
        register("X92", "t", "core", " ", "c")


def test_unknown_id_lists_known_ids():
    with pytest.raises(KeyError, match=r"unknown experiment id 'Z99'; known ids: .*C01"):
        get("Z99")
    with pytest.raises(KeyError, match="Z99"):
        unregister("Z99")


def test_temporary_registration_is_removed_even_on_error():
    with pytest.raises(RuntimeError), temporarily_registered("X93", _ok):
        assert get("X93").run is _ok
        raise RuntimeError
    assert "X93" not in [e.id for e in all_experiments()]


def test_broken_module_is_reported_in_unknown_id_errors(monkeypatch):
    from subspaces.experiments import registry

    monkeypatch.setattr(registry, "_IMPORT_ERRORS", {"P99_broken": "ImportError: nope"})
    assert import_errors() == {"P99_broken": "ImportError: nope"}
    with pytest.raises(KeyError, match="failed to import: P99_broken"):
        get("P99")


def test_discovery_imports_new_files_and_records_import_errors(monkeypatch, tmp_path):
    from subspaces.experiments import registry

    (tmp_path / "Q98_broken.py").write_text("raise ImportError('missing dependency xyz')\n")
    (tmp_path / "Q97_new.py").write_text(
        "from subspaces.experiments.registry import ExperimentResult, register\n"
        "@register('Q97', 't', 'core', 'claim', 'criterion')\n"
        "def run(fast, seed):\n"
        "    return ExperimentResult({}, True)\n"
    )
    (tmp_path / "helpers.py").write_text(
        "raise RuntimeError('not a reproduction: never imported')\n"
    )
    monkeypatch.setattr(registry, "_IMPORT_ERRORS", {})
    monkeypatch.setattr(experiments, "__path__", [*experiments.__path__, str(tmp_path)])
    try:
        experiments._discover()
        assert import_errors() == {"Q98_broken": "ImportError: missing dependency xyz"}
        assert get("Q97").run(True, 0).passed
    finally:
        registry._REGISTRY.pop("Q97", None)
        monkeypatch.delitem(sys.modules, "subspaces.experiments.Q97_new", raising=False)


def test_result_validation():
    r = ExperimentResult({"a": 1}, passed=np.bool_(True))  # type: ignore[arg-type]
    assert r.passed is True
    assert ExperimentResult({}, passed=torch.tensor(False)).passed is False  # type: ignore[arg-type]
    assert ExperimentResult({}, True).figures == {}
    assert ExperimentResult({}, True).figures is not ExperimentResult({}, True).figures
    with pytest.raises(TypeError, match="passed must be a bool"):
        ExperimentResult({}, passed="yes")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="measured must be a dict"):
        ExperimentResult([1, 2], passed=True)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="figure name"):
        ExperimentResult({}, True, figures={"../evil": b"png"})
    with pytest.raises(TypeError, match="PNG bytes"):
        ExperimentResult({}, True, figures={"plot": "not bytes"})  # type: ignore[dict-item]
