"""Modules split into one concept per file keep their old import paths (thin facades)."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "facade, package",
    [
        ("subspaces.representations.similarity", "subspaces.representations"),
        ("subspaces.geometry.spd", "subspaces.geometry"),
        ("subspaces.linalg.solvers", "subspaces.linalg"),
    ],
)
def test_facade_reexports_the_package_objects(facade: str, package: str) -> None:
    old, pkg = importlib.import_module(facade), importlib.import_module(package)
    assert old.__all__, facade
    for name in old.__all__:
        obj = getattr(old, name)
        # the name still imports from the old path, and it is the package's object (not a copy)
        assert getattr(pkg, name, obj) is obj, f"{facade}.{name}"
        assert obj.__module__.startswith(package), (facade, name, obj.__module__)
